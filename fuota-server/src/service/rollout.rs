//! A rollout in the service: the operator's request turned into a rollout plan (each wave's
//! campaign planned like a campaign of its own), and a running rollout: the sans-IO
//! [`Rollout`] with its write-ahead log.
//!
//! Persistence is the campaigns' event sourcing, one level up. Every input of the rollout
//! (an uplink from a device of its running wave, a timeout, a frame the gateways refused, an
//! operator's pause, resume, cancel or retry with who made it) is logged before its effects
//! leave the process, in one transaction with the outputs it produced (numbered per wave),
//! the rows of the waves it started and the audit rows of the state changes. On restart the
//! rollout is rebuilt by feeding it its inputs again; its waves' engines hand out the same
//! frames with the same FCnts, which count as sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::campaign::{
    self, CampaignRequest, Derivation, DeviceRequest, DurationSpec, Invalid, Numbered,
    RedundancySpec, StoredConfig, WindowSpec, MAX_RESENDS,
};
use super::chirpstack::{eui_string, parse_eui};
use super::store::{OutputRow, RolloutInputRow};
use crate::engine::{
    CampaignConfig, DevEui, DeviceProgress, Engine, GpsMillis, MulticastFrame, Output, Phase,
};
use crate::plan::Plan;
use crate::rollout::{
    Rollout, RolloutConfig, RolloutDevice, RolloutState, Slicing, WaveStatus, WaveSummary,
};
use fuota_codec::keys::Key128;

/// How the fleet is cut: `{"percent": [1, 10, 25, 50, 100]}` or `{"groups": ["a", "b"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WavesSpec {
    Percent(Vec<f64>),
    Groups(Vec<String>),
}

impl Default for WavesSpec {
    fn default() -> Self {
        match Slicing::default() {
            Slicing::Percent(p) => WavesSpec::Percent(p),
            Slicing::Groups(g) => WavesSpec::Groups(g),
        }
    }
}

/// The maintenance windows: the first from `start` (RFC 3339; absent: as soon as the first
/// wave's setup allows), each `duration` long, one every `every` (default a day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutWindowSpec {
    #[serde(default)]
    pub start: Option<String>,
    pub duration: DurationSpec,
    #[serde(default)]
    pub every: Option<DurationSpec>,
}

/// One device of a rollout request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDeviceRequest {
    pub dev_eui: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen_app_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    /// Its group, for `{"groups": [...]}` waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `POST /api/rollouts`: a campaign request's radio and firmware fields, the waves, the
/// thresholds and the windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub name: String,
    pub firmware_id: i64,
    #[serde(default)]
    pub application_id: Option<String>,
    #[serde(default = "default_lorawan")]
    pub lorawan_version: String,
    #[serde(default = "default_package")]
    pub package_version: u8,
    pub region: String,
    pub dr: u8,
    #[serde(default)]
    pub frequency: Option<u32>,
    #[serde(default)]
    pub redundancy: RedundancySpec,
    #[serde(default)]
    pub target_version: Option<String>,
    #[serde(default)]
    pub waves: WavesSpec,
    /// Share of a wave updated for the next to start (default 0.95).
    #[serde(default = "default_success")]
    pub success_threshold: f64,
    /// Largest share of a wave failed or reverted (default 0.01).
    #[serde(default = "default_failure")]
    pub failure_threshold: f64,
    pub window: RolloutWindowSpec,
    /// Each wave's unicast setup starts this long before its window; the server's
    /// `campaign.setup_s` if absent.
    #[serde(default)]
    pub setup: Option<DurationSpec>,
    /// Orders the devices of percentage waves; random if absent.
    #[serde(default)]
    pub seed: Option<u64>,
    pub devices: Vec<RolloutDeviceRequest>,
}

fn default_lorawan() -> String {
    "1.0.4".into()
}

fn default_package() -> u8 {
    2
}

fn default_success() -> f64 {
    RolloutConfig::SUCCESS
}

fn default_failure() -> f64 {
    RolloutConfig::FAILURE
}

