//! A campaign in the service: the operator's request turned into an engine configuration
//! (through the planner), and a running campaign: the engine with its write-ahead log.
//!
//! Persistence is event sourcing over the deterministic engine. Every input (an uplink with
//! its receive time, a timeout with its time, a frame the gateways refused) is logged before
//! the engine sees it, in the same transaction as the outputs it produces; outputs are
//! published only after that commit. On restart the engine is rebuilt by feeding it the
//! logged inputs again: it produces the same outputs with the same multicast FCnts, and those
//! count as already sent (a frame whose publication is unknown is taken as sent and lost;
//! FEC and the repair rounds cover it). Nothing is published twice.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::chirpstack::{eui_string, parse_eui, TxParams};
use super::store::{InputRow, OutputRow};
use crate::engine::{
    CampaignConfig, DevEui, DeviceProgress, DeviceSpec, Engine, FrameKind, GpsMillis,
    MulticastFrame, Output, Phase, RootKey,
};
use crate::plan::{self, parse_duration, Plan, PlanRequest, Region};
use fuota_codec::keys::Key128;
use fuota_codec::Version;

/// A duration as seconds or text (`90m`, `2h`, `1h30m`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(u64),
    Text(String),
}

impl DurationSpec {
    pub fn seconds(&self) -> Result<u64, String> {
        match self {
            DurationSpec::Seconds(s) => Ok(*s),
            DurationSpec::Text(t) => parse_duration(t),
        }
    }
}

/// The maintenance window: from `start` (RFC 3339; now if absent) for `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(default)]
    pub start: Option<String>,
    pub duration: DurationSpec,
}

/// How many coded fragments: planned for a loss rate and success probability, or fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedundancySpec {
    pub loss: f64,
    pub success: f64,
    pub fixed: Option<usize>,
}

impl Default for RedundancySpec {
    fn default() -> Self {
        Self {
            loss: 0.1,
            success: 0.99,
            fixed: None,
        }
    }
}

/// One device of a campaign request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    pub dev_eui: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen_app_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
}

/// `POST /api/campaigns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub firmware_id: i64,
    /// The ChirpStack application of the devices; the server's first if absent.
    #[serde(default)]
    pub application_id: Option<String>,
    /// `1.0.x` (devices hold a GenAppKey) or `1.1` (an AppKey).
    #[serde(default = "default_lorawan")]
    pub lorawan_version: String,
    /// TS003/TS004/TS005 version: 1 or 2.
    #[serde(default = "default_package")]
    pub package_version: u8,
    pub region: String,
    /// Class C data rate.
    pub dr: u8,
    /// Class C frequency (Hz); the region's default if absent.
    #[serde(default)]
    pub frequency: Option<u32>,
    pub window: WindowSpec,
    #[serde(default)]
    pub redundancy: RedundancySpec,
    /// What devices run once updated (`1.2.3`); read from the patch when absent.
    #[serde(default)]
    pub target_version: Option<String>,
    /// From creation to the multicast session; the server's `campaign.setup_s` if absent.
    #[serde(default)]
    pub setup: Option<DurationSpec>,
    pub devices: Vec<DeviceRequest>,
}

fn default_lorawan() -> String {
    "1.0.4".into()
}

fn default_package() -> u8 {
    2
}

/// The engine configuration as stored (the data block and McKey are stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub application_id: String,
    pub package_version: u8,
    pub region: String,
    pub frag_size: usize,
    pub redundancy: usize,
    pub frag_index: u8,
    pub descriptor: [u8; 4],
    pub session_cnt: u16,
    pub block_ack_delay: u8,
    pub mc_group_id: u8,
    pub mc_addr: u32,
    pub first_mc_fcnt: u32,
    pub freq_hz: u32,
    pub dr: u8,
    pub session_start: GpsMillis,
    pub timeout_exp: u8,
    pub spacing_ms: u64,
    pub window_end: GpsMillis,
    pub target_fw_version: u32,
    pub retry_ms: u64,
    pub max_attempts: u32,
    pub reboot_wait_ms: u64,
    pub unicast_repair_max_devices: usize,
    pub status_wait_ms: u64,
    pub multicast_lead_ms: u64,
    pub tx_power_dbm: i32,
}

