//! Semtech's UDP packet-forwarder protocol, version 2: one file per packet type. Each type
//! parses from a datagram into a validated struct (so its fields can be used without further
//! checks) and builds back into one.
//!
//! Every packet starts with the same four bytes: the protocol version (2), a token of two
//! random bytes (read little-endian, as ChirpStack Gateway Bridge does, which makes the
//! PUSH_DATA token the uplink ID it publishes) and the packet identifier. Upstream packets
//! then carry the gateway's EUI; PUSH_DATA, PULL_RESP and TX_ACK carry a JSON object.

mod pull_ack;
mod pull_data;
mod pull_resp;
mod push_ack;
mod push_data;
mod tx_ack;

pub use pull_ack::PullAck;
pub use pull_data::PullData;
pub use pull_resp::{PullResp, TxModulation, TxTiming, Txpk};
pub use push_ack::PushAck;
pub use push_data::{Crc, PushData, Rsig, RxModulation, Rxpk, Stat, StatLocation};
pub use tx_ack::{TxAck, TxAckWarning};

use crate::eui::Eui64;
use core::fmt;

/// The protocol version this bridge speaks (byte 0 of every packet).
pub const PROTOCOL_VERSION: u8 = 2;

/// Byte 3 of every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Identifier {
    PushData = 0x00,
    PushAck = 0x01,
    PullData = 0x02,
    PullResp = 0x03,
    PullAck = 0x04,
    TxAck = 0x05,
}

impl Identifier {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => Self::PushData,
            0x01 => Self::PushAck,
            0x02 => Self::PullData,
            0x03 => Self::PullResp,
            0x04 => Self::PullAck,
            0x05 => Self::TxAck,
            _ => return None,
        })
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    /// Shorter than its packet type's fixed part (4 bytes, or 12 with the gateway EUI).
    TooShort,
    /// Byte 0 is not 2.
    BadVersion,
    /// Byte 3 names no packet type.
    UnknownIdentifier,
    /// A packet type that is not expected here: a gateway sent one only servers send
    /// (PUSH_ACK, PULL_ACK, PULL_RESP), or a parser was given another type.
    UnexpectedIdentifier,
    /// Bytes after a fixed-size packet (PULL_DATA, PUSH_ACK, PULL_ACK).
    TrailingBytes,
    /// The payload is not a JSON object.
    BadJson,
    /// The JSON object has a field of the wrong type, or lacks a required one.
    WrongFieldType,
    /// A field has the right type but a value that cannot be (bad base64, an unknown `datr`,
    /// an impossible date, a frequency out of range, no timing for a `txpk`).
    BadValue,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::TooShort,
        Malformed::BadVersion,
        Malformed::UnknownIdentifier,
        Malformed::UnexpectedIdentifier,
        Malformed::TrailingBytes,
        Malformed::BadJson,
        Malformed::WrongFieldType,
        Malformed::BadValue,
    ];

    /// A short `snake_case` name, for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::BadVersion => "bad_version",
            Self::UnknownIdentifier => "unknown_identifier",
            Self::UnexpectedIdentifier => "unexpected_identifier",
            Self::TrailingBytes => "trailing_bytes",
            Self::BadJson => "bad_json",
            Self::WrongFieldType => "wrong_field_type",
            Self::BadValue => "bad_value",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Malformed {}

/// What a gateway sends to the server.
#[derive(Clone, Debug, PartialEq)]
pub enum FromGateway {
    PushData(PushData),
    PullData(PullData),
    TxAck(TxAck),
}

impl FromGateway {
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        match identifier(bytes)? {
            Identifier::PushData => PushData::parse(bytes).map(Self::PushData),
            Identifier::PullData => PullData::parse(bytes).map(Self::PullData),
            Identifier::TxAck => TxAck::parse(bytes).map(Self::TxAck),
            Identifier::PushAck | Identifier::PullAck | Identifier::PullResp => {
                Err(Malformed::UnexpectedIdentifier)
            }
        }
    }
}