impl RolloutRequest {
    /// The campaign request each wave is planned as (its window starting now).
    pub fn campaign_request(&self) -> CampaignRequest {
        CampaignRequest {
            name: self.name.clone(),
            firmware_id: self.firmware_id,
            application_id: self.application_id.clone(),
            lorawan_version: self.lorawan_version.clone(),
            package_version: self.package_version,
            region: self.region.clone(),
            dr: self.dr,
            frequency: self.frequency,
            window: WindowSpec {
                start: None,
                duration: self.window.duration.clone(),
            },
            redundancy: self.redundancy.clone(),
            target_version: self.target_version.clone(),
            setup: Some(DurationSpec::Seconds(0)),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceRequest {
                    dev_eui: d.dev_eui.clone(),
                    gen_app_key: d.gen_app_key.clone(),
                    app_key: d.app_key.clone(),
                })
                .collect(),
        }
    }

    /// The devices with their root keys and groups, checked.
    pub fn devices(&self) -> Result<Vec<RolloutDevice>, Invalid> {
        let specs = campaign::device_specs(&self.campaign_request())?;
        Ok(specs
            .into_iter()
            .zip(&self.devices)
            .map(|(spec, d)| RolloutDevice {
                spec,
                group: d.group.clone(),
            })
            .collect())
    }

    /// The request as stored: no keys.
    pub fn redacted(&self) -> Self {
        let mut r = self.clone();
        r.devices.iter_mut().for_each(|d| {
            d.gen_app_key = None;
            d.app_key = None;
        });
        r
    }
}

/// The rollout's plan as stored (the template's McKey is stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRollout {
    /// Every wave's campaign: this, with its own window, McAddr, McKey and SessionCnt.
    pub template: StoredConfig,
    pub waves: WavesSpec,
    pub success_threshold: f64,
    pub failure_threshold: f64,
    pub first_window: GpsMillis,
    pub window_len_ms: u64,
    pub window_every_ms: u64,
    pub setup_lead_ms: u64,
    pub seed: u64,
}

impl StoredRollout {
    pub fn rollout_config(&self, data: Vec<u8>, mc_key: Key128) -> RolloutConfig {
        RolloutConfig {
            template: self.template.engine_config(data, mc_key),
            slicing: match &self.waves {
                WavesSpec::Percent(p) => Slicing::Percent(p.clone()),
                WavesSpec::Groups(g) => Slicing::Groups(g.clone()),
            },
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
            first_window: self.first_window,
            window_len_ms: self.window_len_ms,
            window_every_ms: self.window_every_ms,
            setup_lead_ms: self.setup_lead_ms,
            seed: self.seed,
        }
    }

    /// A wave's campaign as stored, from its engine configuration.
    pub fn wave_config(&self, c: &CampaignConfig) -> StoredConfig {
        StoredConfig {
            session_start: c.session_start,
            window_end: c.window_end,
            mc_addr: c.mc_addr,
            session_cnt: c.session_cnt,
            ..self.template.clone()
        }
    }
}

/// Multicast addresses a rollout holds from its first: one per wave, retries included.
pub const ROLLOUT_GROUPS: u32 = 256;

/// Plans a rollout: each wave's campaign as [`campaign::derive`] plans one, its windows
/// and thresholds checked. `d.mc_addr` is the first of the rollout's [`ROLLOUT_GROUPS`]
/// addresses, `d.first_mc_fcnt` above any FCnt they used.
pub fn derive(
    req: &RolloutRequest,
    data_len: usize,
    patch_target: Option<u32>,
    d: &Derivation,
    seed: u64,
) -> Result<(StoredRollout, Plan), Invalid> {
    let share = 0.0..=1.0;
    if !share.contains(&req.success_threshold) || !share.contains(&req.failure_threshold) {
        return Err(Invalid(
            "success_threshold and failure_threshold are shares from 0 to 1".into(),
        ));
    }
    let (template, plan) = campaign::derive(&req.campaign_request(), data_len, patch_target, d)?;
    let len_s = req.window.duration.seconds().map_err(Invalid)?;
    let every_s = match &req.window.every {
        Some(e) => e.seconds().map_err(Invalid)?,
        None => 24 * 3600,
    };
    if every_s < len_s {
        return Err(Invalid(format!(
            "window every {every_s} s is shorter than the window ({len_s} s): windows would overlap"
        )));
    }
    let lead_s = match &req.setup {
        Some(s) => s.seconds().map_err(Invalid)?,
        None => d.setup_s,
    };
    let first = match &req.window.start {
        Some(s) => match super::clock::parse_rfc3339_ms(s) {
            Some(ms) => d.clock.campaign_of_unix_ms(ms),
            None => return Err(Invalid(format!("window start {s:?} is not RFC 3339"))),
        },
        None => d.now + lead_s * 1000,
    };
    if let WavesSpec::Groups(g) = &req.waves {
        if g.is_empty() {
            return Err(Invalid("waves: name at least one group".into()));
        }
    }
    let stored = StoredRollout {
        template,
        waves: req.waves.clone(),
        success_threshold: req.success_threshold,
        failure_threshold: req.failure_threshold,
        // SessionTime is whole GPS seconds, and so is every window after the first.
        first_window: first.div_ceil(1000) * 1000,
        window_len_ms: len_s * 1000,
        window_every_ms: every_s * 1000,
        setup_lead_ms: lead_s * 1000,
        seed,
    };
    Ok((stored, plan))
}

