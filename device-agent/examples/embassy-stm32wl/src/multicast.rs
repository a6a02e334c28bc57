//! Multicast reception, which lorawan-device 0.12 does not have: its MAC keeps one unicast
//! session, drops every frame whose DevAddr is not the device's own, and its class C listens
//! only on the region's RX2 channel. So the firmware keeps the groups the agent installs
//! (`McEvent::GroupKeys`), listens on the session's channel while a class C session runs
//! (`McEvent::ClassCStart`/`ClassCEnd`), and checks and decrypts multicast frames itself
//! (LoRaWAN 1.0.x data frames; the `lorawan` crate does the MIC and the payload decryption).
//!
//! With a stack that has multicast, this module goes away: the agent's events go to the
//! stack's group API and the stack hands over frames with their group.

use core::ops::Range;

use fuota_device_agent::multicast::McGroup;
use lora_modulation::{Bandwidth, BaseBandModulationParams, CodingRate, SpreadingFactor};
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::AES128;
use lorawan::parser::{parse_with_factory, DataHeader, DataPayload, PhyPayload};
use lorawan_device::async_device::radio::RfConfig;

/// TS005 allows four groups.
const GROUPS: usize = 4;

struct Group {
    addr: u32,
    nwk_s_key: AES128,
    app_s_key: AES128,
    min_fcnt: u32,
    max_fcnt: u32,
    /// Last accepted frame counter, so that a replayed frame is dropped.
    last_fcnt: Option<u32>,
    /// Channel of this group's running class C session.
    class_c: Option<RfConfig>,
}

/// A multicast frame that passed the checks: its group, port and the range of the decrypted
/// payload in the frame buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McFrame {
    pub group: u8,
    pub port: u8,
    pub payload: Range<usize>,
}

/// The groups the agent set up and their class C sessions.
pub struct McGroups {
    groups: [Option<Group>; GROUPS],
}

/// The LoRa parameters of an EU868 data rate (RP002: DR0-DR5 SF12-SF7 at 125 kHz, DR6 SF7 at
/// 250 kHz; DR7 is FSK, which this radio path does not receive). Downlinks use CR 4/5.
pub fn eu868_rf(freq_hz: u32, dr: u8) -> Option<RfConfig> {
    let (sf, bw) = match dr {
        0 => (SpreadingFactor::_12, Bandwidth::_125KHz),
        1 => (SpreadingFactor::_11, Bandwidth::_125KHz),
        2 => (SpreadingFactor::_10, Bandwidth::_125KHz),
        3 => (SpreadingFactor::_9, Bandwidth::_125KHz),
        4 => (SpreadingFactor::_8, Bandwidth::_125KHz),
        5 => (SpreadingFactor::_7, Bandwidth::_125KHz),
        6 => (SpreadingFactor::_7, Bandwidth::_250KHz),
        _ => return None,
    };
    Some(RfConfig {
        frequency: freq_hz,
        bb: BaseBandModulationParams::new(sf, bw, CodingRate::_4_5),
    })
}

impl McGroups {
    pub const fn new() -> Self {
        Self {
            groups: [const { None }; GROUPS],
        }
    }

    /// Installs (or replaces) group `id`; a replaced group starts a fresh counter window.
    pub fn set_group(&mut self, id: u8, group: &McGroup) {
        if let Some(slot) = self.groups.get_mut(usize::from(id)) {
            let class_c = slot.as_ref().and_then(|g| g.class_c);
            *slot = Some(Group {
                addr: group.addr,
                nwk_s_key: AES128(*group.nwk_s_key.as_bytes()),
                app_s_key: AES128(*group.app_s_key.as_bytes()),
                min_fcnt: group.min_fcount,
                max_fcnt: group.max_fcount,
                last_fcnt: None,
                class_c,
            });
        }
    }

    pub fn delete_group(&mut self, id: u8) {
        if let Some(slot) = self.groups.get_mut(usize::from(id)) {
            *slot = None;
        }
    }

    /// Opens class C reception for group `id`; false if the group is unknown or the data
    /// rate is not one this radio path receives.
    pub fn start_class_c(&mut self, id: u8, freq_hz: u32, dr: u8) -> bool {
        let rf = eu868_rf(freq_hz, dr);
        match (self.groups.get_mut(usize::from(id)), rf) {
            (Some(Some(g)), Some(rf)) => {
                g.class_c = Some(rf);
                true
            }
            _ => false,
        }
    }

    pub fn end_class_c(&mut self, id: u8) {
        if let Some(Some(g)) = self.groups.get_mut(usize::from(id)) {
            g.class_c = None;
        }
    }

    /// The channel to listen on between uplinks, if a class C session runs. The radio hears
    /// one channel at a time: with several sessions at once, the lowest group id's wins.
    pub fn listen_channel(&self) -> Option<RfConfig> {
        self.groups.iter().flatten().find_map(|g| g.class_c)
    }

    /// Checks a received frame against the groups: an unconfirmed data downlink to a group's
    /// McAddr, with no MAC commands, a counter inside the group's window and above the last
    /// one taken, and a good MIC under McNwkSKey. The payload is decrypted in place with
    /// McAppSKey.
    pub fn accept(&mut self, frame: &mut [u8]) -> Option<McFrame> {
        let len = frame.len();
        let Ok(PhyPayload::Data(DataPayload::Encrypted(enc))) =
            parse_with_factory(&mut *frame, DefaultFactory)
        else {
            return None;
        };
        let fhdr = enc.fhdr();
        // Multicast frames never ask for an ACK nor carry MAC commands (LoRaWAN 1.0.4 §11.2).
        if enc.is_uplink() || enc.is_confirmed() || fhdr.fopts_len() != 0 {
            return None;
        }
        let port = enc.f_port().filter(|&p| p != 0)?;
        let addr = u32::from_le_bytes(fhdr.dev_addr().as_ref().try_into().ok()?);
        let fcnt16 = fhdr.fcnt();
        let (id, group) = self
            .groups
            .iter_mut()
            .enumerate()
            .find_map(|(id, g)| g.as_mut().filter(|g| g.addr == addr).map(|g| (id, g)))?;
        let fcnt = group.full_fcnt(fcnt16)?;
        if !enc.validate_mic(&group.nwk_s_key, fcnt) {
            return None;
        }
        enc.decrypt(None, Some(&group.app_s_key), fcnt).ok()?;
        group.last_fcnt = Some(fcnt);
        // MHDR, DevAddr, FCtrl, FCnt (no FOpts), FPort ... MIC.
        const PAYLOAD_START: usize = 1 + 4 + 1 + 2 + 1;
        Some(McFrame {
            group: id as u8,
            port,
            payload: PAYLOAD_START..len.checked_sub(4)?,
        })
    }
}

impl Group {
    /// The 32-bit counter the 16 bits on air stand for: the smallest value not below the
    /// next expected one with those low bits, if it is inside the group's window.
    fn full_fcnt(&self, fcnt16: u16) -> Option<u32> {
        let next = match self.last_fcnt {
            Some(last) => last.checked_add(1)?,
            None => self.min_fcnt,
        };
        let mut fcnt = (next & !0xffff) | u32::from(fcnt16);
        if fcnt < next {
            fcnt = fcnt.checked_add(0x1_0000)?;
        }
        (fcnt <= self.max_fcnt).then_some(fcnt)
    }
}
