//! Modulation parameters in both spellings: the packet forwarder's strings (`datr`
//! `"SF7BW125"`, `codr` `"4/5"`) and ChirpStack's (`spreadingFactor`, `bandwidth` in Hz,
//! `codeRate` `"CR_4_5"`).

use core::fmt;

/// A LoRa data rate as the forwarder writes it: `SF<sf>BW<kHz>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraDataRate {
    pub spreading_factor: u8,
    pub bandwidth_khz: u32,
}

impl LoraDataRate {
    /// `SF5`..`SF12` and a non-zero bandwidth in kHz, nothing else around them.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SF")?;
        let (sf, bw) = rest.split_once("BW")?;
        let spreading_factor = decimal(sf)?;
        let bandwidth_khz = decimal(bw)?;
        ((5..=12).contains(&spreading_factor) && bandwidth_khz > 0).then_some(Self {
            spreading_factor: spreading_factor as u8,
            bandwidth_khz,
        })
    }

    pub fn bandwidth_hz(self) -> u32 {
        self.bandwidth_khz.saturating_mul(1000)
    }
}

impl fmt::Display for LoraDataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SF{}BW{}", self.spreading_factor, self.bandwidth_khz)
    }
}

/// An LR-FHSS data rate as the SX1302 forwarder writes it: `M0CW<occupied channel width, kHz>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LrFhssDataRate {
    pub channel_width_khz: u32,
}

impl LrFhssDataRate {
    pub fn parse(s: &str) -> Option<Self> {
        let channel_width_khz = decimal(s.strip_prefix("M0CW")?)?;
        (channel_width_khz > 0).then_some(Self { channel_width_khz })
    }
}

impl fmt::Display for LrFhssDataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "M0CW{}", self.channel_width_khz)
    }
}

/// 1 to 9 ASCII digits (enough for any rate, and no overflow).
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// ChirpStack's `CodeRate` enum (its protobuf-JSON names are [`CodeRate::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeRate {
    /// Unknown to the forwarder: it writes `"OFF"` (the CR0 case, mostly false syncs) or `"?"`.
    Undefined,
    Cr4_5,
    Cr4_6,
    Cr4_7,
    Cr4_8,
    /// LR-FHSS rates.
    Cr3_8,
    Cr2_6,
    Cr1_4,
    Cr1_6,
    Cr5_6,
    /// LoRa 2.4 GHz long-interleaved rates.
    CrLi4_5,
    CrLi4_6,
    CrLi4_8,
}

impl CodeRate {
    pub const ALL: [CodeRate; 13] = [
        CodeRate::Undefined,
        CodeRate::Cr4_5,
        CodeRate::Cr4_6,
        CodeRate::Cr4_7,
        CodeRate::Cr4_8,
        CodeRate::Cr3_8,
        CodeRate::Cr2_6,
        CodeRate::Cr1_4,
        CodeRate::Cr1_6,
        CodeRate::Cr5_6,
        CodeRate::CrLi4_5,
        CodeRate::CrLi4_6,
        CodeRate::CrLi4_8,
    ];

    /// The forwarder's `codr`. `"1/3"` is the same rate as `"2/6"`; `"OFF"` and `"?"` are
    /// what the forwarder writes when it does not know the rate. Anything else is `None`.
    pub fn from_semtech(s: &str) -> Option<Self> {
        Some(match s {
            "4/5" => Self::Cr4_5,
            "4/6" => Self::Cr4_6,
            "4/7" => Self::Cr4_7,
            "4/8" => Self::Cr4_8,
            "3/8" => Self::Cr3_8,
            "2/6" | "1/3" => Self::Cr2_6,
            "1/4" => Self::Cr1_4,
            "1/6" => Self::Cr1_6,
            "5/6" => Self::Cr5_6,
            "4/5LI" => Self::CrLi4_5,
            "4/6LI" => Self::CrLi4_6,
            "4/8LI" => Self::CrLi4_8,
            "OFF" | "?" => Self::Undefined,
            _ => return None,
        })
    }