/// An input of a rollout as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutInput {
    Uplink {
        at: GpsMillis,
        dev: DevEui,
        port: u8,
        fcnt: Option<u32>,
        data: Vec<u8>,
    },
    Timeout {
        at: GpsMillis,
    },
    /// Every gateway refused output `seq` of wave `wave`.
    Refused {
        at: GpsMillis,
        wave: usize,
        seq: i64,
    },
    Pause {
        at: GpsMillis,
    },
    Resume {
        at: GpsMillis,
    },
    Cancel {
        at: GpsMillis,
    },
    /// A new wave of the failed devices.
    Retry {
        at: GpsMillis,
    },
}

impl RolloutInput {
    pub fn at(&self) -> GpsMillis {
        match self {
            RolloutInput::Uplink { at, .. }
            | RolloutInput::Timeout { at }
            | RolloutInput::Refused { at, .. }
            | RolloutInput::Pause { at }
            | RolloutInput::Resume { at }
            | RolloutInput::Cancel { at }
            | RolloutInput::Retry { at } => *at,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RolloutInput::Uplink { .. } => "uplink",
            RolloutInput::Timeout { .. } => "timeout",
            RolloutInput::Refused { .. } => "refused",
            RolloutInput::Pause { .. } => "pause",
            RolloutInput::Resume { .. } => "resume",
            RolloutInput::Cancel { .. } => "cancel",
            RolloutInput::Retry { .. } => "retry",
        }
    }

    pub fn row(&self, seq: i64, actor: &str) -> RolloutInputRow {
        let mut r = RolloutInputRow {
            seq,
            kind: self.kind().into(),
            at_gps: self.at() as i64,
            dev_eui: None,
            port: None,
            fcnt: None,
            wave: None,
            ref_seq: None,
            data: None,
            actor: actor.into(),
        };
        match self {
            RolloutInput::Uplink {
                dev,
                port,
                fcnt,
                data,
                ..
            } => {
                r.dev_eui = Some(eui_string(*dev));
                r.port = Some(i64::from(*port));
                r.fcnt = fcnt.map(i64::from);
                r.data = Some(data.clone());
            }
            RolloutInput::Refused { wave, seq, .. } => {
                r.wave = Some(*wave as i64);
                r.ref_seq = Some(*seq);
            }
            _ => {}
        }
        r
    }

    pub fn from_row(r: &RolloutInputRow) -> Option<Self> {
        let at = u64::try_from(r.at_gps).ok()?;
        Some(match r.kind.as_str() {
            "uplink" => RolloutInput::Uplink {
                at,
                dev: parse_eui(r.dev_eui.as_deref()?)?,
                port: u8::try_from(r.port?).ok()?,
                fcnt: r.fcnt.and_then(|f| u32::try_from(f).ok()),
                data: r.data.clone().unwrap_or_default(),
            },
            "timeout" => RolloutInput::Timeout { at },
            "refused" => RolloutInput::Refused {
                at,
                wave: usize::try_from(r.wave?).ok()?,
                seq: r.ref_seq?,
            },
            "pause" => RolloutInput::Pause { at },
            "resume" => RolloutInput::Resume { at },
            "cancel" => RolloutInput::Cancel { at },
            "retry" => RolloutInput::Retry { at },
            _ => return None,
        })
    }
}

