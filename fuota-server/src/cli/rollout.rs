//! `fuota rollout create|list|status|devices|pause|resume|cancel|retry`: staged rollouts
//! through the HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::campaign::read_devices;
use super::client::{cell as s, upload, Api, ApiArgs};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Upload a patch (or use an uploaded one) and start a rollout in waves.
    Create(Box<CreateArgs>),
    /// Every rollout, newest last.
    List,
    /// One rollout with its waves.
    Status { id: i64 },
    /// The devices of a rollout: group, wave, phase.
    Devices { id: i64 },
    /// No new wave starts (a running one finishes).
    Pause { id: i64 },
    /// Waves start again, the next at its next window.
    Resume { id: i64 },
    /// Stop the running wave now and start no other; frees the devices.
    Cancel { id: i64 },
    /// A new wave of the devices that failed or reverted (re-arms a halted rollout).
    Retry { id: i64 },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    name: String,
    /// The signed patch (or image) to send; uploaded first.
    #[arg(
        long,
        conflicts_with = "firmware_id",
        required_unless_present = "firmware_id"
    )]
    firmware: Option<PathBuf>,
    /// A firmware already uploaded.
    #[arg(long)]
    firmware_id: Option<i64>,
    /// Devices: CSV lines `dev_eui,key[,group]`, or the API's JSON list.
    #[arg(long)]
    devices: PathBuf,
    /// Cumulative percentages of the fleet, one wave each (the first: the canaries).
    #[arg(long, default_value = "1,10,25,50,100", conflicts_with = "groups")]
    percent: String,
    /// One wave per device group, in this order (devices of no listed group go last).
    #[arg(long)]
    groups: Option<String>,
    /// Share of a wave that must be updated for the next to start.
    #[arg(long, default_value_t = 0.95)]
    success_threshold: f64,
    /// Largest share of a wave that may fail or revert.
    #[arg(long, default_value_t = 0.01)]
    failure_threshold: f64,
    /// Length of each maintenance window: seconds, or 90m, 2h, 1h30m.
    #[arg(long)]
    window: String,
    /// From one window's start to the next.
    #[arg(long, default_value = "24h")]
    every: String,
    /// The first window's start (RFC 3339); as soon as the setup allows if absent.
    #[arg(long)]
    start: Option<String>,
    /// Each wave's unicast setup starts this long before its window (default: the server's).
    #[arg(long)]
    setup: Option<String>,
    /// LoRaWAN version of the devices: 1.0.x or 1.1.
    #[arg(long, default_value = "1.0.4")]
    lorawan: String,
    /// TS003/TS004/TS005 version (1 or 2).
    #[arg(long, default_value_t = 2)]
    package_version: u8,
    #[arg(long)]
    region: String,
    /// Class C data rate.
    #[arg(long)]
    dr: u8,
    /// Class C frequency in Hz (default: the region's).
    #[arg(long)]
    freq: Option<u32>,
    /// Planned fragment loss (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Wanted probability that a device decodes from the multicast alone.
    #[arg(long, default_value_t = 0.99)]
    success: f64,
    /// Coded fragments, instead of planning them from --loss and --success.
    #[arg(long)]
    redundancy: Option<usize>,
    /// What devices run once updated (major.minor.revision); read from the patch if absent.
    #[arg(long)]
    target_version: Option<String>,
    /// ChirpStack application of the devices (default: the server's first).
    #[arg(long)]
    application: Option<String>,
    /// Orders the devices of percentage waves (random if absent).
    #[arg(long)]
    seed: Option<u64>,
}

fn print_summary(r: &Value) {
    println!(
        "#{:<4} {:<24} {:<10} {:>4}/{:<4} updated ({:.0} %){}",
        s(&r["id"]),
        s(&r["name"]),
        s(&r["state"]),
        s(&r["devices"]["updated"]),
        s(&r["devices"]["total"]),
        r["progress"].as_f64().unwrap_or(0.0) * 100.0,
        r["reason"]
            .as_str()
            .map(|w| format!(": {w}"))
            .unwrap_or_default()
    );
}

