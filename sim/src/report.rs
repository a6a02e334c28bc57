//! The end-of-run report: outcomes, timing, traffic, energy and failures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fuota_server::engine::{Counters, DevEui, DeviceProgress, Phase};
use fuota_server::rollout::{RolloutState, WaveStatus};
use serde::Serialize;

use crate::backend::Backend;
use crate::radio::{Micros, Position};
use crate::rollout::RolloutBackend;
use crate::scenario::Built;
use crate::world::World;

/// Supply voltage and currents of an SX1276-class device (datasheet, 14 dBm TX, RX on).
const VOLTS: f64 = 3.3;
const TX_MA: f64 = 44.0;
const RX_MA: f64 = 11.5;

#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    pub x: f64,
    pub y: f64,
    pub uplinks_heard: u64,
    pub unicast_downlinks: u64,
    pub multicast_frames: u64,
    pub airtime_s: f64,
    /// Airtime over the run's length, percent.
    pub duty_cycle_percent: f64,
    /// Downlinks its duty cycle held back.
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub eui: String,
    pub x: f64,
    pub y: f64,
    pub outcome: String,
    /// Seconds from the campaign start to the new image running.
    pub updated_after_s: Option<f64>,
    pub multicast_fragments: u64,
    pub unicast_fragments: u64,
    pub energy_mj: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub devices: usize,
    pub updated: usize,
    pub failed: usize,
    /// Neither updated nor failed (the run stopped first).
    pub unfinished: usize,
    pub updated_percent: f64,
    /// Seconds from the campaign start until 50/90/99/100 % of the devices run the new
    /// image (None: never reached).
    pub time_to_50_s: Option<f64>,
    pub time_to_90_s: Option<f64>,
    pub time_to_99_s: Option<f64>,
    pub time_to_100_s: Option<f64>,
    pub patch_bytes: usize,
    pub image_bytes: usize,
    pub fragment_size: usize,
    pub data_fragments: usize,
    pub uncoded_sent: u64,
    pub coded_sent: u64,
    pub repair_sent: u64,
    pub repair_rounds: u32,
    pub unicast_fragments: u64,
    pub unicast_downlinks: u64,
    pub multicast_status_requests: u64,
    pub uplinks: u64,
    pub gateways: Vec<GatewayReport>,
    pub energy_mean_mj: f64,
    pub energy_max_mj: f64,
    pub failures: BTreeMap<String, usize>,
    pub run_s: f64,
    /// A rollout's end: "completed", "halted: why", ... (absent for a single campaign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// A rollout's waves, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveReport>,
    pub per_device: Vec<DeviceReport>,
}

/// One wave of a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct WaveReport {
    /// From 1.
    pub wave: usize,
    pub name: String,
    /// pending, running, passed, missed or cancelled.
    pub status: String,
    pub devices: usize,
    pub updated: usize,
    pub failed: usize,
    pub reverted: usize,
    /// Its maintenance window, seconds from the run's start (absent if never scheduled).
    pub window_start_s: Option<f64>,
    pub window_end_s: Option<f64>,
}

fn percentile_time(sorted: &[f64], n: usize, fraction: f64) -> Option<f64> {
    let need = ((n as f64) * fraction).ceil() as usize;
    if need == 0 {
        return Some(0.0);
    }
    sorted.get(need - 1).copied()
}

impl Report {
    /// The report of a single campaign.
    pub fn new(name: &str, seed: u64, world: &World, built: &Built) -> Self {
        let engine = world.engine();
        Self::of_outcomes(
            name,
            seed,
            world,
            built,
            engine.devices().map(|(d, p)| (d, Some(p))),
            engine.counters(),
        )
    }

    /// The report of a rollout: every device as the wave it is in left it, and a row per
    /// wave.
    pub fn of_rollout(name: &str, seed: u64, world: &World<RolloutBackend>, built: &Built) -> Self {
        let b = &world.backend;
        let mut report = Self::of_outcomes(
            name,
            seed,
            world,
            built,
            built
                .devices
                .iter()
                .map(|d| (d.dev_eui, b.device(d.dev_eui))),
            b.counters(),
        );
        let since = |t: u64| (t * 1000).saturating_sub(built.start) as f64 / 1e6;
        report.waves = b
            .rollout
            .waves()
            .into_iter()
            .map(|w| WaveReport {
                wave: w.index + 1,
                name: w.name,
                status: match w.status {
                    WaveStatus::Pending => "pending",
                    WaveStatus::Running => "running",
                    WaveStatus::Passed => "passed",
                    WaveStatus::Missed => "missed",
                    WaveStatus::Cancelled => "cancelled",
                }
                .to_string(),
                devices: w.devices,
                updated: w.updated,
                failed: w.failed,
                reverted: w.reverted,
                window_start_s: w.window.map(|(s, _)| since(s)),
                window_end_s: w.window.map(|(_, e)| since(e)),
            })
            .collect();
        report.rollout = Some(match b.rollout.state() {
            RolloutState::Running => "running".to_string(),
            RolloutState::Paused => "paused".to_string(),
            RolloutState::Halted(why) => format!("halted: {why}"),
            RolloutState::Cancelled => "cancelled".to_string(),
            RolloutState::Completed => "completed".to_string(),
        });
        report
    }