impl StoredConfig {
    pub fn engine_config(&self, data: Vec<u8>, mc_key: Key128) -> CampaignConfig {
        CampaignConfig {
            version: if self.package_version == 1 {
                Version::V1
            } else {
                Version::V2
            },
            data,
            frag_size: self.frag_size,
            redundancy: self.redundancy,
            frag_index: self.frag_index,
            descriptor: self.descriptor,
            session_cnt: self.session_cnt,
            block_ack_delay: self.block_ack_delay,
            mc_group_id: self.mc_group_id,
            mc_addr: self.mc_addr,
            mc_key,
            first_mc_fcnt: self.first_mc_fcnt,
            freq_hz: self.freq_hz,
            dr: self.dr,
            session_start: self.session_start,
            timeout_exp: self.timeout_exp,
            spacing_ms: self.spacing_ms,
            window_end: self.window_end,
            target_fw_version: self.target_fw_version,
            retry_ms: self.retry_ms,
            max_attempts: self.max_attempts,
            reboot_wait_ms: self.reboot_wait_ms,
            unicast_repair_max_devices: self.unicast_repair_max_devices,
            status_wait_ms: self.status_wait_ms,
            multicast_lead_ms: self.multicast_lead_ms,
        }
    }

    pub fn region(&self) -> Region {
        self.region.parse().unwrap_or(Region::Eu868)
    }

    /// How the gateways send this campaign's multicast frames.
    pub fn tx_params(&self) -> TxParams {
        let modulation = self.region().data_rate(self.dr).map_or(
            plan::airtime::Modulation::Lora {
                sf: 12,
                bw_khz: 125,
            },
            |d| d.modulation,
        );
        TxParams {
            freq_hz: self.freq_hz,
            power_dbm: self.tx_power_dbm,
            modulation,
        }
    }
}

/// The server-side choices a request is completed with.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub now: GpsMillis,
    pub setup_s: u64,
    pub retry_s: u64,
    pub max_attempts: u32,
    pub reboot_wait_s: u64,
    pub status_wait_s: u64,
    pub block_ack_delay: u8,
    pub multicast_lead_ms: u64,
    pub unicast_repair_max_devices: usize,
    pub mc_addr: u32,
    pub first_mc_fcnt: u32,
    pub tx_power_dbm: Option<i32>,
    pub application_id: String,
    /// For the window's start (RFC 3339, wall clock).
    pub clock: super::clock::Clock,
}

/// A request the service cannot run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(m.into()))
}

/// `1.2.3` as TS006 FWversion.
pub fn parse_version(s: &str) -> Option<u32> {
    let mut it = s.trim().split('.');
    let major: u8 = it.next()?.parse().ok()?;
    let minor: u8 = it.next().unwrap_or("0").parse().ok()?;
    let rev: u16 = it.next().unwrap_or("0").parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some(fuota_codec::firmware_management::fw_version(
        major, minor, rev,
    ))
}

fn key_of(hex_key: &str, what: &str, eui: &str) -> Result<Key128, Invalid> {
    let b = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok());
    match b {
        Some(b) => Ok(Key128::from_bytes(b)),
        None => invalid(format!("device {eui}: {what} must be 32 hex digits")),
    }
}

/// The devices of a request with their root keys, checked.
pub fn device_specs(req: &CampaignRequest) -> Result<Vec<DeviceSpec>, Invalid> {
    let v11 = match req.lorawan_version.trim() {
        v if v.starts_with("1.0") => false,
        v if v.starts_with("1.1") => true,
        v => return invalid(format!("lorawan_version {v:?}: 1.0.x or 1.1")),
    };
    if req.devices.is_empty() {
        return invalid("no devices");
    }
    let mut specs = Vec::with_capacity(req.devices.len());
    let mut seen = std::collections::BTreeSet::new();
    for d in &req.devices {
        let Some(dev_eui) = parse_eui(&d.dev_eui) else {
            return invalid(format!("dev_eui {:?}: 16 hex digits", d.dev_eui));
        };
        if !seen.insert(dev_eui) {
            return invalid(format!("device {} is listed twice", d.dev_eui));
        }
        let root_key = match (v11, &d.gen_app_key, &d.app_key) {
            (false, Some(k), None) => RootKey::GenAppKey(key_of(k, "gen_app_key", &d.dev_eui)?),
            (true, None, Some(k)) => RootKey::AppKey(key_of(k, "app_key", &d.dev_eui)?),
            (false, _, _) => {
                return invalid(format!(
                    "device {}: LoRaWAN 1.0.x devices need a gen_app_key (and no app_key)",
                    d.dev_eui
                ))
            }
            (true, _, _) => {
                return invalid(format!(
                    "device {}: LoRaWAN 1.1 devices need an app_key (and no gen_app_key)",
                    d.dev_eui
                ))
            }
        };
        specs.push(DeviceSpec { dev_eui, root_key });
    }
    Ok(specs)
}

