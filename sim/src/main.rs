//! `fuota-sim`: runs FUOTA campaigns over a simulated LoRaWAN network, with the real device
//! agent and the real campaign engine, and reports how the update landed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fuota_sim::backend::Backend;
use fuota_sim::report::hms;
use fuota_sim::run::{run, run_rollout};
use fuota_sim::scenario::{Built, Scenario};
use fuota_sim::sweep::{sweep, Axis};
use fuota_sim::world::World;
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
    /// Run a scenario in scaled real time against a bridge and a broker: the gateways speak
    /// the packet forwarder's UDP protocol, the network server ChirpStack's MQTT integration
    /// (see docs/live-sim.md).
    Live(LiveArgs),
}

#[derive(Debug, clap::Args)]
struct LiveArgs {
    /// Scenario file (TOML), e.g. sim/examples/live.toml.
    scenario: PathBuf,
    /// The broker: mqtt://host:port (not needed with --network-server external).
    #[arg(long)]
    mqtt: Option<String>,
    /// MQTT user name (the password from FUOTA_SIM_MQTT_PASSWORD).
    #[arg(long)]
    mqtt_username: Option<String>,
    /// Simulated seconds per wall second (the service's `clock.scale`).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Unix ms where the simulated and the wall clock agree (the service's
    /// `clock.origin_unix_ms`); default: now.
    #[arg(long)]
    origin_unix_ms: Option<i64>,
    /// The bridge's UDP address (the packet forwarders' server).
    #[arg(long, default_value = "127.0.0.1:1700")]
    bridge: std::net::SocketAddr,
    /// The ChirpStack application whose MQTT integration the simulator plays.
    #[arg(long, default_value = "fuota-sim")]
    application: String,
    /// EUI of the first gateway (16 hex digits); the others follow it.
    #[arg(long, default_value = "5e5e5e0000000000")]
    gateway_eui: String,
    /// `sim`: the simulator is the network server (ChirpStack's integration on MQTT);
    /// `external`: another one (ChirpStack) is, behind the bridge.
    #[arg(long, default_value = "sim")]
    network_server: String,
    /// Write the devices, a campaign request, the gateways, the firmware and the report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop once every device runs the new image and this much simulated time has passed
    /// (e.g. 10m).
    #[arg(long)]
    until_updated: Option<String>,
    /// Stop after this much simulated time (default: the scenario's setup and window and
    /// half an hour).
    #[arg(long)]
    duration: Option<String>,
    /// Stop when standard input closes (or reads `stop`).
    #[arg(long)]
    stdin_stop: bool,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn live_cmd(a: LiveArgs) -> Result<ExitCode> {
    use fuota_sim::live::backend::NetworkServer;
    use fuota_sim::live::{clock, LiveOptions, MqttSettings};
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(seed) = a.seed {
        scenario.seed = seed;
    }
    if scenario.rollout.is_some() {
        // The service runs rollouts itself: the live world only plays devices and gateways.
        bail!(
            "{}: a live run has no [rollout]; create the rollout in the service \
             (`fuota rollout create`) and drop the section",
            a.scenario.display()
        );
    }
    let secs = |s: &str| -> Result<u64> {
        fuota_server::plan::parse_duration(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
    };
    let network_server = match a.network_server.as_str() {
        "sim" => NetworkServer::Simulated,
        "external" => NetworkServer::External,
        other => bail!("--network-server {other:?}: sim or external"),
    };
    let gateway_eui_base = u64::from_str_radix(&a.gateway_eui, 16)
        .ok()
        .filter(|_| a.gateway_eui.len() == 16)
        .ok_or_else(|| anyhow::anyhow!("--gateway-eui {:?}: 16 hex digits", a.gateway_eui))?;
    let duration = match &a.duration {
        Some(d) => secs(d)?,
        None => scenario.campaign.setup.0 + scenario.campaign.window.0 + 1800,
    };
    let origin_unix_ms = a
        .origin_unix_ms
        .unwrap_or_else(|| clock::now_unix_us() / 1000);
    let opts = LiveOptions {
        mqtt: a.mqtt.as_ref().map(|url| MqttSettings {
            url: url.clone(),
            client_id: format!("fuota-sim-{}-{}", a.application, std::process::id()),
            username: a.mqtt_username.clone(),
            password: std::env::var("FUOTA_SIM_MQTT_PASSWORD").ok(),
        }),
        bridge: a.bridge,
        scale: a.time_scale,
        origin_unix_ms,
        application_id: a.application.clone(),
        gateway_eui_base,
        network_server,
        out_dir: a.out.clone(),
        until_updated: a
            .until_updated
            .as_deref()
            .map(secs)
            .transpose()?
            .map(|s| s * 1_000_000),
        duration: duration * 1_000_000,
    };
    let stdin_stop = a.stdin_stop;
    let report = fuota_sim::live::run(&scenario, &opts, |ready, stop| {
        eprintln!(
            "fuota-sim live: {} devices, gateways {}, x{} from origin_unix_ms = {}",
            ready.devices,
            ready.gateways.join(", "),
            ready.time_scale,
            ready.origin_unix_ms
        );
        let on_signal = stop.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                on_signal.stop("interrupted");
            }
        });
        if stdin_stop {
            std::thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match std::io::stdin().read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line.trim() == "stop" => break,
                        Ok(_) => {}
                    }
                }
                stop.stop("stdin");
            });
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.running_new_image == report.devices {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
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
    let progress = |updated: usize, _, t: u64| {
        bar.set_position(updated as u64);
        bar.set_message(format!("{} simulated", hms(t as f64)));
    };
    // A rollout's world has another backend: each branch dumps its own.
    let report = if scenario.rollout.is_some() {
        let (world, built, report) = run_rollout(&scenario, progress)?;
        dump_flash(&a, &world, &built)?;
        report
    } else {
        let (world, built, report) = run(&scenario, progress)?;
        dump_flash(&a, &world, &built)?;
        report
    };
    bar.finish_and_clear();
    if let Some(dir) = &a.plots {
        fuota_sim::plots::write_all(dir, &report)
            .with_context(|| format!("writing plots into {}", dir.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

fn dump_flash<B: Backend>(a: &RunArgs, world: &World<B>, built: &Built) -> Result<()> {
    match &a.dump_flash {
        Some(args) => fuota_sim::dump::dump_flash(world, built, &args[0], &PathBuf::from(&args[1])),
        None => Ok(()),
    }
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
        Command::Live(a) => live_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
