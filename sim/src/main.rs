//! `fuota-sim`: runs FUOTA campaigns over a simulated LoRaWAN network, with the real device
//! agent and the real campaign engine, and reports how the update landed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fuota_sim::report::hms;
use fuota_sim::run::run;
use fuota_sim::scenario::Scenario;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
