//! ChirpStack v4's MQTT application integration, as the live simulator plays it for unicast:
//! an `UplinkEvent` on `application/{applicationId}/device/{devEui}/event/up` for each
//! deduplicated uplink, and the `DownlinkCommand` of `…/command/down` taken into the
//! device's class A queue. The JSON is protobuf-JSON of ChirpStack's `integration.proto` and
//! `gw.proto` (camelCase, base64 bytes, RFC 3339 timestamps, `"12.5s"` durations), as
//! ChirpStack's MQTT integration writes it with its JSON marshaler.

use fuota_gateway_bridge::base64_field;
use fuota_gateway_bridge::mqtt::protojson::Duration;
use fuota_gateway_bridge::timestamp::Timestamp;
use fuota_gateway_bridge::Eui64;
use fuota_server::engine::DevEui;
use serde_json::{json, Value};

use super::clock::gps_us_of_unix_us;

pub fn uplink_topic(application_id: &str, dev: DevEui) -> String {
    format!("application/{application_id}/device/{dev:016x}/event/up")
}

/// The subscription for every device's downlink commands.
pub fn command_filter(application_id: &str) -> String {
    format!("application/{application_id}/device/+/command/down")
}

/// One gateway that received an uplink (`gw.UplinkRxInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct RxGateway {
    pub gateway_id: Eui64,
    pub uplink_id: u32,
    pub rssi: i32,
    pub snr: f32,
    pub channel: u32,
    /// The gateway's `tmst` at the uplink's end (ChirpStack's downlink context).
    pub tmst: u32,
}

/// An uplink event, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkEvent<'a> {
    /// A UUID.
    pub deduplication_id: String,
    pub application_id: &'a str,
    pub device_name: &'a str,
    pub dev: DevEui,
    pub dev_addr: u32,
    pub dr: u8,
    pub fcnt: u32,
    pub port: u8,
    pub data: &'a [u8],
    pub frequency: u32,
    pub spreading_factor: u8,
    pub bandwidth_hz: u32,
    /// When the gateways received it and when the network server did (UTC, Unix µs).
    pub gw_time_unix_us: i64,
    pub ns_time_unix_us: i64,
    pub gateways: &'a [RxGateway],
}

fn rfc3339(unix_us: i64) -> String {
    Timestamp::new(
        unix_us.div_euclid(1_000_000),
        (unix_us.rem_euclid(1_000_000) * 1000) as u32,
    )
    .map_or_else(String::new, |t| t.rfc3339().to_string())
}

impl UplinkEvent<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        let since_gps =
            Duration::from_nanos(i128::from(gps_us_of_unix_us(self.gw_time_unix_us)) * 1000)
                .map(|d| d.to_string());
        let rx_info: Vec<Value> = self
            .gateways
            .iter()
            .map(|g| {
                let mut rx = json!({
                    "gatewayId": g.gateway_id.to_string(),
                    "uplinkId": g.uplink_id,
                    "gwTime": rfc3339(self.gw_time_unix_us),
                    "nsTime": rfc3339(self.ns_time_unix_us),
                    "rssi": g.rssi,
                    "snr": g.snr,
                    "context": base64_field::encode(&g.tmst.to_be_bytes()),
                    "crcStatus": "CRC_OK",
                });
                if let Some(d) = &since_gps {
                    rx["timeSinceGpsEpoch"] = json!(d);
                }
                // protobuf-JSON leaves out a zero.
                if g.channel != 0 {
                    rx["channel"] = json!(g.channel);
                }
                rx
            })
            .collect();
        json!({
            "deduplicationId": self.deduplication_id,
            "time": rfc3339(self.ns_time_unix_us),
            "deviceInfo": {
                "applicationId": self.application_id,
                "deviceName": self.device_name,
                "devEui": format!("{:016x}", self.dev),
            },
            "devAddr": format!("{:08x}", self.dev_addr),
            "dr": self.dr,
            "fCnt": self.fcnt,
            "fPort": self.port,
            "data": base64_field::encode(self.data),
            "rxInfo": rx_info,
            "txInfo": {
                "frequency": self.frequency,
                "modulation": {"lora": {
                    "bandwidth": self.bandwidth_hz,
                    "spreadingFactor": self.spreading_factor,
                    "codeRate": "CR_4_5",
                }},
            },
        })
        .to_string()
        .into_bytes()
    }
}

