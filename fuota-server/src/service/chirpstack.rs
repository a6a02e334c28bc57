//! What goes over MQTT, as ChirpStack v4 writes it (protobuf messages in their JSON form,
//! camelCase, bytes in base64, enums by name): the application integration's uplink events
//! and downlink commands, and the Gateway Bridge's DownlinkFrame, DownlinkTxAck and
//! ConnState. Parsing never panics: anything malformed is an error with a reason.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::clock::{duration_string, gps_of_unix_ms, parse_duration_string, parse_rfc3339_ms};
use crate::engine::DevEui;
use crate::plan::airtime::Modulation;

/// A topic the service subscribes to, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `application/{app}/device/{devEui}/event/up`
    Uplink { app: &'a str, dev_eui: &'a str },
    /// `{prefix}/gateway/{gatewayId}/event/ack`
    TxAck { gateway: &'a str },
    /// `{prefix}/gateway/{gatewayId}/state/conn`
    ConnState { gateway: &'a str },
}

impl<'a> Topic<'a> {
    pub fn parse(topic: &'a str, prefix: &str) -> Option<Self> {
        let parts: Vec<&str> = topic.split('/').collect();
        match parts[..] {
            ["application", app, "device", dev_eui, "event", "up"] => {
                Some(Topic::Uplink { app, dev_eui })
            }
            [p, "gateway", gateway, "event", "ack"] if p == prefix => {
                Some(Topic::TxAck { gateway })
            }
            [p, "gateway", gateway, "state", "conn"] if p == prefix => {
                Some(Topic::ConnState { gateway })
            }
            _ => None,
        }
    }
}

/// The subscriptions for `apps` and the gateway `prefix`.
pub fn subscriptions(apps: &[String], prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = apps
        .iter()
        .map(|a| format!("application/{a}/device/+/event/up"))
        .collect();
    v.push(format!("{prefix}/gateway/+/event/ack"));
    v.push(format!("{prefix}/gateway/+/state/conn"));
    v
}

pub fn downlink_topic(app: &str, dev: DevEui) -> String {
    format!("application/{app}/device/{}/command/down", eui_string(dev))
}

pub fn gateway_downlink_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/gateway/{gateway}/command/down")
}

/// A DevEUI as ChirpStack writes it: 16 lowercase hex digits.
pub fn eui_string(dev: DevEui) -> String {
    format!("{dev:016x}")
}

