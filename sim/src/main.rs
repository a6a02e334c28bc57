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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
