//! Regional parameters the planner needs (LoRaWAN RP002-1.0.x): downlink data rates, the
//! largest application payload N per data rate (no FOpts, no repeater), the class C default
//! channel, and the duty-cycle sub-bands.

use core::fmt;
use core::str::FromStr;

use super::airtime::Modulation;

/// A LoRaWAN region the planner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
#[cfg_attr(feature = "cli", serde(rename_all = "lowercase"))]
pub enum Region {
    Eu868,
    Us915,
}

/// One downlink data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRate {
    pub dr: u8,
    pub modulation: Modulation,
    /// Largest FRMPayload (N).
    pub max_payload: usize,
}

/// A band with a duty-cycle limit (EU868, ETSI EN 300 220).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubBand {
    pub from_hz: u32,
    pub to_hz: u32,
    /// Fraction of the time a transmitter may use, 1.0 for none.
    pub duty_cycle: f64,
}

const fn lora(dr: u8, sf: u8, bw_khz: u32, max_payload: usize) -> DataRate {
    DataRate {
        dr,
        modulation: Modulation::Lora { sf, bw_khz },
        max_payload,
    }
}

const EU868_DRS: [DataRate; 8] = [
    lora(0, 12, 125, 51),
    lora(1, 11, 125, 51),
    lora(2, 10, 125, 51),
    lora(3, 9, 125, 115),
    lora(4, 8, 125, 242),
    lora(5, 7, 125, 242),
    lora(6, 7, 250, 242),
    DataRate {
        dr: 7,
        modulation: Modulation::Fsk { kbps: 50 },
        max_payload: 242,
    },
];

/// US915 downlinks use DR8..DR13 (500 kHz).
const US915_DRS: [DataRate; 6] = [
    lora(8, 12, 500, 53),
    lora(9, 11, 500, 129),
    lora(10, 10, 500, 242),
    lora(11, 9, 500, 242),
    lora(12, 8, 500, 242),
    lora(13, 7, 500, 242),
];

const EU868_BANDS: [SubBand; 6] = [
    SubBand {
        from_hz: 863_000_000,
        to_hz: 865_000_000,
        duty_cycle: 0.001,
    },
    SubBand {
        from_hz: 865_000_000,
        to_hz: 868_000_000,
        duty_cycle: 0.01,
    },
    SubBand {
        from_hz: 868_000_000,
        to_hz: 868_600_000,
        duty_cycle: 0.01,
    },
    SubBand {
        from_hz: 868_700_000,
        to_hz: 869_200_000,
        duty_cycle: 0.001,
    },
    SubBand {
        from_hz: 869_400_000,
        to_hz: 869_650_000,
        duty_cycle: 0.1,
    },
    SubBand {
        from_hz: 869_700_000,
        to_hz: 870_000_000,
        duty_cycle: 0.01,
    },
];

impl Region {
    /// Downlink data rates.
    pub fn data_rates(self) -> &'static [DataRate] {
        match self {
            Region::Eu868 => &EU868_DRS,
            Region::Us915 => &US915_DRS,
        }
    }

    /// Downlink data rate `dr`, if the region has it.
    pub fn data_rate(self, dr: u8) -> Option<DataRate> {
        self.data_rates().iter().copied().find(|d| d.dr == dr)
    }

    /// Class C (and RX2) default frequency and data rate.
    pub fn class_c_default(self) -> (u32, u8) {
        match self {
            Region::Eu868 => (869_525_000, 0),
            Region::Us915 => (923_300_000, 8),
        }
    }

    /// Duty-cycle sub-bands (empty: no duty-cycle limit).
    pub fn sub_bands(self) -> &'static [SubBand] {
        match self {
            Region::Eu868 => &EU868_BANDS,
            Region::Us915 => &[],
        }
    }

    /// The duty-cycle limit at `freq_hz`: 1.0 where none applies; `None` for a frequency
    /// outside the region's bands where the region has bands.
    pub fn duty_cycle(self, freq_hz: u32) -> Option<f64> {
        let bands = self.sub_bands();
        if bands.is_empty() {
            return Some(1.0);
        }
        bands
            .iter()
            .find(|b| (b.from_hz..b.to_hz).contains(&freq_hz))
            .map(|b| b.duty_cycle)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::Eu868 => "EU868",
            Region::Us915 => "US915",
        })
    }
}

/// A region name that is not EU868 or US915.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRegion(pub String);

impl fmt::Display for UnknownRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown region {:?} (known: eu868, us915)", self.0)
    }
}

impl std::error::Error for UnknownRegion {}

impl FromStr for Region {
    type Err = UnknownRegion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "eu868" => Ok(Region::Eu868),
            "us915" => Ok(Region::Us915),
            _ => Err(UnknownRegion(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        assert_eq!(Region::Eu868.data_rate(3).unwrap().max_payload, 115);
        assert_eq!(
            Region::Eu868.data_rate(5).unwrap().modulation,
            Modulation::Lora { sf: 7, bw_khz: 125 }
        );
        assert_eq!(Region::Us915.data_rate(8).unwrap().max_payload, 53);
        assert!(Region::Us915.data_rate(3).is_none(), "an uplink-only DR");
        assert_eq!(Region::Eu868.duty_cycle(869_525_000), Some(0.1));
        assert_eq!(Region::Eu868.duty_cycle(868_100_000), Some(0.01));
        assert_eq!(Region::Eu868.duty_cycle(869_300_000), None);
        assert_eq!(Region::Us915.duty_cycle(923_300_000), Some(1.0));
        assert_eq!("EU868".parse::<Region>(), Ok(Region::Eu868));
        assert!("as923".parse::<Region>().is_err());
    }
}
