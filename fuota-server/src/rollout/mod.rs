//! Staged rollouts (sans-IO): a fleet updated in waves, each wave one campaign (its own
//! multicast group and session) over a slice of the devices in a maintenance window of its
//! own, the next wave only once the previous one reached its success threshold without
//! passing its failure threshold. Otherwise the rollout halts and says why.
//!
//! Slices are cumulative percentages of the fleet (1, 10, 25, 50, 100 % by default: the
//! first wave is the canaries) taken in a seeded pseudo-random order, or named device groups
//! in the order given (so critical devices go last, or first). Operators pause (no new wave
//! starts; a running one finishes), resume, cancel (the running wave stops at once) and retry
//! the failed devices (a new wave of them, next in line; it re-arms a halted rollout).
//!
//! Like the engine, a rollout never reads a clock and does no I/O: the driver gives it GPS
//! milliseconds and uplinks, drains [`Rollout::poll_output`] (each output tagged with its
//! wave) and calls [`Rollout::handle_timeout`] at [`Rollout::poll_timeout`], and tells of a
//! multicast frame no gateway sent ([`Rollout::handle_tx_refused`]). Operator actions
//! are inputs too, so a driver that logs every input can rebuild the rollout by replaying them.
//! Each wave's campaign is a [`Campaign`]: the engine, or a stand-in in tests.

use std::collections::BTreeMap;
use std::fmt;

use fuota_codec::keys::Key128;
use fuota_codec::sha256::Sha256;

use crate::engine::{
    CampaignConfig, ConfigError, DevEui, DeviceProgress, DeviceSpec, Engine, Failure, GpsMillis,
    MulticastFrame, Output, Phase,
};

/// What a rollout needs of one wave's campaign (the [`Engine`] in production).
pub trait Campaign {
    fn handle_uplink(&mut self, now: GpsMillis, dev: DevEui, port: u8, bytes: &[u8]);
    fn handle_timeout(&mut self, now: GpsMillis);
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&mut self) -> Option<GpsMillis>;
    fn is_finished(&self) -> bool;
    fn progress(&self, dev: DevEui) -> Option<&DeviceProgress>;
    /// No gateway sent `frame` (a stand-in may ignore it).
    fn handle_tx_refused(&mut self, _now: GpsMillis, _frame: &MulticastFrame) {}
}

impl Campaign for Engine {
    fn handle_uplink(&mut self, now: GpsMillis, dev: DevEui, port: u8, bytes: &[u8]) {
        Engine::handle_uplink(self, now, dev, port, bytes);
    }
    fn handle_timeout(&mut self, now: GpsMillis) {
        Engine::handle_timeout(self, now);
    }
    fn poll_output(&mut self) -> Option<Output> {
        Engine::poll_output(self)
    }
    fn poll_timeout(&mut self) -> Option<GpsMillis> {
        Engine::poll_timeout(self)
    }
    fn is_finished(&self) -> bool {
        Engine::is_finished(self)
    }
    fn progress(&self, dev: DevEui) -> Option<&DeviceProgress> {
        Engine::device(self, dev)
    }
    fn handle_tx_refused(&mut self, now: GpsMillis, frame: &MulticastFrame) {
        Engine::handle_tx_refused(self, now, frame);
    }
}

/// How the fleet is cut into waves.
#[derive(Debug, Clone, PartialEq)]
pub enum Slicing {
    /// Cumulative shares of the fleet, in percent, ending at 100 (e.g. 1, 10, 25, 50, 100).
    Percent(Vec<f64>),
    /// One wave per named device group, in this order; devices of no listed group form a
    /// last wave.
    Groups(Vec<String>),
}

impl Default for Slicing {
    fn default() -> Self {
        Slicing::Percent(vec![1.0, 10.0, 25.0, 50.0, 100.0])
    }
}

/// A rollout's plan.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Every wave's campaign: this, with its own window, group address, McKey and SessionCnt.
    pub template: CampaignConfig,
    pub slicing: Slicing,
    /// Share of a wave that must be updated (and confirmed) for the next wave to start.
    pub success_threshold: f64,
    /// Largest share of a wave that may fail or revert.
    pub failure_threshold: f64,
    /// Start of the first maintenance window (the first wave's SessionTime).
    pub first_window: GpsMillis,
    /// Length of each window (multicast, repair, install and check).
    pub window_len_ms: u64,
    /// From one window's start to the next (a day, say); a wave takes the first window whose
    /// setup can still start.
    pub window_every_ms: u64,
    /// The unicast setup starts this long before the window.
    pub setup_lead_ms: u64,
    /// Seeds the order in which percentage slices take devices.
    pub seed: u64,
}

