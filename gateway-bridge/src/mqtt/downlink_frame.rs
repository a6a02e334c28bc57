//! `command/down`: a `DownlinkFrame`, read the way a protobuf-JSON reader would (camelCase or
//! proto field names, unknown fields ignored) and validated into one forwarder `txpk` per
//! item, so that every item the bridge accepted can be sent.

use super::protojson::{self, Duration};
use crate::datarate::{CodeRate, LoraDataRate};
use crate::eui::Eui64;
use crate::json_object;
use crate::semtech::{TxModulation, TxTiming, Txpk};
use core::fmt;
use serde::Deserialize;

/// A downlink with its items in priority order (RX1 before RX2, say): the bridge sends the
/// first, and the next one only if the gateway refuses it.
#[derive(Clone, Debug, PartialEq)]
pub struct DownlinkFrame {
    pub downlink_id: u32,
    /// The frame's `gatewayId`, when it has one.
    pub gateway: Option<Eui64>,
    pub items: Vec<Txpk>,
}

/// Why a `command/down` payload was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DownlinkError {
    /// Not a JSON object.
    BadJson,
    /// A field of the wrong type, or an enum name or number that does not exist.
    WrongFieldType,
    NoItems,
    /// `gatewayId` is not 16 hex digits.
    BadGatewayId,
    /// `gatewayId` names another gateway than the topic.
    GatewayMismatch,
    /// An item without `txInfo`.
    NoTxInfo,
    /// No timing, several, or a GPS-epoch timing without a (non-negative) time.
    BadTiming,
    /// `delay` timing needs the uplink's context, whose first 4 bytes are its `tmst`.
    ShortContext,
    /// A negative delay, or one beyond the 32-bit microsecond counter.
    BadDelay,
    /// No modulation, several, LR-FHSS (forwarders cannot send it), or an impossible
    /// spreading factor, bandwidth or preamble.
    BadModulation,
    /// Not a LoRa transmit code rate (4/5..4/8, or the 2.4 GHz LI rates).
    BadCodeRate,
    /// Power outside a signed byte of dBm.
    BadPower,
}

