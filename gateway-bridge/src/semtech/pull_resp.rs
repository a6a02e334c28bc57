//! PULL_RESP: a packet for the gateway to transmit (`txpk`). Its token comes back in the
//! gateway's TX_ACK.

use super::{
    header, hz_from_mhz, json_text, mhz_from_hz, parse_json, write_header, write_json, DatrWire,
    Identifier, Malformed,
};
use crate::base64_field;
use crate::datarate::{CodeRate, LoraDataRate};
use crate::json_object;
use serde::{Deserialize, Serialize};

/// A PULL_RESP datagram (no gateway EUI: it goes to the address the gateway pulls from).
#[derive(Clone, Debug, PartialEq)]
pub struct PullResp {
    pub token: u16,
    pub txpk: Txpk,
}

/// A packet to transmit, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Txpk {
    pub timing: TxTiming,
    /// Hz.
    pub frequency: u32,
    pub rf_chain: u32,
    /// dBm. The protocol calls it unsigned; forwarders read it into a signed byte.
    pub power: i8,
    pub antenna: u32,
    pub board: u32,
    pub modulation: TxModulation,
    /// Preamble symbols; the forwarder's default when `None`.
    pub preamble: Option<u16>,
    /// Send without a physical-layer CRC.
    pub no_crc: bool,
    pub data: Vec<u8>,
}

/// When to transmit: exactly one of `imme`, `tmst`, `tmms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxTiming {
    /// `imme: true`.
    Immediately,
    /// `tmst`: at this value of the concentrator's microsecond counter.
    Tmst(u32),
    /// `tmms`: at this GPS time, milliseconds since 1980-01-06 (needs a GPS lock).
    Tmms(i64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TxModulation {
    Lora {
        data_rate: LoraDataRate,
        code_rate: CodeRate,
        polarization_inversion: bool,
    },
    Fsk {
        bitrate: u32,
        frequency_deviation: u32,
    },
}

#[derive(Deserialize, Serialize)]
struct PayloadWire {
    #[serde(deserialize_with = "json_object::required")]
    txpk: TxpkWire,
}

#[derive(Deserialize, Serialize)]
struct TxpkWire {
    #[serde(default)]
    imme: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tmst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tmms: Option<i64>,
    freq: f64,
    #[serde(default)]
    rfch: u32,
    #[serde(default)]
    powe: i32,
    #[serde(default)]
    ant: u32,
    #[serde(default)]
    brd: u32,
    modu: String,
    datr: DatrWire,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fdev: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipol: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prea: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    data: String,
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    ncrc: bool,
}

impl PullResp {
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let token = header(bytes, Identifier::PullResp, 4)?;
        let wire: PayloadWire = parse_json(json_text(&bytes[4..]))?;
        Ok(Self {
            token,
            txpk: Txpk::from_wire(wire.txpk)?,
        })
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        write_header(&mut out, Identifier::PullResp, self.token);
        write_json(
            &mut out,
            &PayloadWire {
                txpk: self.txpk.to_wire(),
            },
        );
        out
    }
}

impl Txpk {
    fn from_wire(w: TxpkWire) -> Result<Self, Malformed> {
        // The forwarder's own precedence: imme over tmst over tmms.
        let timing = match (w.imme, w.tmst, w.tmms) {
            (true, _, _) => TxTiming::Immediately,
            (false, Some(t), _) => TxTiming::Tmst(t),
            (false, None, Some(t)) => TxTiming::Tmms(t),
            (false, None, None) => return Err(Malformed::BadValue),
        };
        let modulation = match (w.modu.as_str(), w.datr) {
            ("LORA", DatrWire::Name(name)) => TxModulation::Lora {
                data_rate: LoraDataRate::parse(&name).ok_or(Malformed::BadValue)?,
                code_rate: w
                    .codr
                    .as_deref()
                    .and_then(CodeRate::from_semtech)
                    .filter(|c| c.is_lora_tx())
                    .ok_or(Malformed::BadValue)?,
                polarization_inversion: w.ipol.unwrap_or(false),
            },
            ("FSK", DatrWire::Bitrate(bitrate)) => TxModulation::Fsk {
                bitrate,
                frequency_deviation: w.fdev.unwrap_or(0),
            },
            _ => return Err(Malformed::BadValue),
        };
        Ok(Self {
            timing,
            frequency: hz_from_mhz(w.freq)?,
            rf_chain: w.rfch,
            power: i8::try_from(w.powe).map_err(|_| Malformed::BadValue)?,
            antenna: w.ant,
            board: w.brd,
            modulation,
            preamble: w.prea,
            no_crc: w.ncrc,
            data: base64_field::decode(&w.data).ok_or(Malformed::BadValue)?,
        })
    }

