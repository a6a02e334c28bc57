//! `fuota campaign create|list|status|cancel|devices`: the HTTP API from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{cell as s, upload, Api, ApiArgs};

#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Upload a patch (or use an uploaded one) and start a campaign.
    Create(Box<CreateArgs>),
    /// Every campaign, newest last.
    List,
    /// One campaign with per-device progress.
    Status { id: i64 },
    /// Stop a running campaign.
    Cancel { id: i64 },
    /// The devices of a campaign, or one device's log.
    Devices {
        id: i64,
        /// Show this device's log.
        #[arg(long)]
        log: Option<String>,
    },
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
    /// Devices: CSV lines `dev_eui,key` (GenAppKey for LoRaWAN 1.0.x, AppKey for 1.1), or
    /// the API's JSON list of devices.
    #[arg(long)]
    devices: PathBuf,
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
    /// Maintenance window length: seconds, or 90m, 2h, 1h30m.
    #[arg(long)]
    window: String,
    /// Window start (RFC 3339); now if absent.
    #[arg(long)]
    start: Option<String>,
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
    /// From now to the multicast session (default: the server's).
    #[arg(long)]
    setup: Option<String>,
}

/// Devices from CSV (`dev_eui,key`, or `dev_eui,key,group` with groups) or JSON.
pub fn read_devices(path: &PathBuf, v11: bool) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text).with_context(|| format!("{}: JSON", path.display()));
    }
    let key_field = if v11 { "app_key" } else { "gen_app_key" };
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.to_ascii_lowercase().starts_with("dev_eui")
        {
            continue;
        }
        let mut fields = line.split(',').map(str::trim);
        let (Some(eui), Some(key)) = (fields.next(), fields.next()) else {
            bail!("{}:{}: expected dev_eui,key", path.display(), i + 1);
        };
        let mut d = json!({ "dev_eui": eui, key_field: key });
        match (fields.next(), fields.next()) {
            (None, _) => {}
            (Some(g), None) if !g.is_empty() => d["group"] = json!(g),
            _ => bail!("{}:{}: expected dev_eui,key[,group]", path.display(), i + 1),
        }
        v.push(d);
    }
    Ok(Value::Array(v))
}

fn print_summary(c: &Value) {
    let d = &c["devices"];
    println!(
        "#{:<4} {:<24} {:<10} {:>3}/{:<3} updated, {} failed, {} in progress ({:.0} %)",
        s(&c["id"]),
        s(&c["name"]),
        s(&c["state"]),
        s(&d["updated"]),
        s(&d["total"]),
        s(&d["failed"]),
        s(&d["in_progress"]),
        c["progress"].as_f64().unwrap_or(0.0) * 100.0
    );
}

fn print_devices(devices: &Value) {
    println!("{:<18} {:<10} {:>7}  detail", "DevEUI", "phase", "missing");
    for d in devices.as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<10} {:>7}  {}",
            s(&d["dev_eui"]),
            s(&d["phase"]),
            s(&d["missing"]),
            d["reason"].as_str().unwrap_or("")
        );
    }
}

pub fn run(a: CampaignArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api);
    let json_out = a.api.json;
    let out = match a.command {
        CampaignCommand::Create(c) => {
            let firmware_id = match (&c.firmware, c.firmware_id) {
                (Some(path), _) => upload(&api, path)?,
                (None, Some(id)) => id,
                (None, None) => bail!("--firmware or --firmware-id"),
            };
            let devices = read_devices(&c.devices, c.lorawan.starts_with("1.1"))?;
            let mut req = json!({
                "name": c.name,
                "firmware_id": firmware_id,
                "lorawan_version": c.lorawan,
                "package_version": c.package_version,
                "region": c.region,
                "dr": c.dr,
                "window": { "duration": c.window },
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
            let v = api.post(
                "/api/campaigns",
                "application/json",
                req.to_string().into_bytes(),
            )?;
            if !json_out {
                println!("campaign {} created", s(&v["id"]));
                print_summary(&v);
            }
            v
        }
        CampaignCommand::List => {
            let v = api.get("/api/campaigns")?;
            if !json_out {
                for c in v.as_array().into_iter().flatten() {
                    print_summary(c);
                }
            }
            v
        }
        CampaignCommand::Status { id } => {
            let v = api.get(&format!("/api/campaigns/{id}"))?;
            if !json_out {
                print_summary(&v);
                println!(
                    "session {}, window until {}, frames sent {}, refused {}",
                    s(&v["session_start"]),
                    s(&v["window_end"]),
                    s(&v["frames"]["sent"]),
                    s(&v["frames"]["refused"])
                );
                print_devices(&v["device_progress"]);
            }
            v
        }
        CampaignCommand::Cancel { id } => {
            let v = api.post(
                &format!("/api/campaigns/{id}/cancel"),
                "application/json",
                b"{}".to_vec(),
            )?;
            if !json_out {
                print_summary(&v);
            }
            v
        }
        CampaignCommand::Devices { id, log: Some(eui) } => {
            let v = api.get(&format!("/api/campaigns/{id}/devices/{eui}/log"))?;
            if !json_out {
                for e in v.as_array().into_iter().flatten() {
                    println!("{}  {}", s(&e["at"]), s(&e["text"]));
                }
            }
            v
        }
        CampaignCommand::Devices { id, log: None } => {
            let v = api.get(&format!("/api/campaigns/{id}/devices"))?;
            if !json_out {
                print_devices(&v);
            }
            v
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
