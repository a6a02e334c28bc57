//! `event/up`: one `UplinkFrame` per received packet (per antenna, for gateways reporting
//! `rsig`).

use super::protojson::{self, Duration};
use crate::datarate::CodeRate;
use crate::eui::Eui64;
use crate::semtech::{Crc, PushData, RxModulation, Rxpk, StatLocation};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// `gw.UplinkFrame`, as published.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkFrame {
    #[serde(with = "protojson::bytes")]
    pub phy_payload: Vec<u8>,
    pub tx_info: UplinkTxInfo,
    pub rx_info: UplinkRxInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkTxInfo {
    /// Hz.
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u32,
    pub modulation: Modulation,
}

/// `gw.Modulation`, a oneof: written as `{"lora": {…}}`, `{"fsk": {…}}` or `{"lrFhss": {…}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Modulation {
    Lora(LoraModulationInfo),
    Fsk(FskModulationInfo),
    LrFhss(LrFhssModulationInfo),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraModulationInfo {
    /// Hz.
    pub bandwidth: u32,
    pub spreading_factor: u32,
    #[serde(
        skip_serializing_if = "is_undefined",
        serialize_with = "code_rate_name"
    )]
    pub code_rate: CodeRate,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FskModulationInfo {
    /// Bits per second.
    pub datarate: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LrFhssModulationInfo {
    /// Hz.
    pub operating_channel_width: u32,
    #[serde(
        skip_serializing_if = "is_undefined",
        serialize_with = "code_rate_name"
    )]
    pub code_rate: CodeRate,
    #[serde(skip_serializing_if = "is_zero")]
    pub grid_steps: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkRxInfo {
    pub gateway_id: String,
    /// The PUSH_DATA token, as ChirpStack Gateway Bridge numbers uplinks.
    #[serde(skip_serializing_if = "is_zero")]
    pub uplink_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_since_gps_epoch: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fine_time_since_gps_epoch: Option<Duration>,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub rssi: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snr: Option<f32>,
    #[serde(skip_serializing_if = "is_zero")]
    pub channel: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub rf_chain: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub board: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub antenna: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The uplink's `tmst`, 4 bytes big-endian: a class-A downlink's `delay` counts from it.
    #[serde(with = "protojson::bytes")]
    pub context: Vec<u8>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(serialize_with = "crc_name")]
    pub crc_status: Crc,
}

/// `common.Location` with `source: GPS` (the forwarder's only source).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: f64,
    pub source: &'static str,
}

