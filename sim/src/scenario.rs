//! Scenarios (TOML): the map, the traffic, the firmware and the campaign; and building a
//! world from one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fuota_codec::fec::decoder::DecoderState;
use fuota_codec::firmware_management::fw_version;
use fuota_codec::keys::Key128;
use fuota_codec::Version;
use fuota_device_agent::agent::{AgentConfig, Layout, APPLY_WINDOW};
use fuota_device_agent::frag_session::FragAreas;
use fuota_device_agent::multicast::RadioLimits;
use fuota_device_agent::slot::Region as Slot;
use fuota_server::engine::{CampaignConfig, DeviceSpec, Engine, RootKey};
use fuota_server::plan::{parse_duration, plan, PlanRequest, Region};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::backend::{Backend, EngineBackend};
use crate::device::{Behaviour, SPARES};
use crate::firmware::{self, Update};
use crate::flash::{CowFlash, SECTOR};
use crate::radio::{Micros, Position, Propagation};
use crate::world::{DevicePlan, World, WorldConfig};

/// A duration in a scenario: seconds, or "90m", "2h", "1h30m", "45s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration(s)),
            Raw::Text(t) => parse_duration(&t)
                .map(Duration)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn default_region() -> String {
    "eu868".into()
}

/// The map and the traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_region")]
    pub region: String,
    pub devices: usize,
    /// Devices are spread uniformly over a disc of this radius around the origin.
    pub radius_m: f64,
    /// Gateway positions; a number places that many on a ring at half the radius.
    pub gateways: Gateways,
    /// More devices at given positions (after the `devices` spread over the disc).
    #[serde(default)]
    pub placed: Vec<Position>,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub radio: RadioSection,
    #[serde(default)]
    pub firmware: FirmwareSection,
    pub campaign: CampaignSection,
    #[serde(default)]
    pub behaviour: BehaviourSection,
    /// Named device groups (hardware revisions, districts, critical sites), each with its
    /// own share of the devices and, if given, its own behaviour.
    #[serde(default)]
    pub groups: Vec<GroupSection>,
    /// Run the update as a staged rollout (waves) instead of one campaign.
    pub rollout: Option<RolloutSection>,
}

/// A named group of devices: the next `share` of them in the order they are placed (which
/// is random over the map).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    pub name: String,
    /// Fraction of the devices (0 to 1).
    pub share: f64,
    /// Overrides `behaviour.fails_self_test` for the group's devices.
    pub fails_self_test: Option<f64>,
}

/// A staged rollout: each wave one campaign as `[campaign]` describes it, in a maintenance
/// window of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Cumulative percentages of the fleet, ending at 100 (default 1, 10, 25, 50, 100).
    pub waves: Option<Vec<f64>>,
    /// Instead of percentages: one wave per named group, in this order (devices of no
    /// listed group form a last wave).
    pub groups: Option<Vec<String>>,
    /// Share of a wave that must be updated for the next one to start.
    #[serde(default = "default_rollout_success")]
    pub success: f64,
    /// Largest share of a wave that may fail or revert.
    #[serde(default = "default_rollout_failure")]
    pub failure: f64,
    /// From one maintenance window's start to the next; by default the campaign's setup
    /// plus its window, so that waves follow each other as fast as they can.
    pub every: Option<Duration>,
}

