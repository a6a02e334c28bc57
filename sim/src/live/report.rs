//! The end of a live run: what each device runs (the image in its primary slot, checked
//! against its own hash, and whether it is the new one), and what went over each gateway.

use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::backend::{BackendStats, LiveBackend};
use super::forwarder::{Forwarder, ForwarderStats};
use super::Ready;
use crate::scenario::{Built, Scenario};
use crate::world::{World, WorldStats};

/// An image found in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotImage {
    /// `major.minor.revision+build` from its header.
    pub version: String,
    /// SHA-256 of the whole image (header, body, TLVs).
    pub sha256: String,
    /// Its SHA256 TLV matches the image.
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveDevice {
    pub eui: String,
    pub primary: Option<SlotImage>,
    pub secondary: Option<SlotImage>,
    /// The primary slot holds the new image, intact.
    pub runs_new_image: bool,
    /// Simulated seconds from the start to the new image confirmed.
    pub confirmed_after_s: Option<f64>,
    pub reboots: u32,
    pub reverted: bool,
    pub uplinks: u64,
    pub multicast_fragments: u64,
    pub unicast_fragments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveGateway {
    pub gateway_id: String,
    pub x: f64,
    pub y: f64,
    pub uplinks_heard: u64,
    pub unicast_downlinks: u64,
    pub multicast_frames: u64,
    pub airtime_s: f64,
    pub forwarder: ForwarderStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub scenario: String,
    pub seed: u64,
    pub time_scale: f64,
    pub origin_unix_ms: i64,
    pub start_gps_ms: u64,
    /// Why the run ended: `updated`, `duration`, or what stopped it.
    pub stopped_by: String,
    pub simulated_s: f64,
    pub wall_s: f64,
    pub devices: usize,
    pub running_new_image: usize,
    pub new_image_sha256: String,
    pub old_image_sha256: String,
    pub network: WorldCounts,
    pub integration: BackendStats,
    pub gateways: Vec<LiveGateway>,
    pub per_device: Vec<LiveDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorldCounts {
    pub uplinks_sent: u64,
    pub uplinks_received: u64,
    pub unicast_downlinks_sent: u64,
    pub unicast_downlinks_received: u64,
}

impl From<WorldStats> for WorldCounts {
    fn from(s: WorldStats) -> Self {
        Self {
            uplinks_sent: s.uplinks_sent,
            uplinks_received: s.uplinks_received,
            unicast_downlinks_sent: s.unicast_downlinks_sent,
            unicast_downlinks_received: s.unicast_downlinks_received,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn slot_image(
    flash: &mut crate::flash::CowFlash,
    slot: fuota_device_agent::slot::Region,
) -> Option<SlotImage> {
    use fuota_device_agent::mcuboot;
    // The structure first (length, version), then the hash.
    let info = mcuboot::read_image(flash, slot).ok()?;
    let verified = mcuboot::verify_image(flash, slot).is_ok();
    let bytes = flash.read_vec(slot.offset, info.len as usize).ok()?;
    let v = info.header.version;
    Some(SlotImage {
        version: format!("{}.{}.{}+{}", v.major, v.minor, v.revision, v.build),
        sha256: hex(&Sha256::digest(&bytes)),
        verified,
    })
}

impl LiveReport {
    pub fn new(
        s: &Scenario,
        world: &World<LiveBackend>,
        built: &Built,
        forwarders: &[Forwarder],
        ready: &Ready,
        stopped_by: &str,
        wall_s: f64,
    ) -> Self {
        let new_sha = hex(&Sha256::digest(&built.update.new));
        let per_device: Vec<LiveDevice> = world
            .devices
            .iter()
            .map(|d| {
                let (primary, secondary) = d.primary_and_secondary();
                let (p, s2) = {
                    let mut f = d.flash.borrow_mut();
                    (slot_image(&mut f, primary), slot_image(&mut f, secondary))
                };
                LiveDevice {
                    eui: format!("{:016x}", d.eui),
                    runs_new_image: p
                        .as_ref()
                        .is_some_and(|p| p.verified && p.sha256 == new_sha),
                    primary: p,
                    secondary: s2,
                    confirmed_after_s: d
                        .stats
                        .confirmed_at
                        .map(|t| t.saturating_sub(built.start) as f64 / 1e6),
                    reboots: d.stats.reboots,
                    reverted: d.stats.reverted,
                    uplinks: d.stats.uplinks,
                    multicast_fragments: d.stats.multicast_fragments,
                    unicast_fragments: d.stats.unicast_fragments,
                }
            })
            .collect();
        let gateways = world
            .gateways
            .iter()
            .zip(forwarders)
            .map(|(g, f)| LiveGateway {
                gateway_id: f.eui().to_string(),
                x: g.pos.x,
                y: g.pos.y,
                uplinks_heard: g.stats.uplinks_heard,
                unicast_downlinks: g.stats.downlinks,
                multicast_frames: g.stats.multicast_frames,
                airtime_s: g.stats.tx_us as f64 / 1e6,
                forwarder: f.stats().clone(),
            })
            .collect();
        Self {
            scenario: s.name.clone(),
            seed: s.seed,
            time_scale: ready.time_scale,
            origin_unix_ms: ready.origin_unix_ms,
            start_gps_ms: ready.start_gps_ms,
            stopped_by: stopped_by.to_string(),
            simulated_s: world.now.saturating_sub(built.start) as f64 / 1e6,
            wall_s,
            devices: per_device.len(),
            running_new_image: per_device.iter().filter(|d| d.runs_new_image).count(),
            new_image_sha256: new_sha,
            old_image_sha256: hex(&Sha256::digest(&built.update.old)),
            network: world.stats.into(),
            integration: world.backend.stats().clone(),
            gateways,
            per_device,
        }
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<26} {v}");
        };
        row(
            "scenario",
            format!(
                "{} (seed {}), live at x{}",
                self.scenario, self.seed, self.time_scale
            ),
        );
        row(
            "devices on the new image",
            format!("{} of {}", self.running_new_image, self.devices),
        );
        row(
            "time",
            format!(
                "{} simulated in {:.1} s of wall time (stopped: {})",
                crate::report::hms(self.simulated_s),
                self.wall_s,
                self.stopped_by
            ),
        );
        row(
            "network server",
            format!(
                "{} uplinks received, {} events published, {} downlink commands ({} refused)",
                self.network.uplinks_received,
                self.integration.uplink_events,
                self.integration.downlink_commands,
                self.integration.bad_commands.values().sum::<u64>()
            ),
        );
        for g in &self.gateways {
            let refused: Vec<String> = g
                .forwarder
                .tx_refused
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            row(
                &format!("gateway {}", g.gateway_id),
                format!(
                    "{} heard, {} multicast and {} unicast sent, {} accepted{}",
                    g.uplinks_heard,
                    g.multicast_frames,
                    g.unicast_downlinks,
                    g.forwarder.tx_accepted,
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!(", refused {}", refused.join(", "))
                    }
                ),
            );
        }
        s
    }
}