impl Location {
    /// ChirpStack Gateway Bridge's rule: all zeros is no fix.
    pub fn from_stat(l: StatLocation) -> Option<Self> {
        (l.latitude != 0.0 || l.longitude != 0.0 || l.altitude != 0).then_some(Self {
            latitude: l.latitude,
            longitude: l.longitude,
            altitude: f64::from(l.altitude),
            source: "GPS",
        })
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_undefined(c: &CodeRate) -> bool {
    *c == CodeRate::Undefined
}

fn code_rate_name<S: Serializer>(c: &CodeRate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

fn crc_name<S: Serializer>(c: &Crc, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match c {
        Crc::Ok => "CRC_OK",
        Crc::Bad => "BAD_CRC",
        Crc::None => "NO_CRC",
    })
}

/// The uplink frames of a PUSH_DATA: one per `rxpk`, or one per `rsig` entry when there are
/// any; packets without a good CRC are left out unless `forward_crc_failed`. A `stat` in the
/// same datagram (some forwarders send one with every uplink) gives the frames its location.
pub fn uplink_frames(push: &PushData, forward_crc_failed: bool) -> Vec<UplinkFrame> {
    let location = push
        .stat
        .as_ref()
        .and_then(|s| s.location)
        .and_then(Location::from_stat);
    let mut frames = Vec::new();
    for rxpk in &push.rxpk {
        if rxpk.crc != Crc::Ok && !forward_crc_failed {
            continue;
        }
        let frame = UplinkFrame::from_rxpk(push.gateway, push.token, rxpk, location);
        if rxpk.rsig.is_empty() {
            frames.push(frame);
            continue;
        }
        for sig in &rxpk.rsig {
            let mut f = frame.clone();
            f.rx_info.antenna = sig.antenna;
            f.rx_info.channel = sig.channel;
            f.rx_info.rssi = sig.rssi;
            f.rx_info.snr = sig.snr;
            frames.push(f);
        }
    }
    frames
}

impl UplinkFrame {
    pub fn from_rxpk(gateway: Eui64, token: u16, rxpk: &Rxpk, location: Option<Location>) -> Self {
        let modulation = match rxpk.modulation {
            RxModulation::Lora {
                data_rate,
                code_rate,
            } => Modulation::Lora(LoraModulationInfo {
                bandwidth: data_rate.bandwidth_hz(),
                spreading_factor: u32::from(data_rate.spreading_factor),
                code_rate,
            }),
            RxModulation::Fsk { bitrate } => {
                Modulation::Fsk(FskModulationInfo { datarate: bitrate })
            }
            RxModulation::LrFhss {
                data_rate,
                code_rate,
                grid_steps,
            } => Modulation::LrFhss(LrFhssModulationInfo {
                operating_channel_width: data_rate.channel_width_khz.saturating_mul(1000),
                code_rate,
                grid_steps,
            }),
        };
        let gps = rxpk.tmms.and_then(Duration::from_millis);
        // The fine timestamp counts nanoseconds from the PPS, i.e. from the whole GPS second.
        let fine = match (rxpk.tmms, rxpk.ftime) {
            (Some(ms), Some(ns)) if ns < 1_000_000_000 => Duration::from_nanos(
                i128::from(ms.div_euclid(1000)) * 1_000_000_000 + i128::from(ns),
            ),
            _ => None,
        };
        Self {
            phy_payload: rxpk.data.clone(),
            tx_info: UplinkTxInfo {
                frequency: rxpk.frequency,
                modulation,
            },
            rx_info: UplinkRxInfo {
                gateway_id: gateway.to_string(),
                uplink_id: u32::from(token),
                gw_time: rxpk.time.map(|t| t.rfc3339().to_string()),
                time_since_gps_epoch: gps,
                fine_time_since_gps_epoch: fine,
                rssi: rxpk.rssi.unwrap_or(0),
                snr: rxpk.snr,
                channel: rxpk.channel,
                rf_chain: rxpk.rf_chain,
                board: rxpk.board,
                antenna: 0,
                location,
                context: rxpk.tmst.to_be_bytes().to_vec(),
                metadata: rxpk.meta.clone(),
                crc_status: rxpk.crc,
            },
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("UplinkFrame serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semtech::{FromGateway, Malformed};
    use serde_json::{json, Value};

    const GW: Eui64 = Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, 0x01]);

    fn push(json: &str) -> Result<PushData, Malformed> {
        let mut v = vec![2, 0x39, 0x30, 0];
        v.extend_from_slice(&GW.0);
        v.extend_from_slice(json.as_bytes());
        match FromGateway::parse(&v)? {
            FromGateway::PushData(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    fn frames_json(json: &str) -> Vec<Value> {
        uplink_frames(&push(json).unwrap(), false)
            .iter()
            .map(|f| serde_json::from_slice(&f.to_json()).unwrap())
            .collect()
    }

    #[test]
    fn lora_rxpk_to_uplink_frame() {
        let f = frames_json(
            r#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmms":1048781295528,"tmst":3512348611,
            "chan":2,"rfch":1,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6",
            "rssi":-35,"lsnr":5.1,"size":3,"data":"AQID","meta":{"gateway_name":"roof"}}]}"#,
        );
        assert_eq!(
            f,
            [json!({
                "phyPayload": "AQID",
                "txInfo": {
                    "frequency": 866349812,
                    "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_6"}}
                },
                "rxInfo": {
                    "gatewayId": "aa555a0000000001",
                    "uplinkId": 12345,
                    "gwTime": "2013-03-31T16:21:17.528002Z",
                    "timeSinceGpsEpoch": "1048781295.528s",
                    "rssi": -35,
                    "snr": 5.1,
                    "channel": 2,
                    "rfChain": 1,
                    "context": "0Vovww==",
                    "metadata": {"gateway_name": "roof"},
                    "crcStatus": "CRC_OK"
                }
            })]
        );
        // The context is the tmst, big-endian.
        assert_eq!(
            crate::base64_field::decode("0Vovww=="),
            Some(3_512_348_611u32.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn fsk_and_lr_fhss_modulations() {
        let f = frames_json(
            r#"{"rxpk":[{"tmst":1,"freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"data":""},
            {"tmst":2,"freq":868.1,"stat":1,"modu":"LR-FHSS","datr":"M0CW137","codr":"2/6","hpw":8,"data":""}]}"#,
        );
        assert_eq!(
            f[0]["txInfo"]["modulation"],
            json!({"fsk": {"datarate": 50000}})
        );
        assert!(f[0]["rxInfo"].get("snr").is_none());
        assert_eq!(
            f[1]["txInfo"]["modulation"],
            json!({"lrFhss": {"operatingChannelWidth": 137000, "codeRate": "CR_2_6", "gridSteps": 8}})
        );
        assert_eq!(f[1]["rxInfo"]["context"], "AAAAAg==");
    }

    #[test]
    fn several_rxpk_in_one_push_data() {
        let f = frames_json(
            r#"{"rxpk":[
            {"tmst":10,"freq":868.1,"stat":1,"datr":"SF12BW125","codr":"4/5","data":"AA=="},
            {"tmst":20,"freq":868.3,"stat":1,"datr":"SF9BW125","codr":"4/5","data":"AQ=="},
            {"tmst":30,"freq":868.5,"stat":1,"datr":"SF7BW250","codr":"4/5","data":"Ag=="}]}"#,
        );
        let freqs: Vec<_> = f
            .iter()
            .map(|v| v["txInfo"]["frequency"].as_u64().unwrap())
            .collect();
        assert_eq!(freqs, [868_100_000, 868_300_000, 868_500_000]);
        let payloads: Vec<_> = f
            .iter()
            .map(|v| v["phyPayload"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(payloads, ["AA==", "AQ==", "Ag=="]);
        assert_eq!(f[2]["txInfo"]["modulation"]["lora"]["bandwidth"], 250_000);
        assert_eq!(f[0]["txInfo"]["modulation"]["lora"]["spreadingFactor"], 12);
    }

    #[test]
    fn crc_failures_are_dropped_unless_asked_for() {
        let p = push(
            r#"{"rxpk":[{"tmst":1,"freq":868.1,"stat":-1,"datr":"SF7BW125","codr":"OFF","data":""},
            {"tmst":2,"freq":868.1,"stat":0,"datr":"SF7BW125","data":""},
            {"tmst":3,"freq":868.1,"stat":1,"datr":"SF7BW125","codr":"4/5","data":""}]}"#,
        )
        .unwrap();
        let kept = uplink_frames(&p, false);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].rx_info.context, [0, 0, 0, 3]);
        let all = uplink_frames(&p, true);
        let crc: Vec<Value> = all
            .iter()
            .map(|f| {
                serde_json::from_slice::<Value>(&f.to_json()).unwrap()["rxInfo"]["crcStatus"]
                    .clone()
            })
            .collect();
        assert_eq!(crc, ["BAD_CRC", "NO_CRC", "CRC_OK"]);
        // An undefined code rate is not written.
        assert!(
            serde_json::from_slice::<Value>(&all[0].to_json()).unwrap()["txInfo"]["modulation"]
                ["lora"]
                .get("codeRate")
                .is_none()
        );
    }

    #[test]
    fn rsig_gives_one_frame_per_antenna() {
        let f = frames_json(
            r#"{"rxpk":[{"tmst":7,"freq":868.1,"stat":1,"brd":1,"datr":"SF7BW125","codr":"4/5","data":"AA==",
            "rsig":[{"ant":0,"chan":5,"rssic":-80,"lsnr":9.5},{"ant":1,"chan":5,"rssic":-95,"lsnr":-1.25}]}]}"#,
        );
        assert_eq!(f.len(), 2);
        assert_eq!(
            (
                f[0]["rxInfo"].get("antenna"),
                &f[0]["rxInfo"]["rssi"],
                &f[0]["rxInfo"]["snr"]
            ),
            (None, &json!(-80), &json!(9.5))
        );
        assert_eq!(
            (
                &f[1]["rxInfo"]["antenna"],
                &f[1]["rxInfo"]["rssi"],
                &f[1]["rxInfo"]["snr"]
            ),
            (&json!(1), &json!(-95), &json!(-1.25))
        );
        assert_eq!(f[1]["rxInfo"]["board"], 1);
        assert_eq!(f[1]["rxInfo"]["channel"], 5);
        assert_eq!(f[0]["rxInfo"]["context"], f[1]["rxInfo"]["context"]);
    }

    #[test]
    fn fine_timestamp_and_stat_location() {
        let f = frames_json(
            r#"{"rxpk":[{"tmst":1,"tmms":1300000000999,"ftime":123456789,"freq":868.1,"stat":1,
            "datr":"SF7BW125","codr":"4/5","data":""}],
            "stat":{"lati":52.5,"long":13.25,"alti":40}}"#,
        );
        let rx = &f[0]["rxInfo"];
        assert_eq!(rx["timeSinceGpsEpoch"], "1300000000.999s");
        assert_eq!(rx["fineTimeSinceGpsEpoch"], "1300000000.123456789s");
        assert_eq!(
            rx["location"],
            json!({"latitude": 52.5, "longitude": 13.25, "altitude": 40.0, "source": "GPS"})
        );
        let nofix = frames_json(
            r#"{"rxpk":[{"tmst":1,"freq":868.1,"stat":1,"datr":"SF7BW125","codr":"4/5","data":""}],
            "stat":{"lati":0,"long":0,"alti":0}}"#,
        );
        assert!(nofix[0]["rxInfo"].get("location").is_none());
    }
}
