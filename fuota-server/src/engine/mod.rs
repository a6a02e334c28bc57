//! The campaign engine (sans-IO): DESIGN.md steps 3 to 5 for a list of devices, and the
//! check of what they run afterwards.
//!
//! Time is GPS milliseconds (`now`), given with every call; the engine never reads a clock
//! and does no I/O. The driver:
//! - feeds uplinks on the application ports with their receive time
//!   ([`Engine::handle_uplink`]) and calls [`Engine::handle_timeout`] at
//!   [`Engine::poll_timeout`], and tells of a multicast frame no gateway sent
//!   ([`Engine::handle_tx_refused`]);
//! - drains [`Engine::poll_output`]: unicast downlinks to queue for a device (class A: the
//!   network server delivers them after its next uplink) and multicast frames to transmit at
//!   their GPS time on the class C channel, with the multicast FCnt to use;
//! - reads [`Engine::device`] / [`Engine::devices`] for per-device progress at any time.
//!
//! Per device, two unicast frames: TS004 PackageVersionReq with FragSessionSetupReq, then
//! (once its clock has been answered) McGroupSetupReq with McClassCSessionReq; AppTimeReq
//! are answered whenever they come.
//! At SessionTime the M data fragments and R coded ones go out by multicast, spaced by the
//! plan; a multicast FragSessionStatusReq asks who still misses fragments. Repair rounds send
//! more coded fragments, by multicast while the class C session lasts and many devices need
//! them, else by unicast. Devices that report their block (FragDataBlockReceivedReq, or a
//! status with nothing missing) get a TS006 DevVersionReq once they had time to install and
//! reboot. Every device ends Updated or Failed with a reason; the window's end fails the
//! rest.

pub mod device;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;

use fuota_codec::agent_report::{self, Outcome, Refusal, UpdateReport};
use fuota_codec::fec::encoder::Encoder;
use fuota_codec::firmware_management as fmp;
use fuota_codec::fragmentation::{
    self as ts004, FragDataBlockReceivedAns, FragSessionSetupAns, FragSessionSetupReq,
    FragSessionStatusReq,
};
use fuota_codec::keys::{
    data_block_int_key, data_block_mic, encrypt_mc_key, mc_app_s_key, mc_ke_key, mc_nwk_s_key,
    mc_root_key_lorawan_1_0, mc_root_key_lorawan_1_1, Key128,
};
use fuota_codec::multicast_setup::{self as ts005, DlFrequ, McClassCSessionReq, McGroupSetupReq};
use fuota_codec::{clock_sync as ts003, Version};

pub use device::{DeviceProgress, Failure, Phase, Request};

use crate::fragmentation::data_fragment;

/// A device's identity.
pub type DevEui = u64;
/// GPS time in milliseconds since 1980-01-06 (leap seconds counted).
pub type GpsMillis = u64;

/// The device's root key, from which McKEKey and DataBlockIntKey derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKey {
    /// LoRaWAN 1.0.x: GenAppKey.
    GenAppKey(Key128),
    /// LoRaWAN 1.1: AppKey.
    AppKey(Key128),
}

impl RootKey {
    fn mc_ke_key(&self) -> Key128 {
        match self {
            RootKey::GenAppKey(k) => mc_ke_key(&mc_root_key_lorawan_1_0(k)),
            RootKey::AppKey(k) => mc_ke_key(&mc_root_key_lorawan_1_1(k)),
        }
    }

    fn data_block_int_key(&self) -> Key128 {
        match self {
            RootKey::GenAppKey(k) | RootKey::AppKey(k) => data_block_int_key(k),
        }
    }
}

/// One device of the campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub dev_eui: DevEui,
    pub root_key: RootKey,
}

/// Everything the campaign needs to know, fixed when it starts.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// Version of TS003/TS004/TS005 the devices speak.
    pub version: Version,
    /// The data block (the signed patch).
    pub data: Vec<u8>,
    pub frag_size: usize,
    /// Coded fragments sent after the data fragments in the first round.
    pub redundancy: usize,
    pub frag_index: u8,
    pub descriptor: [u8; 4],
    /// v2 SessionCnt (above any the devices have seen).
    pub session_cnt: u16,
    pub block_ack_delay: u8,
    pub mc_group_id: u8,
    pub mc_addr: u32,
    /// The group's McKey (sent encrypted under each device's McKEKey).
    pub mc_key: Key128,
    /// Multicast FCnt of the first frame (McGroupSetupReq's minMcFCount).
    pub first_mc_fcnt: u32,
    pub freq_hz: u32,
    pub dr: u8,
    /// SessionTime: when class C opens (whole seconds).
    pub session_start: GpsMillis,
    /// McClassCSessionReq TimeOut: the session lasts 2^timeout_exp s.
    pub timeout_exp: u8,
    /// Start-to-start time between multicast frames (airtime and duty cycle).
    pub spacing_ms: u64,
    /// End of the maintenance window: devices not done by then fail.
    pub window_end: GpsMillis,
    /// FWversion the devices run once updated (TS006).
    pub target_fw_version: u32,
    /// Wait for an answer to a unicast request before asking again (class A: a few uplink
    /// periods).
    pub retry_ms: u64,
    /// Tries of each unicast request.
    pub max_attempts: u32,
    /// From a complete block to the first DevVersionReq (install and reboot).
    pub reboot_wait_ms: u64,
    /// Repair by unicast when at most this many devices need fragments.
    pub unicast_repair_max_devices: usize,
    /// After a multicast status request's BlockAckDelay spread, how much longer answers are
    /// waited for (a device on a slow data rate may have to wait out its duty cycle).
    pub status_wait_ms: u64,
    /// Multicast frames are handed out this long before their air time.
    pub multicast_lead_ms: u64,
}