/// Plans the request and fills in the engine's configuration.
pub fn derive(
    req: &CampaignRequest,
    data_len: usize,
    patch_target: Option<u32>,
    d: &Derivation,
) -> Result<(StoredConfig, Plan), Invalid> {
    if req.name.trim().is_empty() {
        return invalid("name is empty");
    }
    let region: Region = req
        .region
        .parse()
        .map_err(|_| Invalid(format!("region {:?}: eu868 or us915", req.region)))?;
    if !matches!(req.package_version, 1 | 2) {
        return invalid("package_version must be 1 or 2");
    }
    let r = &req.redundancy;
    if !((0.0..1.0).contains(&r.loss) && r.success > 0.0 && r.success < 1.0) {
        return invalid("redundancy: loss in [0, 1), success in (0, 1)");
    }
    let window_s = req.window.duration.seconds().map_err(Invalid)?;
    if window_s == 0 {
        return invalid("window duration is zero");
    }
    let start = match &req.window.start {
        None => d.now,
        Some(s) => match super::clock::parse_rfc3339_ms(s) {
            Some(ms) => d.clock.campaign_of_unix_ms(ms),
            None => return invalid(format!("window start {s:?} is not RFC 3339")),
        },
    };
    let setup_s = match &req.setup {
        Some(s) => s.seconds().map_err(Invalid)?,
        None => d.setup_s,
    };
    let mut preq = PlanRequest::new(data_len, region, req.dr, r.loss, window_s);
    preq.freq_hz = req.frequency;
    preq.success = r.success;
    preq.block_ack_delay = d.block_ack_delay;
    let p = plan::plan(&preq).map_err(|e| Invalid(format!("plan: {e}")))?;
    let redundancy = r.fixed.unwrap_or(p.redundancy);
    let target = match (&req.target_version, patch_target) {
        (Some(v), _) => parse_version(v)
            .ok_or_else(|| Invalid(format!("target_version {v:?}: major.minor.revision")))?,
        (None, Some(t)) => t,
        (None, None) => {
            return invalid("target_version is needed: the firmware is not a signed patch")
        }
    };
    let session_start = start.max(d.now + setup_s * 1000).div_ceil(1000) * 1000;
    let window_end = start + window_s * 1000;
    if session_start >= window_end {
        return invalid("the window closes before the multicast session could start");
    }
    // Room for the first round and its status answers, and as much again for repair.
    let status_s = p.status_s + d.status_wait_s as f64;
    let need = 2.0 * (p.multicast_s + status_s);
    let timeout_exp = (0..=plan::MAX_TIMEOUT_EXP)
        .find(|&t| (1u64 << t) as f64 >= need)
        .unwrap_or(plan::MAX_TIMEOUT_EXP);
    let tx_power_dbm = d.tx_power_dbm.unwrap_or(match region {
        // The 869.4-869.65 MHz sub-band allows 500 mW ERP; the rest of EU868 25 mW.
        Region::Eu868 if (869_400_000..869_650_000).contains(&p.freq_hz) => 27,
        Region::Eu868 => 14,
        Region::Us915 => 20,
    });
    let cfg = StoredConfig {
        application_id: req
            .application_id
            .clone()
            .unwrap_or_else(|| d.application_id.clone()),
        package_version: req.package_version,
        region: region.to_string().to_lowercase(),
        frag_size: p.frag_size,
        redundancy,
        frag_index: 0,
        descriptor: [0; 4],
        // Each campaign is a new fragmentation session for its devices.
        session_cnt: 1,
        block_ack_delay: d.block_ack_delay,
        mc_group_id: 0,
        mc_addr: d.mc_addr,
        first_mc_fcnt: d.first_mc_fcnt,
        freq_hz: p.freq_hz,
        dr: req.dr,
        session_start,
        timeout_exp,
        spacing_ms: p.spacing_ms.ceil() as u64,
        window_end,
        target_fw_version: target,
        retry_ms: d.retry_s * 1000,
        max_attempts: d.max_attempts,
        reboot_wait_ms: d.reboot_wait_s * 1000,
        unicast_repair_max_devices: d.unicast_repair_max_devices,
        status_wait_ms: d.status_wait_s * 1000,
        multicast_lead_ms: d.multicast_lead_ms,
        tx_power_dbm,
    };
    Ok((cfg, p))
}

