//! PUSH_DATA: received radio packets (`rxpk`) and the gateway's status (`stat`).

use super::{
    hz_from_mhz, json_text, mhz_from_hz, parse_json, upstream_header, write_header, write_json,
    DatrWire, Identifier, Malformed,
};
use crate::base64_field;
use crate::datarate::{CodeRate, LoraDataRate, LrFhssDataRate};
use crate::eui::Eui64;
use crate::json_object;
use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A PUSH_DATA datagram, validated: every field below is usable as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct PushData {
    pub token: u16,
    pub gateway: Eui64,
    pub rxpk: Vec<Rxpk>,
    pub stat: Option<Stat>,
}

/// One received radio packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Rxpk {
    /// UTC time of reception (gateways with GPS).
    pub time: Option<Timestamp>,
    /// GPS time of reception, milliseconds since 1980-01-06 (gateways with GPS).
    pub tmms: Option<i64>,
    /// The concentrator's microsecond counter at the end of reception; class-A downlinks are
    /// timed from it.
    pub tmst: u32,
    /// Fine timestamp: nanoseconds since the last PPS (SX1302/SX1303).
    pub ftime: Option<u32>,
    /// Hz.
    pub frequency: u32,
    pub channel: u32,
    pub rf_chain: u32,
    pub board: u32,
    pub crc: Crc,
    pub modulation: RxModulation,
    /// dBm (absent when the forwarder reports per-antenna `rsig` instead).
    pub rssi: Option<i32>,
    /// dB (LoRa only).
    pub snr: Option<f32>,
    pub data: Vec<u8>,
    /// Per-antenna signal of multi-antenna (v2 reference design) gateways.
    pub rsig: Vec<Rsig>,
    pub meta: BTreeMap<String, String>,
}

/// The `stat` CRC status: 1, -1 or 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crc {
    Ok,
    Bad,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RxModulation {
    Lora {
        data_rate: LoraDataRate,
        code_rate: CodeRate,
    },
    Fsk {
        bitrate: u32,
    },
    LrFhss {
        data_rate: LrFhssDataRate,
        code_rate: CodeRate,
        grid_steps: u32,
    },
}

/// The signal on one antenna of a multi-antenna gateway.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rsig {
    pub antenna: u32,
    pub channel: u32,
    /// Channel RSSI, dBm.
    pub rssi: i32,
    pub snr: Option<f32>,
}

/// The gateway's periodic status.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    /// The gateway's system time (whole seconds).
    pub time: Option<Timestamp>,
    pub location: Option<StatLocation>,
    /// `rxnb`: radio packets received.
    pub rx_received: u32,
    /// `rxok`: radio packets received with a valid CRC.
    pub rx_ok: u32,
    /// `rxfw`: radio packets forwarded.
    pub rx_forwarded: u32,
    /// `ackr`: percentage of upstream datagrams acknowledged.
    pub ack_ratio: f64,
    /// `dwnb`: downlink datagrams received.
    pub downlinks_received: u32,
    /// `txnb`: packets emitted.
    pub tx_emitted: u32,
    pub meta: BTreeMap<String, String>,
}

/// GPS position from `lati`, `long`, `alti`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatLocation {
    pub latitude: f64,
    pub longitude: f64,
    /// Metres.
    pub altitude: i32,
}

// Unknown fields are ignored at every level: forwarders add their own (`aesk`, vendor
// extras) and the protocol says nothing against them.
#[derive(Deserialize, Serialize)]
struct PayloadWire {
    #[serde(
        default,
        deserialize_with = "json_object::list",
        skip_serializing_if = "Vec::is_empty"
    )]
    rxpk: Vec<RxpkWire>,
    #[serde(
        default,
        deserialize_with = "json_object::optional",
        skip_serializing_if = "Option::is_none"
    )]
    stat: Option<StatWire>,
}