/// A DevEUI from 16 hex digits (either case).
pub fn parse_eui(s: &str) -> Option<DevEui> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(m: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(m.into()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UplinkJson {
    #[serde(default)]
    deduplication_id: Option<String>,
    #[serde(default)]
    time: Option<String>,
    device_info: DeviceInfoJson,
    #[serde(default)]
    f_cnt: Option<u32>,
    #[serde(default)]
    f_port: Option<u32>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    rx_info: Vec<RxInfoJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceInfoJson {
    dev_eui: String,
    #[serde(default)]
    application_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RxInfoJson {
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    gw_time: Option<String>,
    #[serde(default)]
    ns_time: Option<String>,
    #[serde(default)]
    time_since_gps_epoch: Option<String>,
}

/// An uplink event, as far as the service cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub dev_eui: DevEui,
    pub application_id: Option<String>,
    pub deduplication_id: Option<String>,
    pub fcnt: Option<u32>,
    /// `None`: no FPort (a MAC-only uplink).
    pub port: Option<u8>,
    pub data: Vec<u8>,
    /// When the uplink was received, in wall-clock GPS ms: the earliest gateway time
    /// (`gwTime`, or `timeSinceGpsEpoch`), else the network server's (`nsTime`), else the
    /// event's `time`.
    pub rx_gps_ms: Option<i64>,
    /// Gateways that heard it.
    pub gateways: Vec<String>,
}

impl Uplink {
    pub fn parse(payload: &[u8]) -> Result<Self, Malformed> {
        let j: UplinkJson =
            serde_json::from_slice(payload).map_err(|e| Malformed(format!("uplink event: {e}")))?;
        let Some(dev_eui) = parse_eui(&j.device_info.dev_eui) else {
            return bad(format!("deviceInfo.devEui {:?}", j.device_info.dev_eui));
        };
        let port = match j.f_port {
            None => None,
            Some(p) => match u8::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => return bad(format!("fPort {p}")),
            },
        };
        let data = match j.data.as_deref() {
            None | Some("") => Vec::new(),
            Some(d) => B64
                .decode(d)
                .map_err(|e| Malformed(format!("data is not base64: {e}")))?,
        };
        let gw = j
            .rx_info
            .iter()
            .filter_map(|r| {
                r.gw_time
                    .as_deref()
                    .and_then(parse_rfc3339_ms)
                    .map(gps_of_unix_ms)
                    .or_else(|| {
                        r.time_since_gps_epoch
                            .as_deref()
                            .and_then(parse_duration_string)
                    })
            })
            .min();
        let ns = j
            .rx_info
            .iter()
            .filter_map(|r| r.ns_time.as_deref().and_then(parse_rfc3339_ms))
            .min()
            .or_else(|| j.time.as_deref().and_then(parse_rfc3339_ms))
            .map(gps_of_unix_ms);
        let mut gateways: Vec<String> = j
            .rx_info
            .iter()
            .filter_map(|r| r.gateway_id.clone())
            .filter(|g| !g.is_empty() && g.len() <= 64 && !g.contains(['/', '+', '#']))
            .collect();
        gateways.sort();
        gateways.dedup();
        Ok(Uplink {
            dev_eui,
            application_id: j.device_info.application_id,
            deduplication_id: j.deduplication_id,
            fcnt: j.f_cnt,
            port,
            data,
            rx_gps_ms: gw.or(ns),
            gateways,
        })
    }
}

/// The application integration's downlink command (`command/down`).
pub fn downlink_command(dev: DevEui, port: u8, payload: &[u8]) -> Vec<u8> {
    json!({
        "devEui": eui_string(dev),
        "confirmed": false,
        "fPort": port,
        "data": B64.encode(payload),
    })
    .to_string()
    .into_bytes()
}

/// The radio settings of a class C multicast frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxParams {
    pub freq_hz: u32,
    pub power_dbm: i32,
    pub modulation: Modulation,
}

/// A Gateway Bridge DownlinkFrame: one item, sent at a GPS time (wall clock, ms).
pub fn downlink_frame(
    downlink_id: u32,
    gateway: &str,
    phy_payload: &[u8],
    tx: &TxParams,
    gps_ms: i64,
) -> Vec<u8> {
    let modulation = match tx.modulation {
        Modulation::Lora { sf, bw_khz } => json!({ "lora": {
            "bandwidth": bw_khz * 1000,
            "spreadingFactor": sf,
            "codeRate": "CR_4_5",
            // Downlinks are sent with inverted IQ, so that other gateways do not hear them
            // and devices do not hear each other.
            "polarizationInversion": true,
        }}),
        Modulation::Fsk { kbps } => json!({ "fsk": {
            "frequencyDeviation": kbps * 500,
            "datarate": kbps * 1000,
        }}),
    };
    json!({
        "downlinkId": downlink_id,
        "gatewayId": gateway,
        "items": [{
            "phyPayload": B64.encode(phy_payload),
            "txInfo": {
                "frequency": tx.freq_hz,
                "power": tx.power_dbm,
                "modulation": modulation,
                "board": 0,
                "antenna": 0,
                "timing": { "gpsEpoch": { "timeSinceGpsEpoch": duration_string(gps_ms) } },
            },
        }],
    })
    .to_string()
    .into_bytes()
}

/// TxAckStatus of a DownlinkTxAck item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Ignored,
    Ok,
    /// Refused, with the status name.
    Refused(&'static str),
}

const TX_STATUSES: [&str; 12] = [
    "IGNORED",
    "OK",
    "TOO_LATE",
    "TOO_EARLY",
    "COLLISION_PACKET",
    "COLLISION_BEACON",
    "TX_FREQ",
    "TX_POWER",
    "GPS_UNLOCKED",
    "QUEUE_FULL",
    "INTERNAL_ERROR",
    "DUTY_CYCLE_OVERFLOW",
];

fn tx_status(v: &Value) -> Option<TxStatus> {
    let i = match v {
        Value::String(s) => TX_STATUSES.iter().position(|n| n == s)?,
        Value::Number(n) => usize::try_from(n.as_u64()?).ok()?,
        // proto3 leaves out a default value: IGNORED.
        Value::Null => 0,
        _ => return None,
    };
    Some(match i {
        0 => TxStatus::Ignored,
        1 => TxStatus::Ok,
        i => TxStatus::Refused(TX_STATUSES.get(i)?),
    })
}

/// A DownlinkTxAck: which downlink, and whether one of its items went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxAck {
    pub gateway: Option<String>,
    pub downlink_id: u32,
    pub statuses: Vec<TxStatus>,
}

