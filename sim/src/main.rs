//! `fuota-sim`: runs FUOTA campaigns over a simulated LoRaWAN network, with the real device
//! agent and the real campaign engine, and reports how the update landed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fuota_sim::report::hms;
use fuota_sim::run::run;
use fuota_sim::scenario::Scenario;
use fuota_sim::sweep::{sweep, Axis};
use indicatif::{ProgressBar, ProgressStyle};

/// Discrete-event LoRaWAN FUOTA simulator.
#[derive(Debug, Parser)]
#[command(name = "fuota-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and print the report.
    Run(RunArgs),
    /// Run a scenario over a grid of two parameters: a table and a heatmap.
    Sweep(SweepArgs),
    /// Speed and memory: run scenarios and print wall time and peak memory per run.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Scenario files (default: sim/examples/city.toml).
    scenarios: Vec<PathBuf>,
    /// Also run each with this many devices (e.g. 10000), same density of gateways.
    #[arg(long)]
    devices: Option<usize>,
    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
}

/// One bench run.
#[derive(Debug, serde::Serialize)]
struct BenchRow {
    scenario: String,
    devices: usize,
    patch_bytes: usize,
    simulated_s: f64,
    wall_s: f64,
    updated: usize,
    peak_rss_mib: Option<f64>,
}

/// Peak resident memory of this process since the last reset, MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench_cmd(a: BenchArgs) -> Result<ExitCode> {
    let paths = if a.scenarios.is_empty() {
        vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/city.toml")]
    } else {
        a.scenarios.clone()
    };
    let mut runs = Vec::new();
    for p in &paths {
        let s = Scenario::load(p)?;
        runs.push(s.clone());
        if let Some(n) = a.devices {
            let mut big = s;
            // Same density: the disc and the gateway count grow with the device count.
            let k = n as f64 / big.devices as f64;
            big.radius_m *= k.sqrt();
            if let fuota_sim::scenario::Gateways::Count(g) = big.gateways {
                big.gateways = fuota_sim::scenario::Gateways::Count((g as f64 * k).ceil() as usize);
            }
            big.devices = n;
            big.name = format!("{} x{k:.0}", big.name);
            runs.push(big);
        }
    }
    let mut rows = Vec::new();
    for s in &runs {
        // Linux: writing 5 to clear_refs resets the peak (VmHWM) for the next run.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        // The bench measures wall time: this driver is allowed the clock.
        #[allow(clippy::disallowed_methods)]
        let started = std::time::Instant::now();
        let (_, _, r) = run(s, |_, _, _| {})?;
        rows.push(BenchRow {
            scenario: s.name.clone(),
            devices: r.devices,
            patch_bytes: r.patch_bytes,
            simulated_s: r.run_s,
            wall_s: started.elapsed().as_secs_f64(),
            updated: r.updated,
            peak_rss_mib: peak_rss_mib(),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>8} {:>8} {:>10} {:>9} {:>8} {:>10}",
        "scenario", "devices", "patch", "simulated", "wall", "updated", "peak RSS"
    );
    for r in rows {
        println!(
            "{:<16} {:>8} {:>7}B {:>10} {:>8.1}s {:>8} {:>7.0}MiB",
            r.scenario,
            r.devices,
            r.patch_bytes,
            hms(r.simulated_s),
            r.wall_s,
            r.updated,
            r.peak_rss_mib.unwrap_or(0.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
struct SweepArgs {
    /// Scenario file (TOML).
    scenario: PathBuf,
    /// Extra downlink loss values, e.g. 0,0.1,0.2.
    #[arg(long, value_delimiter = ',')]
    loss: Vec<f64>,
    /// Redundancy values (coded fragments of the first round), e.g. 10,20,40.
    #[arg(long, value_delimiter = ',')]
    redundancy: Vec<f64>,
    /// Class C data rates, e.g. 0,3,5.
    #[arg(long, value_delimiter = ',')]
    dr: Vec<f64>,
    /// Radii of the device disc in metres, e.g. 100,200,400.
    #[arg(long, value_delimiter = ',')]
    radius: Vec<f64>,
    /// Override the scenario's number of devices (sweeps run many times).
    #[arg(long)]
    devices: Option<usize>,
    /// Write the heatmap (SVG) here.
    #[arg(long)]
    heatmap: Option<PathBuf>,
    /// Print the grid as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenario file (TOML), e.g. sim/examples/small.toml.
    scenario: PathBuf,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write plots (SVG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Write this device's primary and secondary slots (by DevEUI in hex, or index) into DIR.
    #[arg(long, num_args = 2, value_names = ["DEVICE", "DIR"])]
    dump_flash: Option<Vec<String>>,
}

fn run_cmd(a: RunArgs) -> Result<ExitCode> {
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(seed) = a.seed {
        scenario.seed = seed;
    }
    let bar = ProgressBar::new(scenario.devices as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} updated, {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (world, built, report) = run(&scenario, |updated, _, t| {
        bar.set_position(updated as u64);
        bar.set_message(format!("{} simulated", hms(t as f64)));
    })?;
    bar.finish_and_clear();
    if let Some(dir) = &a.plots {
        fuota_sim::plots::write_all(dir, &report)
            .with_context(|| format!("writing plots into {}", dir.display()))?;
    }
    if let Some(args) = &a.dump_flash {
        let (who, dir) = (&args[0], PathBuf::from(&args[1]));
        fuota_sim::dump::dump_flash(&world, &built, who, &dir)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

fn sweep_cmd(a: SweepArgs) -> Result<ExitCode> {
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(n) = a.devices {
        scenario.devices = n;
    }
    let axes: Vec<(Axis, &[f64])> = [
        (Axis::Loss, a.loss.as_slice()),
        (Axis::Redundancy, a.redundancy.as_slice()),
        (Axis::Dr, a.dr.as_slice()),
        (Axis::Radius, a.radius.as_slice()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    let [rows, cols] = axes[..] else {
        bail!(
            "give exactly two of --loss, --redundancy, --dr, --radius (got {})",
            axes.len()
        );
    };
    let bar = ProgressBar::new((rows.1.len() * cols.1.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} runs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = sweep(&scenario, rows, cols, |_| bar.inc(1))?;
    bar.finish_and_clear();
    if let Some(path) = &a.heatmap {
        let labels = |axis: Axis, values: &[f64]| -> Vec<String> {
            values.iter().map(|&v| axis.label(v)).collect()
        };
        fuota_sim::plots::heatmap(
            path,
            &format!("{}: % of devices updated", scenario.name),
            (rows.0.name(), &labels(rows.0, rows.1)),
            (cols.0.name(), &labels(cols.0, cols.1)),
            &result.grid(),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", result.table());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run_cmd(a),
        Command::Sweep(a) => sweep_cmd(a),
        Command::Bench(a) => bench_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
