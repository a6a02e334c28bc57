//! The campaign planner: from a patch size, a region and a data rate to fragment size, count,
//! redundancy, airtime, spacing, class C session timeout and total time, and whether it fits
//! the maintenance window. Pure arithmetic, no I/O (it builds without the `cli` feature).

pub mod airtime;
pub mod region;

use core::fmt;

use airtime::{time_on_air_us, Frame, Modulation};
pub use region::{DataRate, Region, SubBand};

/// DataFragment header: CID and the Index&N field.
pub const FRAGMENT_HEADER: usize = 3;
/// LoRaWAN framing around FRMPayload: MHDR, FHDR without FOpts, FPort, MIC.
pub const LORAWAN_OVERHEAD: usize = 1 + 7 + 1 + 4;
/// N is 14 bits in DataFragment.
pub const MAX_FRAGMENTS: usize = (1 << 14) - 1;
/// TS005 TimeOut is 4 bits: at most 2^15 s.
pub const MAX_TIMEOUT_EXP: u8 = 15;

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// Bytes to send (the signed patch).
    pub data_len: usize,
    pub region: Region,
    /// Class C data rate.
    pub dr: u8,
    /// Class C frequency; the region's default when `None`.
    pub freq_hz: Option<u32>,
    /// Expected fragment loss at a device, 0 <= loss < 1.
    pub loss: f64,
    /// Wanted probability that one device can decode from the multicast alone.
    pub success: f64,
    /// Maintenance window, seconds.
    pub window_s: u64,
    /// BlockAckDelay of the session (status answers spread over 2^(d+4) s).
    pub block_ack_delay: u8,
    /// Gap between two fragments on top of the airtime (gateway turnaround), ms.
    pub gap_ms: u64,
}

impl PlanRequest {
    /// Defaults: 99 % success, BlockAckDelay 2, 50 ms gap, default class C frequency.
    pub fn new(data_len: usize, region: Region, dr: u8, loss: f64, window_s: u64) -> Self {
        Self {
            data_len,
            region,
            dr,
            freq_hz: None,
            loss,
            success: 0.99,
            window_s,
            block_ack_delay: 2,
            gap_ms: 50,
        }
    }
}

/// A campaign plan.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub struct Plan {
    pub region: Region,
    pub dr: u8,
    /// "SF9BW125" or "FSK50".
    pub modulation: String,
    pub freq_hz: u32,
    /// Largest FRMPayload at this DR.
    pub max_payload: usize,
    pub frag_size: usize,
    pub data_len: usize,
    /// Data fragments (M).
    pub nb_frag: usize,
    pub padding: usize,
    /// Coded fragments sent after the M data fragments (R).
    pub redundancy: usize,
    pub loss: f64,
    /// Probability that a device decodes from the multicast alone, with M + R sent.
    pub success: f64,
    pub time_on_air_ms: f64,
    pub duty_cycle: f64,
    /// Start-to-start time between two fragments.
    pub spacing_ms: f64,
    /// Time to send the M + R fragments.
    pub multicast_s: f64,
    /// McClassCSessionReq TimeOut: the session lasts 2^timeout_exp s.
    pub timeout_exp: u8,
    pub block_ack_delay: u8,
    /// Time for the status answers to come back (2^(BlockAckDelay+4) s).
    pub status_s: f64,
    /// Multicast and status round.
    pub total_s: f64,
    pub window_s: u64,
    pub fits: bool,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    UnknownDataRate {
        region: Region,
        dr: u8,
    },
    /// The frequency is in none of the region's bands.
    Frequency(u32),
    /// Loss not in [0, 1) or success not in (0, 1).
    Probability(&'static str, f64),
    EmptyData,
    /// More than 16383 fragments would be needed: a higher DR or a smaller patch.
    TooManyFragments {
        needed: usize,
    },
    /// No redundancy within the 14-bit fragment numbering reaches the wanted success.
    Unreachable,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownDataRate { region, dr } => {
                let drs: Vec<String> = region
                    .data_rates()
                    .iter()
                    .map(|d| d.dr.to_string())
                    .collect();
                write!(
                    f,
                    "{region} has no downlink DR{dr} (downlink DRs: {})",
                    drs.join(", ")
                )
            }
            PlanError::Frequency(hz) => write!(f, "{hz} Hz is outside the region's bands"),
            PlanError::Probability(what, v) => write!(f, "{what} {v} is out of range"),
            PlanError::EmptyData => f.write_str("nothing to send (0 bytes)"),
            PlanError::TooManyFragments { needed } => write!(
                f,
                "{needed} fragments needed, at most {MAX_FRAGMENTS}: use a higher DR"
            ),
            PlanError::Unreachable => {
                f.write_str("no redundancy reaches the wanted success at this loss")
            }
        }
    }
}