#[derive(Deserialize, Serialize)]
struct RxpkWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tmms: Option<i64>,
    tmst: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ftime: Option<u32>,
    freq: f64,
    #[serde(default)]
    chan: u32,
    #[serde(default)]
    rfch: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    brd: u32,
    #[serde(default)]
    stat: i8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modu: Option<String>,
    datr: DatrWire,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hpw: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rssi: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsnr: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    data: String,
    #[serde(
        default,
        deserialize_with = "json_object::optional_list",
        skip_serializing_if = "Option::is_none"
    )]
    rsig: Option<Vec<RsigWire>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize)]
struct RsigWire {
    #[serde(default)]
    ant: u32,
    #[serde(default)]
    chan: u32,
    #[serde(default)]
    rssic: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsnr: Option<f32>,
}

#[derive(Deserialize, Serialize)]
struct StatWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lati: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    long: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alti: Option<i32>,
    #[serde(default)]
    rxnb: u32,
    #[serde(default)]
    rxok: u32,
    #[serde(default)]
    rxfw: u32,
    #[serde(default)]
    ackr: f64,
    #[serde(default)]
    dwnb: u32,
    #[serde(default)]
    txnb: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<BTreeMap<String, String>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl PushData {
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let (token, gateway, body) = upstream_header(bytes, Identifier::PushData)?;
        let wire: PayloadWire = parse_json(json_text(body))?;
        Ok(Self {
            token,
            gateway,
            rxpk: wire
                .rxpk
                .into_iter()
                .map(Rxpk::from_wire)
                .collect::<Result<_, _>>()?,
            stat: wire.stat.map(Stat::from_wire).transpose()?,
        })
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        write_header(&mut out, Identifier::PushData, self.token);
        out.extend_from_slice(&self.gateway.0);
        let wire = PayloadWire {
            rxpk: self.rxpk.iter().map(Rxpk::to_wire).collect(),
            stat: self.stat.as_ref().map(Stat::to_wire),
        };
        write_json(&mut out, &wire);
        out
    }
}

impl Rxpk {
    fn from_wire(w: RxpkWire) -> Result<Self, Malformed> {
        let code_rate = match w.codr.as_deref() {
            None => CodeRate::Undefined,
            Some(s) => CodeRate::from_semtech(s).ok_or(Malformed::BadValue)?,
        };
        // The type of `datr` decides the modulation, as `modu` is redundant with it.
        let modulation = match w.datr {
            DatrWire::Bitrate(bitrate) => RxModulation::Fsk { bitrate },
            DatrWire::Name(name) => {
                if let Some(data_rate) = LoraDataRate::parse(&name) {
                    RxModulation::Lora {
                        data_rate,
                        code_rate,
                    }
                } else if let Some(data_rate) = LrFhssDataRate::parse(&name) {
                    RxModulation::LrFhss {
                        data_rate,
                        code_rate,
                        grid_steps: w.hpw.unwrap_or(0),
                    }
                } else {
                    return Err(Malformed::BadValue);
                }
            }
        };
        let time = match w.time.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Timestamp::parse_rfc3339(s).ok_or(Malformed::BadValue)?),
        };
        let crc = match w.stat {
            1 => Crc::Ok,
            -1 => Crc::Bad,
            0 => Crc::None,
            _ => return Err(Malformed::BadValue),
        };
        Ok(Self {
            time,
            tmms: w.tmms,
            tmst: w.tmst,
            ftime: w.ftime,
            frequency: hz_from_mhz(w.freq)?,
            channel: w.chan,
            rf_chain: w.rfch,
            board: w.brd,
            crc,
            modulation,
            rssi: w.rssi,
            snr: w.lsnr,
            data: base64_field::decode(&w.data).ok_or(Malformed::BadValue)?,
            rsig: w
                .rsig
                .unwrap_or_default()
                .into_iter()
                .map(|r| Rsig {
                    antenna: r.ant,
                    channel: r.chan,
                    rssi: r.rssic,
                    snr: r.lsnr,
                })
                .collect(),
            meta: w.meta.unwrap_or_default(),
        })
    }

    fn to_wire(&self) -> RxpkWire {
        let (modu, datr, codr, hpw) = match self.modulation {
            RxModulation::Lora {
                data_rate,
                code_rate,
            } => (
                "LORA",
                DatrWire::Name(data_rate.to_string()),
                Some(code_rate),
                None,
            ),
            RxModulation::Fsk { bitrate } => ("FSK", DatrWire::Bitrate(bitrate), None, None),
            RxModulation::LrFhss {
                data_rate,
                code_rate,
                grid_steps,
            } => (
                "LR-FHSS",
                DatrWire::Name(data_rate.to_string()),
                Some(code_rate),
                Some(grid_steps),
            ),
        };
        RxpkWire {
            time: self.time.map(|t| t.rfc3339().to_string()),
            tmms: self.tmms,
            tmst: self.tmst,
            ftime: self.ftime,
            freq: mhz_from_hz(self.frequency),
            chan: self.channel,
            rfch: self.rf_chain,
            brd: self.board,
            stat: match self.crc {
                Crc::Ok => 1,
                Crc::Bad => -1,
                Crc::None => 0,
            },
            modu: Some(modu.to_owned()),
            datr,
            codr: codr.map(|c| c.semtech().to_owned()),
            hpw,
            rssi: self.rssi,
            lsnr: self.snr,
            size: Some(self.data.len() as u32),
            data: base64_field::encode(&self.data),
            rsig: (!self.rsig.is_empty()).then(|| {
                self.rsig
                    .iter()
                    .map(|r| RsigWire {
                        ant: r.antenna,
                        chan: r.channel,
                        rssic: r.rssi,
                        lsnr: r.snr,
                    })
                    .collect()
            }),
            meta: (!self.meta.is_empty()).then(|| self.meta.clone()),
        }
    }
}