impl RolloutConfig {
    /// The default thresholds: 95 % updated, at most 1 % failed or reverted.
    pub const SUCCESS: f64 = 0.95;
    pub const FAILURE: f64 = 0.01;
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDevice {
    pub spec: DeviceSpec,
    /// Its group, for [`Slicing::Groups`].
    pub group: Option<String>,
}

/// A plan the rollout cannot run.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutError {
    /// Percentages must rise, stay within (0, 100] and end at 100.
    Percentages(Vec<f64>),
    Thresholds,
    NoDevices,
    /// A device appears twice.
    Duplicate(DevEui),
    /// Windows of length 0, or windows that overlap.
    Windows,
    /// A wave's campaign could not be built.
    Campaign(ConfigError),
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutError::Percentages(p) => write!(
                f,
                "wave percentages {p:?} must rise, stay within (0, 100] and end at 100"
            ),
            RolloutError::Thresholds => f.write_str("thresholds must be shares within [0, 1]"),
            RolloutError::NoDevices => f.write_str("a rollout needs devices"),
            RolloutError::Duplicate(d) => write!(f, "device {d:016x} is listed twice"),
            RolloutError::Windows => {
                f.write_str("windows must have a length and not overlap (every >= length)")
            }
            RolloutError::Campaign(e) => write!(f, "wave campaign: {e}"),
        }
    }
}

impl std::error::Error for RolloutError {}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    /// No new wave starts until resumed (a running wave finishes).
    Paused,
    /// A wave missed its thresholds: the reason.
    Halted(String),
    Cancelled,
    /// Every wave passed.
    Completed,
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveStatus {
    Pending,
    /// Its campaign runs (setup from `window_start - setup_lead`).
    Running,
    /// It ended and passed its thresholds.
    Passed,
    /// It ended and missed them.
    Missed,
    /// Stopped by a cancel.
    Cancelled,
}

/// Counts of one wave, at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSummary {
    pub index: usize,
    pub name: String,
    pub status: WaveStatus,
    pub devices: usize,
    pub updated: usize,
    /// Failed for another reason than a revert.
    pub failed: usize,
    /// Back on the old image after the update (or never installed it).
    pub reverted: usize,
    /// Its maintenance window, once scheduled.
    pub window: Option<(GpsMillis, GpsMillis)>,
}

/// A campaign output, with the wave it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutOutput {
    pub wave: usize,
    pub output: Output,
}

struct Wave<C> {
    name: String,
    devices: Vec<DevEui>,
    /// Window start (SessionTime) and end, once scheduled.
    window: Option<(GpsMillis, GpsMillis)>,
    status: WaveStatus,
    campaign: Option<C>,
    /// The campaign once it ended (for its counters and keys; it gets no more input).
    ended: Option<C>,
    /// Progress of a wave's devices once its campaign is gone (kept for the counts).
    last: BTreeMap<DevEui, DeviceProgress>,
}

/// The rollout. `C` is each wave's campaign; `make` builds one from its config and devices.
pub struct Rollout<C = Engine> {
    cfg: RolloutConfig,
    specs: BTreeMap<DevEui, DeviceSpec>,
    waves: Vec<Wave<C>>,
    /// The wave a device is in now (the latest that took it).
    wave_of: BTreeMap<DevEui, usize>,
    state: RolloutState,
    /// Index of the next wave to start (waves before it have run or run now).
    next: usize,
    make: fn(CampaignConfig, Vec<DeviceSpec>, GpsMillis) -> Result<C, ConfigError>,
    outputs: std::collections::VecDeque<RolloutOutput>,
}

impl<C> fmt::Debug for Rollout<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollout")
            .field("waves", &self.waves.len())
            .field("next", &self.next)
            .field("state", &self.state)
            .finish()
    }
}

/// A position in `0..2^64` for device `dev`: the order percentage slices follow.
fn shuffle_key(seed: u64, dev: DevEui) -> [u8; 32] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&dev.to_le_bytes());
    Sha256::digest(&bytes)
}