impl DownlinkError {
    pub const ALL: [DownlinkError; 12] = [
        DownlinkError::BadJson,
        DownlinkError::WrongFieldType,
        DownlinkError::NoItems,
        DownlinkError::BadGatewayId,
        DownlinkError::GatewayMismatch,
        DownlinkError::NoTxInfo,
        DownlinkError::BadTiming,
        DownlinkError::ShortContext,
        DownlinkError::BadDelay,
        DownlinkError::BadModulation,
        DownlinkError::BadCodeRate,
        DownlinkError::BadPower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::WrongFieldType => "wrong_field_type",
            Self::NoItems => "no_items",
            Self::BadGatewayId => "bad_gateway_id",
            Self::GatewayMismatch => "gateway_mismatch",
            Self::NoTxInfo => "no_tx_info",
            Self::BadTiming => "bad_timing",
            Self::ShortContext => "short_context",
            Self::BadDelay => "bad_delay",
            Self::BadModulation => "bad_modulation",
            Self::BadCodeRate => "bad_code_rate",
            Self::BadPower => "bad_power",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DownlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for DownlinkError {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrameWire {
    #[serde(default, alias = "downlink_id", deserialize_with = "protojson::uint32")]
    downlink_id: u32,
    #[serde(default, alias = "gateway_id")]
    gateway_id: Option<String>,
    #[serde(default, deserialize_with = "json_object::optional_list")]
    items: Option<Vec<ItemWire>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemWire {
    #[serde(default, alias = "phy_payload", with = "protojson::bytes")]
    phy_payload: Vec<u8>,
    #[serde(default, alias = "tx_info", deserialize_with = "json_object::optional")]
    tx_info: Option<TxInfoWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxInfoWire {
    #[serde(default, deserialize_with = "protojson::uint32")]
    frequency: u32,
    #[serde(default, deserialize_with = "protojson::int32")]
    power: i32,
    #[serde(default, deserialize_with = "json_object::optional")]
    modulation: Option<ModulationWire>,
    #[serde(default, deserialize_with = "protojson::uint32")]
    board: u32,
    #[serde(default, deserialize_with = "protojson::uint32")]
    antenna: u32,
    #[serde(default, deserialize_with = "json_object::optional")]
    timing: Option<TimingWire>,
    #[serde(default, with = "protojson::bytes")]
    context: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModulationWire {
    #[serde(default, deserialize_with = "json_object::optional")]
    lora: Option<LoraWire>,
    #[serde(default, deserialize_with = "json_object::optional")]
    fsk: Option<FskWire>,
    #[serde(default, alias = "lr_fhss")]
    lr_fhss: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoraWire {
    #[serde(default, deserialize_with = "protojson::uint32")]
    bandwidth: u32,
    #[serde(
        default,
        alias = "spreading_factor",
        deserialize_with = "protojson::uint32"
    )]
    spreading_factor: u32,
    #[serde(
        default = "undefined",
        alias = "code_rate",
        deserialize_with = "code_rate"
    )]
    code_rate: CodeRate,
    #[serde(default, alias = "code_rate_legacy")]
    code_rate_legacy: Option<String>,
    #[serde(default, alias = "polarization_inversion")]
    polarization_inversion: Option<bool>,
    #[serde(default, deserialize_with = "protojson::uint32")]
    preamble: u32,
    #[serde(default, alias = "no_crc")]
    no_crc: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FskWire {
    #[serde(
        default,
        alias = "frequency_deviation",
        deserialize_with = "protojson::uint32"
    )]
    frequency_deviation: u32,
    #[serde(default, deserialize_with = "protojson::uint32")]
    datarate: u32,
}

/// An empty message (`ImmediatelyTimingInfo`): `{}`, whatever fields it may grow.
#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimingWire {
    #[serde(default, deserialize_with = "json_object::optional")]
    immediately: Option<Empty>,
    #[serde(default, deserialize_with = "json_object::optional")]
    delay: Option<DelayWire>,
    #[serde(
        default,
        alias = "gps_epoch",
        deserialize_with = "json_object::optional"
    )]
    gps_epoch: Option<GpsEpochWire>,
}

#[derive(Deserialize)]
struct DelayWire {
    #[serde(default)]
    delay: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GpsEpochWire {
    #[serde(default, alias = "time_since_gps_epoch")]
    time_since_gps_epoch: Option<Duration>,
}

fn undefined() -> CodeRate {
    CodeRate::Undefined
}

fn code_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CodeRate, D::Error> {
    protojson::enum_value(d, CodeRate::from_name, CodeRate::from_number)
}

impl DownlinkFrame {
    /// Parses and validates a `command/down` payload received on `topic_gateway`'s topic.
    pub fn parse(payload: &[u8], topic_gateway: Eui64) -> Result<Self, DownlinkError> {
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(DownlinkError::BadJson);
        }
        let wire: FrameWire = serde_json::from_slice(payload).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DownlinkError::WrongFieldType,
            _ => DownlinkError::BadJson,
        })?;
        let gateway = match wire.gateway_id.as_deref() {
            None | Some("") => None,
            Some(s) => Some(
                s.parse::<Eui64>()
                    .map_err(|_| DownlinkError::BadGatewayId)?,
            ),
        };
        if gateway.is_some_and(|g| g != topic_gateway) {
            return Err(DownlinkError::GatewayMismatch);
        }
        let items = wire.items.unwrap_or_default();
        if items.is_empty() {
            return Err(DownlinkError::NoItems);
        }
        Ok(Self {
            downlink_id: wire.downlink_id,
            gateway,
            items: items.into_iter().map(item_txpk).collect::<Result<_, _>>()?,
        })
    }
}