impl Stat {
    fn from_wire(w: StatWire) -> Result<Self, Malformed> {
        let time = match w.time.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Timestamp::parse_expanded(s).ok_or(Malformed::BadValue)?),
        };
        let location =
            (w.lati.is_some() || w.long.is_some() || w.alti.is_some()).then(|| StatLocation {
                latitude: w.lati.unwrap_or(0.0),
                longitude: w.long.unwrap_or(0.0),
                altitude: w.alti.unwrap_or(0),
            });
        Ok(Self {
            time,
            location,
            rx_received: w.rxnb,
            rx_ok: w.rxok,
            rx_forwarded: w.rxfw,
            ack_ratio: w.ackr,
            downlinks_received: w.dwnb,
            tx_emitted: w.txnb,
            meta: w.meta.unwrap_or_default(),
        })
    }

    fn to_wire(&self) -> StatWire {
        StatWire {
            time: self.time.map(|t| t.expanded().to_string()),
            lati: self.location.map(|l| l.latitude),
            long: self.location.map(|l| l.longitude),
            alti: self.location.map(|l| l.altitude),
            rxnb: self.rx_received,
            rxok: self.rx_ok,
            rxfw: self.rx_forwarded,
            ackr: self.ack_ratio,
            dwnb: self.downlinks_received,
            txnb: self.tx_emitted,
            meta: (!self.meta.is_empty()).then(|| self.meta.clone()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const GW: Eui64 = Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, 0x01]);

    pub(crate) fn datagram(token: u16, json: &str) -> Vec<u8> {
        let mut v = vec![2, token.to_le_bytes()[0], token.to_le_bytes()[1], 0];
        v.extend_from_slice(&GW.0);
        v.extend_from_slice(json.as_bytes());
        v
    }

    // The three packets of PROTOCOL.TXT's example, with the first one's data in one alphabet.
    const EXAMPLE: &str = r#"{"rxpk":[
        {"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,
         "freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6",
         "rssi":-35,"lsnr":5.1,"size":32,"data":"-DS4CGaDCdG_48eJNM3Vai-zDpsR71Pn9CPA9uCON84"},
        {"time":"2013-03-31T16:21:17.530974Z","tmst":3512348514,"chan":9,"rfch":1,
         "freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"size":16,
         "data":"VEVTVF9QQUNLRVRfMTIzNA=="},
        {"time":"2013-03-31T16:21:17.532038Z","tmst":3316387610,"chan":0,"rfch":0,
         "freq":863.00981,"stat":1,"modu":"LORA","datr":"SF10BW125","codr":"4/7",
         "rssi":-38,"lsnr":5.5,"size":32,"data":"ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass"}
    ]}"#;

    #[test]
    fn protocol_example_rxpk() {
        let p = PushData::parse(&datagram(0x0102, EXAMPLE)).unwrap();
        assert_eq!((p.token, p.gateway), (0x0102, GW));
        assert_eq!(p.rxpk.len(), 3);
        assert_eq!(p.stat, None);
        let a = &p.rxpk[0];
        assert_eq!(
            a.time,
            Timestamp::parse_rfc3339("2013-03-31T16:21:17.528002Z")
        );
        assert_eq!(
            (a.tmst, a.frequency, a.channel, a.rf_chain),
            (3_512_348_611, 866_349_812, 2, 0)
        );
        assert_eq!(a.crc, Crc::Ok);
        assert_eq!(
            a.modulation,
            RxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: 7,
                    bandwidth_khz: 125
                },
                code_rate: CodeRate::Cr4_6
            }
        );
        assert_eq!((a.rssi, a.snr), (Some(-35), Some(5.1)));
        assert_eq!(a.data.len(), 32);
        let b = &p.rxpk[1];
        assert_eq!(b.modulation, RxModulation::Fsk { bitrate: 50_000 });
        assert_eq!((b.rssi, b.snr, b.frequency), (Some(-75), None, 869_100_000));
        assert_eq!(b.data, b"TEST_PACKET_1234");
        assert_eq!(p.rxpk[2].frequency, 863_009_810);
    }

    #[test]
    fn protocol_example_stat() {
        let json = r#"{"stat":{"time":"2014-01-12 08:59:28 GMT","lati":46.24000,"long":3.25230,
            "alti":145,"rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2}}"#;
        let p = PushData::parse(&datagram(7, json)).unwrap();
        assert!(p.rxpk.is_empty());
        let s = p.stat.unwrap();
        assert_eq!(s.time, Timestamp::parse_expanded("2014-01-12 08:59:28 GMT"));
        assert_eq!(
            s.location,
            Some(StatLocation {
                latitude: 46.24,
                longitude: 3.2523,
                altitude: 145
            })
        );
        assert_eq!(
            (
                s.rx_received,
                s.rx_ok,
                s.rx_forwarded,
                s.downlinks_received,
                s.tx_emitted
            ),
            (2, 2, 2, 2, 2)
        );
        assert_eq!(s.ack_ratio, 100.0);
    }

    #[test]
    fn rsig_lr_fhss_tmms_ftime_meta_and_nul_terminator() {
        let json = r#"{"rxpk":[{"tmst":1000,"tmms":1300000000123,"ftime":500000000,"freq":868.1,
            "brd":1,"stat":-1,"modu":"LR-FHSS","datr":"M0CW137","codr":"2/6","hpw":52,"data":"",
            "rsig":[{"ant":0,"chan":3,"rssic":-80,"lsnr":-2.5},{"ant":1,"chan":3,"rssic":-90}],
            "meta":{"k":"v"}}]}"#;
        let mut d = datagram(1, json);
        d.push(0);
        let p = PushData::parse(&d).unwrap();
        let r = &p.rxpk[0];
        assert_eq!(
            (r.tmms, r.ftime, r.board, r.crc),
            (Some(1_300_000_000_123), Some(500_000_000), 1, Crc::Bad)
        );
        assert_eq!(
            r.modulation,
            RxModulation::LrFhss {
                data_rate: LrFhssDataRate {
                    channel_width_khz: 137
                },
                code_rate: CodeRate::Cr2_6,
                grid_steps: 52
            }
        );
        assert_eq!(
            r.rsig,
            [
                Rsig {
                    antenna: 0,
                    channel: 3,
                    rssi: -80,
                    snr: Some(-2.5)
                },
                Rsig {
                    antenna: 1,
                    channel: 3,
                    rssi: -90,
                    snr: None
                },
            ]
        );
        assert_eq!(r.meta.get("k").map(String::as_str), Some("v"));
        assert!(r.data.is_empty() && r.rssi.is_none() && r.time.is_none());
    }

    #[test]
    fn forwarder_quirks_are_accepted() {
        // "OFF" for the CR0 case, an empty time, and unknown fields inside rxpk.
        let json = r#"{"rxpk":[{"time":"","tmst":1,"freq":868.1,"stat":0,"modu":"LORA",
            "datr":"SF12BW125","codr":"OFF","rssi":-120,"lsnr":-20,"aesk":0,"foo":[1],"data":"AA"}]}"#;
        let p = PushData::parse(&datagram(1, json)).unwrap();
        let r = &p.rxpk[0];
        assert_eq!((r.time, r.crc), (None, Crc::None));
        assert!(matches!(
            r.modulation,
            RxModulation::Lora {
                code_rate: CodeRate::Undefined,
                ..
            }
        ));
        assert_eq!(
            PushData::parse(&datagram(1, "{}")).map(|p| p.rxpk.len()),
            Ok(0)
        );
        assert_eq!(
            PushData::parse(&datagram(1, r#"{"unknown":1}"#)).map(|p| p.rxpk.len()),
            Ok(0)
        );
    }

    #[test]
    fn malformed_push_data() {
        let rx = |fields: &str| format!(r#"{{"rxpk":[{{{fields}}}]}}"#);
        let base = r#""tmst":1,"freq":868.1,"stat":1,"datr":"SF7BW125","codr":"4/5","data":"AA""#;
        assert!(PushData::parse(&datagram(1, &rx(base))).is_ok());
        let cases: &[(&str, Malformed)] = &[
            ("", Malformed::BadJson),
            ("{", Malformed::BadJson),
            ("[]", Malformed::BadJson),
            ("null", Malformed::BadJson),
            ("{\"rxpk\":[]} {}", Malformed::BadJson),
            ("{\"rxpk\":{}}", Malformed::WrongFieldType),
            ("{\"rxpk\":null}", Malformed::WrongFieldType),
            ("{\"stat\":[]}", Malformed::WrongFieldType),
            (
                &rx(r#""freq":868.1,"datr":"SF7BW125","data":"AA""#),
                Malformed::WrongFieldType,
            ), // no tmst
            (
                &rx(&base.replace("\"tmst\":1", "\"tmst\":-1")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"tmst\":1", "\"tmst\":4294967296")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"tmst\":1", "\"tmst\":\"1\"")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("868.1", "\"868.1\"")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"AA\"", "12")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"SF7BW125\"", "true")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"SF7BW125\"", "50000.5")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&base.replace("\"stat\":1", "\"stat\":1000")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&format!("{base},\"rssi\":-3.5")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&format!("{base},\"rsig\":{{}}")),
                Malformed::WrongFieldType,
            ),
            (
                &rx(&format!("{base},\"meta\":{{\"a\":1}}")),
                Malformed::WrongFieldType,
            ),
            (&rx(&base.replace("\"AA\"", "\"A\"")), Malformed::BadValue),
            (
                &rx(&base.replace("\"AA\"", "\"A!==\"")),
                Malformed::BadValue,
            ),
            (&rx(&base.replace("SF7BW125", "SF7BW")), Malformed::BadValue),
            (&rx(&base.replace("SF7BW125", "FSK")), Malformed::BadValue),
            (&rx(&base.replace("4/5", "4/9")), Malformed::BadValue),
            (&rx(&base.replace("868.1", "-868.1")), Malformed::BadValue),
            (&rx(&base.replace("868.1", "1e300")), Malformed::BadValue),
            (
                &rx(&base.replace("\"stat\":1", "\"stat\":2")),
                Malformed::BadValue,
            ),
            (
                &rx(&format!("{base},\"time\":\"yesterday\"")),
                Malformed::BadValue,
            ),
            (
                r#"{"stat":{"time":"2014-01-12T08:59:28Z"}}"#,
                Malformed::BadValue,
            ),
            (r#"{"stat":{"rxnb":-1}}"#, Malformed::WrongFieldType),
        ];
        for (json, want) in cases {
            assert_eq!(PushData::parse(&datagram(1, json)), Err(*want), "{json}");
        }
        let ok = datagram(1, &rx(base));
        assert_eq!(PushData::parse(&ok[..11]), Err(Malformed::TooShort));
        assert_eq!(PushData::parse(&ok[..12]), Err(Malformed::BadJson));
    }

    fn code_rate() -> impl Strategy<Value = CodeRate> {
        proptest::sample::select(CodeRate::ALL.to_vec())
    }

    fn modulation() -> impl Strategy<Value = RxModulation> {
        prop_oneof![
            (5u8..=12, 1u32..2000, code_rate()).prop_map(|(sf, bw, code_rate)| {
                RxModulation::Lora {
                    data_rate: LoraDataRate {
                        spreading_factor: sf,
                        bandwidth_khz: bw,
                    },
                    code_rate,
                }
            }),
            any::<u32>().prop_map(|bitrate| RxModulation::Fsk { bitrate }),
            (1u32..2000, code_rate(), any::<u32>()).prop_map(|(w, code_rate, grid_steps)| {
                RxModulation::LrFhss {
                    data_rate: LrFhssDataRate {
                        channel_width_khz: w,
                    },
                    code_rate,
                    grid_steps,
                }
            }),
        ]
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp::new(s, n).unwrap())
    }

    fn meta() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[a-z]{1,4}", ".{0,4}", 0..3)
    }

    prop_compose! {
        fn rxpk()(
            time in proptest::option::of(timestamp()),
            tmms: Option<i64>,
            tmst: u32,
            ftime: Option<u32>,
            frequency: u32,
            channel: u32,
            rf_chain: u32,
            board: u32,
            crc in proptest::sample::select(vec![Crc::Ok, Crc::Bad, Crc::None]),
            modulation in modulation(),
            rssi: Option<i32>,
            snr in proptest::option::of(-30.0f32..30.0),
            data in proptest::collection::vec(any::<u8>(), 0..64),
            rsig in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<i32>(), proptest::option::of(-30.0f32..30.0))
                .prop_map(|(antenna, channel, rssi, snr)| Rsig { antenna, channel, rssi, snr }), 0..3),
            meta in meta(),
        ) -> Rxpk {
            Rxpk { time, tmms, tmst, ftime, frequency, channel, rf_chain, board, crc, modulation, rssi, snr, data, rsig, meta }
        }
    }

    prop_compose! {
        fn stat()(
            secs in proptest::option::of(0i64..4_102_444_800),
            location in proptest::option::of((-90.0f64..90.0, -180.0f64..180.0, any::<i32>())
                .prop_map(|(latitude, longitude, altitude)| StatLocation { latitude, longitude, altitude })),
            counts: [u32; 5],
            ack_ratio in 0.0f64..=100.0,
            meta in meta(),
        ) -> Stat {
            Stat {
                time: secs.map(|s| Timestamp::new(s, 0).unwrap()),
                location,
                rx_received: counts[0],
                rx_ok: counts[1],
                rx_forwarded: counts[2],
                ack_ratio,
                downlinks_received: counts[3],
                tx_emitted: counts[4],
                meta,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(
            token: u16,
            eui: [u8; 8],
            rxpk in proptest::collection::vec(rxpk(), 0..4),
            stat in proptest::option::of(stat()),
        ) {
            let p = PushData { token, gateway: Eui64(eui), rxpk, stat };
            prop_assert_eq!(PushData::parse(&p.build()), Ok(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = PushData::parse(&bytes);
        }

        #[test]
        fn arbitrary_json_text_never_panics(json in r#"\{"(rxpk|stat)":[\[\{\}\]"a-z0-9:,.\-]{0,60}"#) {
            let _ = PushData::parse(&datagram(0, &json));
        }
    }
}