    /// The report from each device's progress (`None`: no campaign took it) and the
    /// campaigns' counters.
    fn of_outcomes<'a, B: Backend>(
        name: &str,
        seed: u64,
        world: &World<B>,
        built: &Built,
        outcomes: impl Iterator<Item = (DevEui, Option<&'a DeviceProgress>)>,
        c: Counters,
    ) -> Self {
        let start = built.start;
        let run_us = world.now.saturating_sub(start).max(1);
        let mut per_device = Vec::with_capacity(world.devices.len());
        let mut failures = BTreeMap::new();
        let (mut updated, mut failed, mut unfinished) = (0, 0, 0);
        let mut times = Vec::new();
        for (eui, p) in outcomes {
            let Some(i) = world.device_index(eui) else {
                continue;
            };
            let d = &world.devices[i];
            let Some(p) = p else {
                unfinished += 1;
                per_device.push(DeviceReport {
                    eui: format!("{eui:016x}"),
                    x: d.pos.x,
                    y: d.pos.y,
                    outcome: "not in a wave".to_string(),
                    updated_after_s: None,
                    multicast_fragments: d.stats.multicast_fragments,
                    unicast_fragments: d.stats.unicast_fragments,
                    energy_mj: energy_mj(d),
                });
                continue;
            };
            let outcome = match &p.phase {
                Phase::Updated => {
                    updated += 1;
                    "updated".to_string()
                }
                Phase::Failed(f) => {
                    failed += 1;
                    *failures.entry(f.label().to_string()).or_insert(0) += 1;
                    format!("failed: {f}")
                }
                other => {
                    unfinished += 1;
                    format!("{other:?}").to_lowercase()
                }
            };
            let updated_after_s = p
                .updated_at
                .filter(|_| p.phase == Phase::Updated)
                .map(|t| (t * 1000).saturating_sub(start) as f64 / 1e6);
            if let Some(t) = updated_after_s {
                times.push(t);
            }
            let energy_mj = energy_mj(d);
            per_device.push(DeviceReport {
                eui: format!("{eui:016x}"),
                x: d.pos.x,
                y: d.pos.y,
                outcome,
                updated_after_s,
                multicast_fragments: d.stats.multicast_fragments,
                unicast_fragments: d.stats.unicast_fragments,
                energy_mj,
            });
        }
        times.sort_by(f64::total_cmp);
        let n = per_device.len();
        let energies: Vec<f64> = per_device.iter().map(|d| d.energy_mj).collect();
        let gateways = world
            .gateways
            .iter()
            .map(|g| GatewayReport {
                x: g.pos.x,
                y: g.pos.y,
                uplinks_heard: g.stats.uplinks_heard,
                unicast_downlinks: g.stats.downlinks,
                multicast_frames: g.stats.multicast_frames,
                airtime_s: g.stats.tx_us as f64 / 1e6,
                duty_cycle_percent: 100.0 * g.stats.tx_us as f64 / run_us as f64,
                refused: g.stats.refused,
            })
            .collect();
        Self {
            scenario: name.to_string(),
            seed,
            devices: n,
            updated,
            failed,
            unfinished,
            updated_percent: if n == 0 {
                0.0
            } else {
                100.0 * updated as f64 / n as f64
            },
            time_to_50_s: percentile_time(&times, n, 0.5),
            time_to_90_s: percentile_time(&times, n, 0.9),
            time_to_99_s: percentile_time(&times, n, 0.99),
            time_to_100_s: percentile_time(&times, n, 1.0),
            patch_bytes: built.update.patch.len(),
            image_bytes: built.update.new.len(),
            fragment_size: built.plan.frag_size,
            data_fragments: built.plan.nb_frag,
            uncoded_sent: c.data_fragments,
            coded_sent: c.coded_fragments,
            repair_sent: c.repair_fragments,
            repair_rounds: c.repair_rounds,
            unicast_fragments: c.unicast_fragments,
            unicast_downlinks: c.unicast_downlinks,
            multicast_status_requests: c.multicast_status_requests,
            uplinks: world.stats.uplinks_sent,
            gateways,
            energy_mean_mj: if n == 0 {
                0.0
            } else {
                energies.iter().sum::<f64>() / n as f64
            },
            energy_max_mj: energies.iter().copied().fold(0.0, f64::max),
            failures,
            run_s: run_us as f64 / 1e6,
            rollout: None,
            waves: Vec::new(),
            per_device,
        }
    }