/// Wave `k`'s McKey: its own for every wave, from the template's.
fn wave_mc_key(template: &Key128, k: usize) -> Key128 {
    let mut bytes = [0u8; 24];
    bytes[..16].copy_from_slice(template.as_bytes());
    bytes[16..].copy_from_slice(&(k as u64).to_le_bytes());
    let digest = Sha256::digest(&bytes);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    Key128::from_bytes(key)
}

/// The new image did not stay: the device said why (a failed self-test, a boot loop), or its
/// version after the reboot shows it.
fn is_revert(f: &Failure) -> bool {
    matches!(
        f,
        Failure::NotUpdated { .. } | Failure::SelfTestFailed | Failure::BootLoop
    )
}

/// [`Engine::new`] as a function pointer.
fn new_engine(
    cfg: CampaignConfig,
    devices: Vec<DeviceSpec>,
    now: GpsMillis,
) -> Result<Engine, ConfigError> {
    Engine::new(cfg, devices, now)
}

impl Rollout<Engine> {
    /// A rollout of engines.
    pub fn new(
        cfg: RolloutConfig,
        devices: Vec<RolloutDevice>,
        now: GpsMillis,
    ) -> Result<Self, RolloutError> {
        Self::with_campaigns(cfg, devices, now, new_engine)
    }
}

impl<C: Campaign> Rollout<C> {
    /// A rollout whose waves are built by `make` (the engine's constructor, or a stand-in).
    pub fn with_campaigns(
        cfg: RolloutConfig,
        devices: Vec<RolloutDevice>,
        now: GpsMillis,
        make: fn(CampaignConfig, Vec<DeviceSpec>, GpsMillis) -> Result<C, ConfigError>,
    ) -> Result<Self, RolloutError> {
        let share = 0.0..=1.0;
        if !share.contains(&cfg.success_threshold) || !share.contains(&cfg.failure_threshold) {
            return Err(RolloutError::Thresholds);
        }
        if cfg.window_len_ms == 0 || cfg.window_every_ms < cfg.window_len_ms {
            return Err(RolloutError::Windows);
        }
        if devices.is_empty() {
            return Err(RolloutError::NoDevices);
        }
        let mut specs = BTreeMap::new();
        for d in &devices {
            if specs.insert(d.spec.dev_eui, d.spec.clone()).is_some() {
                return Err(RolloutError::Duplicate(d.spec.dev_eui));
            }
        }
        let slices: Vec<(String, Vec<DevEui>)> = match &cfg.slicing {
            Slicing::Percent(p) => {
                let rising = p.windows(2).all(|w| w[0] < w[1]);
                if p.is_empty() || !rising || p[0] <= 0.0 || p[p.len() - 1] != 100.0 {
                    return Err(RolloutError::Percentages(p.clone()));
                }
                let mut order: Vec<DevEui> = specs.keys().copied().collect();
                order.sort_by_key(|&d| shuffle_key(cfg.seed, d));
                let n = order.len();
                let mut taken = 0;
                let mut slices = Vec::new();
                for &pct in p {
                    // At least one device per wave while any are left.
                    let upto = ((n as f64 * pct / 100.0).ceil() as usize)
                        .max(taken + 1)
                        .min(n);
                    if upto > taken {
                        slices.push((format!("{pct} %"), order[taken..upto].to_vec()));
                        taken = upto;
                    }
                }
                slices
            }
            Slicing::Groups(names) => {
                let mut slices: Vec<(String, Vec<DevEui>)> =
                    names.iter().map(|n| (n.clone(), Vec::new())).collect();
                let mut rest = Vec::new();
                for d in &devices {
                    match d
                        .group
                        .as_ref()
                        .and_then(|g| names.iter().position(|n| n == g))
                    {
                        Some(i) => slices[i].1.push(d.spec.dev_eui),
                        None => rest.push(d.spec.dev_eui),
                    }
                }
                if !rest.is_empty() {
                    slices.push(("(other devices)".into(), rest));
                }
                slices.retain(|(_, d)| !d.is_empty());
                slices
            }
        };
        let mut rollout = Self {
            cfg,
            specs,
            waves: Vec::new(),
            wave_of: BTreeMap::new(),
            state: RolloutState::Running,
            next: 0,
            make,
            outputs: Default::default(),
        };
        for (name, devices) in slices {
            rollout.push_wave(name, devices);
        }
        rollout.schedule_next(now);
        rollout.handle_timeout(now);
        Ok(rollout)
    }