fn default_rollout_success() -> f64 {
    fuota_server::rollout::RolloutConfig::SUCCESS
}
fn default_rollout_failure() -> f64 {
    fuota_server::rollout::RolloutConfig::FAILURE
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Gateways {
    Count(usize),
    At(Vec<Position>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Mean period of each device's own uplinks.
    pub uplink_period: Duration,
    pub payload: usize,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            uplink_period: Duration(600),
            payload: 12,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadioSection {
    pub propagation: Propagation,
    /// Loss on every downlink reception on top of the radio model (0 to 1).
    pub extra_downlink_loss: f64,
    /// RX2 data rate: DR3 by default, as many EU868 networks configure it (the regional
    /// default DR0 takes 1.5 s of airtime per downlink).
    pub rx2_dr: u8,
}

impl Default for RadioSection {
    fn default() -> Self {
        Self {
            propagation: Propagation::default(),
            extra_downlink_loss: 0.0,
            rx2_dr: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareSection {
    /// Old and new MCUboot images; a synthetic pair when not given.
    pub old: Option<PathBuf>,
    pub new: Option<PathBuf>,
    /// Size of the synthetic images.
    pub synthetic_size: usize,
}

impl Default for FirmwareSection {
    fn default() -> Self {
        Self {
            old: None,
            new: None,
            synthetic_size: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSection {
    /// Class C data rate.
    pub dr: u8,
    /// Loss rate the redundancy is planned for.
    #[serde(default = "default_loss")]
    pub planned_loss: f64,
    #[serde(default = "default_success")]
    pub success: f64,
    /// Overrides the planned redundancy (coded fragments of the first round).
    pub redundancy: Option<usize>,
    /// Unicast setup time before the multicast session.
    pub setup: Duration,
    /// Maintenance window from the session start.
    pub window: Duration,
    #[serde(default = "default_block_ack_delay")]
    pub block_ack_delay: u8,
    /// Repair by unicast when at most this many devices need fragments.
    #[serde(default = "default_unicast_repair")]
    pub unicast_repair_max_devices: usize,
}

fn default_loss() -> f64 {
    0.1
}
fn default_success() -> f64 {
    0.99
}
fn default_block_ack_delay() -> u8 {
    2
}
fn default_unicast_repair() -> usize {
    3
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehaviourSection {
    /// Fraction of devices whose new image fails its self-test (they revert).
    pub fails_self_test: f64,
    /// The firmware does not reset on RebootWanted (it waits for a maintenance reboot): the
    /// new image stays in the secondary slot with its swap request.
    pub no_reboot: bool,
    /// Fraction of devices whose battery is low at the start: their firmware puts the
    /// install off (UpdateHooks::may_update) for `low_battery_for`.
    pub low_battery: f64,
    pub low_battery_for: Option<Duration>,
}

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.region()?;
        if s.devices == 0 {
            bail!("a scenario needs at least one device");
        }
        let mut total = 0.0;
        for g in &s.groups {
            if !(0.0..=1.0).contains(&g.share) {
                bail!("group {:?}: share {} is not within 0 to 1", g.name, g.share);
            }
            if g.fails_self_test.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
                bail!("group {:?}: fails_self_test is not within 0 to 1", g.name);
            }
            total += g.share;
        }
        if total > 1.0 + 1e-9 {
            bail!("the groups' shares add up to {total}, more than 1");
        }
        if let Some(r) = &s.rollout {
            if r.waves.is_some() && r.groups.is_some() {
                bail!("rollout: give `waves` (percentages) or `groups`, not both");
            }
            for name in r.groups.iter().flatten() {
                if !s.groups.iter().any(|g| &g.name == name) {
                    bail!("rollout: no group named {name:?} in [[groups]]");
                }
            }
        }
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s = Self::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        // Firmware paths are relative to the scenario file.
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut s.firmware.old, &mut s.firmware.new]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(s)
    }

    pub fn region(&self) -> Result<Region> {
        Ok(self.region.parse::<Region>()?)
    }

    fn gateway_positions(&self) -> Vec<Position> {
        match &self.gateways {
            Gateways::At(v) => v.clone(),
            Gateways::Count(1) => vec![Position { x: 0.0, y: 0.0 }],
            Gateways::Count(n) => (0..*n)
                .map(|k| {
                    let a = 2.0 * std::f64::consts::PI * k as f64 / *n as f64;
                    Position {
                        x: self.radius_m / 2.0 * a.cos(),
                        y: self.radius_m / 2.0 * a.sin(),
                    }
                })
                .collect(),
        }
    }

    /// The firmware pair and patch.
    pub fn update(&self) -> Result<Update> {
        match (&self.firmware.old, &self.firmware.new) {
            (Some(old), Some(new)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x006b_6579);
                firmware::update_from_images(
                    read(old)?,
                    read(new)?,
                    p256::ecdsa::SigningKey::random(&mut rng),
                )
            }
            (None, None) => firmware::synthetic_update(self.seed, self.firmware.synthetic_size),
            _ => bail!("firmware: give both `old` and `new`, or neither"),
        }
    }
}

/// How long status answers are waited for after their BlockAckDelay spread: an SF12 device
/// at 1 % duty cycle waits up to 150 s between uplinks.
const STATUS_WAIT_S: u64 = 240;

/// GPS time the simulated campaigns start at (2026-01-01, roughly).
pub const START_GPS_S: u64 = 1_451_260_818;

fn round_sectors(n: usize) -> u32 {
    (n.div_ceil(SECTOR) * SECTOR) as u32
}

/// What a built scenario holds besides the world.
#[derive(Debug, Clone)]
pub struct Built {
    pub update: Update,
    /// The campaign as the scenario plans it (what the in-process engine runs; a live run
    /// asks the service for the same).
    pub campaign: CampaignConfig,
    pub plan: fuota_server::plan::Plan,
    /// The devices' DevEUIs and root keys (LoRaWAN 1.1 AppKeys).
    pub devices: Vec<DeviceSpec>,
    pub positions: Vec<Position>,
    pub gateways: Vec<Position>,
    /// Each device's group (`[[groups]]`), in the order of `devices`.
    pub groups: Vec<Option<String>>,
    pub start: Micros,
}

impl Scenario {
    /// The device groups' index ranges: each group takes the next `share` of the devices.
    fn group_of(&self, n: usize) -> Vec<Option<usize>> {
        let mut of = vec![None; n];
        let mut at = 0usize;
        for (k, g) in self.groups.iter().enumerate() {
            let len = ((n as f64 * g.share).round() as usize).min(n - at);
            for slot in &mut of[at..at + len] {
                *slot = Some(k);
            }
            at += len;
        }
        of
    }
}

/// Builds the world of a scenario, the update in its factory flash and the engine started.
pub fn build(s: &Scenario) -> Result<(World, Built)> {
    build_with(s, START_GPS_S * 1000, |built| {
        Ok(EngineBackend::new(Engine::new(
            built.campaign.clone(),
            built.devices.clone(),
            built.start / 1000,
        )?))
    })
}

/// Builds the world of a scenario starting at GPS ms `start_ms`, with the backend that
/// `backend` makes from what was built (the devices, the update, the planned campaign).
pub fn build_with<B: Backend>(
    s: &Scenario,
    start_ms: u64,
    backend: impl FnOnce(&Built) -> Result<B>,
) -> Result<(World<B>, Built)> {
    let region = s.region()?;
    let update = s.update()?;
    let patch_key = fuota_server::patch::keys::device_key(update.patch_key.verifying_key())?;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut plan_req = PlanRequest::new(
        update.patch.len(),
        region,
        s.campaign.dr,
        s.campaign.planned_loss,
        s.campaign.window.0,
    );
    plan_req.success = s.campaign.success;
    plan_req.block_ack_delay = s.campaign.block_ack_delay;
    let plan = plan(&plan_req)?;
    let redundancy = s.campaign.redundancy.unwrap_or(plan.redundancy);
    let m = plan.nb_frag;
    let fs = plan.frag_size;
    // The decoder may have to recover any data fragment, within the spare slots.
    let max_lost = m.min(SPARES);
    // The device's flash: two slots, the fragment store, the journal.
    let slot = round_sectors(update.old.len().max(update.new.len()) + 2 * SECTOR);
    let pitch = fs.div_ceil(8) * 8;
    let record = (2 + fs + 4).div_ceil(8) * 8;
    let log = round_sectors((m + redundancy + 2 * max_lost + 64) * record);
    let block = round_sectors(m * pitch);
    let spare = round_sectors(SPARES * pitch);
    let journal = 2 * SECTOR as u32;
    let mut at = 0u32;
    let mut region_of = |len: u32| {
        let r = Slot { offset: at, len };
        at += len;
        r
    };
    let layout = Layout {
        primary: region_of(slot),
        secondary: region_of(slot),
        fragments: [FragAreas {
            log: region_of(log),
            block: region_of(block),
            spare: region_of(spare),
        }],
        journal: region_of(journal),
    };
    let mut factory = CowFlash::new(at as usize / SECTOR);
    factory.program(0, &update.old)?;
    // The install borrows the applier's heatshrink window from the decoder's workspace.
    let workspace_len = DecoderState::workspace_len(m, max_lost, fs).max(APPLY_WINDOW);

    let gateways = s.gateway_positions();
    let mut devices = Vec::with_capacity(s.devices);
    let mut specs = Vec::with_capacity(s.devices);
    let mut positions = Vec::with_capacity(s.devices);
    let group_of = s.group_of(s.devices + s.placed.len());
    for (i, group) in group_of.iter().enumerate() {
        let group = group.map(|k| &s.groups[k]);
        let eui = 0x70b3_d500_0000_0000 | i as u64;
        let app_key = Key128::from_bytes(rng.gen());
        let root = fuota_codec::keys::mc_root_key_lorawan_1_1(&app_key);
        let r = s.radius_m * rng.gen::<f64>().sqrt();
        let a = rng.gen::<f64>() * 2.0 * std::f64::consts::PI;
        let pos = match i.checked_sub(s.devices) {
            Some(k) => s.placed[k],
            None => Position {
                x: r * a.cos(),
                y: r * a.sin(),
            },
        };
        positions.push(pos);
        let agent = AgentConfig {
            version: Version::V2,
            mc_ke_key: fuota_codec::keys::mc_ke_key(&root),
            data_block_int_key: fuota_codec::keys::data_block_int_key(&app_key),
            limits: match region {
                Region::Eu868 => RadioLimits::EU868,
                Region::Us915 => RadioLimits::US915,
            },
            patch_key,
            layout,
            boot_max_align: 8,
            permanent: false,
            max_lost,
            seed: rng.gen(),
            hw_version: 1,
        };
        // Drawn only when asked for, so that scenarios without it keep their random stream.
        let low_battery =
            s.behaviour.low_battery > 0.0 && rng.gen::<f64>() < s.behaviour.low_battery;
        let behaviour = Behaviour {
            fails_self_test: rng.gen::<f64>()
                < group
                    .and_then(|g| g.fails_self_test)
                    .unwrap_or(s.behaviour.fails_self_test),
            no_reboot: s.behaviour.no_reboot,
            low_battery_until: low_battery
                .then(|| (start_ms + s.behaviour.low_battery_for.map_or(0, |d| d.0 * 1000)) * 1000),
        };
        devices.push(DevicePlan {
            eui,
            pos,
            agent,
            behaviour,
        });
        specs.push(DeviceSpec {
            dev_eui: eui,
            root_key: RootKey::AppKey(app_key),
        });
    }
    let session_start = (start_ms + s.campaign.setup.0 * 1000) / 1000 * 1000;
    let campaign = CampaignConfig {
        version: Version::V2,
        data: update.patch.clone(),
        frag_size: fs,
        redundancy,
        frag_index: 0,
        descriptor: [0; 4],
        session_cnt: 1,
        block_ack_delay: s.campaign.block_ack_delay,
        mc_group_id: 0,
        mc_addr: 0x01ff_0001,
        mc_key: Key128::from_bytes(rng.gen()),
        first_mc_fcnt: 0,
        freq_hz: plan.freq_hz,
        dr: s.campaign.dr,
        session_start,
        // Room for the first round, its status answers, and as much again for repair rounds.
        timeout_exp: {
            let status_s = plan.status_s + STATUS_WAIT_S as f64;
            let need = 2.0 * (plan.multicast_s + status_s);
            (0..=15u8)
                .find(|&t| (1u64 << t) as f64 >= need)
                .unwrap_or(15)
        },
        spacing_ms: plan.spacing_ms.ceil() as u64,
        window_end: session_start + s.campaign.window.0 * 1000,
        target_fw_version: fw_version(
            update.new_version.major,
            update.new_version.minor,
            update.new_version.revision,
        ),
        retry_ms: s.traffic.uplink_period.0 * 1000 * 2,
        max_attempts: 6,
        reboot_wait_ms: 120_000,
        unicast_repair_max_devices: s.campaign.unicast_repair_max_devices,
        status_wait_ms: STATUS_WAIT_S * 1000,
        multicast_lead_ms: 0,
    };
    let world_cfg = WorldConfig {
        seed: s.seed,
        region,
        propagation: s.radio.propagation,
        uplink_period: s.traffic.uplink_period.0 * 1_000_000,
        uplink_payload: s.traffic.payload,
        extra_downlink_loss: s.radio.extra_downlink_loss,
        rx2_dr: match region {
            Region::Eu868 => s.radio.rx2_dr,
            Region::Us915 => s.radio.rx2_dr.max(8),
        },
    };
    let start = start_ms * 1000;
    let built = Built {
        update,
        campaign,
        plan,
        devices: specs,
        positions,
        gateways: gateways.clone(),
        groups: group_of
            .iter()
            .map(|k| k.map(|k| s.groups[k].name.clone()))
            .collect(),
        start,
    };
    let backend = backend(&built)?;
    let world = World::new(
        world_cfg,
        gateways,
        devices,
        &factory,
        workspace_len,
        backend,
        start,
    )?;
    Ok((world, built))
}