    pub fn semtech(self) -> &'static str {
        match self {
            Self::Undefined => "OFF",
            Self::Cr4_5 => "4/5",
            Self::Cr4_6 => "4/6",
            Self::Cr4_7 => "4/7",
            Self::Cr4_8 => "4/8",
            Self::Cr3_8 => "3/8",
            Self::Cr2_6 => "2/6",
            Self::Cr1_4 => "1/4",
            Self::Cr1_6 => "1/6",
            Self::Cr5_6 => "5/6",
            Self::CrLi4_5 => "4/5LI",
            Self::CrLi4_6 => "4/6LI",
            Self::CrLi4_8 => "4/8LI",
        }
    }

    /// The protobuf enum value's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Undefined => "CR_UNDEFINED",
            Self::Cr4_5 => "CR_4_5",
            Self::Cr4_6 => "CR_4_6",
            Self::Cr4_7 => "CR_4_7",
            Self::Cr4_8 => "CR_4_8",
            Self::Cr3_8 => "CR_3_8",
            Self::Cr2_6 => "CR_2_6",
            Self::Cr1_4 => "CR_1_4",
            Self::Cr1_6 => "CR_1_6",
            Self::Cr5_6 => "CR_5_6",
            Self::CrLi4_5 => "CR_LI_4_5",
            Self::CrLi4_6 => "CR_LI_4_6",
            Self::CrLi4_8 => "CR_LI_4_8",
        }
    }

    /// The protobuf enum value's number (its position in [`CodeRate::ALL`]).
    pub fn number(self) -> u32 {
        Self::ALL.iter().position(|&c| c == self).unwrap_or(0) as u32
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn from_number(n: i64) -> Option<Self> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// What a forwarder can transmit with LoRa: the 4/x rates and the 2.4 GHz LI ones.
    pub fn is_lora_tx(self) -> bool {
        matches!(
            self,
            Self::Cr4_5
                | Self::Cr4_6
                | Self::Cr4_7
                | Self::Cr4_8
                | Self::CrLi4_5
                | Self::CrLi4_6
                | Self::CrLi4_8
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_data_rates() {
        let dr = LoraDataRate::parse("SF7BW125").unwrap();
        assert_eq!(
            (dr.spreading_factor, dr.bandwidth_khz, dr.bandwidth_hz()),
            (7, 125, 125_000)
        );
        assert_eq!(dr.to_string(), "SF7BW125");
        assert_eq!(
            LoraDataRate::parse("SF12BW500").map(|d| d.spreading_factor),
            Some(12)
        );
        assert_eq!(
            LoraDataRate::parse("SF5BW812").map(|d| d.bandwidth_hz()),
            Some(812_000)
        );
        for bad in [
            "",
            "SF",
            "SF7",
            "SF7BW",
            "SFBW125",
            "SF4BW125",
            "SF13BW125",
            "SF7BW0",
            "sf7bw125",
            "SF7BW125x",
            " SF7BW125",
            "SF+7BW125",
            "SF7BW1234567890",
        ] {
            assert_eq!(LoraDataRate::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lr_fhss_data_rates() {
        assert_eq!(
            LrFhssDataRate::parse("M0CW137"),
            Some(LrFhssDataRate {
                channel_width_khz: 137
            })
        );
        assert_eq!(
            LrFhssDataRate {
                channel_width_khz: 336
            }
            .to_string(),
            "M0CW336"
        );
        for bad in ["M0CW", "M0CW0", "M1CW137", "M0CW13a"] {
            assert_eq!(LrFhssDataRate::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn code_rates_in_both_spellings() {
        for cr in CodeRate::ALL {
            assert_eq!(CodeRate::from_semtech(cr.semtech()), Some(cr));
            assert_eq!(CodeRate::from_name(cr.name()), Some(cr));
            assert_eq!(CodeRate::from_number(i64::from(cr.number())), Some(cr));
        }
        assert_eq!(CodeRate::Cr4_5.number(), 1);
        assert_eq!(CodeRate::CrLi4_8.number(), 12);
        assert_eq!(CodeRate::from_semtech("1/3"), Some(CodeRate::Cr2_6));
        assert_eq!(CodeRate::from_semtech("?"), Some(CodeRate::Undefined));
        assert_eq!(CodeRate::from_semtech("4/9"), None);
        assert_eq!(CodeRate::from_number(13), None);
        assert_eq!(CodeRate::from_number(-1), None);
        assert!(
            CodeRate::Cr4_5.is_lora_tx()
                && !CodeRate::Cr3_8.is_lora_tx()
                && !CodeRate::Undefined.is_lora_tx()
        );
    }
}
