//! `fuota plan`: the campaign plan for a patch, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use fuota_server::plan::{parse_duration, plan, Plan, PlanRequest, Region};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The signed patch (or any data block) to send.
    #[arg(long)]
    patch: PathBuf,
    /// eu868 or us915.
    #[arg(long)]
    region: Region,
    /// Class C data rate of the multicast session.
    #[arg(long)]
    dr: u8,
    /// Class C frequency in Hz (default: the region's class C default).
    #[arg(long)]
    freq: Option<u32>,
    /// Expected fragment loss at a device (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Wanted probability that a device decodes from the multicast alone.
    #[arg(long, default_value_t = 0.99)]
    success: f64,
    /// Maintenance window: seconds, or with a unit (90m, 2h, 1h30m).
    #[arg(long, value_parser = parse_duration)]
    window: u64,
    /// BlockAckDelay of the session (0 to 7).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=7))]
    block_ack_delay: u8,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

fn hms(s: f64) -> String {
    let s = s.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, s) => format!("{h} h {m:02} min {s:02} s"),
    }
}

fn print_table(p: &Plan) {
    let rows = [
        ("region", p.region.to_string()),
        (
            "class C",
            format!(
                "DR{} ({}) at {:.3} MHz",
                p.dr,
                p.modulation,
                f64::from(p.freq_hz) / 1e6
            ),
        ),
        ("max payload N", format!("{} B", p.max_payload)),
        ("fragment size", format!("{} B", p.frag_size)),
        (
            "data",
            format!("{} B in M = {} fragments", p.data_len, p.nb_frag),
        ),
        ("padding", format!("{} B", p.padding)),
        (
            "redundancy R",
            format!(
                "{} coded fragments ({:.1} %)",
                p.redundancy,
                100.0 * p.redundancy as f64 / p.nb_frag as f64
            ),
        ),
        (
            "device success",
            format!(
                "{:.4} at {:.1} % loss (multicast alone)",
                p.success,
                100.0 * p.loss
            ),
        ),
        (
            "airtime",
            format!("{:.1} ms per fragment", p.time_on_air_ms),
        ),
        (
            "spacing",
            format!(
                "{:.1} ms (duty cycle {} %)",
                p.spacing_ms,
                100.0 * p.duty_cycle
            ),
        ),
        ("multicast", hms(p.multicast_s)),
        (
            "session TimeOut",
            format!(
                "{} (2^{} s)",
                hms((1u64 << p.timeout_exp) as f64),
                p.timeout_exp
            ),
        ),
        (
            "status round",
            format!("{} (BlockAckDelay {})", hms(p.status_s), p.block_ack_delay),
        ),
        ("total", hms(p.total_s)),
        ("window", hms(p.window_s as f64)),
        ("fits", if p.fits { "yes" } else { "NO" }.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
}

pub fn run(a: PlanArgs) -> Result<ExitCode> {
    let data_len = std::fs::metadata(&a.patch)
        .with_context(|| format!("reading {}", a.patch.display()))?
        .len();
    let Ok(data_len) = usize::try_from(data_len) else {
        bail!("{} is too large", a.patch.display());
    };
    let req = PlanRequest {
        freq_hz: a.freq,
        success: a.success,
        block_ack_delay: a.block_ack_delay,
        ..PlanRequest::new(data_len, a.region, a.dr, a.loss, a.window)
    };
    let p = plan(&req)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print_table(&p);
    }
    Ok(ExitCode::SUCCESS)
}
