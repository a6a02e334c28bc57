//! `event/ack`: a `DownlinkTxAck` with one status per item of the `DownlinkFrame` it answers.

use crate::eui::Eui64;
use serde::{Serialize, Serializer};

/// `gw.TxAckStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxAckStatus {
    /// Not tried: an earlier item was emitted, or nothing was tried.
    Ignored,
    Ok,
    TooLate,
    TooEarly,
    CollisionPacket,
    CollisionBeacon,
    TxFreq,
    TxPower,
    GpsUnlocked,
    QueueFull,
    InternalError,
    DutyCycleOverflow,
}

impl TxAckStatus {
    /// In protobuf number order.
    pub const ALL: [TxAckStatus; 12] = [
        TxAckStatus::Ignored,
        TxAckStatus::Ok,
        TxAckStatus::TooLate,
        TxAckStatus::TooEarly,
        TxAckStatus::CollisionPacket,
        TxAckStatus::CollisionBeacon,
        TxAckStatus::TxFreq,
        TxAckStatus::TxPower,
        TxAckStatus::GpsUnlocked,
        TxAckStatus::QueueFull,
        TxAckStatus::InternalError,
        TxAckStatus::DutyCycleOverflow,
    ];

    /// The enum value's name, which is also the packet forwarder's `error` string for the
    /// refusals.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ignored => "IGNORED",
            Self::Ok => "OK",
            Self::TooLate => "TOO_LATE",
            Self::TooEarly => "TOO_EARLY",
            Self::CollisionPacket => "COLLISION_PACKET",
            Self::CollisionBeacon => "COLLISION_BEACON",
            Self::TxFreq => "TX_FREQ",
            Self::TxPower => "TX_POWER",
            Self::GpsUnlocked => "GPS_UNLOCKED",
            Self::QueueFull => "QUEUE_FULL",
            Self::InternalError => "INTERNAL_ERROR",
            Self::DutyCycleOverflow => "DUTY_CYCLE_OVERFLOW",
        }
    }

    pub fn number(self) -> u32 {
        self as u32
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.name() == s)
    }

    /// The gateway refused the item (every status but `IGNORED` and `OK`).
    pub fn is_refusal(self) -> bool {
        !matches!(self, Self::Ignored | Self::Ok)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl Serialize for TxAckStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `gw.DownlinkTxAck`, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownlinkTxAck {
    pub gateway_id: String,
    pub downlink_id: u32,
    pub items: Vec<AckItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AckItem {
    pub status: TxAckStatus,
}

impl DownlinkTxAck {
    pub fn new(gateway: Eui64, downlink_id: u32, statuses: &[TxAckStatus]) -> Self {
        Self {
            gateway_id: gateway.to_string(),
            downlink_id,
            items: statuses.iter().map(|&status| AckItem { status }).collect(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("DownlinkTxAck serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_follow_the_proto() {
        for (i, s) in TxAckStatus::ALL.iter().enumerate() {
            assert_eq!(s.number() as usize, i);
            assert_eq!(TxAckStatus::from_name(s.name()), Some(*s));
        }
        assert_eq!(TxAckStatus::DutyCycleOverflow.number(), 11);
        assert_eq!(TxAckStatus::GpsUnlocked.number(), 8);
        assert_eq!(TxAckStatus::from_name("NONE"), None);
    }

    #[test]
    fn json_form() {
        let a = DownlinkTxAck::new(
            Eui64([1, 2, 3, 4, 5, 6, 7, 8]),
            4242,
            &[TxAckStatus::TooLate, TxAckStatus::Ok, TxAckStatus::Ignored],
        );
        assert_eq!(
            String::from_utf8(a.to_json()).unwrap(),
            r#"{"gatewayId":"0102030405060708","downlinkId":4242,"items":[{"status":"TOO_LATE"},{"status":"OK"},{"status":"IGNORED"}]}"#
        );
    }
}