/// An engine input as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
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
    /// Every gateway refused the multicast output `seq`.
    Refused {
        at: GpsMillis,
        seq: i64,
    },
}

impl Input {
    pub fn at(&self) -> GpsMillis {
        match self {
            Input::Uplink { at, .. } | Input::Timeout { at } | Input::Refused { at, .. } => *at,
        }
    }

    pub fn row(&self, seq: i64) -> InputRow {
        let mut r = InputRow {
            seq,
            kind: String::new(),
            at_gps: self.at() as i64,
            dev_eui: None,
            port: None,
            fcnt: None,
            ref_seq: None,
            data: None,
        };
        match self {
            Input::Uplink {
                dev,
                port,
                fcnt,
                data,
                ..
            } => {
                r.kind = "uplink".into();
                r.dev_eui = Some(eui_string(*dev));
                r.port = Some(i64::from(*port));
                r.fcnt = fcnt.map(i64::from);
                r.data = Some(data.clone());
            }
            Input::Timeout { .. } => r.kind = "timeout".into(),
            Input::Refused { seq, .. } => {
                r.kind = "refused".into();
                r.ref_seq = Some(*seq);
            }
        }
        r
    }

    pub fn from_row(r: &InputRow) -> Option<Self> {
        let at = u64::try_from(r.at_gps).ok()?;
        Some(match r.kind.as_str() {
            "uplink" => Input::Uplink {
                at,
                dev: parse_eui(r.dev_eui.as_deref()?)?,
                port: u8::try_from(r.port?).ok()?,
                fcnt: r.fcnt.and_then(|f| u32::try_from(f).ok()),
                data: r.data.clone().unwrap_or_default(),
            },
            "timeout" => Input::Timeout { at },
            "refused" => Input::Refused {
                at,
                seq: r.ref_seq?,
            },
            _ => return None,
        })
    }
}

fn frame_kind_name(k: FrameKind) -> &'static str {
    match k {
        FrameKind::DataFragment => "data",
        FrameKind::CodedFragment => "coded",
        FrameKind::RepairFragment => "repair",
        FrameKind::StatusRequest => "status",
    }
}

/// An engine output with its log sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: i64,
    pub output: Output,
}

impl Numbered {
    pub fn row(&self) -> OutputRow {
        match &self.output {
            Output::Unicast { dev, port, payload } => OutputRow {
                seq: self.seq,
                kind: "unicast".into(),
                at_gps: 0,
                dev_eui: Some(eui_string(*dev)),
                port: i64::from(*port),
                fcnt: None,
                frame_kind: None,
                data: payload.clone(),
            },
            Output::Multicast(f) => OutputRow {
                seq: self.seq,
                kind: "multicast".into(),
                at_gps: f.at as i64,
                dev_eui: None,
                port: i64::from(f.port),
                fcnt: Some(i64::from(f.fcnt)),
                frame_kind: Some(frame_kind_name(f.kind).into()),
                data: f.payload.clone(),
            },
        }
    }

    /// Whether a logged output is this one (the engine is deterministic: a mismatch means
    /// the engine changed under a running campaign).
    pub fn matches(&self, r: &OutputRow) -> bool {
        let mine = self.row();
        mine.kind == r.kind
            && mine.port == r.port
            && mine.fcnt == r.fcnt
            && mine.data == r.data
            && mine.dev_eui == r.dev_eui
    }
}

/// A short label of a phase, for tables and filters.
pub fn phase_label(p: &Phase) -> &'static str {
    match p {
        Phase::Setup(_) => "setup",
        Phase::Ready => "ready",
        Phase::Receiving => "receiving",
        Phase::Complete => "complete",
        Phase::Verifying => "verifying",
        Phase::Updated => "updated",
        Phase::Failed(_) => "failed",
    }
}

