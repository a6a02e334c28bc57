//! LoRaWAN data frames as the simulated devices and network exchange them: built and opened
//! with the `lorawan` crate (real MHDR/FHDR, AES-CTR FRMPayload encryption, CMAC MIC), for
//! unicast (the device's session keys) and multicast (McAddr with McNwkSKey/McAppSKey).

use lorawan::creator::DataPayloadCreator;
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::{AppSKey, NewSKey, AES128};
use lorawan::parser::{parse, DataHeader, DataPayload, DevAddr, FCtrl, FRMPayload, PhyPayload};

/// Session keys of a unicast session or a multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    pub nwk_s_key: [u8; 16],
    pub app_s_key: [u8; 16],
}

/// A data frame, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    pub uplink: bool,
    pub dev_addr: u32,
    /// The full 32-bit frame counter.
    pub fcnt: u32,
    pub f_pending: bool,
    pub port: Option<u8>,
    pub payload: Vec<u8>,
}

/// Builds an unconfirmed data frame.
pub fn build(
    uplink: bool,
    dev_addr: u32,
    fcnt: u32,
    port: u8,
    payload: &[u8],
    f_pending: bool,
    keys: &SessionKeys,
) -> Option<Vec<u8>> {
    let mut creator = DataPayloadCreator::with_options([0u8; 256], DefaultFactory).ok()?;
    let mut fctrl = FCtrl::new(0, uplink);
    if f_pending && !uplink {
        // FPending is bit 4 of a downlink's FCtrl.
        fctrl = FCtrl::new(0x10, uplink);
    }
    creator
        .set_uplink(uplink)
        .set_confirmed(false)
        .set_dev_addr(DevAddr::new(dev_addr.to_le_bytes())?)
        .set_fctrl(&fctrl)
        .set_fcnt(fcnt)
        .set_f_port(port);
    let nwk = NewSKey::from(keys.nwk_s_key);
    let app = AppSKey::from(keys.app_s_key);
    creator
        .build(payload, &[], &nwk, &app)
        .ok()
        .map(<[u8]>::to_vec)
}

/// The DevAddr of a data frame, before its keys are known.
pub fn dev_addr(bytes: &[u8]) -> Option<u32> {
    match parse(bytes.to_vec()).ok()? {
        PhyPayload::Data(DataPayload::Encrypted(d)) => {
            let a = d.fhdr().dev_addr();
            let b: [u8; 4] = a.as_ref().try_into().ok()?;
            Some(u32::from_le_bytes(b))
        }
        _ => None,
    }
}

/// The 32-bit frame counter whose low half is `low`: the first at or after `hint`.
pub fn full_fcnt(low: u16, hint: u32) -> u32 {
    let fcnt = (hint & 0xffff_0000) | u32::from(low);
    if fcnt < hint {
        fcnt.wrapping_add(0x1_0000)
    } else {
        fcnt
    }
}

/// The low half of a data frame's counter, read from its header (MHDR, DevAddr, FCtrl,
/// FCnt), without checking anything else.
pub fn fcnt_low(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*bytes.get(6)?, *bytes.get(7)?]))
}

/// Checks the MIC and decrypts a frame whose 32-bit counter is the one of `fcnt_hint`'s
/// upper half with the frame's 16 bits (the counter must not have jumped by 2^16).
pub fn open(bytes: &[u8], keys: &SessionKeys, fcnt_hint: u32) -> Option<DataFrame> {
    let PhyPayload::Data(DataPayload::Encrypted(d)) = parse(bytes.to_vec()).ok()? else {
        return None;
    };
    let fcnt = full_fcnt(d.fhdr().fcnt(), fcnt_hint);
    let uplink = d.is_uplink();
    let dev_addr = {
        let b: [u8; 4] = d.fhdr().dev_addr().as_ref().try_into().ok()?;
        u32::from_le_bytes(b)
    };
    let f_pending = d.fhdr().fctrl().f_pending();
    let nwk = AES128(keys.nwk_s_key);
    let app = AES128(keys.app_s_key);
    let dec = d.decrypt_if_mic_ok(&nwk, &app, fcnt).ok()?;
    let port = dec.f_port();
    let payload = match dec.frm_payload() {
        FRMPayload::Data(p) => p.to_vec(),
        _ => Vec::new(),
    };
    Some(DataFrame {
        uplink,
        dev_addr,
        fcnt,
        f_pending,
        port,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            nwk_s_key: [1; 16],
            app_s_key: [2; 16],
        }
    }

    #[test]
    fn frames_round_trip_and_wrong_keys_fail() {
        let keys = keys();
        let f = build(false, 0x0102_0304, 0x1_0005, 201, b"hello", true, &keys).unwrap();
        // MHDR, DevAddr LE, FCtrl, FCnt, FPort, 5 bytes, MIC.
        assert_eq!(f.len(), 1 + 4 + 1 + 2 + 1 + 5 + 4);
        assert_eq!(&f[1..5], &[4, 3, 2, 1]);
        assert_eq!(dev_addr(&f), Some(0x0102_0304));
        let d = open(&f, &keys, 0x1_0000).unwrap();
        assert_eq!(
            (d.uplink, d.fcnt, d.f_pending, d.port, d.payload.as_slice()),
            (false, 0x1_0005, true, Some(201), b"hello".as_slice())
        );
        // The 16 low bits alone would give another counter and another MIC.
        assert!(open(&f, &keys, 0).is_none());
        let other = SessionKeys {
            nwk_s_key: [3; 16],
            ..keys
        };
        assert!(open(&f, &other, 0x1_0000).is_none());
        let up = build(true, 7, 3, 202, &[1, 2, 3], false, &keys).unwrap();
        assert!(open(&up, &keys, 0).unwrap().uplink);
    }

    #[test]
    fn the_counter_is_the_first_with_its_low_half_at_or_after_the_hint() {
        let keys = keys();
        let f = build(false, 9, 0x2_0007, 200, b"x", false, &keys).unwrap();
        assert_eq!(fcnt_low(&f), Some(7));
        assert_eq!(fcnt_low(&f[..7]), None);
        assert_eq!(full_fcnt(7, 0x2_0000), 0x2_0007);
        assert_eq!(full_fcnt(7, 0x2_0007), 0x2_0007);
        assert_eq!(full_fcnt(7, 0x2_0008), 0x3_0007);
        // What open() reconstructs, for every hint around it.
        for hint in [0x1_fff0, 0x2_0000, 0x2_0007] {
            assert_eq!(
                open(&f, &keys, hint).map(|d| d.fcnt),
                Some(full_fcnt(7, hint))
            );
        }
    }
}
