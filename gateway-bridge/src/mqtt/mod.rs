//! ChirpStack Gateway Bridge's MQTT side: its topics, and its messages in the JSON form of
//! its protobufs (chirpstack `api/proto/gw/gw.proto`): camelCase names, bytes as base64,
//! enums by name, `Duration` as `"1.5s"`, `Timestamp` as RFC 3339.
//!
//! Like protobuf-JSON with unpopulated fields left out, zero numbers, empty strings and
//! absent messages are not written; enum states (`state`, `status`, `crcStatus`) always are,
//! even at their zero value, since a reader of the JSON should not have to know the enum's
//! default.

mod conn_state;
mod downlink_frame;
mod downlink_tx_ack;
mod gateway_stats;
pub mod protojson;
mod uplink_frame;

pub use conn_state::{ConnState, State};
pub use downlink_frame::{DownlinkError, DownlinkFrame};
pub use downlink_tx_ack::{DownlinkTxAck, TxAckStatus};
pub use gateway_stats::{GatewayStats, StatsCounts};
pub use uplink_frame::{uplink_frames, Location, UplinkFrame};

use crate::eui::Eui64;
use core::fmt;

/// MQTT delivery guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Qos {
    #[default]
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub fn from_level(level: u8) -> Option<Self> {
        Some(match level {
            0 => Self::AtMostOnce,
            1 => Self::AtLeastOnce,
            2 => Self::ExactlyOnce,
            _ => return None,
        })
    }

    pub fn level(self) -> u8 {
        self as u8
    }
}

/// One message to publish.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: Qos,
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("retain", &self.retain)
            .field("qos", &self.qos)
            .finish()
    }
}

/// A topic prefix with a wildcard (`+`, `#`) or a NUL in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPrefix(pub String);

impl fmt::Display for BadPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic prefix {:?} contains an MQTT wildcard or NUL",
            self.0
        )
    }
}

impl std::error::Error for BadPrefix {}

/// The topic layout `{prefix}/gateway/{gatewayId}/…`; with an empty prefix, `gateway/…` as
/// ChirpStack Gateway Bridge's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Empty, or the prefix followed by `/`.
    root: String,
}

/// The kinds of `event/{kind}` this bridge publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Up,
    Stats,
    Ack,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Stats => "stats",
            Self::Ack => "ack",
        }
    }
}

impl Topics {
    /// Leading and trailing `/` are dropped, so `eu868`, `eu868/` and `/eu868` are one prefix.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let p = prefix.trim_matches('/');
        if p.contains(['+', '#', '\0']) {
            return Err(BadPrefix(prefix.to_owned()));
        }
        let root = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        Ok(Self { root })
    }

    pub fn event(&self, gateway: Eui64, event: Event) -> String {
        format!("{}gateway/{gateway}/event/{}", self.root, event.name())
    }

    pub fn conn_state(&self, gateway: Eui64) -> String {
        format!("{}gateway/{gateway}/state/conn", self.root)
    }

    /// The filter a gateway's session subscribes to: all of its commands.
    pub fn commands(&self, gateway: Eui64) -> String {
        format!("{}gateway/{gateway}/command/#", self.root)
    }

    pub fn command(&self, gateway: Eui64, command: &str) -> String {
        format!("{}gateway/{gateway}/command/{command}", self.root)
    }

    /// The gateway and command (`down`, `config`, …) of a command topic under this prefix.
    pub fn parse_command<'t>(&self, topic: &'t str) -> Option<(Eui64, &'t str)> {
        let rest = topic
            .strip_prefix(self.root.as_str())?
            .strip_prefix("gateway/")?;
        let (id, rest) = rest.split_once('/')?;
        let command = rest.strip_prefix("command/")?;
        if command.is_empty() || command.contains('/') {
            return None;
        }
        Some((id.parse().ok()?, command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Eui64 = Eui64([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);

    #[test]
    fn topic_layout() {
        let t = Topics::new("eu868").unwrap();
        assert_eq!(
            t.event(GW, Event::Up),
            "eu868/gateway/0102030405060708/event/up"
        );
        assert_eq!(
            t.event(GW, Event::Stats),
            "eu868/gateway/0102030405060708/event/stats"
        );
        assert_eq!(
            t.event(GW, Event::Ack),
            "eu868/gateway/0102030405060708/event/ack"
        );
        assert_eq!(
            t.conn_state(GW),
            "eu868/gateway/0102030405060708/state/conn"
        );
        assert_eq!(t.commands(GW), "eu868/gateway/0102030405060708/command/#");
        assert_eq!(
            t.command(GW, "down"),
            "eu868/gateway/0102030405060708/command/down"
        );
        assert_eq!(Topics::new("/eu868/").unwrap(), t);
        assert_eq!(
            Topics::new("").unwrap().event(GW, Event::Up),
            "gateway/0102030405060708/event/up"
        );
        assert_eq!(
            Topics::new("a/b").unwrap().conn_state(GW),
            "a/b/gateway/0102030405060708/state/conn"
        );
        for bad in ["eu+868", "#", "a/+/b", "a\0"] {
            assert!(Topics::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_topics() {
        let t = Topics::new("eu868").unwrap();
        assert_eq!(
            t.parse_command("eu868/gateway/0102030405060708/command/down"),
            Some((GW, "down"))
        );
        assert_eq!(
            t.parse_command("eu868/gateway/0102030405060708/command/config"),
            Some((GW, "config"))
        );
        assert_eq!(
            t.parse_command("eu868/gateway/0102030405060708/COMMAND/down"),
            None
        );
        for bad in [
            "",
            "us915/gateway/0102030405060708/command/down",
            "eu868/gateway/0102030405060708/command/",
            "eu868/gateway/0102030405060708/command/down/x",
            "eu868/gateway/01020304050607/command/down",
            "eu868/gateway/010203040506070g/command/down",
            "eu868/gateway/0102030405060708/event/up",
            "eu868/gw/0102030405060708/command/down",
            "gateway/0102030405060708/command/down",
        ] {
            assert_eq!(t.parse_command(bad), None, "{bad}");
        }
        let bare = Topics::new("").unwrap();
        assert_eq!(
            bare.parse_command("gateway/0102030405060708/command/down"),
            Some((GW, "down"))
        );
        // Upper-case hex in the topic names the same gateway.
        assert_eq!(
            bare.parse_command("gateway/AA555A0000000101/command/down")
                .map(|x| x.0.to_string()),
            Some("aa555a0000000101".into())
        );
    }

    #[test]
    fn qos_levels() {
        for l in 0..3 {
            assert_eq!(Qos::from_level(l).map(Qos::level), Some(l));
        }
        assert_eq!(Qos::from_level(3), None);
    }
}