impl TxAck {
    pub fn parse(payload: &[u8]) -> Result<Self, Malformed> {
        let v: Value =
            serde_json::from_slice(payload).map_err(|e| Malformed(format!("tx ack: {e}")))?;
        let Some(id) = v.get("downlinkId").and_then(Value::as_u64) else {
            return bad("tx ack without downlinkId");
        };
        let Ok(downlink_id) = u32::try_from(id) else {
            return bad(format!("downlinkId {id}"));
        };
        let items = match v.get("items") {
            Some(Value::Array(a)) => a.as_slice(),
            None => &[],
            Some(_) => return bad("tx ack items is not a list"),
        };
        let mut statuses = Vec::with_capacity(items.len());
        for it in items {
            match tx_status(it.get("status").unwrap_or(&Value::Null)) {
                Some(s) => statuses.push(s),
                None => return bad(format!("tx ack status {:?}", it.get("status"))),
            }
        }
        Ok(TxAck {
            gateway: v.get("gatewayId").and_then(Value::as_str).map(String::from),
            downlink_id,
            statuses,
        })
    }

    /// Whether the frame went out (an item is OK).
    pub fn sent(&self) -> bool {
        self.statuses.contains(&TxStatus::Ok)
    }

    /// Why it did not go out.
    pub fn reason(&self) -> &'static str {
        self.statuses
            .iter()
            .find_map(|s| match s {
                TxStatus::Refused(r) => Some(*r),
                _ => None,
            })
            .unwrap_or("IGNORED")
    }
}