/// What the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Queue for the device (class A).
    Unicast {
        dev: DevEui,
        port: u8,
        payload: Vec<u8>,
    },
    /// Transmit on the class C channel at `at`.
    Multicast(MulticastFrame),
}

/// One multicast downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastFrame {
    pub at: GpsMillis,
    pub mc_addr: u32,
    /// Multicast FCnt (never reused: the driver persists the next one).
    pub fcnt: u32,
    pub freq_hz: u32,
    pub dr: u8,
    pub port: u8,
    pub payload: Vec<u8>,
    pub kind: FrameKind,
}

/// What a multicast frame carries, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    DataFragment,
    CodedFragment,
    RepairFragment,
    StatusRequest,
}

/// An UpdateReport in words.
fn report_text(r: &UpdateReport) -> String {
    match r.outcome {
        Outcome::Deferred(why) => format!("install put off: {}", why.label()),
        Outcome::Failed(code) => format!("install failed (code {code})"),
        Outcome::SelfTestFailed => "self-test failed, reverting".into(),
        Outcome::BootLoop => "boot loop, reverting".into(),
        Outcome::Reverted => "reverted to the old image".into(),
        Outcome::Confirmed => "new image confirmed".into(),
    }
}

/// Counters for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub struct Counters {
    pub data_fragments: u64,
    pub coded_fragments: u64,
    /// Coded fragments of later rounds, multicast.
    pub repair_fragments: u64,
    /// Coded fragments sent unicast.
    pub unicast_fragments: u64,
    pub unicast_downlinks: u64,
    pub multicast_status_requests: u64,
    pub repair_rounds: u32,
    /// Multicast frames sent again after every gateway refused them.
    pub refused_frames: u64,
}

/// A configuration the engine cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Fragments(String),
    /// The class C frequency is not a multiple of 100 Hz or does not fit 24 bits.
    Frequency(u32),
    Field(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Fragments(e) => write!(f, "fragments: {e}"),
            ConfigError::Frequency(hz) => write!(f, "frequency {hz} Hz cannot be sent"),
            ConfigError::Field(name) => write!(f, "{name} out of range"),
        }
    }
}

impl std::error::Error for ConfigError {}

struct Device {
    mc_ke_key: Key128,
    data_block_int_key: Key128,
    progress: DeviceProgress,
    /// The request waiting for an answer, and how often it was sent.
    pending: Option<(Request, u32)>,
    deadline: Option<GpsMillis>,
    /// The status round the device last answered.
    answered_round: Option<u32>,
    clock_answered: bool,
    /// The reason of the last deferral the device reported.
    last_deferral: Option<Refusal>,
}

/// The group's side of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupPhase {
    /// Before SessionTime.
    Setup,
    /// Sending fragments `next_n..=last_n` of round `round`, the next at `next_at`.
    Sending {
        round: u32,
        next_n: usize,
        last_n: usize,
        next_at: GpsMillis,
    },
    /// Status answers of `round` come back until `until`.
    Collecting { round: u32, until: GpsMillis },
    /// Multicast is over: unicast only.
    Unicast,
}

/// Class C opens at SessionTime; the first frame goes out a little after.
const GUARD_MS: u64 = 1_000;
/// Extra coded fragments on top of the most a device misses.
const REPAIR_MARGIN: usize = 3;
/// A device clock this far ahead of GPS time is wrong.
const CLOCK_TOLERANCE_MS: u64 = 5_000;
/// An answer held back longer than this (duty cycle, queues) is not expected.
const MAX_ANSWER_DELAY_MS: u64 = 15 * 60_000;
/// Most fragments repaired by unicast for one device.
pub const UNICAST_REPAIR_MAX: usize = 16;
/// Copies of each multicast status request.
const STATUS_COPIES: usize = 3;
/// Multicast rounds after the first, at most.
const MAX_REPAIR_ROUNDS: u32 = 3;

/// The campaign engine. Inputs: [`Engine::handle_uplink`], [`Engine::handle_timeout`].
/// Outputs: [`Engine::poll_output`], then [`Engine::poll_timeout`] for the next call.
pub struct Engine {
    cfg: CampaignConfig,
    nb_frag: usize,
    padding: usize,
    devices: BTreeMap<DevEui, Device>,
    outputs: VecDeque<Output>,
    deadlines: BinaryHeap<Reverse<(GpsMillis, DevEui)>>,
    group: GroupPhase,
    next_fcnt: u32,
    /// Next coded fragment number not yet used.
    next_coded: usize,
    row: Vec<u8>,
    counters: Counters,
    finished: bool,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("devices", &self.devices.len())
            .field("group", &self.group)
            .field("counters", &self.counters)
            .finish()
    }
}

fn build<E: fmt::Debug>(f: impl FnOnce(&mut [u8]) -> Result<&[u8], E>) -> Vec<u8> {
    let mut buf = [0u8; 64];
    // Every command the engine builds is a fixed layout well under 64 bytes; a failure
    // would be a bug in the engine's own values, which `new` checks.
    f(&mut buf).map(<[u8]>::to_vec).unwrap_or_default()
}