    fn push_wave(&mut self, name: String, devices: Vec<DevEui>) {
        self.waves.push(Wave {
            name,
            devices,
            window: None,
            status: WaveStatus::Pending,
            campaign: None,
            ended: None,
            last: BTreeMap::new(),
        });
    }

    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// Every wave's counts, in order.
    pub fn waves(&self) -> Vec<WaveSummary> {
        (0..self.waves.len()).map(|i| self.summary(i)).collect()
    }

    /// A device's wave and progress in it.
    pub fn device(&self, dev: DevEui) -> Option<(usize, &DeviceProgress)> {
        let &w = self.wave_of.get(&dev)?;
        let wave = &self.waves[w];
        let progress = match &wave.campaign {
            Some(c) => c.progress(dev),
            None => wave.last.get(&dev),
        }?;
        Some((w, progress))
    }

    /// The running wave's campaign, if one runs.
    pub fn running(&self) -> Option<(usize, &C)> {
        self.waves
            .iter()
            .enumerate()
            .find_map(|(i, w)| w.campaign.as_ref().map(|c| (i, c)))
    }

    /// Wave `k`'s campaign, running or ended (`None` before it started).
    pub fn campaign(&self, k: usize) -> Option<&C> {
        let w = self.waves.get(k)?;
        w.campaign.as_ref().or(w.ended.as_ref())
    }

    /// The devices of wave `k`, in the order they were taken.
    pub fn wave_devices(&self, k: usize) -> Option<&[DevEui]> {
        self.waves.get(k).map(|w| w.devices.as_slice())
    }

    /// The campaign config of wave `k` (its window as scheduled), e.g. for its multicast keys.
    pub fn wave_config(&self, k: usize) -> Option<CampaignConfig> {
        let (start, end) = self.waves.get(k)?.window?;
        Some(self.campaign_config(k, start, end))
    }

    fn campaign_config(&self, k: usize, start: GpsMillis, end: GpsMillis) -> CampaignConfig {
        let t = &self.cfg.template;
        CampaignConfig {
            session_start: start,
            window_end: end,
            mc_addr: t.mc_addr.wrapping_add(k as u32),
            mc_key: wave_mc_key(&t.mc_key, k),
            session_cnt: t.session_cnt.wrapping_add(k as u16),
            ..t.clone()
        }
    }

    fn summary(&self, i: usize) -> WaveSummary {
        let w = &self.waves[i];
        let (mut updated, mut failed, mut reverted) = (0, 0, 0);
        for dev in &w.devices {
            let p = match &w.campaign {
                Some(c) => c.progress(*dev),
                None => w.last.get(dev),
            };
            match p.map(|p| &p.phase) {
                Some(Phase::Updated) => updated += 1,
                Some(Phase::Failed(f)) if is_revert(f) => reverted += 1,
                Some(Phase::Failed(_)) => failed += 1,
                _ => {}
            }
        }
        WaveSummary {
            index: i,
            name: w.name.clone(),
            status: w.status,
            devices: w.devices.len(),
            updated,
            failed,
            reverted,
            window: w.window,
        }
    }

    /// Why wave `i` misses its thresholds (at its end, or already certain), if it does.
    fn verdict(&self, i: usize, ended: bool) -> Option<String> {
        let s = self.summary(i);
        let n = s.devices.max(1) as f64;
        let bad = (s.failed + s.reverted) as f64;
        let name = &s.name;
        if bad / n > self.cfg.failure_threshold {
            return Some(format!(
                "wave {} ({name}): {} of {} devices failed or reverted ({:.1} %){}, more than the {:.1} % allowed",
                i + 1,
                s.failed + s.reverted,
                s.devices,
                100.0 * bad / n,
                // A running wave is judged as soon as it cannot pass: its counts then.
                if ended { "" } else { " before the wave ended" },
                100.0 * self.cfg.failure_threshold
            ));
        }
        let can_reach = (n - bad) / n >= self.cfg.success_threshold;
        if (ended && (s.updated as f64) / n < self.cfg.success_threshold) || !can_reach {
            return Some(format!(
                "wave {} ({name}): {} of {} devices updated ({:.1} %), short of the {:.1} % needed",
                i + 1,
                s.updated,
                s.devices,
                100.0 * s.updated as f64 / n,
                100.0 * self.cfg.success_threshold
            ));
        }
        None
    }