/// A gateway's ConnState: online or not.
pub fn parse_conn_state(payload: &[u8]) -> Result<bool, Malformed> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| Malformed(format!("conn state: {e}")))?;
    match v.get("state") {
        Some(Value::String(s)) if s == "ONLINE" => Ok(true),
        Some(Value::String(s)) if s == "OFFLINE" => Ok(false),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        // proto3 leaves out the default value, OFFLINE.
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        None => Ok(false),
        Some(other) => bad(format!("conn state {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            Topic::parse("application/7/device/0102030405060708/event/up", "eu868"),
            Some(Topic::Uplink {
                app: "7",
                dev_eui: "0102030405060708"
            })
        );
        assert_eq!(
            Topic::parse("eu868/gateway/aa00/event/ack", "eu868"),
            Some(Topic::TxAck { gateway: "aa00" })
        );
        assert_eq!(
            Topic::parse("eu868/gateway/aa00/state/conn", "eu868"),
            Some(Topic::ConnState { gateway: "aa00" })
        );
        assert_eq!(Topic::parse("us915/gateway/aa00/event/ack", "eu868"), None);
        assert_eq!(
            Topic::parse("application/7/device/x/event/join", "eu868"),
            None
        );
        assert_eq!(Topic::parse("", "eu868"), None);
    }

    #[test]
    fn an_uplink_event_as_chirpstack_writes_it() {
        let ev = br#"{
            "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
            "time": "2026-01-01T00:00:01.000+00:00",
            "deviceInfo": {"tenantId": "t", "applicationId": "app1", "devEui": "70B3D57ED0000001",
                           "deviceProfileName": "p"},
            "devAddr": "00aabbcc", "adr": true, "dr": 5, "fCnt": 42, "fPort": 202,
            "confirmed": false, "data": "AQID",
            "rxInfo": [
                {"gatewayId": "0016c001ff10a235", "uplinkId": 1,
                 "gwTime": "2026-01-01T00:00:00.500+00:00",
                 "nsTime": "2026-01-01T00:00:00.700+00:00", "rssi": -60, "snr": 7.5},
                {"gatewayId": "0016c001ff10a236", "uplinkId": 2,
                 "gwTime": "2026-01-01T00:00:00.400+00:00"}
            ],
            "txInfo": {"frequency": 868100000}
        }"#;
        let u = Uplink::parse(ev).unwrap();
        assert_eq!(u.dev_eui, 0x70b3_d57e_d000_0001);
        assert_eq!(
            (u.fcnt, u.port, u.data.as_slice()),
            (Some(42), Some(202), &[1u8, 2, 3][..])
        );
        assert_eq!(u.application_id.as_deref(), Some("app1"));
        let t = parse_rfc3339_ms("2026-01-01T00:00:00.400+00:00").unwrap();
        assert_eq!(u.rx_gps_ms, Some(gps_of_unix_ms(t)));
        assert_eq!(u.gateways, ["0016c001ff10a235", "0016c001ff10a236"]);
        // Without gateway times: the network server's.
        let ev = br#"{"deviceInfo":{"devEui":"0000000000000001"},"fPort":1,
            "rxInfo":[{"nsTime":"2026-01-01T00:00:00.700Z"}]}"#;
        let u = Uplink::parse(ev).unwrap();
        let t = parse_rfc3339_ms("2026-01-01T00:00:00.700Z").unwrap();
        assert_eq!(u.rx_gps_ms, Some(gps_of_unix_ms(t)));
        assert!(u.data.is_empty());
    }

    #[test]
    fn malformed_uplinks_are_errors() {
        for ev in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"deviceInfo":{}}"#,
            br#"{"deviceInfo":{"devEui":"123"}}"#,
            br#"{"deviceInfo":{"devEui":"zz00000000000001"}}"#,
            br#"{"deviceInfo":{"devEui":"0000000000000001"},"fPort":300}"#,
            br#"{"deviceInfo":{"devEui":"0000000000000001"},"fPort":-1}"#,
            br#"{"deviceInfo":{"devEui":"0000000000000001"},"fPort":2,"data":"***"}"#,
            br#"{"deviceInfo":{"devEui":"0000000000000001"},"rxInfo":5}"#,
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(
                Uplink::parse(ev).is_err(),
                "{}",
                String::from_utf8_lossy(ev)
            );
        }
    }

    #[test]
    fn a_downlink_frame_for_the_gateway_bridge() {
        let tx = TxParams {
            freq_hz: 869_525_000,
            power_dbm: 27,
            modulation: Modulation::Lora { sf: 9, bw_khz: 125 },
        };
        let f = downlink_frame(77, "0016c001ff10a235", &[0x60, 1, 2], &tx, 1_234_500);
        let v: Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["downlinkId"], 77);
        assert_eq!(v["gatewayId"], "0016c001ff10a235");
        let item = &v["items"][0];
        assert_eq!(item["phyPayload"], "YAEC");
        let t = &item["txInfo"];
        assert_eq!(t["frequency"], 869_525_000);
        assert_eq!(t["power"], 27);
        assert_eq!(t["modulation"]["lora"]["bandwidth"], 125_000);
        assert_eq!(t["modulation"]["lora"]["spreadingFactor"], 9);
        assert_eq!(t["modulation"]["lora"]["polarizationInversion"], true);
        assert_eq!(t["timing"]["gpsEpoch"]["timeSinceGpsEpoch"], "1234.500s");
        let c: Value = serde_json::from_slice(&downlink_command(0xab, 201, &[9, 9])).unwrap();
        assert_eq!(
            c,
            json!({"devEui":"00000000000000ab","confirmed":false,"fPort":201,"data":"CQk="})
        );
    }

    #[test]
    fn tx_acks_and_conn_states() {
        let a = TxAck::parse(br#"{"gatewayId":"g1","downlinkId":5,"items":[{"status":"OK"}]}"#)
            .unwrap();
        assert!(a.sent());
        let a = TxAck::parse(br#"{"downlinkId":6,"items":[{"status":"TOO_LATE"}]}"#).unwrap();
        assert!(!a.sent());
        assert_eq!(a.reason(), "TOO_LATE");
        let a = TxAck::parse(br#"{"downlinkId":6,"items":[{"status":4}]}"#).unwrap();
        assert_eq!(a.reason(), "COLLISION_PACKET");
        for bad in [
            &br#"{"items":[]}"#[..],
            br#"{"downlinkId":-1}"#,
            br#"{"downlinkId":1,"items":[{"status":"MAYBE"}]}"#,
            br#"{"downlinkId":1,"items":{}}"#,
            b"garbage",
        ] {
            assert!(TxAck::parse(bad).is_err());
        }
        assert_eq!(
            parse_conn_state(br#"{"gatewayId":"g","state":"ONLINE"}"#),
            Ok(true)
        );
        assert_eq!(
            parse_conn_state(br#"{"gatewayId":"g","state":"OFFLINE"}"#),
            Ok(false)
        );
        assert_eq!(parse_conn_state(br#"{"gatewayId":"g"}"#), Ok(false));
        assert!(parse_conn_state(br#"{"state":"MAYBE"}"#).is_err());
        assert!(parse_conn_state(b"\x00").is_err());
    }
}