/// A downlink command, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkCommand {
    pub dev: DevEui,
    pub port: u8,
    pub data: Vec<u8>,
}

/// Why a command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadCommand {
    /// Not `application/{ours}/device/{devEui}/command/down`.
    Topic,
    /// Not a JSON object, or a field of the wrong type.
    Json,
    /// `devEui` is not 16 hex digits, or names another device than the topic.
    DevEui,
    /// No `fPort`, or one outside 1..=255.
    FPort,
    /// `data` is missing (a codec `object` is not encoded here) or not base64.
    Data,
    /// A confirmed downlink: the simulated devices only take unconfirmed ones.
    Confirmed,
}

impl BadCommand {
    pub fn name(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Json => "json",
            Self::DevEui => "dev_eui",
            Self::FPort => "f_port",
            Self::Data => "data",
            Self::Confirmed => "confirmed",
        }
    }
}

fn parse_eui(s: &str) -> Option<DevEui> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Reads a `command/down` message of application `application_id`.
pub fn parse_command(
    application_id: &str,
    topic: &str,
    payload: &[u8],
) -> Result<DownlinkCommand, BadCommand> {
    let parts: Vec<&str> = topic.split('/').collect();
    let ["application", app, "device", eui, "command", "down"] = parts[..] else {
        return Err(BadCommand::Topic);
    };
    if app != application_id {
        return Err(BadCommand::Topic);
    }
    let dev = parse_eui(eui).ok_or(BadCommand::DevEui)?;
    let v: Value = serde_json::from_slice(payload).map_err(|_| BadCommand::Json)?;
    let Value::Object(o) = v else {
        return Err(BadCommand::Json);
    };
    match o.get("devEui") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if parse_eui(s) == Some(dev) => {}
        Some(_) => return Err(BadCommand::DevEui),
    }
    match o.get("confirmed") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return Err(BadCommand::Confirmed),
        Some(_) => return Err(BadCommand::Json),
    }
    let port = o
        .get("fPort")
        .and_then(Value::as_u64)
        .and_then(|p| u8::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or(BadCommand::FPort)?;
    let data = match o.get("data") {
        Some(Value::String(d)) => base64_field::decode(d).ok_or(BadCommand::Data)?,
        _ => return Err(BadCommand::Data),
    };
    Ok(DownlinkCommand { dev, port, data })
}