impl std::error::Error for PlanError {}

fn modulation_name(m: Modulation) -> String {
    match m {
        Modulation::Lora { sf, bw_khz } => format!("SF{sf}BW{bw_khz}"),
        Modulation::Fsk { kbps } => format!("FSK{kbps}"),
    }
}

/// Probability that a random binary k x M system with k = M + `extra` rows has rank M
/// (the TS004 code behaves like one): prod over i > extra of (1 - 2^-i).
pub fn full_rank_probability(extra: usize) -> f64 {
    (extra + 1..extra + 64).fold(1.0, |p, i| p * (1.0 - 0.5f64.powi(i as i32)))
}

/// Probability that a device that loses each fragment with probability `loss` can decode
/// `m` data fragments from `m + r` sent.
pub fn decode_probability(m: usize, r: usize, loss: f64) -> f64 {
    let n = m + r;
    if loss <= 0.0 {
        return full_rank_probability(r);
    }
    let (ln_p, ln_q) = (loss.ln(), (1.0 - loss).ln());
    // ln(k!) for k <= n.
    let mut ln_fact = Vec::with_capacity(n + 1);
    ln_fact.push(0.0f64);
    for k in 1..=n {
        ln_fact.push(ln_fact[k - 1] + (k as f64).ln());
    }
    (m..=n)
        .map(|k| {
            let ln_pmf =
                ln_fact[n] - ln_fact[k] - ln_fact[n - k] + k as f64 * ln_q + (n - k) as f64 * ln_p;
            ln_pmf.exp() * full_rank_probability(k - m)
        })
        .sum()
}

/// The smallest redundancy R for which a device decodes with probability `success`.
pub fn redundancy(m: usize, loss: f64, success: f64) -> Option<usize> {
    let max_r = MAX_FRAGMENTS.checked_sub(m)?;
    if decode_probability(m, max_r, loss) < success {
        return None;
    }
    // decode_probability grows with r: binary search.
    let (mut lo, mut hi) = (0, max_r);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if decode_probability(m, mid, loss) >= success {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// "7200", "7200s", "90m", "2h", "1h30m" -> seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use h, m, s)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total += n * unit;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{s:?}: a unit must follow {digits}"));
    }
    Ok(total)
}

