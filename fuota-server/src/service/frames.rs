//! Multicast frames as a gateway sends them: an unconfirmed data downlink to McAddr, FRMPayload
//! encrypted with McAppSKey, MIC with McNwkSKey over the full 32-bit multicast FCnt (built
//! with the `lorawan` crate).

use lorawan::creator::DataPayloadCreator;
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::{AppSKey, NewSKey};
use lorawan::parser::{DevAddr, FCtrl};

use crate::engine::MulticastFrame;
use fuota_codec::keys::Key128;

/// The PHYPayload of `f` under the group's keys (McAppSKey, McNwkSKey), or `None` if the
/// payload does not fit a LoRaWAN frame.
pub fn multicast_phy_payload(
    f: &MulticastFrame,
    mc_app_s_key: &Key128,
    mc_nwk_s_key: &Key128,
) -> Option<Vec<u8>> {
    let mut creator = DataPayloadCreator::with_options([0u8; 256], DefaultFactory).ok()?;
    let fctrl = FCtrl::new(0, false);
    creator
        .set_uplink(false)
        .set_confirmed(false)
        .set_dev_addr(DevAddr::new(f.mc_addr.to_le_bytes())?)
        .set_fctrl(&fctrl)
        .set_fcnt(f.fcnt)
        .set_f_port(f.port);
    let nwk = NewSKey::from(*mc_nwk_s_key.as_bytes());
    let app = AppSKey::from(*mc_app_s_key.as_bytes());
    creator
        .build(&f.payload, &[], &nwk, &app)
        .ok()
        .map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FrameKind;
    use lorawan::keys::AES128;
    use lorawan::parser::{parse, DataHeader, DataPayload, FRMPayload, PhyPayload};

    #[test]
    fn a_multicast_frame_opens_with_the_group_keys_only() {
        let f = MulticastFrame {
            at: 0,
            mc_addr: 0x01ff_0001,
            fcnt: 0x0001_0003,
            freq_hz: 869_525_000,
            dr: 3,
            port: 201,
            payload: vec![8, 1, 0, 0xaa, 0xbb],
            kind: FrameKind::DataFragment,
        };
        let app = Key128::from_bytes([1; 16]);
        let nwk = Key128::from_bytes([2; 16]);
        let phy = multicast_phy_payload(&f, &app, &nwk).unwrap();
        // Unconfirmed data down, McAddr little-endian, the FCnt's low 16 bits.
        assert_eq!(phy[0], 0x60);
        assert_eq!(&phy[1..5], &0x01ff_0001u32.to_le_bytes());
        assert_eq!(&phy[6..8], &3u16.to_le_bytes());
        let PhyPayload::Data(DataPayload::Encrypted(d)) = parse(phy.clone()).unwrap() else {
            panic!("not a data frame")
        };
        assert!(!d.is_uplink());
        let dec = d
            .decrypt_if_mic_ok(&AES128([2; 16]), &AES128([1; 16]), 0x0001_0003)
            .unwrap();
        assert_eq!(dec.f_port(), Some(201));
        let FRMPayload::Data(p) = dec.frm_payload() else {
            panic!("no data")
        };
        assert_eq!(p, &f.payload[..]);
        // The 16-bit counter alone gives another MIC.
        let PhyPayload::Data(DataPayload::Encrypted(d)) = parse(phy).unwrap() else {
            panic!()
        };
        assert!(d
            .decrypt_if_mic_ok(&AES128([2; 16]), &AES128([1; 16]), 3)
            .is_err());
    }
}