fn print_waves(r: &Value) {
    println!(
        "{:>4}  {:<18} {:<10} {:>7} {:>7} {:>6} {:>8}  {:<24} campaign",
        "wave", "slice", "status", "devices", "updated", "failed", "reverted", "window"
    );
    for w in r["waves"].as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:<18} {:<10} {:>7} {:>7} {:>6} {:>8}  {:<24} {}",
            s(&w["wave"]),
            s(&w["name"]),
            s(&w["status"]),
            s(&w["devices"]),
            s(&w["updated"]),
            s(&w["failed"]),
            s(&w["reverted"]),
            s(&w["window_start"]),
            s(&w["campaign_id"]),
        );
    }
}

fn numbers(list: &str) -> Result<Vec<f64>> {
    list.split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| anyhow::anyhow!("--percent: {p:?} is not a number"))
        })
        .collect()
}

pub fn run(a: RolloutArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api);
    let out = match a.command {
        RolloutCommand::Create(c) => {
            let firmware_id = match (&c.firmware, c.firmware_id) {
                (Some(path), _) => upload(&api, path)?,
                (None, Some(id)) => id,
                (None, None) => bail!("--firmware or --firmware-id"),
            };
            let devices = read_devices(&c.devices, c.lorawan.starts_with("1.1"))?;
            let waves = match &c.groups {
                Some(g) => json!({ "groups": g.split(',').map(str::trim).collect::<Vec<_>>() }),
                None => json!({ "percent": numbers(&c.percent)? }),
            };
            let mut req = json!({
                "name": c.name,
                "firmware_id": firmware_id,
                "lorawan_version": c.lorawan,
                "package_version": c.package_version,
                "region": c.region,
                "dr": c.dr,
                "waves": waves,
                "success_threshold": c.success_threshold,
                "failure_threshold": c.failure_threshold,
                "window": { "duration": c.window, "every": c.every },
                "redundancy": { "loss": c.loss, "success": c.success },
                "devices": devices,
            });
            if let Some(f) = c.freq {
                req["frequency"] = json!(f);
            }
            if let Some(st) = c.start {
                req["window"]["start"] = json!(st);
            }
            if let Some(r) = c.redundancy {
                req["redundancy"]["fixed"] = json!(r);
            }
            if let Some(t) = c.target_version {
                req["target_version"] = json!(t);
            }
            if let Some(app) = c.application {
                req["application_id"] = json!(app);
            }
            if let Some(setup) = c.setup {
                req["setup"] = json!(setup);
            }
            if let Some(seed) = c.seed {
                req["seed"] = json!(seed);
            }
            let v = api.post_json("/api/rollouts", &req)?;
            if !a.api.json {
                println!("rollout {} created", s(&v["id"]));
                print_summary(&v);
                print_waves(&v);
            }
            v
        }
        RolloutCommand::List => {
            let v = api.get("/api/rollouts")?;
            if !a.api.json {
                for r in v.as_array().into_iter().flatten() {
                    print_summary(r);
                }
            }
            v
        }
        RolloutCommand::Status { id } => {
            let v = api.get(&format!("/api/rollouts/{id}"))?;
            if !a.api.json {
                print_summary(&v);
                print_waves(&v);
            }
            v
        }
        RolloutCommand::Devices { id } => {
            let v = api.get(&format!("/api/rollouts/{id}/devices"))?;
            if !a.api.json {
                println!(
                    "{:<18} {:<12} {:>4} {:<10}  detail",
                    "DevEUI", "group", "wave", "phase"
                );
                for d in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:<12} {:>4} {:<10}  {}",
                        s(&d["dev_eui"]),
                        s(&d["group"]),
                        s(&d["wave"]),
                        s(&d["phase"]),
                        d["reason"].as_str().unwrap_or("")
                    );
                }
            }
            v
        }
        RolloutCommand::Pause { id }
        | RolloutCommand::Resume { id }
        | RolloutCommand::Cancel { id }
        | RolloutCommand::Retry { id } => {
            let action = match a.command {
                RolloutCommand::Pause { .. } => "pause",
                RolloutCommand::Resume { .. } => "resume",
                RolloutCommand::Cancel { .. } => "cancel",
                _ => "retry",
            };
            let v = api.post_json(&format!("/api/rollouts/{id}/{action}"), &json!({}))?;
            if !a.api.json {
                print_summary(&v);
                print_waves(&v);
            }
            v
        }
    };
    if a.api.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