impl Engine {
    /// Starts a campaign at `now`: the first setup request of every device is queued.
    pub fn new(
        cfg: CampaignConfig,
        devices: impl IntoIterator<Item = DeviceSpec>,
        now: GpsMillis,
    ) -> Result<Self, ConfigError> {
        let encoder = Encoder::new(cfg.version, &cfg.data, cfg.frag_size)
            .map_err(|e| ConfigError::Fragments(e.to_string()))?;
        let nb_frag = encoder.nb_frag();
        let row = vec![0u8; encoder.row_len()];
        if nb_frag + cfg.redundancy > fuota_codec::fec::encoder::MAX_FRAGMENT_NUMBER {
            return Err(ConfigError::Fragments(format!(
                "{} fragments cannot be numbered",
                nb_frag + cfg.redundancy
            )));
        }
        if cfg.frag_size > 255 || nb_frag > usize::from(u16::MAX) {
            return Err(ConfigError::Field("frag_size"));
        }
        if DlFrequ::from_hz(cfg.freq_hz).is_none() {
            return Err(ConfigError::Frequency(cfg.freq_hz));
        }
        if cfg.frag_index > 3 {
            return Err(ConfigError::Field("frag_index"));
        }
        if cfg.mc_group_id > 3 {
            return Err(ConfigError::Field("mc_group_id"));
        }
        if cfg.timeout_exp > 15 || cfg.block_ack_delay > 7 || cfg.dr > 15 {
            return Err(ConfigError::Field("timeout_exp, block_ack_delay or dr"));
        }
        let padding = encoder.padding();
        let mut engine = Self {
            nb_frag,
            padding,
            next_coded: nb_frag + cfg.redundancy + 1,
            next_fcnt: cfg.first_mc_fcnt,
            cfg,
            devices: BTreeMap::new(),
            outputs: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            group: GroupPhase::Setup,
            row,
            counters: Counters::default(),
            finished: false,
        };
        for spec in devices {
            engine.devices.insert(
                spec.dev_eui,
                Device {
                    mc_ke_key: spec.root_key.mc_ke_key(),
                    data_block_int_key: spec.root_key.data_block_int_key(),
                    progress: DeviceProgress::new(),
                    pending: None,
                    deadline: None,
                    answered_round: None,
                    clock_answered: false,
                    last_deferral: None,
                },
            );
        }
        let all: Vec<DevEui> = engine.devices.keys().copied().collect();
        for dev in all {
            engine.send(now, dev, Request::FragSetup);
        }
        Ok(engine)
    }

    /// Per-device progress.
    pub fn device(&self, dev: DevEui) -> Option<&DeviceProgress> {
        self.devices.get(&dev).map(|d| &d.progress)
    }