/// A UUID (version 4 layout) from 128 random bits.
pub fn uuid(bits: u128) -> String {
    // The 13th hex digit is the version (4), the 17th's top bits the variant (10).
    let b = (bits & !(0xfu128 << 76)) | (0x4u128 << 76);
    let b = (b & !(0xcu128 << 60)) | (0x8u128 << 60);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_event_the_service_reads() {
        let gws = [
            RxGateway {
                gateway_id: Eui64::from_u64(0x5e5e_0000_0000_0000),
                uplink_id: 77,
                rssi: -90,
                snr: 9.5,
                channel: 2,
                tmst: 0x0102_0304,
            },
            RxGateway {
                gateway_id: Eui64::from_u64(0x5e5e_0000_0000_0001),
                uplink_id: 9,
                rssi: -110,
                snr: -3.0,
                channel: 0,
                tmst: 5,
            },
        ];
        let e = UplinkEvent {
            deduplication_id: uuid(0x1234),
            application_id: "app-1",
            device_name: "sim-3",
            dev: 0x70b3_d500_0000_0003,
            dev_addr: 0x2600_0003,
            dr: 5,
            fcnt: 42,
            port: 202,
            data: &[1, 2, 3],
            frequency: 868_500_000,
            spreading_factor: 7,
            bandwidth_hz: 125_000,
            gw_time_unix_us: 1_767_225_600_250_000,
            ns_time_unix_us: 1_767_225_600_262_500,
            gateways: &gws,
        };
        let v: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["deviceInfo"]["devEui"], "70b3d50000000003");
        assert_eq!(v["deviceInfo"]["applicationId"], "app-1");
        assert_eq!(
            (v["fCnt"].clone(), v["fPort"].clone()),
            (json!(42), json!(202))
        );
        assert_eq!(v["data"], "AQID");
        assert_eq!(v["devAddr"], "26000003");
        assert_eq!(v["time"], "2026-01-01T00:00:00.262500Z");
        let rx = v["rxInfo"].as_array().unwrap();
        assert_eq!(rx.len(), 2);
        assert_eq!(rx[0]["gatewayId"], "5e5e000000000000");
        assert_eq!(rx[0]["gwTime"], "2026-01-01T00:00:00.250Z");
        assert_eq!(rx[0]["nsTime"], "2026-01-01T00:00:00.262500Z");
        // 2026-01-01 in GPS time: 46 years, 18 leap seconds.
        assert_eq!(rx[0]["timeSinceGpsEpoch"], "1451260818.250s");
        assert_eq!(rx[0]["context"], "AQIDBA==");
        assert_eq!(rx[0]["channel"], 2);
        assert!(rx[1].get("channel").is_none());
        assert_eq!(rx[1]["snr"], -3.0);
        assert_eq!(v["txInfo"]["modulation"]["lora"]["spreadingFactor"], 7);
        assert_eq!(
            uplink_topic("app-1", e.dev),
            "application/app-1/device/70b3d50000000003/event/up"
        );
    }

    #[test]
    fn downlink_commands() {
        let topic = "application/app-1/device/70b3d50000000003/command/down";
        let ok = |body: &str| parse_command("app-1", topic, body.as_bytes());
        // What `fuota server` publishes.
        assert_eq!(
            ok(r#"{"devEui":"70b3d50000000003","confirmed":false,"fPort":200,"data":"AQI="}"#),
            Ok(DownlinkCommand {
                dev: 0x70b3_d500_0000_0003,
                port: 200,
                data: vec![1, 2]
            })
        );
        // Without devEui (the topic names the device), upper-case hex, URL-safe base64.
        assert_eq!(
            ok(r#"{"fPort":1,"data":"-_8"}"#).map(|c| c.data),
            Ok(vec![0xfb, 0xff])
        );
        assert!(ok(r#"{"devEui":"70B3D50000000003","fPort":1,"data":""}"#).is_ok());
        for (body, want) in [
            (
                r#"{"devEui":"70b3d50000000004","fPort":1,"data":"AQ=="}"#,
                BadCommand::DevEui,
            ),
            (
                r#"{"devEui":7,"fPort":1,"data":"AQ=="}"#,
                BadCommand::DevEui,
            ),
            (r#"{"fPort":0,"data":"AQ=="}"#, BadCommand::FPort),
            (r#"{"fPort":256,"data":"AQ=="}"#, BadCommand::FPort),
            (r#"{"fPort":"2","data":"AQ=="}"#, BadCommand::FPort),
            (r#"{"data":"AQ=="}"#, BadCommand::FPort),
            (r#"{"fPort":2,"data":"***"}"#, BadCommand::Data),
            (r#"{"fPort":2,"object":{"a":1}}"#, BadCommand::Data),
            (
                r#"{"fPort":2,"data":"AQ==","confirmed":true}"#,
                BadCommand::Confirmed,
            ),
            (
                r#"{"fPort":2,"data":"AQ==","confirmed":"no"}"#,
                BadCommand::Json,
            ),
            (r#"[1]"#, BadCommand::Json),
            (r#"{"fPort":2,"#, BadCommand::Json),
        ] {
            assert_eq!(ok(body), Err(want), "{body}");
        }
        for t in [
            "application/app-2/device/70b3d50000000003/command/down",
            "application/app-1/device/70b3d50000000003/event/up",
            "application/app-1/device/command/down",
            "",
        ] {
            assert_eq!(
                parse_command("app-1", t, br#"{"fPort":1,"data":""}"#),
                Err(BadCommand::Topic),
                "{t}"
            );
        }
        assert_eq!(
            parse_command("app-1", "application/app-1/device/xyz/command/down", b"{}"),
            Err(BadCommand::DevEui)
        );
        assert_eq!(
            command_filter("app-1"),
            "application/app-1/device/+/command/down"
        );
    }

    #[test]
    fn uuids_have_the_version_4_layout() {
        for bits in [0u128, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let u = uuid(bits);
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4", "{u}");
            assert!("89ab".contains(&u[19..20]), "{u}");
        }
        assert_eq!(uuid(0), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn arbitrary_commands_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let topic = "application/a/device/0000000000000001/command/down";
        for _ in 0..2000 {
            let n = rng.gen_range(0..64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let _ = parse_command("a", topic, &bytes);
        }
    }
}