    /// Gives wave `self.next` the first window whose setup can start at or after `now`.
    fn schedule_next(&mut self, now: GpsMillis) {
        let Some(w) = self.waves.get(self.next) else {
            return;
        };
        if w.window.is_some() {
            return;
        }
        let c = &self.cfg;
        let earliest = now + c.setup_lead_ms;
        let start = if earliest <= c.first_window {
            c.first_window
        } else {
            let k = (earliest - c.first_window).div_ceil(c.window_every_ms);
            c.first_window + k * c.window_every_ms
        };
        self.waves[self.next].window = Some((start, start + c.window_len_ms));
    }

    /// The wave to start next is due (its setup time has come) and may start.
    fn start_due(&mut self, now: GpsMillis) {
        if self.state != RolloutState::Running || self.running().is_some() {
            return;
        }
        let i = self.next;
        let Some((start, end)) = self.waves.get(i).and_then(|w| w.window) else {
            return;
        };
        if now + self.cfg.setup_lead_ms < start {
            return;
        }
        let cfg = self.campaign_config(i, start, end);
        let specs: Vec<DeviceSpec> = self.waves[i]
            .devices
            .iter()
            .filter_map(|d| self.specs.get(d).cloned())
            .collect();
        match (self.make)(cfg, specs, now) {
            Ok(c) => {
                for d in &self.waves[i].devices {
                    self.wave_of.insert(*d, i);
                }
                let w = &mut self.waves[i];
                w.campaign = Some(c);
                w.status = WaveStatus::Running;
                self.next += 1;
                self.drain(i);
            }
            Err(e) => {
                self.state = RolloutState::Halted(format!("wave {}: {e}", i + 1));
            }
        }
    }

    fn drain(&mut self, i: usize) {
        if let Some(c) = self.waves[i].campaign.as_mut() {
            while let Some(output) = c.poll_output() {
                self.outputs.push_back(RolloutOutput { wave: i, output });
            }
        }
    }

    /// Ends wave `i`'s campaign: keeps its devices' last progress.
    fn close(&mut self, i: usize, status: WaveStatus) {
        let w = &mut self.waves[i];
        if let Some(c) = w.campaign.take() {
            for d in &w.devices {
                if let Some(p) = c.progress(*d) {
                    w.last.insert(*d, p.clone());
                }
            }
            w.ended = Some(c);
        }
        w.status = status;
    }

    /// Looks at the running wave: ends it when its campaign is over (judging it), and halts
    /// the rollout as soon as the wave cannot pass.
    fn review(&mut self, now: GpsMillis) {
        let Some((i, c)) = self.running() else {
            return;
        };
        let ended = c.is_finished();
        let verdict = self.verdict(i, ended);
        if let (Some(why), RolloutState::Running | RolloutState::Paused) = (&verdict, &self.state) {
            self.state = RolloutState::Halted(why.clone());
        }
        if !ended {
            return;
        }
        self.close(
            i,
            if verdict.is_none() {
                WaveStatus::Passed
            } else {
                WaveStatus::Missed
            },
        );
        let idle = matches!(self.state, RolloutState::Running | RolloutState::Paused);
        if verdict.is_none() && self.next >= self.waves.len() && idle {
            self.state = RolloutState::Completed;
        }
        self.schedule_next(now);
    }

    /// Whether an uplink from `dev` would reach a campaign (its wave runs): a driver need not
    /// log the others, which change nothing.
    pub fn takes_uplink(&self, dev: DevEui) -> bool {
        self.wave_of
            .get(&dev)
            .is_some_and(|&i| self.waves[i].campaign.is_some())
    }

    /// Handles an uplink from `dev`: to the campaign of the wave it is in.
    pub fn handle_uplink(&mut self, now: GpsMillis, dev: DevEui, port: u8, bytes: &[u8]) {
        let Some(&i) = self.wave_of.get(&dev) else {
            return;
        };
        if let Some(c) = self.waves[i].campaign.as_mut() {
            c.handle_uplink(now, dev, port, bytes);
            self.drain(i);
            self.review(now);
            self.start_due(now);
        }
    }