fn item_txpk(item: ItemWire) -> Result<Txpk, DownlinkError> {
    let tx = item.tx_info.ok_or(DownlinkError::NoTxInfo)?;
    let timing = match tx.timing {
        Some(TimingWire {
            immediately: Some(_),
            delay: None,
            gps_epoch: None,
        }) => TxTiming::Immediately,
        Some(TimingWire {
            immediately: None,
            delay: Some(d),
            gps_epoch: None,
        }) => {
            let [a, b, c, e, ..] = tx.context[..] else {
                return Err(DownlinkError::ShortContext);
            };
            let delay = d.delay.unwrap_or_default().as_micros();
            let delay = u32::try_from(delay).map_err(|_| DownlinkError::BadDelay)?;
            // The counter wraps every 71.6 minutes; so does the forwarder's comparison.
            TxTiming::Tmst(u32::from_be_bytes([a, b, c, e]).wrapping_add(delay))
        }
        Some(TimingWire {
            immediately: None,
            delay: None,
            gps_epoch: Some(g),
        }) => {
            let ms = g
                .time_since_gps_epoch
                .ok_or(DownlinkError::BadTiming)?
                .as_millis();
            let ms = i64::try_from(ms)
                .ok()
                .filter(|&ms| ms >= 0)
                .ok_or(DownlinkError::BadTiming)?;
            TxTiming::Tmms(ms)
        }
        _ => return Err(DownlinkError::BadTiming),
    };
    let (modulation, preamble, no_crc) = match tx.modulation {
        Some(ModulationWire {
            lora: Some(l),
            fsk: None,
            lr_fhss: None,
        }) => {
            let spreading_factor = u8::try_from(l.spreading_factor)
                .ok()
                .filter(|sf| (5..=12).contains(sf))
                .ok_or(DownlinkError::BadModulation)?;
            // Truncated to kHz as the forwarder's datr has it (`BW812` for 812.5 kHz).
            let bandwidth_khz = l.bandwidth / 1000;
            if bandwidth_khz == 0 {
                return Err(DownlinkError::BadModulation);
            }
            let code_rate = match (l.code_rate, l.code_rate_legacy.as_deref()) {
                (CodeRate::Undefined, Some(legacy)) => CodeRate::from_semtech(legacy),
                (c, _) => Some(c),
            }
            .filter(|c| c.is_lora_tx())
            .ok_or(DownlinkError::BadCodeRate)?;
            let preamble = match l.preamble {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| DownlinkError::BadModulation)?),
            };
            let modulation = TxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor,
                    bandwidth_khz,
                },
                code_rate,
                polarization_inversion: l.polarization_inversion.unwrap_or(false),
            };
            (modulation, preamble, l.no_crc.unwrap_or(false))
        }
        Some(ModulationWire {
            lora: None,
            fsk: Some(f),
            lr_fhss: None,
        }) => (
            TxModulation::Fsk {
                bitrate: f.datarate,
                frequency_deviation: f.frequency_deviation,
            },
            None,
            false,
        ),
        _ => return Err(DownlinkError::BadModulation),
    };
    Ok(Txpk {
        timing,
        frequency: tx.frequency,
        rf_chain: 0,
        power: i8::try_from(tx.power).map_err(|_| DownlinkError::BadPower)?,
        antenna: tx.antenna,
        board: tx.board,
        modulation,
        preamble,
        no_crc,
        data: item.phy_payload,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) const GW: Eui64 = Eui64([1, 2, 3, 4, 5, 6, 7, 8]);

    /// One LoRa item at 869.525 MHz, SF9, with `timing`.
    pub(crate) fn item(timing: Value, context: &[u8]) -> Value {
        json!({
            "phyPayload": "YAQDAgGAAQAB",
            "txInfo": {
                "frequency": 869525000,
                "power": 27,
                "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 9, "codeRate": "CR_4_5", "polarizationInversion": true}},
                "board": 0,
                "antenna": 0,
                "timing": timing,
                "context": crate::base64_field::encode(context)
            }
        })
    }

    fn parse(v: &Value) -> Result<DownlinkFrame, DownlinkError> {
        DownlinkFrame::parse(&serde_json::to_vec(v).unwrap(), GW)
    }

    fn one(timing: Value, context: &[u8]) -> Result<Txpk, DownlinkError> {
        let f = parse(
            &json!({"downlinkId": 7, "gatewayId": GW.to_string(), "items": [item(timing, context)]}),
        )?;
        Ok(f.items.into_iter().next().unwrap())
    }

    #[test]
    fn immediately_becomes_imme() {
        let t = one(json!({"immediately": {}}), &[]).unwrap();
        assert_eq!(t.timing, TxTiming::Immediately);
        assert_eq!(
            (t.frequency, t.power, t.data),
            (869_525_000, 27, vec![0x60, 4, 3, 2, 1, 0x80, 1, 0, 1])
        );
        assert_eq!(
            t.modulation,
            TxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: 9,
                    bandwidth_khz: 125
                },
                code_rate: CodeRate::Cr4_5,
                polarization_inversion: true
            }
        );
    }

    #[test]
    fn delay_counts_from_the_uplink_context_tmst() {
        let ctx = 3_512_348_611u32.to_be_bytes();
        let t = one(json!({"delay": {"delay": "1s"}}), &ctx).unwrap();
        assert_eq!(t.timing, TxTiming::Tmst(3_513_348_611));
        let t = one(json!({"delay": {"delay": "5.000250s"}}), &ctx).unwrap();
        assert_eq!(t.timing, TxTiming::Tmst(3_517_348_861));
        // Bytes after the tmst are the gateway's own and do not change the time.
        let t = one(
            json!({"delay": {"delay": "2s"}}),
            &[0, 0, 0, 10, 0xff, 0xff],
        )
        .unwrap();
        assert_eq!(t.timing, TxTiming::Tmst(2_000_010));
        // The microsecond counter wraps.
        let t = one(json!({"delay": {"delay": "1s"}}), &u32::MAX.to_be_bytes()).unwrap();
        assert_eq!(t.timing, TxTiming::Tmst(999_999));
        // No duration is a zero delay, as protobuf reads it.
        let t = one(json!({"delay": {}}), &[0, 0, 1, 0]).unwrap();
        assert_eq!(t.timing, TxTiming::Tmst(256));
        assert_eq!(
            one(json!({"delay": {"delay": "1s"}}), &[0, 0, 1]),
            Err(DownlinkError::ShortContext)
        );
        assert_eq!(
            one(json!({"delay": {"delay": "1s"}}), &[]),
            Err(DownlinkError::ShortContext)
        );
        assert_eq!(
            one(json!({"delay": {"delay": "-1s"}}), &ctx),
            Err(DownlinkError::BadDelay)
        );
        assert_eq!(
            one(json!({"delay": {"delay": "4295s"}}), &ctx),
            Err(DownlinkError::BadDelay)
        );
        assert_eq!(
            one(json!({"delay": {"delay": "1 s"}}), &ctx),
            Err(DownlinkError::WrongFieldType)
        );
    }

    #[test]
    fn gps_epoch_becomes_tmms() {
        let t = one(
            json!({"gpsEpoch": {"timeSinceGpsEpoch": "1300000000.123456s"}}),
            &[],
        )
        .unwrap();
        assert_eq!(t.timing, TxTiming::Tmms(1_300_000_000_123));
        let t = one(json!({"gps_epoch": {"time_since_gps_epoch": "5s"}}), &[]).unwrap();
        assert_eq!(t.timing, TxTiming::Tmms(5_000));
        assert_eq!(
            one(json!({"gpsEpoch": {}}), &[]),
            Err(DownlinkError::BadTiming)
        );
        assert_eq!(
            one(json!({"gpsEpoch": {"timeSinceGpsEpoch": "-1s"}}), &[]),
            Err(DownlinkError::BadTiming)
        );
    }

    #[test]
    fn timing_must_be_exactly_one() {
        assert_eq!(one(json!({}), &[]), Err(DownlinkError::BadTiming));
        assert_eq!(one(Value::Null, &[]), Err(DownlinkError::BadTiming));
        assert_eq!(
            one(
                json!({"immediately": {}, "delay": {"delay": "1s"}}),
                &[0; 4]
            ),
            Err(DownlinkError::BadTiming)
        );
        assert_eq!(
            one(json!({"immediately": 1}), &[]),
            Err(DownlinkError::WrongFieldType)
        );
        assert_eq!(
            one(json!({"immediately": []}), &[]),
            Err(DownlinkError::WrongFieldType)
        );
        assert_eq!(
            one(json!({"delay": [], }), &[0; 4]),
            Err(DownlinkError::WrongFieldType)
        );
    }

    #[test]
    fn several_items_keep_their_order() {
        let rx2 = {
            let mut i = item(json!({"delay": {"delay": "2s"}}), &[0, 0, 0, 0]);
            i["txInfo"]["frequency"] = json!(869525000);
            i["txInfo"]["modulation"]["lora"]["spreadingFactor"] = json!(12);
            i
        };
        let f = parse(&json!({"downlinkId": 99, "items": [item(json!({"delay": {"delay": "1s"}}), &[0, 0, 0, 0]), rx2]})).unwrap();
        assert_eq!((f.downlink_id, f.gateway), (99, None));
        assert_eq!(
            f.items.iter().map(|t| t.timing).collect::<Vec<_>>(),
            [TxTiming::Tmst(1_000_000), TxTiming::Tmst(2_000_000)]
        );
    }

    #[test]
    fn proto_names_strings_for_numbers_and_enum_numbers() {
        let v = json!({
            "downlink_id": "4000000000",
            "gateway_id": "0102030405060708",
            "items": [{
                "phy_payload": "AQ",
                "tx_info": {
                    "frequency": "868100000",
                    "power": "-3",
                    "modulation": {"lora": {"bandwidth": 812500, "spreading_factor": 12, "code_rate": 10, "polarization_inversion": true, "preamble": 12, "no_crc": true}},
                    "timing": {"immediately": {}},
                    "unknownField": [1, 2]
                }
            }]
        });
        let f = parse(&v).unwrap();
        assert_eq!(f.downlink_id, 4_000_000_000);
        let t = &f.items[0];
        assert_eq!(
            (t.frequency, t.power, t.preamble, t.no_crc, t.data.clone()),
            (868_100_000, -3, Some(12), true, vec![1])
        );
        assert_eq!(
            t.modulation,
            TxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: 12,
                    bandwidth_khz: 812
                },
                code_rate: CodeRate::CrLi4_5,
                polarization_inversion: true
            }
        );
    }

    #[test]
    fn fsk_and_legacy_code_rate() {
        let mut i = item(json!({"immediately": {}}), &[]);
        i["txInfo"]["modulation"] =
            json!({"fsk": {"frequencyDeviation": 25000, "datarate": 50000}});
        let f = parse(&json!({"items": [i]})).unwrap();
        assert_eq!(
            f.items[0].modulation,
            TxModulation::Fsk {
                bitrate: 50_000,
                frequency_deviation: 25_000
            }
        );
        let mut i = item(json!({"immediately": {}}), &[]);
        i["txInfo"]["modulation"]["lora"] =
            json!({"bandwidth": 125000, "spreadingFactor": 7, "codeRateLegacy": "4/6"});
        let f = parse(&json!({"items": [i]})).unwrap();
        assert!(matches!(
            f.items[0].modulation,
            TxModulation::Lora {
                code_rate: CodeRate::Cr4_6,
                ..
            }
        ));
    }

    #[test]
    fn rejected_frames() {
        let good = || item(json!({"immediately": {}}), &[]);
        let with = |path: &[&str], v: Value| {
            let mut i = good();
            let mut slot = &mut i;
            for p in path {
                slot = &mut slot[*p];
            }
            *slot = v;
            json!({"items": [i]})
        };
        let lora = |field: &'static str| ["txInfo", "modulation", "lora", field];
        let cases: Vec<(Value, DownlinkError)> = vec![
            (json!({}), DownlinkError::NoItems),
            (json!({"items": []}), DownlinkError::NoItems),
            (json!({"items": null}), DownlinkError::NoItems),
            (json!({"items": {}}), DownlinkError::WrongFieldType),
            (json!({"items": [[]]}), DownlinkError::WrongFieldType),
            (with(&["txInfo"], json!([])), DownlinkError::WrongFieldType),
            (
                with(&["txInfo", "modulation"], json!({"lora": []})),
                DownlinkError::WrongFieldType,
            ),
            (
                json!({"items": [good()], "gatewayId": "zz"}),
                DownlinkError::BadGatewayId,
            ),
            (
                json!({"items": [good()], "gatewayId": "0807060504030201"}),
                DownlinkError::GatewayMismatch,
            ),
            (
                json!({"items": [{"phyPayload": "AA=="}]}),
                DownlinkError::NoTxInfo,
            ),
            (
                json!({"items": [good()], "downlinkId": -1}),
                DownlinkError::WrongFieldType,
            ),
            (
                json!({"items": [good()], "downlinkId": "x"}),
                DownlinkError::WrongFieldType,
            ),
            (
                with(&["phyPayload"], json!("***")),
                DownlinkError::WrongFieldType,
            ),
            (
                with(&["txInfo", "power"], json!(128)),
                DownlinkError::BadPower,
            ),
            (
                with(&["txInfo", "power"], json!(-129)),
                DownlinkError::BadPower,
            ),
            (
                with(&["txInfo", "frequency"], json!(-1)),
                DownlinkError::WrongFieldType,
            ),
            (
                with(&["txInfo", "modulation"], json!(null)),
                DownlinkError::BadModulation,
            ),
            (
                with(&["txInfo", "modulation"], json!({})),
                DownlinkError::BadModulation,
            ),
            (
                with(
                    &["txInfo", "modulation"],
                    json!({"lrFhss": {"operatingChannelWidth": 137000}}),
                ),
                DownlinkError::BadModulation,
            ),
            (
                with(&["txInfo", "modulation", "fsk"], json!({"datarate": 50000})),
                DownlinkError::BadModulation,
            ),
            (
                with(&lora("spreadingFactor"), json!(4)),
                DownlinkError::BadModulation,
            ),
            (
                with(&lora("spreadingFactor"), json!(13)),
                DownlinkError::BadModulation,
            ),
            (
                with(&lora("bandwidth"), json!(999)),
                DownlinkError::BadModulation,
            ),
            (
                with(&lora("preamble"), json!(70000)),
                DownlinkError::BadModulation,
            ),
            (
                with(&lora("codeRate"), json!("CR_UNDEFINED")),
                DownlinkError::BadCodeRate,
            ),
            (
                with(&lora("codeRate"), json!("CR_3_8")),
                DownlinkError::BadCodeRate,
            ),
            (
                with(&lora("codeRate"), json!("CR_9_9")),
                DownlinkError::WrongFieldType,
            ),
            (
                with(&lora("codeRate"), json!(99)),
                DownlinkError::WrongFieldType,
            ),
            (
                with(&lora("polarizationInversion"), json!("yes")),
                DownlinkError::WrongFieldType,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(parse(&v), Err(want), "{v}");
        }
        for raw in [
            &b""[..],
            b"[]",
            b"null",
            b"{",
            b"\"down\"",
            b"\xff\xfe",
            b"{}{}",
        ] {
            assert_eq!(
                DownlinkFrame::parse(raw, GW),
                Err(DownlinkError::BadJson),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