/// The state's name and reason, as stored and shown.
pub fn state_label(s: &RolloutState) -> (&'static str, Option<String>) {
    match s {
        RolloutState::Running => ("running", None),
        RolloutState::Paused => ("paused", None),
        RolloutState::Halted(why) => ("halted", Some(why.clone())),
        RolloutState::Cancelled => ("cancelled", None),
        RolloutState::Completed => ("completed", None),
    }
}

pub fn wave_status_label(s: WaveStatus) -> &'static str {
    match s {
        WaveStatus::Pending => "pending",
        WaveStatus::Running => "running",
        WaveStatus::Passed => "passed",
        WaveStatus::Missed => "missed",
        WaveStatus::Cancelled => "cancelled",
    }
}

/// The wave summaries as stored in the rollout row (campaign times).
pub fn waves_json(waves: &[WaveSummary]) -> String {
    Value::Array(
        waves
            .iter()
            .map(|w| {
                json!({
                    "index": w.index,
                    "name": w.name,
                    "status": wave_status_label(w.status),
                    "devices": w.devices,
                    "updated": w.updated,
                    "failed": w.failed,
                    "reverted": w.reverted,
                    "window": w.window.map(|(a, b)| [a, b]),
                })
            })
            .collect(),
    )
    .to_string()
}

/// A running rollout: the rollout, its waves' campaign ids and where its log stands.
#[derive(Debug)]
pub struct RolloutRun {
    pub id: i64,
    pub name: String,
    pub firmware_id: i64,
    pub rollout: Rollout<Engine>,
    pub cfg: StoredRollout,
    pub next_input: i64,
    /// Campaign id of each wave that started.
    pub wave_ids: BTreeMap<usize, i64>,
    /// Next output number of each wave.
    pub next_output: BTreeMap<usize, i64>,
    /// Key kind and sealed root key of each device (copied into its wave's campaign rows).
    pub sealed: BTreeMap<DevEui, (String, Vec<u8>)>,
    /// Multicast outputs by wave and number, with how many refusals led to them.
    frames: HashMap<(usize, i64), (MulticastFrame, u32)>,
    generation: u32,
    /// Recent uplink FCnts per device (redelivered messages are dropped).
    seen: HashMap<DevEui, BTreeSet<u32>>,
    /// Device progress in the waves that ran, after the last step.
    progress: BTreeMap<(usize, DevEui), DeviceProgress>,
    statuses: Vec<WaveStatus>,
    state: RolloutState,
    /// The wave each device is in.
    placement: BTreeMap<DevEui, usize>,
}

/// What one rollout step changed.
#[derive(Debug, Default)]
pub struct RolloutStepped {
    /// Outputs by wave, numbered per wave.
    pub outputs: Vec<(usize, Numbered)>,
    /// Devices whose progress changed in a running wave: (wave, device, before, after).
    pub changed: Vec<(usize, DevEui, DeviceProgress, DeviceProgress)>,
    /// Waves that started.
    pub started: Vec<usize>,
    /// Waves whose status changed: (wave, before, after).
    pub wave_changes: Vec<(usize, WaveStatus, WaveStatus)>,
    /// The rollout's state before, when it changed.
    pub state_was: Option<RolloutState>,
    /// Devices that changed wave.
    pub moved: Vec<(DevEui, usize)>,
}

impl RolloutRun {
    /// Starts a new rollout: its first step's changes (the first wave may start at once).
    pub fn start(
        id: i64,
        cfg: StoredRollout,
        data: Vec<u8>,
        mc_key: Key128,
        devices: Vec<RolloutDevice>,
        sealed: BTreeMap<DevEui, (String, Vec<u8>)>,
        now: GpsMillis,
    ) -> Result<(Self, RolloutStepped), Invalid> {
        // In DevEUI order, as they are read back from the database: a group's wave takes
        // them in that order whatever the request's.
        let mut devices = devices;
        devices.sort_by_key(|d| d.spec.dev_eui);
        let rollout = Rollout::new(cfg.rollout_config(data, mc_key), devices, now)
            .map_err(|e| Invalid(e.to_string()))?;
        let n = rollout.waves().len();
        let mut run = Self {
            id,
            name: String::new(),
            firmware_id: 0,
            rollout,
            cfg,
            next_input: 0,
            wave_ids: BTreeMap::new(),
            next_output: BTreeMap::new(),
            sealed,
            frames: HashMap::new(),
            generation: 0,
            seen: HashMap::new(),
            progress: BTreeMap::new(),
            statuses: vec![WaveStatus::Pending; n],
            state: RolloutState::Running,
            placement: BTreeMap::new(),
        };
        // The devices' rows are made with their planned waves.
        run.placement = run.planned();
        let stepped = run.observe(None);
        Ok((run, stepped))
    }