/// Makes the plan.
pub fn plan(req: &PlanRequest) -> Result<Plan, PlanError> {
    let rate = req
        .region
        .data_rate(req.dr)
        .ok_or(PlanError::UnknownDataRate {
            region: req.region,
            dr: req.dr,
        })?;
    let freq_hz = req.freq_hz.unwrap_or(req.region.class_c_default().0);
    let duty_cycle = req
        .region
        .duty_cycle(freq_hz)
        .ok_or(PlanError::Frequency(freq_hz))?;
    if !(0.0..1.0).contains(&req.loss) {
        return Err(PlanError::Probability("loss", req.loss));
    }
    if !(req.success > 0.0 && req.success < 1.0) {
        return Err(PlanError::Probability("success", req.success));
    }
    if req.data_len == 0 {
        return Err(PlanError::EmptyData);
    }
    let frag_size = rate.max_payload - FRAGMENT_HEADER;
    let nb_frag = req.data_len.div_ceil(frag_size);
    if nb_frag > MAX_FRAGMENTS {
        return Err(PlanError::TooManyFragments { needed: nb_frag });
    }
    let padding = nb_frag * frag_size - req.data_len;
    let r = redundancy(nb_frag, req.loss, req.success).ok_or(PlanError::Unreachable)?;
    let toa_us = time_on_air_us(
        rate.modulation,
        Frame::downlink(LORAWAN_OVERHEAD + FRAGMENT_HEADER + frag_size),
    );
    let time_on_air_ms = toa_us as f64 / 1000.0;
    // The transmitter stays off for ToA * (1/dc - 1) after each frame.
    let spacing_ms = (time_on_air_ms / duty_cycle).max(time_on_air_ms + req.gap_ms as f64);
    let multicast_s = (nb_frag + r) as f64 * spacing_ms / 1000.0;
    let timeout_exp = (0..=MAX_TIMEOUT_EXP)
        .find(|&t| (1u64 << t) as f64 >= multicast_s)
        .unwrap_or(MAX_TIMEOUT_EXP);
    let status_s = f64::from(1u32 << (u32::from(req.block_ack_delay.min(7)) + 4));
    let total_s = multicast_s + status_s;
    Ok(Plan {
        region: req.region,
        dr: req.dr,
        modulation: modulation_name(rate.modulation),
        freq_hz,
        max_payload: rate.max_payload,
        frag_size,
        data_len: req.data_len,
        nb_frag,
        padding,
        redundancy: r,
        loss: req.loss,
        success: decode_probability(nb_frag, r, req.loss),
        time_on_air_ms,
        duty_cycle,
        spacing_ms,
        multicast_s,
        timeout_exp,
        block_ack_delay: req.block_ack_delay,
        status_s,
        total_s,
        window_s: req.window_s,
        fits: total_s <= req.window_s as f64 && (1u64 << timeout_exp) as f64 >= multicast_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_rank_matches_the_known_decoder_figures() {
        // M + 2 received: a bit over three in four decode; M + 7: 99 %.
        assert!((full_rank_probability(0) - 0.2888).abs() < 1e-3);
        assert!((full_rank_probability(2) - 0.7701).abs() < 1e-3);
        assert!(full_rank_probability(7) > 0.99);
    }

    #[test]
    fn redundancy_grows_with_loss_and_meets_the_target() {
        let m = 200;
        let r0 = redundancy(m, 0.0, 0.99).unwrap();
        assert_eq!(r0, 7);
        let r10 = redundancy(m, 0.1, 0.99).unwrap();
        let r30 = redundancy(m, 0.3, 0.99).unwrap();
        assert!(r0 < r10 && r10 < r30, "{r0} {r10} {r30}");
        assert!(decode_probability(m, r10, 0.1) >= 0.99);
        assert!(decode_probability(m, r10 - 1, 0.1) < 0.99);
        // Roughly M * loss / (1 - loss) plus a margin of a few standard deviations.
        assert!((23..=60).contains(&r10), "{r10}");
    }

    #[test]
    fn a_plan_for_eu868_dr3() {
        let p = plan(&PlanRequest::new(20_000, Region::Eu868, 3, 0.1, 7200)).unwrap();
        assert_eq!((p.frag_size, p.nb_frag), (112, 179));
        assert_eq!(p.padding, 179 * 112 - 20_000);
        assert_eq!(p.freq_hz, 869_525_000);
        assert_eq!(p.modulation, "SF9BW125");
        // 128-byte PHYPayload at SF9/125 without CRC.
        assert_eq!(p.time_on_air_ms, 676.864);
        // 10 % duty cycle at 869.525 MHz: one frame every 10 airtimes.
        assert!((p.spacing_ms - 6768.64).abs() < 1e-6);
        assert!(p.success >= 0.99);
        assert!((1u64 << p.timeout_exp) as f64 >= p.multicast_s);
        assert!(((1u64 << (p.timeout_exp - 1)) as f64) < p.multicast_s);
        assert_eq!(p.status_s, 64.0);
        assert!(p.fits);
        let tight = plan(&PlanRequest::new(20_000, Region::Eu868, 3, 0.1, 300)).unwrap();
        assert!(!tight.fits);
    }

    #[test]
    fn us915_has_no_duty_cycle_and_refuses_uplink_drs() {
        let p = plan(&PlanRequest::new(20_000, Region::Us915, 10, 0.05, 3600)).unwrap();
        assert_eq!(p.duty_cycle, 1.0);
        assert_eq!(p.spacing_ms, p.time_on_air_ms + 50.0);
        assert_eq!(
            plan(&PlanRequest::new(1, Region::Us915, 2, 0.1, 60)),
            Err(PlanError::UnknownDataRate {
                region: Region::Us915,
                dr: 2
            })
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7200"), Ok(7200));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("45s"), Ok(45));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("12m5").is_err());
    }

    #[test]
    fn bad_requests_say_why() {
        let mut r = PlanRequest::new(1000, Region::Eu868, 0, 1.0, 60);
        assert!(matches!(plan(&r), Err(PlanError::Probability("loss", _))));
        r.loss = 0.1;
        r.freq_hz = Some(869_300_000);
        assert_eq!(plan(&r), Err(PlanError::Frequency(869_300_000)));
        r.freq_hz = None;
        r.data_len = 48 * 20_000;
        assert!(matches!(plan(&r), Err(PlanError::TooManyFragments { .. })));
        r.data_len = 0;
        assert_eq!(plan(&r), Err(PlanError::EmptyData));
    }
}