/// What the server sends to a gateway (for gateway-side code: tests, simulators).
#[derive(Clone, Debug, PartialEq)]
pub enum FromServer {
    PushAck(PushAck),
    PullAck(PullAck),
    PullResp(PullResp),
}

impl FromServer {
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        match identifier(bytes)? {
            Identifier::PushAck => PushAck::parse(bytes).map(Self::PushAck),
            Identifier::PullAck => PullAck::parse(bytes).map(Self::PullAck),
            Identifier::PullResp => PullResp::parse(bytes).map(Self::PullResp),
            Identifier::PushData | Identifier::PullData | Identifier::TxAck => {
                Err(Malformed::UnexpectedIdentifier)
            }
        }
    }
}

/// The identifier of a datagram whose first four bytes are a version-2 header.
pub fn identifier(bytes: &[u8]) -> Result<Identifier, Malformed> {
    let [version, _, _, id, ..] = *bytes else {
        return Err(Malformed::TooShort);
    };
    if version != PROTOCOL_VERSION {
        return Err(Malformed::BadVersion);
    }
    Identifier::from_byte(id).ok_or(Malformed::UnknownIdentifier)
}

/// Checks the header of a packet of type `id` at least `min_len` bytes long; returns the
/// token.
fn header(bytes: &[u8], id: Identifier, min_len: usize) -> Result<u16, Malformed> {
    if identifier(bytes)? != id {
        return Err(Malformed::UnexpectedIdentifier);
    }
    if bytes.len() < min_len {
        return Err(Malformed::TooShort);
    }
    Ok(u16::from_le_bytes([bytes[1], bytes[2]]))
}

/// Header and gateway EUI of an upstream packet (PUSH_DATA, PULL_DATA, TX_ACK).
fn upstream_header(bytes: &[u8], id: Identifier) -> Result<(u16, Eui64, &[u8]), Malformed> {
    let token = header(bytes, id, 12)?;
    let mut eui = [0u8; 8];
    eui.copy_from_slice(&bytes[4..12]);
    Ok((token, Eui64(eui), &bytes[12..]))
}

fn write_header(out: &mut Vec<u8>, id: Identifier, token: u16) {
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&token.to_le_bytes());
    out.push(id as u8);
}

/// The JSON text of a packet body: forwarders NUL-terminate their buffers "for safety", and
/// some send the terminator, so trailing NULs and whitespace are not part of it.
fn json_text(body: &[u8]) -> &[u8] {
    let end = body
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &body[..end]
}

/// Parses a JSON object (not an array, which serde would also map onto a struct).
fn parse_json<'a, T: serde::Deserialize<'a>>(text: &'a [u8]) -> Result<T, Malformed> {
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Malformed::BadJson);
    }
    serde_json::from_slice(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Malformed::WrongFieldType,
        _ => Malformed::BadJson,
    })
}

fn write_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    // Only plain structs with string keys are written here; they cannot fail to serialize.
    serde_json::to_writer(out, value).expect("packet JSON serializes");
}

/// MHz as the forwarder writes frequencies (Hz precision) to whole Hz.
fn hz_from_mhz(mhz: f64) -> Result<u32, Malformed> {
    let hz = (mhz * 1e6).round();
    if hz.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&hz) {
        Ok(hz as u32)
    } else {
        Err(Malformed::BadValue)
    }
}

fn mhz_from_hz(hz: u32) -> f64 {
    f64::from(hz) / 1e6
}