    /// Every device's progress, by DevEUI.
    pub fn devices(&self) -> impl Iterator<Item = (DevEui, &DeviceProgress)> {
        self.devices.iter().map(|(k, d)| (*k, &d.progress))
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Data fragments (M) and padding of the block.
    pub fn layout(&self) -> (usize, usize) {
        (self.nb_frag, self.padding)
    }

    /// McAppSKey and McNwkSKey of the group, for the driver that builds multicast frames.
    pub fn multicast_keys(&self) -> (Key128, Key128) {
        (
            mc_app_s_key(&self.cfg.mc_key, self.cfg.mc_addr),
            mc_nwk_s_key(&self.cfg.mc_key, self.cfg.mc_addr),
        )
    }

    /// The class C session: frequency, data rate, start and end (GPS ms). A network server
    /// keeps other traffic off that channel meanwhile.
    pub fn class_c_session(&self) -> (u32, u8, GpsMillis, GpsMillis) {
        (
            self.cfg.freq_hz,
            self.cfg.dr,
            self.cfg.session_start,
            self.session_end(),
        )
    }

    /// Whether a multicast round is being sent (other downlinks should keep off its channel).
    pub fn is_multicasting(&self) -> bool {
        matches!(self.group, GroupPhase::Sending { .. })
    }

    /// The next multicast FCnt (to persist: frames below it have been handed out).
    pub fn next_mc_fcnt(&self) -> u32 {
        self.next_fcnt
    }

    /// Every device is Updated or Failed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next output, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] must run next (`None`: the campaign is over).
    pub fn poll_timeout(&mut self) -> Option<GpsMillis> {
        if self.finished {
            return None;
        }
        // Drop deadlines that were replaced.
        while let Some(Reverse((t, dev))) = self.deadlines.peek().copied() {
            if self.devices.get(&dev).and_then(|d| d.deadline) == Some(t) {
                break;
            }
            self.deadlines.pop();
        }
        let device = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let group = match self.group {
            GroupPhase::Setup => Some(self.cfg.session_start),
            GroupPhase::Sending { next_at, .. } => {
                Some(next_at.saturating_sub(self.cfg.multicast_lead_ms))
            }
            GroupPhase::Collecting { until, .. } => Some(until),
            GroupPhase::Unicast => None,
        };
        [device, group, Some(self.cfg.window_end)]
            .into_iter()
            .flatten()
            .min()
    }

    fn set_deadline(&mut self, dev: DevEui, at: Option<GpsMillis>) {
        if let Some(d) = self.devices.get_mut(&dev) {
            d.deadline = at;
            if let Some(t) = at {
                self.deadlines.push(Reverse((t, dev)));
            }
        }
    }

    fn unicast(&mut self, dev: DevEui, port: u8, payload: Vec<u8>) {
        if payload.is_empty() {
            return;
        }
        if let Some(d) = self.devices.get_mut(&dev) {
            d.progress.unicast_downlinks += 1;
        }
        self.counters.unicast_downlinks += 1;
        self.outputs
            .push_back(Output::Unicast { dev, port, payload });
    }

    fn fail(&mut self, dev: DevEui, why: Failure) {
        if let Some(d) = self.devices.get_mut(&dev) {
            if !d.progress.phase.is_final() {
                d.progress.phase = Phase::Failed(why);
                d.pending = None;
            }
        }
        self.set_deadline(dev, None);
        self.check_finished();
    }

    fn check_finished(&mut self) {
        self.finished = self.devices.values().all(|d| d.progress.phase.is_final());
    }

    /// Sends (or sends again) `req` to `dev` and waits for its answer.
    fn send(&mut self, now: GpsMillis, dev: DevEui, req: Request) {
        let v = self.cfg.version;
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        let attempts = match d.pending {
            Some((r, n)) if r == req => n + 1,
            _ => 1,
        };
        if attempts > self.cfg.max_attempts {
            self.fail(dev, Failure::NoAnswer(req));
            return;
        }
        d.pending = Some((req, attempts));
        if let Phase::Setup(_) = d.progress.phase {
            d.progress.phase = Phase::Setup(req);
        }
        let (port, payload) = match req {
            // One frame on port 201: does the device speak TS004 in our version, and the
            // session (the group it names need not exist yet).
            Request::FragSetup => {
                let mic = data_block_mic(
                    &d.data_block_int_key,
                    self.cfg.session_cnt,
                    self.cfg.frag_index,
                    self.cfg.descriptor,
                    &self.cfg.data,
                )
                .unwrap_or_default();
                let setup = ts004::Downlink::FragSessionSetupReq(FragSessionSetupReq {
                    frag_index: self.cfg.frag_index,
                    mc_group_bit_mask: 1 << self.cfg.mc_group_id,
                    nb_frag: self.nb_frag as u16,
                    frag_size: self.cfg.frag_size as u8,
                    frag_algo: 0,
                    block_ack_delay: self.cfg.block_ack_delay,
                    ack_reception: v == Version::V2,
                    padding: self.padding as u8,
                    descriptor: self.cfg.descriptor,
                    session_cnt: self.cfg.session_cnt,
                    mic,
                });
                let mut frame = build(|b| {
                    ts004::Downlink::PackageVersionReq(ts004::PackageVersionReq).build_into(v, b)
                });
                frame.extend(build(|b| setup.build_into(v, b)));
                (ts004::PORT, frame)
            }
            // One frame on port 200: the group, then its class C session (SessionTime is GPS
            // time: sent once the device's clock has been answered).
            Request::McSetup => {
                let group = ts005::Downlink::McGroupSetupReq(McGroupSetupReq {
                    mc_group_id: self.cfg.mc_group_id,
                    mc_addr: self.cfg.mc_addr,
                    mc_key_encrypted: encrypt_mc_key(&d.mc_ke_key, &self.cfg.mc_key),
                    min_mc_fcount: self.cfg.first_mc_fcnt,
                    max_mc_fcount: self.cfg.first_mc_fcnt.saturating_add(0x3fff * 2),
                });
                let session = ts005::Downlink::McClassCSessionReq(McClassCSessionReq {
                    mc_group_id: self.cfg.mc_group_id,
                    session_time: (self.cfg.session_start / 1000) as u32,
                    time_out: self.cfg.timeout_exp,
                    dl_frequ: DlFrequ::from_hz(self.cfg.freq_hz).unwrap_or(DlFrequ(0)),
                    dr: self.cfg.dr,
                });
                let mut frame = build(|b| group.build_into(v, b));
                frame.extend(build(|b| session.build_into(v, b)));
                (ts005::PORT, frame)
            }
            Request::Status => {
                let cmd = ts004::Downlink::FragSessionStatusReq(FragSessionStatusReq {
                    participants: true,
                    frag_index: self.cfg.frag_index,
                });
                (ts004::PORT, build(|b| cmd.build_into(v, b)))
            }
            Request::DevVersion => (
                fmp::PORT,
                build(|b| fmp::Downlink::DevVersionReq.build_into(b)),
            ),
        };
        self.unicast(dev, port, payload);
        self.set_deadline(dev, Some(now + self.cfg.retry_ms));
    }

    /// The request after `done` in the setup order, or Ready.
    fn advance_setup(&mut self, now: GpsMillis, dev: DevEui, done: Request) {
        let next = match done {
            Request::FragSetup => Some(Request::McSetup),
            _ => None,
        };
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.pending = None;
        match next {
            // The session request waits for the clock: SessionTime is in GPS time.
            Some(Request::McSetup) if !d.clock_answered => {
                d.progress.phase = Phase::Setup(Request::McSetup);
                self.set_deadline(dev, None);
            }
            Some(req) => self.send(now, dev, req),
            None => {
                d.progress.phase = Phase::Ready;
                self.set_deadline(dev, None);
            }
        }
    }

    /// Handles an uplink from `dev` on `port`, received at `now`.
    pub fn handle_uplink(&mut self, now: GpsMillis, dev: DevEui, port: u8, bytes: &[u8]) {
        let v = self.cfg.version;
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.progress.last_uplink = Some(now);
        match port {
            ts003::PORT => {
                for cmd in ts003::uplinks(v, bytes) {
                    let Ok(cmd) = cmd else { break };
                    if let ts003::Uplink::AppTimeReq(req) = cmd {
                        self.answer_time(now, dev, req);
                    }
                }
            }
            ts005::PORT => {
                for cmd in ts005::uplinks(v, bytes) {
                    let Ok(cmd) = cmd else { break };
                    self.on_ts005(now, dev, cmd);
                }
            }
            ts004::PORT => {
                for cmd in ts004::uplinks(v, bytes) {
                    let Ok(cmd) = cmd else { break };
                    self.on_ts004(now, dev, cmd);
                }
            }
            fmp::PORT => {
                for cmd in fmp::uplinks(Version::V1, bytes) {
                    let Ok(cmd) = cmd else { break };
                    if let fmp::Uplink::DevVersionAns(a) = cmd {
                        self.on_dev_version(now, dev, a.fw_version);
                    }
                }
            }
            agent_report::PORT => {
                if let Ok(report) = UpdateReport::parse(bytes) {
                    self.on_report(now, dev, report);
                }
            }
            _ => {}
        }
    }

    fn answer_time(&mut self, now: GpsMillis, dev: DevEui, req: ts003::AppTimeReq) {
        let rx_s = (now / 1000) as u32;
        let correction = rx_s.wrapping_sub(req.device_time) as i32;
        let synced = correction.unsigned_abs() <= 1;
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.progress.clock_synced = synced;
        // Only the class C session needs the device's clock: once its block is in, downlink
        // airtime goes to what is left to do (its report, its version).
        let needs_clock = matches!(
            d.progress.phase,
            Phase::Setup(_) | Phase::Ready | Phase::Receiving
        );
        if needs_clock && (req.ans_required || correction != 0) {
            let ans = ts003::Downlink::AppTimeAns(ts003::AppTimeAns {
                time_correction: correction,
                token_ans: req.token_req,
            });
            let payload = build(|b| ans.build_into(self.cfg.version, b));
            self.unicast(dev, ts003::PORT, payload);
        }
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        let first = !d.clock_answered;
        d.clock_answered = true;
        // The session request was waiting for this.
        if first && d.progress.phase == Phase::Setup(Request::McSetup) && d.pending.is_none() {
            self.send(now, dev, Request::McSetup);
        }
    }

    /// Whether TimeToStart, as the device counted it when it took the request, fits its
    /// answer arriving at `now`: its clock must not be ahead, nor behind by more than an
    /// answer can be held back (an AppTimeAns that never arrived leaves the device on its
    /// own clock, and its session would open at the wrong time).
    fn clock_plausible(&self, now: GpsMillis, time_to_start: Option<u32>) -> bool {
        let Some(tts) = time_to_start else {
            return true;
        };
        let device_now = (self.cfg.session_start / 1000).saturating_sub(u64::from(tts)) * 1000;
        device_now <= now + CLOCK_TOLERANCE_MS && now <= device_now + MAX_ANSWER_DELAY_MS
    }

    /// The device's clock is off: ask it to sync again, and send the TS005 frame once its
    /// AppTimeReq has been answered.
    fn resync(&mut self, now: GpsMillis, dev: DevEui) {
        let cmd = ts003::Downlink::ForceDeviceResync(ts003::ForceDeviceResyncCmd {
            nb_transmissions: 2,
        });
        let payload = build(|b| cmd.build_into(self.cfg.version, b));
        self.unicast(dev, ts003::PORT, payload);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.clock_answered = false;
            d.progress.clock_synced = false;
            d.progress.phase = Phase::Setup(Request::McSetup);
            d.pending = None;
        }
        // If no AppTimeReq comes, ask again later.
        self.set_deadline(dev, Some(now + self.cfg.retry_ms));
    }