    pub fn state(&self) -> &RolloutState {
        self.rollout.state()
    }

    /// Whether the rollout is over (its devices are free again).
    pub fn is_over(&self) -> bool {
        matches!(
            self.rollout.state(),
            RolloutState::Completed | RolloutState::Cancelled
        )
    }

    /// Whether this uplink is worth logging: its device's wave runs and it is not a
    /// redelivery.
    pub fn wants_uplink(&self, dev: DevEui, fcnt: Option<u32>) -> bool {
        let dup = fcnt.is_some_and(|f| self.seen.get(&dev).is_some_and(|s| s.contains(&f)));
        !dup && self.rollout.takes_uplink(dev)
    }

    /// Feeds one input and returns what changed.
    pub fn feed(&mut self, input: &RolloutInput) -> RolloutStepped {
        let running = self.rollout.running().map(|(i, _)| i);
        let r = &mut self.rollout;
        match input {
            RolloutInput::Uplink {
                at,
                dev,
                port,
                fcnt,
                data,
            } => {
                if let Some(f) = fcnt {
                    let s = self.seen.entry(*dev).or_default();
                    s.insert(*f);
                    while s.len() > 64 {
                        s.pop_first();
                    }
                }
                r.handle_uplink(*at, *dev, *port, data);
            }
            RolloutInput::Timeout { at } => r.handle_timeout(*at),
            RolloutInput::Refused { at, wave, seq } => match self.frames.get(&(*wave, *seq)) {
                Some((f, g)) if *g < MAX_RESENDS => {
                    self.generation = g + 1;
                    let f = f.clone();
                    r.handle_tx_refused(*at, *wave, &f);
                }
                _ => {}
            },
            RolloutInput::Pause { at } => r.pause(*at),
            RolloutInput::Resume { at } => r.resume(*at),
            RolloutInput::Cancel { at } => r.cancel(*at),
            RolloutInput::Retry { at } => {
                r.retry_failed(*at);
            }
        }
        self.next_input += 1;
        let stepped = self.observe(running);
        self.generation = 0;
        stepped
    }

    /// Drains the outputs and compares the rollout with the last step.
    fn observe(&mut self, was_running: Option<usize>) -> RolloutStepped {
        let mut st = RolloutStepped::default();
        while let Some(o) = self.rollout.poll_output() {
            let n = self.next_output.entry(o.wave).or_insert(0);
            if let Output::Multicast(f) = &o.output {
                self.frames
                    .insert((o.wave, *n), (f.clone(), self.generation));
            }
            st.outputs.push((
                o.wave,
                Numbered {
                    seq: *n,
                    output: o.output,
                },
            ));
            *n += 1;
        }
        let waves = self.rollout.waves();
        for w in &waves {
            let before = self
                .statuses
                .get(w.index)
                .copied()
                .unwrap_or(WaveStatus::Pending);
            if before != w.status {
                st.wave_changes.push((w.index, before, w.status));
                if before == WaveStatus::Pending {
                    st.started.push(w.index);
                }
            }
        }
        let now_running = self.rollout.running().map(|(i, _)| i);
        let mut looked = BTreeSet::new();
        for k in [was_running, now_running].into_iter().flatten() {
            if !looked.insert(k) {
                continue;
            }
            let fresh = st.started.contains(&k);
            let (Some(c), Some(devs)) = (self.rollout.campaign(k), self.rollout.wave_devices(k))
            else {
                continue;
            };
            for d in devs {
                let Some(p) = c.device(*d) else { continue };
                match self.progress.get(&(k, *d)) {
                    Some(old) if old == p => {}
                    Some(old) => st.changed.push((k, *d, old.clone(), p.clone())),
                    // A wave that starts has its devices' rows made with this progress.
                    None if fresh => {}
                    None => st.changed.push((k, *d, p.clone(), p.clone())),
                }
                self.progress.insert((k, *d), p.clone());
            }
        }
        if !st.started.is_empty() || waves.len() != self.statuses.len() {
            let placement = self.planned();
            for (d, k) in &placement {
                if self.placement.get(d) != Some(k) {
                    st.moved.push((*d, *k));
                }
            }
            self.placement = placement;
        }
        self.statuses = waves.iter().map(|w| w.status).collect();
        if self.rollout.state() != &self.state {
            st.state_was = Some(std::mem::replace(
                &mut self.state,
                self.rollout.state().clone(),
            ));
        }
        st
    }