    fn to_wire(&self) -> TxpkWire {
        let (imme, tmst, tmms) = match self.timing {
            TxTiming::Immediately => (true, None, None),
            TxTiming::Tmst(t) => (false, Some(t), None),
            TxTiming::Tmms(t) => (false, None, Some(t)),
        };
        let (modu, datr, codr, fdev, ipol) = match self.modulation {
            TxModulation::Lora {
                data_rate,
                code_rate,
                polarization_inversion,
            } => (
                "LORA",
                DatrWire::Name(data_rate.to_string()),
                Some(code_rate.semtech().to_owned()),
                None,
                Some(polarization_inversion),
            ),
            TxModulation::Fsk {
                bitrate,
                frequency_deviation,
            } => (
                "FSK",
                DatrWire::Bitrate(bitrate),
                None,
                Some(frequency_deviation),
                None,
            ),
        };
        TxpkWire {
            imme,
            tmst,
            tmms,
            freq: mhz_from_hz(self.frequency),
            rfch: self.rf_chain,
            powe: i32::from(self.power),
            ant: self.antenna,
            brd: self.board,
            modu: modu.to_owned(),
            datr,
            codr,
            fdev,
            ipol,
            prea: self.preamble,
            size: Some(self.data.len() as u32),
            data: base64_field::encode(&self.data),
            ncrc: self.no_crc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datagram(json: &str) -> Vec<u8> {
        let mut v = vec![2, 0x34, 0x12, 3];
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[test]
    fn protocol_examples() {
        let lora = r#"{"txpk":{"imme":true,"freq":864.123456,"rfch":0,"powe":14,"modu":"LORA",
            "datr":"SF11BW125","codr":"4/6","ipol":false,"size":32,
            "data":"H3P3N2i9qc4yt7rK7ldqoeCVJGBybzPY5h1Dd7P7p8v"}}"#;
        let p = PullResp::parse(&datagram(lora)).unwrap();
        assert_eq!(p.token, 0x1234);
        let t = &p.txpk;
        assert_eq!(
            (t.timing, t.frequency, t.power, t.data.len()),
            (TxTiming::Immediately, 864_123_456, 14, 32)
        );
        assert_eq!(
            t.modulation,
            TxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: 11,
                    bandwidth_khz: 125
                },
                code_rate: CodeRate::Cr4_6,
                polarization_inversion: false
            }
        );
        let fsk = r#"{"txpk":{"imme":true,"freq":861.3,"rfch":0,"powe":12,"modu":"FSK",
            "datr":50000,"fdev":3000,"size":32,"data":"H3P3N2i9qc4yt7rK7ldqoeCVJGBybzPY5h1Dd7P7p8v"}}"#;
        let p = PullResp::parse(&datagram(fsk)).unwrap();
        assert_eq!(
            p.txpk.modulation,
            TxModulation::Fsk {
                bitrate: 50_000,
                frequency_deviation: 3000
            }
        );
    }

    #[test]
    fn wire_form_of_each_timing() {
        let mut t = Txpk {
            timing: TxTiming::Tmst(5_000_000),
            frequency: 869_525_000,
            rf_chain: 0,
            power: 27,
            antenna: 1,
            board: 2,
            modulation: TxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: 9,
                    bandwidth_khz: 125,
                },
                code_rate: CodeRate::Cr4_5,
                polarization_inversion: true,
            },
            preamble: None,
            no_crc: true,
            data: vec![1, 2, 3],
        };
        let json = |t: &Txpk| {
            let b = PullResp {
                token: 9,
                txpk: t.clone(),
            }
            .build();
            assert_eq!(&b[..4], [2, 9, 0, 3]);
            serde_json::from_slice::<serde_json::Value>(&b[4..]).unwrap()["txpk"].clone()
        };
        let v = json(&t);
        assert_eq!(v["imme"], false);
        assert_eq!(v["tmst"], 5_000_000);
        assert!(v.get("tmms").is_none());
        assert_eq!(v["freq"], 869.525);
        assert_eq!(v["powe"], 27);
        assert_eq!((v["ant"].as_u64(), v["brd"].as_u64()), (Some(1), Some(2)));
        assert_eq!(
            (v["modu"].as_str(), v["datr"].as_str(), v["codr"].as_str()),
            (Some("LORA"), Some("SF9BW125"), Some("4/5"))
        );
        assert_eq!(
            (v["ipol"].as_bool(), v["ncrc"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(
            (v["size"].as_u64(), v["data"].as_str()),
            (Some(3), Some("AQID"))
        );
        t.timing = TxTiming::Immediately;
        let v = json(&t);
        assert_eq!(v["imme"], true);
        assert!(v.get("tmst").is_none() && v.get("tmms").is_none());
        t.timing = TxTiming::Tmms(1_234_567_890_123);
        let v = json(&t);
        assert_eq!(
            (v["imme"].as_bool(), v["tmms"].as_i64()),
            (Some(false), Some(1_234_567_890_123))
        );
        assert!(v.get("tmst").is_none());
    }

    #[test]
    fn malformed_pull_resp() {
        let base = r#""tmst":1,"freq":868.1,"powe":14,"modu":"LORA","datr":"SF7BW125","codr":"4/5","data":"AA""#;
        let tx = |f: &str| format!(r#"{{"txpk":{{{f}}}}}"#);
        assert!(PullResp::parse(&datagram(&tx(base))).is_ok());
        let cases: &[(String, Malformed)] = &[
            (String::new(), Malformed::BadJson),
            ("{}".into(), Malformed::WrongFieldType),
            (tx(&base.replace("\"tmst\":1,", "")), Malformed::BadValue),
            (
                tx(&base.replace("\"codr\":\"4/5\",", "")),
                Malformed::BadValue,
            ),
            (tx(&base.replace("4/5", "OFF")), Malformed::BadValue),
            (tx(&base.replace("4/5", "3/8")), Malformed::BadValue),
            (tx(&base.replace("LORA", "FSK")), Malformed::BadValue),
            (tx(&base.replace("LORA", "LR-FHSS")), Malformed::BadValue),
            (
                tx(&base.replace("\"powe\":14", "\"powe\":200")),
                Malformed::BadValue,
            ),
            (tx(&base.replace("\"AA\"", "\"*\"")), Malformed::BadValue),
            (
                tx(&base.replace("\"powe\":14", "\"powe\":14.5")),
                Malformed::WrongFieldType,
            ),
            (
                tx(&base.replace("\"tmst\":1", "\"imme\":1")),
                Malformed::WrongFieldType,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(PullResp::parse(&datagram(json)), Err(*want), "{json}");
        }
        assert_eq!(PullResp::parse(&[2, 0, 0]), Err(Malformed::TooShort));
        assert_eq!(PullResp::parse(&[2, 0, 0, 3]), Err(Malformed::BadJson));
    }

    fn modulation() -> impl Strategy<Value = TxModulation> {
        let lora_rates: Vec<CodeRate> = CodeRate::ALL
            .into_iter()
            .filter(|c| c.is_lora_tx())
            .collect();
        prop_oneof![
            (
                5u8..=12,
                1u32..2000,
                proptest::sample::select(lora_rates),
                any::<bool>()
            )
                .prop_map(|(sf, bw, code_rate, polarization_inversion)| {
                    TxModulation::Lora {
                        data_rate: LoraDataRate {
                            spreading_factor: sf,
                            bandwidth_khz: bw,
                        },
                        code_rate,
                        polarization_inversion,
                    }
                }),
            (any::<u32>(), any::<u32>()).prop_map(|(bitrate, frequency_deviation)| {
                TxModulation::Fsk {
                    bitrate,
                    frequency_deviation,
                }
            }),
        ]
    }

    prop_compose! {
        fn txpk()(
            timing in prop_oneof![
                Just(TxTiming::Immediately),
                any::<u32>().prop_map(TxTiming::Tmst),
                any::<i64>().prop_map(TxTiming::Tmms),
            ],
            frequency: u32, rf_chain: u32, power: i8, antenna: u32, board: u32,
            modulation in modulation(),
            preamble: Option<u16>, no_crc: bool,
            data in proptest::collection::vec(any::<u8>(), 0..256),
        ) -> Txpk {
            Txpk { timing, frequency, rf_chain, power, antenna, board, modulation, preamble, no_crc, data }
        }
    }

    proptest! {
        #[test]
        fn round_trip(token: u16, txpk in txpk()) {
            let p = PullResp { token, txpk };
            prop_assert_eq!(PullResp::parse(&p.build()), Ok(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = PullResp::parse(&bytes);
        }
    }
}