/// The phase in words, with the request or reason.
pub fn phase_text(p: &Phase) -> String {
    match p {
        Phase::Setup(r) => format!("setup: {r}"),
        Phase::Failed(f) => format!("failed: {f}"),
        other => phase_label(other).to_string(),
    }
}

/// How often one payload is sent again after refusals.
pub const MAX_RESENDS: u32 = 3;

/// A running campaign: its engine and where its log stands.
#[derive(Debug)]
pub struct Running {
    pub id: i64,
    pub engine: Engine,
    pub cfg: StoredConfig,
    pub next_input: i64,
    pub next_output: i64,
    pub mc_keys: (Key128, Key128),
    /// Multicast outputs by sequence number (a refusal names one), with how many refusals
    /// led to it.
    pub frames: HashMap<i64, (MulticastFrame, u32)>,
    /// Refusals behind the outputs being drained.
    generation: u32,
    /// Last uplink FCnt handled per device (duplicates are dropped).
    pub seen: HashMap<DevEui, std::collections::BTreeSet<u32>>,
    /// Device progress after the last step.
    pub progress: BTreeMap<DevEui, DeviceProgress>,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Stepped {
    pub outputs: Vec<Numbered>,
    /// Devices whose progress changed, with the new progress.
    pub changed: Vec<(DevEui, DeviceProgress, DeviceProgress)>,
}

impl Running {
    /// Starts a new campaign: the engine's first outputs (numbered from 0).
    pub fn start(
        id: i64,
        cfg: StoredConfig,
        data: Vec<u8>,
        mc_key: Key128,
        specs: Vec<DeviceSpec>,
        now: GpsMillis,
    ) -> Result<(Self, Vec<Numbered>), Invalid> {
        let engine = Engine::new(cfg.engine_config(data, mc_key), specs, now)
            .map_err(|e| Invalid(format!("engine: {e}")))?;
        let mc_keys = engine.multicast_keys();
        let mut run = Self {
            id,
            engine,
            cfg,
            next_input: 0,
            next_output: 0,
            mc_keys,
            frames: HashMap::new(),
            generation: 0,
            seen: HashMap::new(),
            progress: BTreeMap::new(),
        };
        run.progress = run.snapshot();
        let outs = run.drain();
        Ok((run, outs))
    }

    fn snapshot(&self) -> BTreeMap<DevEui, DeviceProgress> {
        self.engine.devices().map(|(k, p)| (k, p.clone())).collect()
    }

    fn drain(&mut self) -> Vec<Numbered> {
        let mut v = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            if let Output::Multicast(f) = &o {
                self.frames
                    .insert(self.next_output, (f.clone(), self.generation));
            }
            v.push(Numbered {
                seq: self.next_output,
                output: o,
            });
            self.next_output += 1;
        }
        v
    }

    /// Whether an uplink with this FCnt was handled already (ChirpStack deduplicates, but a
    /// broker may deliver a message twice).
    pub fn is_duplicate(&self, dev: DevEui, fcnt: Option<u32>) -> bool {
        fcnt.is_some_and(|f| self.seen.get(&dev).is_some_and(|s| s.contains(&f)))
    }

    /// Feeds one input (already logged, or about to be in the same transaction as the
    /// outputs) and returns what it produced.
    pub fn feed(&mut self, input: &Input) -> Stepped {
        match input {
            Input::Uplink {
                at,
                dev,
                port,
                fcnt,
                data,
            } => {
                if let Some(f) = fcnt {
                    let s = self.seen.entry(*dev).or_default();
                    s.insert(*f);
                    // A bounded memory of recent counters is enough against redelivery.
                    while s.len() > 64 {
                        s.pop_first();
                    }
                }
                self.engine.handle_uplink(*at, *dev, *port, data);
            }
            Input::Timeout { at } => self.engine.handle_timeout(*at),
            Input::Refused { at, seq } => {
                // A payload the gateways keep refusing (a frequency they cannot send, say)
                // goes again a few times, not for the whole session.
                match self.frames.get(seq).cloned() {
                    Some((f, g)) if g < MAX_RESENDS => {
                        self.generation = g + 1;
                        self.engine.handle_tx_refused(*at, &f);
                    }
                    _ => {}
                }
            }
        }
        self.next_input += 1;
        let outputs = self.drain();
        self.generation = 0;
        let now = self.snapshot();
        let mut changed = Vec::new();
        for (k, p) in &now {
            match self.progress.get(k) {
                Some(old) if old == p => {}
                Some(old) => changed.push((*k, old.clone(), p.clone())),
                None => changed.push((*k, DeviceProgress::clone(p), p.clone())),
            }
        }
        self.progress = now;
        Stepped { outputs, changed }
    }