    /// No gateway sent `frame`, an output of wave `wave`: to its campaign if it still runs.
    pub fn handle_tx_refused(&mut self, now: GpsMillis, wave: usize, frame: &MulticastFrame) {
        let Some(c) = self.waves.get_mut(wave).and_then(|w| w.campaign.as_mut()) else {
            return;
        };
        c.handle_tx_refused(now, frame);
        self.drain(wave);
        self.review(now);
        self.start_due(now);
    }

    /// Runs what is due: the running campaign's timers, the end of a wave, the next wave's
    /// setup.
    pub fn handle_timeout(&mut self, now: GpsMillis) {
        if let Some((i, _)) = self.running() {
            if let Some(c) = self.waves[i].campaign.as_mut() {
                c.handle_timeout(now);
            }
            self.drain(i);
            self.review(now);
        }
        self.start_due(now);
    }

    pub fn poll_output(&mut self) -> Option<RolloutOutput> {
        self.outputs.pop_front()
    }

    /// When [`Rollout::handle_timeout`] must run next (`None`: nothing will happen without
    /// an input).
    pub fn poll_timeout(&mut self) -> Option<GpsMillis> {
        let running = match self.running() {
            Some((i, _)) => self.waves[i].campaign.as_mut().and_then(C::poll_timeout),
            None => None,
        };
        let next_wave = match (&self.state, self.running()) {
            (RolloutState::Running, None) => self
                .waves
                .get(self.next)
                .and_then(|w| w.window)
                .map(|(start, _)| start.saturating_sub(self.cfg.setup_lead_ms)),
            _ => None,
        };
        [running, next_wave].into_iter().flatten().min()
    }

    /// No new wave starts until [`Rollout::resume`]; a running wave finishes.
    pub fn pause(&mut self, _now: GpsMillis) {
        if self.state == RolloutState::Running {
            self.state = RolloutState::Paused;
        }
    }

    /// Lets waves start again (the next one at its next window).
    pub fn resume(&mut self, now: GpsMillis) {
        if self.state == RolloutState::Paused {
            self.state = RolloutState::Running;
            if let Some(w) = self.waves.get_mut(self.next) {
                if w.window
                    .is_some_and(|(start, _)| start < now + self.cfg.setup_lead_ms)
                {
                    w.window = None;
                }
            }
            self.schedule_next(now);
            self.start_due(now);
        }
    }

    /// Stops the running wave now and starts no other.
    pub fn cancel(&mut self, _now: GpsMillis) {
        if let Some((i, _)) = self.running() {
            self.close(i, WaveStatus::Cancelled);
        }
        self.outputs.clear();
        self.state = RolloutState::Cancelled;
    }

    /// A new wave of the devices that failed or reverted in ended waves, next in line; a
    /// halted rollout runs again from it. Returns how many devices it holds.
    pub fn retry_failed(&mut self, now: GpsMillis) -> usize {
        let failed = self.retry_candidates();
        if failed.is_empty() {
            return 0;
        }
        let n = failed.len();
        let name = format!("retry of {n} failed");
        self.waves.insert(
            self.next,
            Wave {
                name,
                devices: failed,
                window: None,
                status: WaveStatus::Pending,
                campaign: None,
                ended: None,
                last: BTreeMap::new(),
            },
        );
        if matches!(
            self.state,
            RolloutState::Halted(_) | RolloutState::Completed
        ) {
            self.state = RolloutState::Running;
        }
        // Pending waves after it get their windows when their turn comes.
        for w in &mut self.waves[self.next + 1..] {
            w.window = None;
        }
        self.schedule_next(now);
        self.start_due(now);
        n
    }

    /// The devices [`Rollout::retry_failed`] would take now: those that failed or reverted
    /// in the wave they are in (none while a wave runs, or once cancelled).
    pub fn retry_candidates(&self) -> Vec<DevEui> {
        if self.state == RolloutState::Cancelled || self.running().is_some() {
            return Vec::new();
        }
        let wave_of = &self.wave_of;
        self.waves
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                w.devices.iter().filter(move |d| {
                    wave_of.get(d) == Some(&i)
                        && w.last
                            .get(d)
                            .is_some_and(|p| matches!(p.phase, Phase::Failed(_)))
                })
            })
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests;