    fn expecting(&self, dev: DevEui, req: Request) -> bool {
        self.devices
            .get(&dev)
            .is_some_and(|d| d.pending.is_some_and(|(r, _)| r == req))
    }

    fn on_ts005(&mut self, now: GpsMillis, dev: DevEui, cmd: ts005::Uplink) {
        if !self.expecting(dev, Request::McSetup) {
            return;
        }
        match cmd {
            ts005::Uplink::McGroupSetupAns(a) if a.id_error => self.fail(dev, Failure::McGroupId),
            // The session answer follows the group's in the same frame.
            ts005::Uplink::McClassCSessionAns(a) => match Failure::from_session_ans(&a) {
                Some(f) => self.fail(dev, f),
                None if !self.clock_plausible(now, a.time_to_start) => self.resync(now, dev),
                None => self.advance_setup(now, dev, Request::McSetup),
            },
            _ => {}
        }
    }

    fn on_ts004(&mut self, now: GpsMillis, dev: DevEui, cmd: ts004::Uplink) {
        match cmd {
            // A match is followed by its FragSessionSetupAns in the same frame.
            ts004::Uplink::PackageVersionAns(a)
                if self.expecting(dev, Request::FragSetup)
                    && (a.package_identifier != ts004::PACKAGE_ID
                        || a.package_version != self.cfg.version.number()) =>
            {
                self.fail(
                    dev,
                    Failure::PackageVersion {
                        identifier: a.package_identifier,
                        version: a.package_version,
                    },
                );
            }
            ts004::Uplink::FragSessionSetupAns(a)
                if self.expecting(dev, Request::FragSetup)
                    && a.frag_index == self.cfg.frag_index =>
            {
                // A retry of a setup the device took already comes back as a SessionCnt
                // replay: the earlier copy (same SessionCnt, same MIC) got through.
                let retried = self
                    .devices
                    .get(&dev)
                    .is_some_and(|d| d.pending.is_some_and(|(_, n)| n > 1));
                let replay_only = Failure::from_setup_ans(&FragSessionSetupAns {
                    session_cnt_replay: false,
                    ..a
                })
                .is_none();
                match Failure::from_setup_ans(&a) {
                    Some(_) if retried && replay_only && a.session_cnt_replay => {
                        self.advance_setup(now, dev, Request::FragSetup)
                    }
                    Some(f) => self.fail(dev, f),
                    None => self.advance_setup(now, dev, Request::FragSetup),
                }
            }
            ts004::Uplink::FragDataBlockReceivedReq(r) if r.frag_index == self.cfg.frag_index => {
                let ans = ts004::Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns {
                    frag_index: r.frag_index,
                });
                let payload = build(|b| ans.build_into(self.cfg.version, b));
                self.unicast(dev, ts004::PORT, payload);
                if r.mic_error {
                    self.fail(dev, Failure::MicError);
                } else {
                    self.complete(now, dev);
                }
            }
            ts004::Uplink::FragSessionStatusAns(a) if a.frag_index == self.cfg.frag_index => {
                self.on_status(now, dev, a);
            }
            _ => {}
        }
    }

    fn on_status(&mut self, now: GpsMillis, dev: DevEui, a: ts004::FragSessionStatusAns) {
        let round = match self.group {
            GroupPhase::Collecting { round, .. } | GroupPhase::Sending { round, .. } => Some(round),
            _ => None,
        };
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        if !matches!(d.progress.phase, Phase::Receiving) {
            return;
        }
        d.progress.missing = Some(u16::from(a.missing_frag));
        d.progress.received = Some(a.nb_frag_received);
        d.answered_round = round;
        if d.pending.is_some_and(|(r, _)| r == Request::Status) {
            d.pending = None;
        }
        if a.session_does_not_exist {
            self.fail(dev, Failure::SessionLost);
        } else if a.mic_error {
            self.fail(dev, Failure::MicError);
        } else if a.memory_error {
            self.fail(dev, Failure::MemoryError);
        } else if a.missing_frag == 0 {
            self.complete(now, dev);
        } else if self.group == GroupPhase::Unicast {
            self.unicast_repair(now, dev, usize::from(a.missing_frag));
        }
    }

    fn complete(&mut self, now: GpsMillis, dev: DevEui) {
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        if !matches!(d.progress.phase, Phase::Receiving | Phase::Ready) {
            return;
        }
        d.progress.phase = Phase::Complete;
        d.progress.missing = Some(0);
        d.progress.complete_at = Some(now);
        d.pending = None;
        self.set_deadline(dev, Some(now + self.cfg.reboot_wait_ms));
    }

    /// An UpdateReport: shown with the device; a deferral gives the device more time before
    /// its version is asked, a failed self-test or a boot loop names the failure.
    fn on_report(&mut self, now: GpsMillis, dev: DevEui, report: UpdateReport) {
        let reboot_wait = self.cfg.reboot_wait_ms;
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.progress.report = Some(report_text(&report));
        if let Outcome::Deferred(why) = report.outcome {
            d.last_deferral = Some(why);
        }
        // A device judged on its version alone ("not updated") may say why afterwards.
        if let Phase::Failed(Failure::NotUpdated { .. }) = d.progress.phase {
            match report.outcome {
                Outcome::SelfTestFailed => {
                    d.progress.phase = Phase::Failed(Failure::SelfTestFailed)
                }
                Outcome::BootLoop => d.progress.phase = Phase::Failed(Failure::BootLoop),
                _ => {}
            }
            return;
        }
        if d.progress.phase.is_final() {
            return;
        }
        match report.outcome {
            Outcome::Deferred(_)
                if matches!(d.progress.phase, Phase::Complete | Phase::Verifying) =>
            {
                // It installs later: ask its version once it has had time again.
                d.progress.phase = Phase::Complete;
                d.pending = None;
                self.set_deadline(dev, Some(now + reboot_wait));
            }
            Outcome::SelfTestFailed => self.fail(dev, Failure::SelfTestFailed),
            Outcome::BootLoop => self.fail(dev, Failure::BootLoop),
            Outcome::Failed(code) => self.fail(dev, Failure::InstallFailed { code }),
            // A revert is judged by the version it runs (DevVersionAns).
            Outcome::Deferred(_) | Outcome::Reverted | Outcome::Confirmed => {}
        }
    }

    fn on_dev_version(&mut self, now: GpsMillis, dev: DevEui, fw: u32) {
        let target = self.cfg.target_fw_version;
        let Some(d) = self.devices.get_mut(&dev) else {
            return;
        };
        d.progress.fw_version = Some(fw);
        if !matches!(d.progress.phase, Phase::Verifying) {
            return;
        }
        if fw == target {
            d.progress.phase = Phase::Updated;
            d.progress.updated_at = Some(now);
            d.pending = None;
            self.set_deadline(dev, None);
            self.check_finished();
        }
        // Another version: perhaps not rebooted yet; asked again at the retry deadline,
        // and judged when the tries run out.
    }

    /// Sends `missing` plus a margin of fresh coded fragments to `dev` alone, then asks its
    /// status again. A device that misses more than [`UNICAST_REPAIR_MAX`] is not repaired
    /// by unicast (class A airtime is the scarcest resource of the campaign): it is asked
    /// again later, and fails when the window closes.
    fn unicast_repair(&mut self, now: GpsMillis, dev: DevEui, missing: usize) {
        if missing > UNICAST_REPAIR_MAX {
            self.send(now, dev, Request::Status);
            return;
        }
        let count = missing + REPAIR_MARGIN;
        for _ in 0..count {
            let Some(frame) = self.coded_fragment() else {
                break;
            };
            if let Some(d) = self.devices.get_mut(&dev) {
                d.progress.unicast_fragments += 1;
            }
            self.counters.unicast_fragments += 1;
            self.unicast(dev, ts004::PORT, frame);
        }
        self.send(now, dev, Request::Status);
    }

    /// The DataFragment command of the next unused coded fragment.
    fn coded_fragment(&mut self) -> Option<Vec<u8>> {
        let n = self.next_coded;
        let frame = self.fragment(n)?;
        self.next_coded += 1;
        Some(frame)
    }

    fn fragment(&mut self, n: usize) -> Option<Vec<u8>> {
        let encoder = Encoder::new(self.cfg.version, &self.cfg.data, self.cfg.frag_size).ok()?;
        let mut payload = vec![0u8; self.cfg.frag_size];
        encoder.fragment_into(n, &mut self.row, &mut payload).ok()?;
        data_fragment(self.cfg.frag_index, n, &payload).ok()
    }

    fn multicast(&mut self, at: GpsMillis, port: u8, payload: Vec<u8>, kind: FrameKind) {
        let fcnt = self.next_fcnt;
        self.next_fcnt = self.next_fcnt.wrapping_add(1);
        match kind {
            FrameKind::DataFragment => self.counters.data_fragments += 1,
            FrameKind::CodedFragment => self.counters.coded_fragments += 1,
            FrameKind::RepairFragment => self.counters.repair_fragments += 1,
            FrameKind::StatusRequest => self.counters.multicast_status_requests += 1,
        }
        self.outputs.push_back(Output::Multicast(MulticastFrame {
            at,
            mc_addr: self.cfg.mc_addr,
            fcnt,
            freq_hz: self.cfg.freq_hz,
            dr: self.cfg.dr,
            port,
            payload,
            kind,
        }));
    }

    fn session_end(&self) -> GpsMillis {
        self.cfg.session_start + (1000u64 << self.cfg.timeout_exp)
    }

    /// How long status answers of a round are waited for: the BlockAckDelay spread, then
    /// `status_wait_ms` for devices whose duty cycle holds their answer back.
    fn status_spread_ms(&self) -> u64 {
        (1000u64 << (u32::from(self.cfg.block_ack_delay) + 4)) + self.cfg.status_wait_ms
    }

    /// A multicast frame handed out earlier did not go out (every gateway refused it): its
    /// payload goes again in a new frame with a new FCnt, in the next free slot of the
    /// schedule (or right away after the round), while the class C session lasts.
    /// Returns whether it was rescheduled.
    pub fn handle_tx_refused(&mut self, now: GpsMillis, frame: &MulticastFrame) -> bool {
        if self.finished {
            return false;
        }
        let at = match self.group {
            GroupPhase::Sending {
                round,
                next_n,
                last_n,
                next_at,
            } => {
                let at = next_at.max(now + GUARD_MS);
                self.group = GroupPhase::Sending {
                    round,
                    next_n,
                    last_n,
                    next_at: at + self.cfg.spacing_ms,
                };
                at
            }
            GroupPhase::Collecting { round, until } => {
                let at = now + GUARD_MS;
                // Answers to a status request sent late come late.
                if frame.kind == FrameKind::StatusRequest {
                    self.group = GroupPhase::Collecting {
                        round,
                        until: until.max(at + self.status_spread_ms()),
                    };
                }
                at
            }
            GroupPhase::Setup | GroupPhase::Unicast => now + GUARD_MS,
        };
        if at.max(self.cfg.session_start) >= self.session_end() {
            return false;
        }
        self.counters.refused_frames += 1;
        self.multicast(
            at.max(self.cfg.session_start),
            frame.port,
            frame.payload.clone(),
            frame.kind,
        );
        true
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: GpsMillis) {
        if self.finished {
            return;
        }
        if now >= self.cfg.window_end {
            let open: Vec<(DevEui, Failure)> = self
                .devices
                .iter()
                .filter(|(_, d)| !d.progress.phase.is_final())
                .map(|(k, d)| {
                    let why = match (&d.progress.phase, &d.last_deferral) {
                        // Complete, but the device put the install off to the end.
                        (Phase::Complete | Phase::Verifying, Some(r)) => Failure::Deferred {
                            reason: r.label().into(),
                        },
                        _ => Failure::WindowClosed {
                            missing: d.progress.missing,
                        },
                    };
                    (*k, why)
                })
                .collect();
            for (dev, why) in open {
                self.fail(dev, why);
            }
            self.group = GroupPhase::Unicast;
            self.finished = true;
            return;
        }
        self.group_timeout(now);
        // Device deadlines that are due.
        while let Some(Reverse((t, dev))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let Some(d) = self.devices.get_mut(&dev) else {
                continue;
            };
            if d.deadline != Some(t) {
                continue;
            }
            d.deadline = None;
            self.device_timeout(now, dev);
        }
        self.check_finished();
    }

    fn device_timeout(&mut self, now: GpsMillis, dev: DevEui) {
        let Some(d) = self.devices.get(&dev) else {
            return;
        };
        match (&d.progress.phase, d.pending) {
            (Phase::Complete, _) => {
                if let Some(d) = self.devices.get_mut(&dev) {
                    d.progress.phase = Phase::Verifying;
                }
                self.send(now, dev, Request::DevVersion);
            }
            (Phase::Verifying, Some((Request::DevVersion, n))) if n >= self.cfg.max_attempts => {
                if d.last_deferral.is_some() {
                    // It said it puts the install off: the old version is expected; wait for
                    // the install while the window lasts.
                    let wait = self.cfg.reboot_wait_ms;
                    if let Some(d) = self.devices.get_mut(&dev) {
                        d.progress.phase = Phase::Complete;
                        d.pending = None;
                    }
                    self.set_deadline(dev, Some(now + wait));
                    return;
                }
                let why = match d.progress.fw_version {
                    Some(running) => Failure::NotUpdated { running },
                    None => Failure::NoAnswer(Request::DevVersion),
                };
                self.fail(dev, why);
            }
            (_, Some((req, _))) => self.send(now, dev, req),
            // Still waiting for an AppTimeReq after a resync.
            (Phase::Setup(Request::McSetup), None) if !d.clock_answered => self.resync(now, dev),
            _ => {}
        }
    }

    fn group_timeout(&mut self, now: GpsMillis) {
        loop {
            match self.group {
                GroupPhase::Setup => {
                    if now < self.cfg.session_start {
                        return;
                    }
                    let devs: Vec<(DevEui, Phase, bool)> = self
                        .devices
                        .iter()
                        .filter(|(_, d)| !d.progress.phase.is_final())
                        .map(|(k, d)| {
                            (
                                *k,
                                d.progress.phase.clone(),
                                d.progress.last_uplink.is_some(),
                            )
                        })
                        .collect();
                    for (dev, phase, heard) in devs {
                        match phase {
                            Phase::Ready => {
                                if let Some(d) = self.devices.get_mut(&dev) {
                                    d.progress.phase = Phase::Receiving;
                                }
                            }
                            // Never heard from at all: out of reach, or off.
                            Phase::Setup(req) if !heard => self.fail(dev, Failure::NoAnswer(req)),
                            _ => self.fail(dev, Failure::NotReadyInTime),
                        }
                    }
                    self.group = GroupPhase::Sending {
                        round: 0,
                        next_n: 1,
                        last_n: self.nb_frag + self.cfg.redundancy,
                        next_at: self.cfg.session_start + GUARD_MS,
                    };
                }
                GroupPhase::Sending {
                    round,
                    next_n,
                    last_n,
                    next_at,
                } => {
                    if next_n > last_n {
                        // The round is out: ask who still misses fragments.
                        let cmd = ts004::Downlink::FragSessionStatusReq(FragSessionStatusReq {
                            participants: false,
                            frag_index: self.cfg.frag_index,
                        });
                        let payload = build(|b| cmd.build_into(self.cfg.version, b));
                        // A few copies: the devices that most need repair are the ones most
                        // likely to miss one.
                        let mut at = next_at;
                        for _ in 0..STATUS_COPIES {
                            if at < self.session_end() {
                                self.multicast(
                                    at,
                                    ts004::PORT,
                                    payload.clone(),
                                    FrameKind::StatusRequest,
                                );
                            }
                            at += self.cfg.spacing_ms;
                        }
                        self.group = GroupPhase::Collecting {
                            round,
                            until: at + self.status_spread_ms(),
                        };
                        continue;
                    }
                    if now + self.cfg.multicast_lead_ms < next_at {
                        return;
                    }
                    // A late call (the driver was down): the schedule moves on from now
                    // rather than handing out frames whose time has passed.
                    let next_at = next_at.max(now);
                    if next_at >= self.session_end() {
                        // The class C session is over: what is left of the round cannot
                        // be heard.
                        self.group = GroupPhase::Sending {
                            round,
                            next_n: last_n + 1,
                            last_n,
                            next_at,
                        };
                        continue;
                    }
                    let kind = if round > 0 {
                        FrameKind::RepairFragment
                    } else if next_n <= self.nb_frag {
                        FrameKind::DataFragment
                    } else {
                        FrameKind::CodedFragment
                    };
                    if let Some(frame) = self.fragment(next_n) {
                        self.multicast(next_at, ts004::PORT, frame, kind);
                    }
                    self.group = GroupPhase::Sending {
                        round,
                        next_n: next_n + 1,
                        last_n,
                        next_at: next_at + self.cfg.spacing_ms,
                    };
                }
                GroupPhase::Collecting { round, until } => {
                    if now < until {
                        return;
                    }
                    self.end_round(now, round);
                }
                GroupPhase::Unicast => return,
            }
        }
    }

    /// After a round's status answers: another multicast round, or unicast from here on.
    fn end_round(&mut self, now: GpsMillis, round: u32) {
        let receiving: Vec<(DevEui, Option<u16>)> = self
            .devices
            .iter()
            .filter(|(_, d)| d.progress.phase == Phase::Receiving)
            .map(|(k, d)| {
                let answered = d.answered_round == Some(round);
                (*k, if answered { d.progress.missing } else { None })
            })
            .collect();
        let needing: Vec<(DevEui, u16)> = receiving
            .iter()
            .filter_map(|&(k, m)| m.filter(|&m| m > 0).map(|m| (k, m)))
            .collect();
        let most = needing
            .iter()
            .map(|&(_, m)| usize::from(m))
            .max()
            .unwrap_or(0);
        // Devices that said nothing: complete (their report lost), or missing fragments and
        // the status request too. Without a figure from them, half the first round's
        // redundancy again.
        let silent = receiving.iter().filter(|(_, m)| m.is_none()).count();
        let wanted = if silent > 0 {
            most.max(self.cfg.redundancy / 2)
        } else {
            most
        };
        let extra = wanted + REPAIR_MARGIN.max(wanted / 10);
        // What still fits in the class C session, status round included.
        let overhead =
            GUARD_MS + STATUS_COPIES as u64 * self.cfg.spacing_ms + self.status_spread_ms();
        let room = self.session_end().saturating_sub(now + overhead) / self.cfg.spacing_ms.max(1);
        let extra = extra
            .min(room as usize)
            .min(fuota_codec::fec::encoder::MAX_FRAGMENT_NUMBER.saturating_sub(self.next_coded));
        let worth = needing.len() + silent > self.cfg.unicast_repair_max_devices;
        if worth && wanted > 0 && extra > REPAIR_MARGIN && round < MAX_REPAIR_ROUNDS {
            self.counters.repair_rounds += 1;
            let first = self.next_coded;
            self.next_coded += extra;
            self.group = GroupPhase::Sending {
                round: round + 1,
                next_n: first,
                last_n: first + extra - 1,
                next_at: now + GUARD_MS,
            };
            return;
        }
        self.group = GroupPhase::Unicast;
        for (dev, missing) in receiving {
            match missing {
                Some(m) if m > 0 => self.unicast_repair(now, dev, usize::from(m)),
                // Silent: complete without AckReception, or the request was lost.
                _ => self.send(now, dev, Request::Status),
            }
        }
    }
}

#[cfg(test)]
mod tests;
