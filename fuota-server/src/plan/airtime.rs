//! LoRa time on air (Semtech AN1200.13, as DESIGN.md gives it) and FSK airtime.

/// A data rate's modulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modulation {
    /// LoRa with spreading factor `sf` (7..=12) and bandwidth `bw_khz` (125, 250, 500).
    Lora { sf: u8, bw_khz: u32 },
    /// FSK at `kbps` (EU868 DR7: 50 kbps).
    Fsk { kbps: u32 },
}

/// Framing of one transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// PHYPayload bytes.
    pub payload_len: usize,
    /// Payload CRC (uplinks have one, downlinks none).
    pub crc: bool,
    /// Coding rate 4/(4+cr), cr in 1..=4.
    pub cr: u8,
    /// Preamble symbols (8 in LoRaWAN).
    pub preamble: u32,
}

impl Frame {
    /// A LoRaWAN downlink: no payload CRC, CR 4/5, 8 preamble symbols.
    pub fn downlink(payload_len: usize) -> Self {
        Self {
            payload_len,
            crc: false,
            cr: 1,
            preamble: 8,
        }
    }

    /// A LoRaWAN uplink: payload CRC, CR 4/5, 8 preamble symbols.
    pub fn uplink(payload_len: usize) -> Self {
        Self {
            crc: true,
            ..Self::downlink(payload_len)
        }
    }
}

/// Time on air in microseconds.
pub fn time_on_air_us(m: Modulation, f: Frame) -> u64 {
    match m {
        Modulation::Lora { sf, bw_khz } => {
            let sf = i64::from(sf);
            let bw_hz = i64::from(bw_khz) * 1000;
            // Low data rate optimisation: symbols of 16 ms or more.
            let de = i64::from((sf >= 11 && bw_khz == 125) || (sf == 12 && bw_khz == 250));
            let pl = f.payload_len as i64;
            let num = 8 * pl - 4 * sf + 28 + 16 * i64::from(f.crc);
            let den = 4 * (sf - 2 * de);
            let blocks = if num > 0 { (num + den - 1) / den } else { 0 };
            let payload_symbols = 8 + blocks * (i64::from(f.cr) + 4);
            // In quarter symbols: preamble + 4.25, then the payload symbols.
            let quarters = 4 * i64::from(f.preamble) + 17 + 4 * payload_symbols;
            let symbol_ns = (1i64 << sf) * 1_000_000_000 / bw_hz;
            (quarters * symbol_ns / 4 / 1000) as u64
        }
        Modulation::Fsk { kbps } => {
            // Preamble 5, sync word 3, length 1, payload, CRC 2 bytes.
            let bytes = 5 + 3 + 1 + f.payload_len as u64 + 2;
            bytes * 8 * 1000 / u64::from(kbps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_check_values() {
        let lora = |sf, bw_khz| Modulation::Lora { sf, bw_khz };
        assert_eq!(time_on_air_us(lora(12, 125), Frame::uplink(51)), 2_465_792);
        assert_eq!(time_on_air_us(lora(7, 125), Frame::uplink(20)), 56_576);
        assert_eq!(time_on_air_us(lora(7, 500), Frame::uplink(255)), 99_904);
    }

    #[test]
    fn downlinks_have_no_crc_and_short_payloads_take_the_minimum() {
        let m = Modulation::Lora { sf: 9, bw_khz: 125 };
        assert!(time_on_air_us(m, Frame::downlink(127)) < time_on_air_us(m, Frame::uplink(127)));
        // Empty payload: 8 payload symbols + 12.25 preamble symbols of 4.096 ms.
        assert_eq!(time_on_air_us(m, Frame::downlink(0)), 82_944);
        assert_eq!(
            time_on_air_us(Modulation::Fsk { kbps: 50 }, Frame::downlink(100)),
            17_760
        );
    }
}
