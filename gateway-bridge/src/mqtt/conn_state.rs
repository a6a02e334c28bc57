//! `state/conn`: a retained `ConnState`, ONLINE while a gateway pulls, OFFLINE after (also as
//! the will of the gateway's MQTT session).

use crate::eui::Eui64;
use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Offline,
    Online,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Offline => "OFFLINE",
            Self::Online => "ONLINE",
        }
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `gw.ConnState`, as published. `state` is written even when OFFLINE (the enum's zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnState {
    pub gateway_id: String,
    pub state: State,
}

impl ConnState {
    pub fn new(gateway: Eui64, state: State) -> Self {
        Self {
            gateway_id: gateway.to_string(),
            state,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ConnState serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form() {
        let gw = Eui64([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            ConnState::new(gw, State::Online).to_json(),
            br#"{"gatewayId":"0102030405060708","state":"ONLINE"}"#
        );
        assert_eq!(
            ConnState::new(gw, State::Offline).to_json(),
            br#"{"gatewayId":"0102030405060708","state":"OFFLINE"}"#
        );
    }
}