    /// Completion times of updated devices, seconds, sorted.
    pub fn completion_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .per_device
            .iter()
            .filter_map(|d| d.updated_after_s)
            .collect();
        t.sort_by(f64::total_cmp);
        t
    }

    /// Device positions with whether they were updated.
    pub fn map(&self) -> Vec<(Position, bool)> {
        self.per_device
            .iter()
            .map(|d| (Position { x: d.x, y: d.y }, d.outcome == "updated"))
            .collect()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let t = |v: Option<f64>| v.map_or("never".to_string(), hms);
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<26} {v}");
        };
        row(
            "scenario",
            format!("{} (seed {})", self.scenario, self.seed),
        );
        row(
            "devices updated",
            format!(
                "{} of {} ({:.1} %), {} failed, {} unfinished",
                self.updated, self.devices, self.updated_percent, self.failed, self.unfinished
            ),
        );
        row("time to 50 %", t(self.time_to_50_s));
        row("time to 90 %", t(self.time_to_90_s));
        row("time to 99 %", t(self.time_to_99_s));
        row("time to 100 %", t(self.time_to_100_s));
        row(
            "patch",
            format!(
                "{} B for a {} B image; {} fragments of {} B",
                self.patch_bytes, self.image_bytes, self.data_fragments, self.fragment_size
            ),
        );
        row(
            "fragments sent",
            format!(
                "{} uncoded, {} coded, {} repair ({} rounds), {} unicast",
                self.uncoded_sent,
                self.coded_sent,
                self.repair_sent,
                self.repair_rounds,
                self.unicast_fragments
            ),
        );
        row(
            "unicast downlinks",
            format!(
                "{} ({} status requests by multicast)",
                self.unicast_downlinks, self.multicast_status_requests
            ),
        );
        row("device uplinks", self.uplinks.to_string());
        for (i, g) in self.gateways.iter().enumerate() {
            row(
                &format!("gateway {i}"),
                format!(
                    "airtime {:.1} s ({:.2} % of the run), {} multicast, {} unicast, {} held back",
                    g.airtime_s,
                    g.duty_cycle_percent,
                    g.multicast_frames,
                    g.unicast_downlinks,
                    g.refused
                ),
            );
        }
        row(
            "device energy",
            format!(
                "{:.1} mJ mean, {:.1} mJ max (radio)",
                self.energy_mean_mj, self.energy_max_mj
            ),
        );
        if self.failures.is_empty() {
            row("failures", "none".into());
        }
        for (why, n) in &self.failures {
            row("failed", format!("{n} ({why})"));
        }
        if let Some(state) = &self.rollout {
            row("rollout", state.clone());
        }
        for w in &self.waves {
            let window = match (w.window_start_s, w.window_end_s) {
                (Some(a), Some(b)) => format!(", window {} to {}", hms(a), hms(b)),
                _ => String::new(),
            };
            // The rollout names the devices of no group "(other devices)".
            let label = if w.name.starts_with('(') {
                format!("wave {} {}", w.wave, w.name)
            } else {
                format!("wave {} ({})", w.wave, w.name)
            };
            row(
                &label,
                format!(
                    "{}: {} of {} updated, {} failed, {} reverted{window}",
                    w.status, w.updated, w.devices, w.failed, w.reverted
                ),
            );
        }
        row("simulated time", hms(self.run_s));
        s
    }
}

/// A device's radio energy over the run, mJ.
fn energy_mj(d: &crate::device::SimDevice) -> f64 {
    (d.stats.tx_us as f64 * TX_MA + d.stats.rx_us as f64 * RX_MA) * VOLTS / 1e6
}

/// Seconds as "1 h 02 min 03 s".
pub fn hms(s: f64) -> String {
    let s = s.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, s) => format!("{h} h {m:02} min {s:02} s"),
    }
}

/// Microseconds to seconds.
pub fn secs(us: Micros) -> f64 {
    us as f64 / 1e6
}