/// `datr`: a LoRa or LR-FHSS identifier string, or an FSK bit rate.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum DatrWire {
    Name(String),
    Bitrate(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for (b, id) in [
            (0, Identifier::PushData),
            (1, Identifier::PushAck),
            (2, Identifier::PullData),
            (3, Identifier::PullResp),
            (4, Identifier::PullAck),
            (5, Identifier::TxAck),
        ] {
            assert_eq!(Identifier::from_byte(b), Some(id));
            assert_eq!(id as u8, b);
        }
        assert_eq!(Identifier::from_byte(6), None);
    }

    #[test]
    fn headers_are_checked_before_anything_else() {
        assert_eq!(FromGateway::parse(&[]), Err(Malformed::TooShort));
        assert_eq!(FromGateway::parse(&[2, 0, 0]), Err(Malformed::TooShort));
        assert_eq!(
            FromGateway::parse(&[1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::BadVersion)
        );
        assert_eq!(
            FromGateway::parse(&[3, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::BadVersion)
        );
        assert_eq!(
            FromGateway::parse(&[2, 0, 0, 6]),
            Err(Malformed::UnknownIdentifier)
        );
        assert_eq!(
            FromGateway::parse(&[2, 0, 0, 0xff]),
            Err(Malformed::UnknownIdentifier)
        );
        for server_only in [1, 3, 4] {
            assert_eq!(
                FromGateway::parse(&[2, 0, 0, server_only]),
                Err(Malformed::UnexpectedIdentifier)
            );
        }
        for gateway_only in [0, 2, 5] {
            assert_eq!(
                FromServer::parse(&[2, 0, 0, gateway_only]),
                Err(Malformed::UnexpectedIdentifier)
            );
        }
        assert_eq!(
            FromServer::parse(&[2, 0, 0, 9]),
            Err(Malformed::UnknownIdentifier)
        );
        assert_eq!(FromServer::parse(&[0, 0, 0, 1]), Err(Malformed::BadVersion));
    }

    #[test]
    fn json_bodies() {
        assert_eq!(json_text(b"{}\0"), b"{}");
        assert_eq!(json_text(b"{} \n\0\0"), b"{}");
        assert_eq!(json_text(b"\0\0"), b"");
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct A {
            a: u32,
        }
        assert!(parse_json::<A>(b" {\"a\":1}").is_ok());
        assert_eq!(parse_json::<A>(b"[1]").unwrap_err(), Malformed::BadJson);
        assert_eq!(parse_json::<A>(b"{\"a\":").unwrap_err(), Malformed::BadJson);
        assert_eq!(
            parse_json::<A>(b"{\"a\":1} x").unwrap_err(),
            Malformed::BadJson
        );
        assert_eq!(
            parse_json::<A>(b"{\"a\":\"1\"}").unwrap_err(),
            Malformed::WrongFieldType
        );
        assert_eq!(
            parse_json::<A>(b"{\"a\":-1}").unwrap_err(),
            Malformed::WrongFieldType
        );
        assert_eq!(
            parse_json::<A>(b"{}").unwrap_err(),
            Malformed::WrongFieldType
        );
        assert_eq!(
            parse_json::<A>(b"{\"a\":1,\"a\":2}").unwrap_err(),
            Malformed::WrongFieldType
        );
        assert_eq!(parse_json::<A>(b"").unwrap_err(), Malformed::BadJson);
        assert_eq!(parse_json::<A>(b"\xff").unwrap_err(), Malformed::BadJson);
    }

    #[test]
    fn frequencies() {
        assert_eq!(hz_from_mhz(868.1), Ok(868_100_000));
        assert_eq!(hz_from_mhz(866.349812), Ok(866_349_812));
        assert_eq!(hz_from_mhz(2425.0), Ok(2_425_000_000));
        assert_eq!(hz_from_mhz(0.0), Ok(0));
        assert_eq!(hz_from_mhz(-1.0), Err(Malformed::BadValue));
        assert_eq!(hz_from_mhz(4295.0), Err(Malformed::BadValue));
        assert_eq!(hz_from_mhz(f64::MAX), Err(Malformed::BadValue));
        for hz in [0, 1, 868_100_000, 923_300_000, u32::MAX] {
            assert_eq!(hz_from_mhz(mhz_from_hz(hz)), Ok(hz));
        }
    }
}
