//! TX_ACK: the gateway's verdict on a PULL_RESP, with the PULL_RESP's token.

use super::{
    json_text, parse_json, upstream_header, write_header, write_json, Identifier, Malformed,
};
use crate::eui::Eui64;
use crate::json_object;
use crate::mqtt::TxAckStatus;
use serde::{Deserialize, Serialize};

/// A TX_ACK datagram. No JSON, an empty `error` and `"NONE"` all mean the packet was
/// scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxAck {
    pub token: u16,
    pub gateway: Eui64,
    /// `txpk_ack.error`, as the gateway wrote it.
    pub error: Option<String>,
    /// `txpk_ack.warn` and `value`: SX1302 forwarders schedule the packet but say they changed
    /// something (`TX_POWER` with the power they used).
    pub warning: Option<TxAckWarning>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxAckWarning {
    pub kind: String,
    pub value: Option<i64>,
}

#[derive(Deserialize, Serialize)]
struct PayloadWire {
    #[serde(default, deserialize_with = "json_object::required")]
    txpk_ack: AckWire,
}

#[derive(Default, Deserialize, Serialize)]
struct AckWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<i64>,
}

impl TxAck {
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let (token, gateway, body) = upstream_header(bytes, Identifier::TxAck)?;
        let text = json_text(body);
        let ack = if text.is_empty() {
            AckWire::default()
        } else {
            parse_json::<PayloadWire>(text)?.txpk_ack
        };
        Ok(Self {
            token,
            gateway,
            error: ack.error,
            warning: ack.warn.map(|kind| TxAckWarning {
                kind,
                value: ack.value,
            }),
        })
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_header(&mut out, Identifier::TxAck, self.token);
        out.extend_from_slice(&self.gateway.0);
        if self.error.is_some() || self.warning.is_some() {
            let ack = AckWire {
                error: self.error.clone(),
                warn: self.warning.as_ref().map(|w| w.kind.clone()),
                value: self.warning.as_ref().and_then(|w| w.value),
            };
            write_json(&mut out, &PayloadWire { txpk_ack: ack });
        }
        out
    }

    /// The ChirpStack status of this verdict: [`TxAckStatus::Ok`] when there is no error,
    /// the status of that name for the forwarder's error strings (`TOO_LATE`, `TOO_EARLY`,
    /// `COLLISION_PACKET`, `COLLISION_BEACON`, `TX_FREQ`, `TX_POWER`, `GPS_UNLOCKED`, and the
    /// `QUEUE_FULL`, `INTERNAL_ERROR`, `DUTY_CYCLE_OVERFLOW` that ChirpStack added), `None`
    /// for a string the protocol does not define.
    pub fn status(&self) -> Option<TxAckStatus> {
        match self.error.as_deref() {
            None | Some("" | "NONE") => Some(TxAckStatus::Ok),
            Some(e) => TxAckStatus::from_name(e).filter(|s| s.is_refusal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GW: Eui64 = Eui64([1, 2, 3, 4, 5, 6, 7, 8]);

    fn datagram(body: &[u8]) -> Vec<u8> {
        let mut v = vec![2, 0x34, 0x12, 5];
        v.extend_from_slice(&GW.0);
        v.extend_from_slice(body);
        v
    }

    fn ack(error: Option<&str>) -> TxAck {
        TxAck {
            token: 0x1234,
            gateway: GW,
            error: error.map(str::to_owned),
            warning: None,
        }
    }

    #[test]
    fn no_error_in_every_spelling() {
        for body in [
            &b""[..],
            b"\0",
            b"{}",
            b"{\"txpk_ack\":{}}",
            b"{\"txpk_ack\":{\"error\":\"\"}}",
            b"{\"txpk_ack\":{\"error\":\"NONE\"}}\0",
        ] {
            let a = TxAck::parse(&datagram(body)).unwrap();
            assert_eq!((a.token, a.gateway), (0x1234, GW));
            assert_eq!(
                a.status(),
                Some(TxAckStatus::Ok),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn every_error_string_maps_to_its_status() {
        let table = [
            ("TOO_LATE", TxAckStatus::TooLate),
            ("TOO_EARLY", TxAckStatus::TooEarly),
            ("COLLISION_PACKET", TxAckStatus::CollisionPacket),
            ("COLLISION_BEACON", TxAckStatus::CollisionBeacon),
            ("TX_FREQ", TxAckStatus::TxFreq),
            ("TX_POWER", TxAckStatus::TxPower),
            ("GPS_UNLOCKED", TxAckStatus::GpsUnlocked),
            ("QUEUE_FULL", TxAckStatus::QueueFull),
            ("INTERNAL_ERROR", TxAckStatus::InternalError),
            ("DUTY_CYCLE_OVERFLOW", TxAckStatus::DutyCycleOverflow),
        ];
        for (error, status) in table {
            let body = format!(r#"{{"txpk_ack":{{"error":"{error}"}}}}"#);
            let a = TxAck::parse(&datagram(body.as_bytes())).unwrap();
            assert_eq!(a.error.as_deref(), Some(error));
            assert_eq!(a.status(), Some(status), "{error}");
            assert!(status.is_refusal());
        }
        // Every refusal status has its string.
        let refusals = TxAckStatus::ALL.iter().filter(|s| s.is_refusal()).count();
        assert_eq!(refusals, table.len());
    }

    #[test]
    fn strings_outside_the_protocol_are_unrecognized() {
        for e in ["too_late", "OK", "IGNORED", "TOO LATE", "COLLISION"] {
            assert_eq!(ack(Some(e)).status(), None, "{e}");
        }
    }

    #[test]
    fn sx1302_power_warning_is_a_success() {
        let a = TxAck::parse(&datagram(br#"{"txpk_ack":{"warn":"TX_POWER","value":27}}"#)).unwrap();
        assert_eq!(
            a.warning,
            Some(TxAckWarning {
                kind: "TX_POWER".into(),
                value: Some(27)
            })
        );
        assert_eq!(a.status(), Some(TxAckStatus::Ok));
        assert_eq!(TxAck::parse(&a.build()), Ok(a));
    }

    #[test]
    fn wire_form() {
        assert_eq!(ack(None).build(), datagram(b""));
        assert_eq!(
            ack(Some("TOO_LATE")).build(),
            datagram(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#)
        );
    }

    #[test]
    fn malformed_tx_ack() {
        let ok = datagram(b"");
        assert_eq!(TxAck::parse(&ok[..11]), Err(Malformed::TooShort));
        assert_eq!(TxAck::parse(&datagram(b"{")), Err(Malformed::BadJson));
        assert_eq!(
            TxAck::parse(&datagram(b"TOO_LATE")),
            Err(Malformed::BadJson)
        );
        assert_eq!(
            TxAck::parse(&datagram(br#"{"txpk_ack":{"error":3}}"#)),
            Err(Malformed::WrongFieldType)
        );
        assert_eq!(
            TxAck::parse(&datagram(br#"{"txpk_ack":[]}"#)),
            Err(Malformed::WrongFieldType)
        );
        assert_eq!(
            TxAck::parse(&datagram(
                br#"{"txpk_ack":{"warn":"TX_POWER","value":"x"}}"#
            )),
            Err(Malformed::WrongFieldType)
        );
    }

    proptest! {
        #[test]
        fn round_trip(token: u16, eui: [u8; 8], error in proptest::option::of(".{0,20}"),
                      warning in proptest::option::of((".{0,8}", any::<Option<i64>>()))) {
            let a = TxAck {
                token, gateway: Eui64(eui), error,
                warning: warning.map(|(kind, value)| TxAckWarning { kind, value }),
            };
            prop_assert_eq!(TxAck::parse(&a.build()), Ok(a));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(a) = TxAck::parse(&bytes) { let _ = a.status(); }
        }
    }
}