    /// The wave each device is in: the last that took it (a retry wave after the one it
    /// failed in).
    fn planned(&self) -> BTreeMap<DevEui, usize> {
        let mut placement = BTreeMap::new();
        for k in 0..self.rollout.waves().len() {
            for d in self.rollout.wave_devices(k).unwrap_or(&[]) {
                placement.insert(*d, k);
            }
        }
        placement
    }

    /// The wave each device is in now.
    pub fn placement(&self) -> &BTreeMap<DevEui, usize> {
        &self.placement
    }

    /// Devices of wave `k` updated and failed (reverts included).
    pub fn tally(&self, k: usize) -> (i64, i64) {
        let (mut up, mut failed) = (0, 0);
        if let (Some(c), Some(devs)) = (self.rollout.campaign(k), self.rollout.wave_devices(k)) {
            for d in devs {
                match c.device(*d).map(|p| &p.phase) {
                    Some(Phase::Updated) => up += 1,
                    Some(Phase::Failed(_)) => failed += 1,
                    _ => {}
                }
            }
        }
        (up, failed)
    }

    /// Rebuilds a rollout from its log. Returns it and how many logged outputs did not match
    /// what its waves gave again (0 unless the engine changed).
    #[allow(clippy::too_many_arguments)]
    pub fn replay(
        id: i64,
        cfg: StoredRollout,
        data: Vec<u8>,
        mc_key: Key128,
        devices: Vec<RolloutDevice>,
        sealed: BTreeMap<DevEui, (String, Vec<u8>)>,
        created: GpsMillis,
        inputs: &[RolloutInputRow],
        outputs: &BTreeMap<usize, Vec<OutputRow>>,
    ) -> Result<(Self, usize), Invalid> {
        let (mut run, first) = Self::start(id, cfg, data, mc_key, devices, sealed, created)?;
        let mut produced: BTreeMap<usize, Vec<Numbered>> = BTreeMap::new();
        let mut keep = |outs: Vec<(usize, Numbered)>| {
            for (w, o) in outs {
                produced.entry(w).or_default().push(o);
            }
        };
        keep(first.outputs);
        for r in inputs {
            let Some(input) = RolloutInput::from_row(r) else {
                return Err(Invalid(format!(
                    "rollout {id}: input {} cannot be read",
                    r.seq
                )));
            };
            keep(run.feed(&input).outputs);
        }
        let mut mismatches = 0;
        for (w, logged) in outputs {
            let again = produced.get(w).map_or(&[][..], Vec::as_slice);
            mismatches += again
                .iter()
                .zip(logged)
                .filter(|(p, r)| p.seq != r.seq || !p.matches(r))
                .count()
                + again.len().abs_diff(logged.len());
            // Numbering goes on after whatever is logged (no number, and so no FCnt, twice).
            let next = run.next_output.entry(*w).or_insert(0);
            *next = (*next).max(logged.last().map_or(0, |o| o.seq + 1));
        }
        mismatches += produced
            .iter()
            .filter(|(w, _)| !outputs.contains_key(w))
            .map(|(_, v)| v.len())
            .sum::<usize>();
        Ok((run, mismatches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::clock::Clock;

    const T0: GpsMillis = 1_400_000_000_000;
    /// When the rollout is made: the first window (the plan's T0 + 61 s) less the setup.
    const CREATED: GpsMillis = T0 + 1_000;

    fn request(n: usize) -> RolloutRequest {
        RolloutRequest {
            name: "fleet".into(),
            firmware_id: 1,
            application_id: None,
            lorawan_version: "1.0.4".into(),
            package_version: 2,
            region: "eu868".into(),
            dr: 5,
            frequency: None,
            redundancy: RedundancySpec::default(),
            target_version: Some("1.2.3".into()),
            waves: WavesSpec::Percent(vec![25.0, 100.0]),
            success_threshold: 0.95,
            failure_threshold: 0.01,
            window: RolloutWindowSpec {
                start: None,
                duration: DurationSpec::Text("10m".into()),
                every: Some(DurationSpec::Text("1h".into())),
            },
            setup: Some(DurationSpec::Seconds(60)),
            seed: None,
            devices: (0..n)
                .map(|i| RolloutDeviceRequest {
                    dev_eui: format!("{:016x}", i + 1),
                    gen_app_key: Some(hex::encode([i as u8; 16])),
                    app_key: None,
                    group: None,
                })
                .collect(),
        }
    }

    fn derivation() -> Derivation {
        Derivation {
            now: T0 + 500,
            setup_s: 60,
            retry_s: 30,
            max_attempts: 3,
            reboot_wait_s: 10,
            status_wait_s: 10,
            block_ack_delay: 0,
            multicast_lead_ms: 1000,
            unicast_repair_max_devices: 1,
            mc_addr: 0x01ff_0100,
            first_mc_fcnt: 40,
            tx_power_dbm: None,
            application_id: "app".into(),
            clock: Clock::real_time(),
        }
    }

    #[test]
    fn a_request_becomes_a_rollout_plan() {
        let req = request(8);
        let (cfg, plan) = derive(&req, 2000, None, &derivation(), 7).unwrap();
        assert_eq!(cfg.template.frag_size, plan.frag_size);
        assert_eq!(cfg.first_window, T0 + 61_000);
        assert_eq!(
            (cfg.window_len_ms, cfg.window_every_ms, cfg.setup_lead_ms),
            (600_000, 3_600_000, 60_000)
        );
        assert_eq!(cfg.template.mc_addr, 0x01ff_0100);
        assert_eq!(cfg.template.first_mc_fcnt, 40);
        assert_eq!(req.devices().unwrap().len(), 8);
        let mut bad = request(2);
        bad.window.every = Some(DurationSpec::Text("5m".into()));
        assert!(derive(&bad, 2000, None, &derivation(), 7)
            .unwrap_err()
            .0
            .contains("overlap"));
        let mut bad = request(2);
        bad.failure_threshold = 2.0;
        assert!(derive(&bad, 2000, None, &derivation(), 7).is_err());
        // The stored request holds no key.
        assert!(request(2)
            .redacted()
            .devices
            .iter()
            .all(|d| d.gen_app_key.is_none()));
        let json = r#"{"percent": [1, 100]}"#;
        assert_eq!(
            serde_json::from_str::<WavesSpec>(json).unwrap(),
            WavesSpec::Percent(vec![1.0, 100.0])
        );
    }

    fn started(n: usize) -> (RolloutRun, RolloutStepped, StoredRollout, Vec<u8>) {
        let req = request(n);
        let (cfg, _) = derive(&req, 700, None, &derivation(), 7).unwrap();
        let data: Vec<u8> = (0..700u32).map(|i| (i * 13) as u8).collect();
        let (run, first) = RolloutRun::start(
            1,
            cfg.clone(),
            data.clone(),
            Key128::from_bytes([5; 16]),
            req.devices().unwrap(),
            BTreeMap::new(),
            CREATED,
        )
        .unwrap();
        (run, first, cfg, data)
    }

    #[test]
    fn the_first_wave_starts_at_once_and_its_outputs_are_numbered_per_wave() {
        let (run, first, _, _) = started(8);
        assert_eq!(first.started, [0]);
        assert_eq!(
            first.wave_changes,
            [(0, WaveStatus::Pending, WaveStatus::Running)]
        );
        assert!(first.moved.is_empty(), "made with their waves");
        assert!(first.changed.is_empty());
        // Two canaries, one setup request each.
        assert_eq!(first.outputs.len(), 2);
        assert!(first.outputs.iter().all(|(w, _)| *w == 0));
        assert_eq!(
            first.outputs.iter().map(|(_, o)| o.seq).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(run.placement().values().filter(|&&w| w == 1).count(), 6);
    }

    #[test]
    fn a_replayed_log_gives_the_same_rollout_and_numbering() {
        let (mut run, first, cfg, data) = started(8);
        let mut inputs = Vec::new();
        let mut outputs: BTreeMap<usize, Vec<OutputRow>> = BTreeMap::new();
        let mut keep = |outs: &[(usize, Numbered)]| {
            for (w, o) in outs {
                outputs.entry(*w).or_default().push(o.row());
            }
        };
        keep(&first.outputs);
        let canary = run.rollout.wave_devices(0).unwrap()[0];
        let later = run.rollout.wave_devices(1).unwrap()[0];
        assert!(run.wants_uplink(canary, Some(1)) && !run.wants_uplink(later, Some(1)));
        let mut step = |run: &mut RolloutRun, input: RolloutInput, actor: &str| {
            inputs.push(input.row(run.next_input, actor));
            let s = run.feed(&input);
            keep(&s.outputs);
            s
        };
        let s = step(
            &mut run,
            RolloutInput::Uplink {
                at: T0 + 5_000,
                dev: canary,
                port: 202,
                fcnt: Some(1),
                data: vec![1, 2],
            },
            "system",
        );
        assert!(s.wave_changes.is_empty());
        assert!(!run.wants_uplink(canary, Some(1)), "a redelivery");
        let s = step(&mut run, RolloutInput::Pause { at: T0 + 6_000 }, "alice");
        assert_eq!(s.state_was, Some(RolloutState::Running));
        // Time runs through the first wave's window: its devices fail (they never answer),
        // the rollout, paused, halts.
        let mut t = T0 + 6_000;
        while let Some(next) = run.rollout.poll_timeout() {
            if next > T0 + 3_600_000 {
                break;
            }
            t = next.max(t);
            step(&mut run, RolloutInput::Timeout { at: t }, "system");
        }
        assert!(matches!(run.state(), RolloutState::Halted(_)));
        assert_eq!(run.tally(0), (0, 2));
        let s = step(&mut run, RolloutInput::Retry { at: t + 1 }, "alice");
        // The canaries move to the retry wave, next in line; the waves after it move down.
        assert_eq!(s.moved.len(), 8);
        assert_eq!((run.placement()[&canary], run.placement()[&later]), (1, 2));
        step(&mut run, RolloutInput::Cancel { at: t + 2 }, "alice");
        assert!(run.is_over());
        let fcnts: Vec<i64> = outputs[&0].iter().filter_map(|o| o.fcnt).collect();
        assert!(!fcnts.is_empty() && fcnts.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(fcnts[0], 40);
        let req = request(8);
        let (again, mismatches) = RolloutRun::replay(
            1,
            cfg.clone(),
            data.clone(),
            Key128::from_bytes([5; 16]),
            req.devices().unwrap(),
            BTreeMap::new(),
            CREATED,
            &inputs,
            &outputs,
        )
        .unwrap();
        assert_eq!(mismatches, 0);
        assert_eq!(again.next_output, run.next_output);
        assert_eq!(again.next_input, run.next_input);
        assert_eq!(again.rollout.waves(), run.rollout.waves());
        assert_eq!(again.state(), run.state());
        assert_eq!(again.placement(), run.placement());
        // A log the rollout would not produce again is told apart.
        let mut changed = outputs.clone();
        changed.get_mut(&0).unwrap()[0].data[0] ^= 1;
        let (_, mismatches) = RolloutRun::replay(
            1,
            cfg,
            data,
            Key128::from_bytes([5; 16]),
            req.devices().unwrap(),
            BTreeMap::new(),
            CREATED,
            &inputs,
            &changed,
        )
        .unwrap();
        assert_eq!(mismatches, 1);
    }

    #[test]
    fn input_rows_round_trip() {
        for i in [
            RolloutInput::Uplink {
                at: 5,
                dev: 0xab,
                port: 201,
                fcnt: Some(9),
                data: vec![1],
            },
            RolloutInput::Timeout { at: 7 },
            RolloutInput::Refused {
                at: 8,
                wave: 2,
                seq: 3,
            },
            RolloutInput::Pause { at: 9 },
            RolloutInput::Resume { at: 10 },
            RolloutInput::Cancel { at: 11 },
            RolloutInput::Retry { at: 12 },
        ] {
            let row = i.row(4, "alice");
            assert_eq!(row.actor, "alice");
            assert_eq!(RolloutInput::from_row(&row), Some(i));
        }
    }
}