    /// Rebuilds a campaign from its log. Returns it and how many logged outputs did not
    /// match what the engine gave again (0 unless the engine changed).
    #[allow(clippy::too_many_arguments)]
    pub fn replay(
        id: i64,
        cfg: StoredConfig,
        data: Vec<u8>,
        mc_key: Key128,
        specs: Vec<DeviceSpec>,
        created: GpsMillis,
        inputs: &[InputRow],
        outputs: &[OutputRow],
    ) -> Result<(Self, usize), Invalid> {
        let (mut run, first) = Self::start(id, cfg, data, mc_key, specs, created)?;
        let mut produced = first;
        for r in inputs {
            let Some(input) = Input::from_row(r) else {
                return invalid(format!("campaign {id}: input {} cannot be read", r.seq));
            };
            produced.extend(run.feed(&input).outputs);
        }
        let mismatches = produced
            .iter()
            .zip(outputs)
            .filter(|(p, r)| p.seq != r.seq || !p.matches(r))
            .count()
            + produced.len().abs_diff(outputs.len());
        // Numbering goes on after whatever is logged, so that no sequence number (and no
        // FCnt: see the runner's check against the group counter) is used twice.
        run.next_output = run.next_output.max(outputs.last().map_or(0, |o| o.seq + 1));
        Ok((run, mismatches))
    }
}

/// The counters of a campaign as JSON.
pub fn counters_json(run: &Running) -> String {
    serde_json::to_string(&run.engine.counters()).unwrap_or_else(|_| "{}".into())
}

/// Devices updated and failed.
pub fn tally(run: &Running) -> (i64, i64) {
    let mut up = 0;
    let mut failed = 0;
    for (_, p) in run.engine.devices() {
        match p.phase {
            Phase::Updated => up += 1,
            Phase::Failed(_) => failed += 1,
            _ => {}
        }
    }
    (up, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::clock::Clock;

    const T0: GpsMillis = 1_400_000_000_000;

    fn request(n: usize) -> CampaignRequest {
        CampaignRequest {
            name: "t".into(),
            firmware_id: 1,
            application_id: None,
            lorawan_version: "1.0.4".into(),
            package_version: 2,
            region: "eu868".into(),
            dr: 5,
            frequency: None,
            window: WindowSpec {
                start: None,
                duration: DurationSpec::Text("1h".into()),
            },
            redundancy: RedundancySpec::default(),
            target_version: Some("1.2.3".into()),
            setup: None,
            devices: (0..n)
                .map(|i| DeviceRequest {
                    dev_eui: format!("{:016x}", i + 1),
                    gen_app_key: Some(hex::encode([i as u8; 16])),
                    app_key: None,
                })
                .collect(),
        }
    }

    fn derivation() -> Derivation {
        Derivation {
            now: T0,
            setup_s: 60,
            retry_s: 30,
            max_attempts: 3,
            reboot_wait_s: 10,
            status_wait_s: 10,
            block_ack_delay: 0,
            multicast_lead_ms: 1000,
            unicast_repair_max_devices: 1,
            mc_addr: 0x01ff_0000,
            first_mc_fcnt: 100,
            tx_power_dbm: None,
            application_id: "app".into(),
            clock: Clock::real_time(),
        }
    }

    #[test]
    fn a_request_becomes_a_planned_configuration() {
        let req = request(2);
        let (cfg, plan) = derive(&req, 2000, None, &derivation()).unwrap();
        assert_eq!(cfg.frag_size, plan.frag_size);
        assert_eq!(cfg.session_start, T0 + 60_000);
        assert_eq!(cfg.window_end, T0 + 3_600_000);
        assert_eq!(cfg.first_mc_fcnt, 100);
        assert_eq!(cfg.target_fw_version, 0x0102_0003);
        assert_eq!(cfg.tx_power_dbm, 27);
        assert_eq!(cfg.application_id, "app");
        assert!(1u64 << cfg.timeout_exp >= (2.0 * plan.multicast_s) as u64);
        let specs = device_specs(&req).unwrap();
        assert_eq!(specs[1].dev_eui, 2);
        assert_eq!(
            specs[1].root_key,
            RootKey::GenAppKey(Key128::from_bytes([1; 16]))
        );
        // Refusals name the field.
        let mut bad = request(1);
        bad.lorawan_version = "1.1".into();
        assert!(device_specs(&bad).unwrap_err().0.contains("app_key"));
        let mut bad = request(1);
        bad.target_version = None;
        assert!(derive(&bad, 2000, None, &derivation())
            .unwrap_err()
            .0
            .contains("target_version"));
        assert!(derive(&bad, 2000, Some(7), &derivation()).is_ok());
        let mut bad = request(1);
        bad.window.duration = DurationSpec::Seconds(30);
        assert!(derive(&bad, 2000, None, &derivation())
            .unwrap_err()
            .0
            .contains("window"));
    }

    #[test]
    fn a_replayed_log_gives_the_same_engine_and_numbering() {
        let req = request(3);
        let (cfg, _) = derive(&req, 700, None, &derivation()).unwrap();
        let specs = device_specs(&req).unwrap();
        let data: Vec<u8> = (0..700u32).map(|i| (i * 13) as u8).collect();
        let key = Key128::from_bytes([5; 16]);
        let (mut run, first) =
            Running::start(1, cfg.clone(), data.clone(), key.clone(), specs.clone(), T0).unwrap();
        let mut inputs = Vec::new();
        let mut outputs: Vec<OutputRow> = first.iter().map(Numbered::row).collect();
        let mut step = |run: &mut Running, input: Input| {
            inputs.push(input.row(run.next_input));
            let s = run.feed(&input);
            outputs.extend(s.outputs.iter().map(Numbered::row));
        };
        // Device 1 answers nothing useful; time runs into the multicast; a frame is refused.
        step(
            &mut run,
            Input::Uplink {
                at: T0 + 5_000,
                dev: 1,
                port: 202,
                fcnt: Some(1),
                data: vec![1, 2],
            },
        );
        let mut t = T0;
        while let Some(next) = run.engine.poll_timeout() {
            if next > cfg.session_start + 20_000 {
                break;
            }
            t = next.max(t);
            step(&mut run, Input::Timeout { at: t });
        }
        let refused = *run.frames.keys().min().expect("multicast frames");
        step(
            &mut run,
            Input::Refused {
                at: t,
                seq: refused,
            },
        );
        step(&mut run, Input::Timeout { at: t + 5_000 });
        let (again, mismatches) =
            Running::replay(1, cfg, data, key, specs, T0, &inputs, &outputs).unwrap();
        assert_eq!(mismatches, 0);
        assert_eq!(again.next_output, run.next_output);
        assert_eq!(again.next_input, run.next_input);
        assert_eq!(again.engine.next_mc_fcnt(), run.engine.next_mc_fcnt());
        assert_eq!(again.progress, run.progress);
        assert!(again.is_duplicate(1, Some(1)) && !again.is_duplicate(1, Some(2)));
        let fcnts: Vec<i64> = outputs.iter().filter_map(|o| o.fcnt).collect();
        assert!(fcnts.windows(2).all(|w| w[0] < w[1]), "{fcnts:?}");
        assert_eq!(fcnts[0], 100);
        // A log the engine would not produce again is told apart.
        let mut changed = outputs.clone();
        changed[0].data[0] ^= 1;
        let req = request(3);
        let (cfg, _) = derive(&req, 700, None, &derivation()).unwrap();
        let data: Vec<u8> = (0..700u32).map(|i| (i * 13) as u8).collect();
        let (_, mismatches) = Running::replay(
            1,
            cfg,
            data,
            Key128::from_bytes([5; 16]),
            device_specs(&req).unwrap(),
            T0,
            &inputs,
            &changed,
        )
        .unwrap();
        assert_eq!(mismatches, 1);
    }

    #[test]
    fn input_rows_round_trip() {
        for i in [
            Input::Uplink {
                at: 5,
                dev: 0xab,
                port: 201,
                fcnt: Some(9),
                data: vec![1],
            },
            Input::Uplink {
                at: 5,
                dev: 0xab,
                port: 201,
                fcnt: None,
                data: vec![],
            },
            Input::Timeout { at: 7 },
            Input::Refused { at: 8, seq: 3 },
        ] {
            assert_eq!(Input::from_row(&i.row(0)), Some(i));
        }
    }
}
