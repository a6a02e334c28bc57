//! The discrete-event world: devices, gateways, the air between them, a network server with
//! class A downlink queues, and the application behind it (a [`Backend`]: the campaign engine
//! in process, or the live simulator's MQTT side), all in GPS time (virtual, or the wall
//! clock scaled when live).
//!
//! Order of things for one uplink: the device transmits (gateways lock a demodulator path at
//! the start); at its end each gateway decodes it or not (sensitivity, interference,
//! half-duplex); 200 ms later the network server has deduplicated it, checked its MIC and
//! counter, handed the application payload to the backend, and, if the device has downlinks
//! queued, scheduled the first for RX1 through the best gateway (RX2 when that gateway's duty
//! cycle forbids RX1). Multicast frames from the backend go out at their GPS time from every
//! gateway that is the best for some device, one after the other. Frames given to a gateway
//! from outside ([`World::gateway_transmit`], the live simulator's packet forwarders) are
//! checked as a gateway's just-in-time queue checks them, then go out at their time.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};

use fuota_device_agent::agent::{AgentConfig, Event as AgentEvent};
use fuota_device_agent::frag_session::Via;
use fuota_device_agent::multicast::McEvent;
use fuota_server::engine::DevEui;
use fuota_server::plan::airtime::{time_on_air_us, Frame, Modulation};
use fuota_server::plan::Region;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{AppOutput, Backend, EngineBackend, HeardFrame, NsUplink};
use crate::bootloader::{self, Boot};
use crate::device::{Behaviour, ClassC, Group, Power, SimDevice};
use crate::flash::CowFlash;
use crate::mac::{self, SessionKeys};
use crate::radio::{
    sensitivity_dbm, Air, Demodulators, DutyCycle, Micros, Node, Position, Propagation,
    Transmission,
};

/// RX1 opens this long after an uplink ends (RECEIVE_DELAY1), RX2 a second later.
const RX1_DELAY: Micros = 1_000_000;
const RX2_DELAY: Micros = 2_000_000;
/// From an uplink's end to the network server's decision (deduplication).
const NS_DELAY: Micros = 200_000;
/// Between two gateways sending the same multicast frame.
const MULTICAST_GAP: Micros = 50_000;
/// Link margin asked of the uplink data rate.
const ADR_MARGIN_DB: f64 = 5.0;
/// Time the bootloader takes per sector it moves.
const SWAP_US_PER_SECTOR: Micros = 25_000;
/// From RebootWanted to the reset.
const REBOOT_DELAY: Micros = 5_000_000;

/// The regional radio choices the simulator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band(pub Region);

impl Band {
    pub fn uplink_channels(&self) -> &'static [u32] {
        match self.0 {
            Region::Eu868 => &[868_100_000, 868_300_000, 868_500_000],
            // Sub-band 2, as most US915 networks use.
            Region::Us915 => &[
                903_900_000,
                904_100_000,
                904_300_000,
                904_500_000,
                904_700_000,
                904_900_000,
                905_100_000,
                905_300_000,
            ],
        }
    }

    /// Uplink data rates, slowest first.
    pub fn uplink_drs(&self) -> std::ops::RangeInclusive<u8> {
        match self.0 {
            Region::Eu868 => 0..=5,
            Region::Us915 => 0..=3,
        }
    }

    pub fn uplink_modulation(&self, dr: u8) -> Modulation {
        let sf = match self.0 {
            Region::Eu868 => 12 - dr.min(5),
            Region::Us915 => 10 - dr.min(3),
        };
        Modulation::Lora { sf, bw_khz: 125 }
    }

    pub fn downlink_modulation(&self, dr: u8) -> Modulation {
        self.0.data_rate(dr).map_or(
            Modulation::Lora {
                sf: 12,
                bw_khz: 125,
            },
            |d| d.modulation,
        )
    }

    /// RX1 frequency and data rate for an uplink (RX1DROffset 0).
    pub fn rx1(&self, up_freq: u32, up_dr: u8) -> (u32, u8) {
        match self.0 {
            Region::Eu868 => (up_freq, up_dr),
            Region::Us915 => {
                let ch = self
                    .uplink_channels()
                    .iter()
                    .position(|&f| f == up_freq)
                    .unwrap_or(0) as u32;
                (923_300_000 + 600_000 * (ch % 8), (10 + up_dr).min(13))
            }
        }
    }

    /// RX2: the region's default channel, at data rate `dr` (the network's choice).
    pub fn rx2(&self, dr: u8) -> (u32, u8) {
        (self.0.class_c_default().0, dr)
    }

    /// Frequencies a gateway may transmit on.
    pub fn downlink_range(&self) -> std::ops::RangeInclusive<u32> {
        match self.0 {
            Region::Eu868 => 863_000_000..=870_000_000,
            Region::Us915 => 923_300_000..=927_500_000,
        }
    }

    /// The region's data rate of a downlink modulation, if it is one.
    pub fn downlink_dr(&self, m: Modulation) -> Option<u8> {
        (0..=15).find(|&dr| self.0.data_rate(dr).is_some_and(|d| d.modulation == m))
    }

    pub fn device_power_dbm(&self) -> f64 {
        match self.0 {
            Region::Eu868 => 14.0,
            Region::Us915 => 20.0,
        }
    }

    pub fn gateway_power_dbm(&self, freq_hz: u32) -> f64 {
        match self.0 {
            Region::Eu868 if (869_400_000..869_650_000).contains(&freq_hz) => 27.0,
            Region::Eu868 => 14.0,
            Region::Us915 => 27.0,
        }
    }
}

/// A gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub pos: Position,
    demod: Demodulators,
    pub duty: DutyCycle,
    pub stats: GatewayStats,
    /// Transmissions accepted ahead, `[start, end)` (kept only when frames come from
    /// outside: see [`World::track_gateway_queues`]).
    queue: Vec<(Micros, Micros)>,
}

/// Per-gateway counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GatewayStats {
    pub uplinks_heard: u64,
    pub downlinks: u64,
    pub multicast_frames: u64,
    pub tx_us: u64,
    /// Downlinks it could not send (duty cycle) and that were dropped or moved.
    pub refused: u64,
}

impl Gateway {
    pub fn new(pos: Position) -> Self {
        Self {
            pos,
            demod: Demodulators::default(),
            duty: DutyCycle::default(),
            stats: GatewayStats::default(),
            queue: Vec::new(),
        }
    }

    /// Forgets what has been sent by `now`; whether `[start, end)` overlaps what is left.
    fn clashes(&mut self, now: Micros, start: Micros, end: Micros) -> bool {
        self.queue.retain(|&(_, e)| e > now);
        self.queue.iter().any(|&(s, e)| s < end && start < e)
    }
}

/// Why a gateway refuses a frame given to it (the packet forwarder's TX_ACK errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxRefusal {
    /// Its time is too close (or past) for the radio to be programmed.
    TooLate,
    /// Its time is further ahead than the queue holds frames.
    TooEarly,
    /// It overlaps a frame already queued.
    CollisionPacket,
    /// The frequency is outside the region's downlink band.
    TxFreq,
    /// The sub-band's duty cycle does not allow it then.
    DutyCycleOverflow,
    /// The queue is full.
    QueueFull,
}

impl TxRefusal {
    /// The TX_ACK `error` string.
    pub fn name(self) -> &'static str {
        match self {
            Self::TooLate => "TOO_LATE",
            Self::TooEarly => "TOO_EARLY",
            Self::CollisionPacket => "COLLISION_PACKET",
            Self::TxFreq => "TX_FREQ",
            Self::DutyCycleOverflow => "DUTY_CYCLE_OVERFLOW",
            Self::QueueFull => "QUEUE_FULL",
        }
    }
}

/// A frame a gateway accepted: the power it will really use (a gateway asked for more than
/// its limit sends at the limit, and says so).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxAccepted {
    pub power_dbm: f64,
    pub power_clamped: bool,
}

/// A gateway's queue needs the frame this long before its time (the SX1302 HAL's
/// just-in-time margin).
pub const TX_MIN_LEAD: Micros = 40_000;
/// ... and takes none further ahead than this.
pub const TX_MAX_LEAD: Micros = 512_000_000;
/// Frames a gateway's queue holds.
pub const TX_QUEUE_LEN: usize = 32;

#[derive(Debug, Clone)]
enum Event {
    /// The agent's timeout is due.
    AgentTimer(usize),
    /// Periodic application traffic.
    Background(usize),
    /// Try to send the next uplink of the outbox.
    TryUplink(usize),
    UplinkEnd {
        dev: usize,
        tx: u64,
        /// Gateways that locked a demodulator at the start.
        locked: Vec<usize>,
        freq: u32,
        dr: u8,
        frame: Vec<u8>,
    },
    /// The network server has the uplink.
    NetworkUplink {
        dev: usize,
        end: Micros,
        freq: u32,
        dr: u8,
        /// Gateways that decoded it, the best first.
        heard: Vec<usize>,
        frame: Vec<u8>,
    },
    /// A gateway starts a downlink.
    GatewayTx(GatewayTx),
    DownlinkEnd {
        tx: u64,
        dr: u8,
        frame: Vec<u8>,
        to: Downlink,
    },
    BackendTimer,
    /// Reset: the bootloader runs.
    Reset(usize),
    /// The bootloader is done; the firmware starts.
    Started(usize),
}

/// A downlink a gateway is to send.
#[derive(Debug, Clone)]
struct GatewayTx {
    gw: usize,
    freq: u32,
    /// The region's data rate of the modulation (`u8::MAX`: none, no device listens).
    dr: u8,
    modulation: Modulation,
    power_dbm: f64,
    frame: Vec<u8>,
    to: Downlink,
    /// Duty cycle and queue were checked and booked when the frame was accepted.
    booked: bool,
}

/// Who a downlink is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Downlink {
    Unicast(usize),
    /// Multicast group (address).
    Multicast {
        addr: u32,
    },
}

struct Scheduled {
    at: Micros,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The network server's view of a device.
#[derive(Debug, Clone, Default)]
struct NsDevice {
    last_fcnt_up: Option<u32>,
    fcnt_down: u32,
    queue: VecDeque<(u8, Vec<u8>)>,
}

/// Counters of the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorldStats {
    pub uplinks_sent: u64,
    pub uplinks_received: u64,
    pub unicast_downlinks_sent: u64,
    pub unicast_downlinks_received: u64,
    pub multicast_frames_sent: u64,
    pub losses: [u64; 4],
}

/// How the world is built (from a scenario).
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub region: Region,
    pub propagation: Propagation,
    /// Mean period of each device's own traffic.
    pub uplink_period: Micros,
    /// Bytes of application payload of that traffic.
    pub uplink_payload: usize,
    /// Extra loss on every downlink reception (fading, bad antennas), 0 to 1.
    pub extra_downlink_loss: f64,
    /// RX2 data rate (the regional default is the slowest; networks often raise it).
    pub rx2_dr: u8,
}

/// One device to place in the world.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub eui: u64,
    pub pos: Position,
    pub agent: AgentConfig,
    pub behaviour: Behaviour,
}

pub struct World<B = EngineBackend> {
    pub now: Micros,
    seq: u64,
    events: BinaryHeap<Reverse<Scheduled>>,
    pub devices: Vec<SimDevice>,
    pub gateways: Vec<Gateway>,
    air: Air,
    band: Band,
    cfg: WorldConfig,
    ns: Vec<NsDevice>,
    by_addr: HashMap<u32, usize>,
    by_eui: HashMap<DevEui, usize>,
    pub backend: B,
    backend_timer_at: Option<Micros>,
    /// Gateways that carry multicast (the best one of some device).
    multicast_gateways: Vec<usize>,
    /// Per gateway, the devices that could hear it at all (the rest are skipped when a
    /// multicast frame is delivered).
    audience: Vec<Vec<usize>>,
    /// Class C frequency and data rate the audiences are for.
    audience_channel: (u32, u8),
    /// Per device, the class C reception it has on (`None` when off or powered down): a
    /// small copy of the devices' state that each multicast frame checks for every device
    /// in reach, kept apart so that it stays in cache.
    listening: Vec<Option<ClassC>>,
    /// Per device, the multicast groups its LoRaWAN stack installed (by group id), and
    /// where it is: what every multicast frame reads for each device in reach, kept in
    /// tables of their own for the same reason.
    groups: Vec<[Option<Group>; 4]>,
    positions: Vec<Position>,
    /// Flash sectors the devices share by content (see [`World::share_flash`]).
    pool: crate::flash::SectorPool,
    rng: ChaCha8Rng,
    pub stats: WorldStats,
    /// Set when the backend (or the world) has nothing more to do.
    done: bool,
    /// Whether gateways keep their queue of accepted frames (frames come from outside).
    track_queues: bool,
    /// How early a frame from outside may come against the duty cycle and the queue (its
    /// time on the wire is rounded).
    timing_tolerance: Micros,
}

impl<B> std::fmt::Debug for World<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now", &self.now)
            .field("devices", &self.devices.len())
            .field("gateways", &self.gateways.len())
            .finish()
    }
}

impl World<EngineBackend> {
    /// The campaign engine of an in-process world.
    pub fn engine(&self) -> &fuota_server::engine::Engine {
        &self.backend.engine
    }
}

impl<B: Backend> World<B> {
    /// Builds the world at GPS time `start`: devices on `factory` flash (shared), the
    /// backend (the campaign engine, say) already created by the caller for their DevEUIs.
    pub fn new(
        cfg: WorldConfig,
        gateways: Vec<Position>,
        devices: Vec<DevicePlan>,
        factory: &CowFlash,
        workspace_len: usize,
        backend: B,
        start: Micros,
    ) -> anyhow::Result<Self> {
        let band = Band(cfg.region);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut air = Air::new(cfg.propagation, cfg.seed);
        let gateways: Vec<Gateway> = gateways.into_iter().map(Gateway::new).collect();
        let mut sim_devices = Vec::with_capacity(devices.len());
        let mut by_addr = HashMap::new();
        let mut by_eui = HashMap::new();
        for (i, plan) in devices.into_iter().enumerate() {
            let addr = 0x2600_0000 | i as u32;
            let keys = SessionKeys {
                nwk_s_key: rng.gen(),
                app_s_key: rng.gen(),
            };
            // Devices booted at different times: their clocks disagree with GPS time.
            let origin = start.saturating_sub(rng.gen_range(0..86_400_000_000));
            let mut d = SimDevice::new(
                i as u32,
                plan.eui,
                addr,
                plan.pos,
                keys,
                factory,
                plan.agent,
                workspace_len,
                origin,
                plan.behaviour,
            )
            .map_err(|e| anyhow::anyhow!("device {:016x}: agent did not start: {e:?}", plan.eui))?;
            d.up_dr = Self::pick_dr(&air, band, &gateways, &d);
            by_addr.insert(addr, i);
            by_eui.insert(plan.eui, i);
            sim_devices.push(d);
        }
        {
            let positions: Vec<Position> = sim_devices.iter().map(|d| d.pos).collect();
            let gw_positions: Vec<Position> = gateways.iter().map(|g| g.pos).collect();
            air.cache_links(&positions, &gw_positions);
        }
        let mut multicast_gateways: Vec<usize> = sim_devices
            .iter()
            .filter_map(|d| Self::best_gateway(&air, &gateways, d))
            .collect();
        multicast_gateways.sort_unstable();
        multicast_gateways.dedup();
        // Who can hear each gateway's multicast at all: the class C channel's power and
        // data rate, the same link arithmetic as every reception (a device below the
        // sensitivity here would be below it for every frame).
        let (mc_freq, mc_dr) = backend.class_c_channel();
        let mc = (
            mc_freq,
            mc_dr,
            band.gateway_power_dbm(mc_freq),
            sensitivity_dbm(band.downlink_modulation(mc_dr)),
        );
        let audience = (0..gateways.len())
            .map(|g| {
                sim_devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        air.rssi(
                            mc.2,
                            (Node::Gateway(g as u32), gateways[g].pos),
                            (Node::Device(d.index), d.pos),
                        ) >= mc.3
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let n = sim_devices.len();
        let positions = sim_devices.iter().map(|d| d.pos).collect();
        let mut world = Self {
            now: start,
            seq: 0,
            events: BinaryHeap::new(),
            devices: sim_devices,
            gateways,
            air,
            band,
            ns: vec![NsDevice::default(); n],
            by_addr,
            by_eui,
            backend,
            backend_timer_at: None,
            multicast_gateways,
            audience,
            audience_channel: (mc.0, mc.1),
            listening: vec![None; n],
            groups: vec![[None; 4]; n],
            positions,
            pool: crate::flash::SectorPool::default(),
            rng,
            stats: WorldStats::default(),
            done: false,
            track_queues: false,
            timing_tolerance: 0,
            cfg,
        };
        for i in 0..n {
            let first = start + world.rng.gen_range(0..world.cfg.uplink_period.max(1));
            world.schedule(first, Event::Background(i));
            world.agent_step(i);
        }
        world.backend_step();
        Ok(world)
    }

    /// Gateways keep a queue of the frames they accepted, and the network server's class A
    /// downlinks keep off it: for frames given from outside ([`World::gateway_transmit`]).
    /// Their times may be up to `timing_tolerance` early against the duty cycle and the
    /// queue: a time written to the millisecond on a wall clock that runs K times slower
    /// is K ms of simulated time off, and a frame spaced exactly by the duty cycle must
    /// not be refused for that.
    pub fn track_gateway_queues(&mut self, timing_tolerance: Micros) {
        self.track_queues = true;
        self.timing_tolerance = timing_tolerance;
    }

    /// Gives the backend an input from outside (a live run's MQTT message, say), then acts on
    /// what it asks for.
    pub fn with_backend<T>(&mut self, f: impl FnOnce(&mut B) -> T) -> T {
        let t = f(&mut self.backend);
        self.backend_step();
        t
    }

    /// When the next event is due (`None`: nothing is scheduled).
    pub fn next_event_at(&self) -> Option<Micros> {
        self.events.peek().map(|Reverse(s)| s.at)
    }

    /// Gateway `gw` is asked to transmit `phy` at `at` (no earlier than now): refused as a
    /// gateway's just-in-time queue refuses it (too late or early, overlapping a queued
    /// frame, duty cycle, frequency, queue full), else queued with its airtime booked.
    pub fn gateway_transmit(
        &mut self,
        gw: usize,
        at: Micros,
        freq: u32,
        modulation: Modulation,
        power_dbm: f64,
        phy: Vec<u8>,
    ) -> Result<TxAccepted, TxRefusal> {
        let band = self.band;
        let now = self.now;
        if gw >= self.gateways.len() || !band.downlink_range().contains(&freq) {
            return Err(TxRefusal::TxFreq);
        }
        if at < now + TX_MIN_LEAD {
            return Err(TxRefusal::TooLate);
        }
        if at > now + TX_MAX_LEAD {
            return Err(TxRefusal::TooEarly);
        }
        let airtime = time_on_air_us(modulation, Frame::downlink(phy.len()));
        let slack = self.timing_tolerance;
        let g = &mut self.gateways[gw];
        if g.clashes(now, at + slack, at + airtime) {
            return Err(TxRefusal::CollisionPacket);
        }
        if g.queue.len() >= TX_QUEUE_LEN {
            return Err(TxRefusal::QueueFull);
        }
        if g.duty.earliest(band.0, freq, at) > at + slack {
            g.stats.refused += 1;
            return Err(TxRefusal::DutyCycleOverflow);
        }
        let limit = band.gateway_power_dbm(freq);
        let accepted = TxAccepted {
            power_dbm: power_dbm.min(limit),
            power_clamped: power_dbm > limit,
        };
        g.duty.book(band.0, freq, at, airtime);
        g.queue.push((at, at + airtime));
        // A device's own address makes it a class A downlink; anything else is multicast.
        let addr = mac::dev_addr(&phy);
        let to = match addr.and_then(|a| self.by_addr.get(&a)) {
            Some(&i) => Downlink::Unicast(i),
            None => Downlink::Multicast {
                addr: addr.unwrap_or(0),
            },
        };
        let dr = band.downlink_dr(modulation).unwrap_or(u8::MAX);
        self.schedule(
            at,
            Event::GatewayTx(GatewayTx {
                gw,
                freq,
                dr,
                modulation,
                power_dbm: accepted.power_dbm,
                frame: phy,
                to,
                booked: true,
            }),
        );
        Ok(accepted)
    }

    fn schedule(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        }));
    }

    /// The gateway with the strongest (shadowed) link to `d`, if any hears it at SF12.
    fn best_gateway(air: &Air, gateways: &[Gateway], d: &SimDevice) -> Option<usize> {
        gateways
            .iter()
            .enumerate()
            .map(|(g, gw)| {
                let rssi = air.propagation.rssi_dbm(
                    air.seed,
                    14.0,
                    (Node::Device(d.index), d.pos),
                    (Node::Gateway(g as u32), gw.pos),
                );
                (g, rssi)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(g, _)| g)
    }

    /// The fastest uplink DR that closes the link to the best gateway with a margin (what
    /// ADR converges to).
    fn pick_dr(air: &Air, band: Band, gateways: &[Gateway], d: &SimDevice) -> u8 {
        let best = gateways
            .iter()
            .enumerate()
            .map(|(g, gw)| {
                air.propagation.rssi_dbm(
                    air.seed,
                    band.device_power_dbm(),
                    (Node::Device(d.index), d.pos),
                    (Node::Gateway(g as u32), gw.pos),
                )
            })
            .fold(f64::NEG_INFINITY, f64::max);
        band.uplink_drs()
            .rev()
            .find(|&dr| best - sensitivity_dbm(band.uplink_modulation(dr)) >= ADR_MARGIN_DB)
            .unwrap_or(*band.uplink_drs().start())
    }

    /// Whether the campaign is over (every device updated or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Runs events until `until` or the end of the campaign; returns whether it ended.
    pub fn run_until(&mut self, until: Micros) -> bool {
        while let Some(Reverse(next)) = self.events.peek() {
            if next.at > until || self.done {
                break;
            }
            let Some(Reverse(s)) = self.events.pop() else {
                break;
            };
            self.now = s.at;
            self.handle(s.event);
        }
        if !self.done {
            self.now = self.now.max(until);
        }
        self.done
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::AgentTimer(i) => {
                if self.devices[i].timer_at == Some(self.now) {
                    self.devices[i].timer_at = None;
                    let now = self.devices[i].local_ms(self.now);
                    if let Some(a) = self.devices[i].agent.as_mut() {
                        a.handle_timeout(now);
                    }
                    self.agent_step(i);
                }
            }
            Event::Background(i) => {
                // A new reading replaces one still waiting for the radio.
                let payload = vec![0x5a; self.cfg.uplink_payload];
                let outbox = &mut self.devices[i].outbox;
                outbox.retain(|(port, _)| *port != 2);
                outbox.push_back((2, payload));
                self.try_uplink_soon(i, self.now);
                let period = self.cfg.uplink_period;
                let next = self.now + period / 2 + self.rng.gen_range(0..period.max(1));
                self.schedule(next, Event::Background(i));
            }
            Event::TryUplink(i) => {
                self.devices[i].uplink_scheduled = false;
                self.try_uplink(i);
            }
            Event::UplinkEnd {
                dev,
                tx,
                locked,
                freq,
                dr,
                frame,
            } => self.uplink_end(dev, tx, locked, freq, dr, frame),
            Event::NetworkUplink {
                dev,
                end,
                freq,
                dr,
                heard,
                frame,
            } => self.network_uplink(dev, end, freq, dr, &heard, &frame),
            Event::GatewayTx(tx) => self.gateway_tx(tx),
            Event::DownlinkEnd { tx, dr, frame, to } => self.downlink_end(tx, dr, &frame, to),
            Event::BackendTimer => {
                if self.backend_timer_at == Some(self.now) {
                    self.backend_timer_at = None;
                    self.backend.handle_timeout(self.now);
                    self.backend_step();
                }
            }
            Event::Reset(i) => self.reset(i),
            Event::Started(i) => self.started(i),
        }
    }

    /// After the agent did something: send its uplinks, act on its events, rearm its timer.
    fn agent_step(&mut self, i: usize) {
        let now_local = self.devices[i].local_ms(self.now);
        let mut events = Vec::new();
        if let Some(agent) = self.devices[i].agent.as_mut() {
            while let Some(e) = agent.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            self.firmware_event(i, e);
        }
        // The firmware asks the agent for its uplinks when the radio is free (so that an
        // AppTimeReq carries the time it really goes out).
        self.devices[i].agent_may_send = true;
        self.try_uplink_soon(i, self.now);
        let d = &mut self.devices[i];
        let Some(agent) = d.agent.as_ref() else {
            return;
        };
        let due_local = agent.poll_timeout(now_local);
        let due = d.clock_origin + due_local.max(now_local) * 1000;
        // Wake no more often than every 100 ms (the agent asks for "now" while it has work).
        let due = due.max(self.now + if due_local <= now_local { 100_000 } else { 0 });
        if d.timer_at.is_none_or(|t| due < t || t < self.now) {
            d.timer_at = Some(due);
            self.schedule(due, Event::AgentTimer(i));
        }
    }

    /// Copies device `i`'s class C reception into `listening`.
    fn sync_listening(&mut self, i: usize) {
        let d = &self.devices[i];
        self.listening[i] = d.class_c.filter(|_| d.power == Power::On);
    }

    /// The firmware's reactions to the agent's events.
    fn firmware_event(&mut self, i: usize, e: AgentEvent) {
        self.firmware_reaction(i, e);
        self.sync_listening(i);
    }

    fn firmware_reaction(&mut self, i: usize, e: AgentEvent) {
        let now = self.now;
        let d = &mut self.devices[i];
        match e {
            AgentEvent::Multicast(McEvent::GroupKeys { id }) => {
                let group = d
                    .agent
                    .as_ref()
                    .and_then(|a| a.multicast_group(id))
                    .cloned();
                if let Some(g) = group {
                    self.groups[i][usize::from(id & 3)] = Some(Group {
                        addr: g.addr,
                        keys: SessionKeys {
                            nwk_s_key: *g.nwk_s_key.as_bytes(),
                            app_s_key: *g.app_s_key.as_bytes(),
                        },
                        min_fcnt: g.min_fcount,
                        max_fcnt: g.max_fcount,
                        last_fcnt: None,
                    });
                }
            }
            AgentEvent::Multicast(McEvent::GroupDeleted { id }) => {
                self.groups[i][usize::from(id & 3)] = None;
            }
            AgentEvent::Multicast(McEvent::ClassCStart { id, freq_hz, dr }) => {
                d.class_c = Some(ClassC {
                    group: id,
                    freq_hz,
                    dr,
                });
                d.class_c_since = Some(now);
            }
            AgentEvent::Multicast(McEvent::ClassCEnd { id }) => {
                if d.class_c.is_some_and(|c| c.group == id) {
                    d.class_c = None;
                    if let Some(since) = d.class_c_since.take() {
                        d.stats.rx_us += now - since;
                    }
                }
            }
            AgentEvent::RebootWanted { .. } if !d.behaviour.no_reboot => {
                // The new image just written is the same on every device: share it now.
                d.flash.borrow_mut().intern(&mut self.pool);
                self.schedule(now + REBOOT_DELAY, Event::Reset(i));
            }
            // The agent runs the self-test (the device's hooks) and confirms, or wants a
            // reset that takes the old image back.
            AgentEvent::Confirmed { .. } => d.stats.confirmed_at = Some(now),
            AgentEvent::RevertWanted { .. } => {
                self.schedule(now + REBOOT_DELAY, Event::Reset(i));
            }
            AgentEvent::InstallDeferred(_) => d.stats.deferrals += 1,
            AgentEvent::Reverted { .. } => d.stats.reverted = true,
            AgentEvent::Booted { .. }
            | AgentEvent::RebootWanted { .. }
            | AgentEvent::BlockComplete { .. }
            | AgentEvent::UpdateFailed(_) => {}
        }
    }

    fn reset(&mut self, i: usize) {
        let d = &mut self.devices[i];
        if let Some(since) = d.class_c_since.take() {
            d.stats.rx_us += self.now - since;
        }
        d.power_off();
        d.stats.reboots += 1;
        let cfg_slot = d.primary_and_secondary();
        let boot = {
            let mut f = d.flash.borrow_mut();
            bootloader::boot(&mut f, cfg_slot.0, cfg_slot.1, 8)
        };
        let moved = boot.map_or(0, |b: Boot| b.moved_sectors(cfg_slot.0));
        // Both slots were rewritten by the swap, alike on every device.
        d.flash.borrow_mut().intern(&mut self.pool);
        let until = self.now + 1_000_000 + moved * SWAP_US_PER_SECTOR;
        d.power = Power::Booting { until };
        self.sync_listening(i);
        self.schedule(until, Event::Started(i));
    }

    fn started(&mut self, i: usize) {
        let now = self.now;
        let d = &mut self.devices[i];
        d.power = Power::On;
        d.timer_at = None;
        self.sync_listening(i);
        let d = &mut self.devices[i];
        // The LoRaWAN session survives in the stack's NVM; multicast groups come back from
        // the agent's journal (GroupKeys events) only when set again, so keep them.
        if d.start_agent(now).is_err() {
            return;
        }
        self.agent_step(i);
    }

    fn try_uplink_soon(&mut self, i: usize, at: Micros) {
        let d = &mut self.devices[i];
        if d.uplink_scheduled || (d.outbox.is_empty() && !d.agent_may_send) {
            return;
        }
        d.uplink_scheduled = true;
        // Firmware latency and jitter before the radio.
        let at = at + self.rng.gen_range(100_000..3_000_000);
        self.schedule(at, Event::TryUplink(i));
    }

    fn try_uplink(&mut self, i: usize) {
        let band = self.band;
        let now = self.now;
        let chans = band.uplink_channels();
        let freq = chans[self.rng.gen_range(0..chans.len())];
        let d = &mut self.devices[i];
        if d.outbox.is_empty() && !d.agent_may_send {
            return;
        }
        // Off, or in its own receive windows: later.
        let busy_until = match d.power {
            Power::Booting { until } => Some(until),
            Power::On => d
                .rx_windows
                .iter()
                .flatten()
                .map(|&t| t + 500_000)
                .filter(|&t| t > now)
                .max(),
        };
        let free_at = d.duty.earliest(band.0, freq, now);
        let at = busy_until.unwrap_or(now).max(free_at);
        if at > now {
            d.uplink_scheduled = true;
            self.schedule(at, Event::TryUplink(i));
            return;
        }
        // The agent's answers first, then the device's own reading.
        let now_local = d.local_ms(now);
        let mut buf = [0u8; 64];
        let from_agent = d
            .agent
            .as_mut()
            .and_then(|a| a.poll_uplink(now_local, &mut buf));
        let next = match from_agent {
            Some((port, n)) => Some((port, buf[..n].to_vec())),
            None => {
                d.agent_may_send = false;
                d.outbox.pop_front()
            }
        };
        let Some((port, payload)) = next else {
            return;
        };
        let Some(frame) = mac::build(true, d.addr, d.fcnt_up, port, &payload, false, &d.keys)
        else {
            return;
        };
        d.fcnt_up += 1;
        let modulation = band.uplink_modulation(d.up_dr);
        let airtime = time_on_air_us(modulation, Frame::uplink(frame.len()));
        d.duty.book(band.0, freq, now, airtime);
        d.stats.uplinks += 1;
        d.stats.tx_us += airtime;
        let (dev_node, pos, dr) = (Node::Device(d.index), d.pos, d.up_dr);
        d.rx_windows = [
            Some(now + airtime + RX1_DELAY),
            Some(now + airtime + RX2_DELAY),
        ];
        d.stats.rx_us += 2 * 50_000;
        let tx = self.air.transmit(Transmission {
            id: 0,
            from: dev_node,
            pos,
            start: now,
            end: now + airtime,
            freq_hz: freq,
            modulation,
            power_dbm: band.device_power_dbm(),
        });
        self.stats.uplinks_sent += 1;
        // Each gateway that hears the preamble takes a demodulator path.
        let sens = sensitivity_dbm(modulation);
        let mut locked = Vec::new();
        for (g, gw) in self.gateways.iter_mut().enumerate() {
            let rssi = self.air.rssi(
                band.device_power_dbm(),
                (dev_node, pos),
                (Node::Gateway(g as u32), gw.pos),
            );
            if rssi >= sens && gw.demod.lock(now, now + airtime) {
                locked.push(g);
            }
        }
        self.schedule(
            now + airtime,
            Event::UplinkEnd {
                dev: i,
                tx,
                locked,
                freq,
                dr,
                frame,
            },
        );
        let d = &self.devices[i];
        if !d.outbox.is_empty() || d.agent_may_send {
            self.try_uplink_soon(i, now + airtime + RX2_DELAY);
        }
    }

    fn uplink_end(
        &mut self,
        dev: usize,
        tx: u64,
        mut locked: Vec<usize>,
        freq: u32,
        dr: u8,
        frame: Vec<u8>,
    ) {
        let mut best: Option<(usize, f64)> = None;
        let mut decoded = 0;
        for k in 0..locked.len() {
            let g = locked[k];
            match self
                .air
                .receive(tx, Node::Gateway(g as u32), self.gateways[g].pos)
            {
                Ok(rssi) => {
                    self.gateways[g].stats.uplinks_heard += 1;
                    if best.is_none_or(|(_, r)| rssi > r) {
                        best = Some((decoded, rssi));
                    }
                    self.backend.gateway_heard(
                        g,
                        &HeardFrame {
                            dev,
                            end: self.now,
                            freq_hz: freq,
                            modulation: self.band.uplink_modulation(dr),
                            rssi_dbm: rssi,
                            phy: &frame,
                        },
                    );
                    // The gateways that decoded it, in place of those that locked on.
                    locked[decoded] = g;
                    decoded += 1;
                }
                Err(loss) => self.stats.losses[loss as usize] += 1,
            }
        }
        if let Some((k, _)) = best {
            locked.truncate(decoded);
            locked.swap(0, k);
            self.stats.uplinks_received += 1;
            self.schedule(
                self.now + NS_DELAY,
                Event::NetworkUplink {
                    dev,
                    end: self.now,
                    freq,
                    dr,
                    heard: locked,
                    frame,
                },
            );
        }
    }

    fn network_uplink(
        &mut self,
        dev: usize,
        end: Micros,
        freq: u32,
        dr: u8,
        heard: &[usize],
        frame: &[u8],
    ) {
        let Some(&i) = mac::dev_addr(frame).and_then(|a| self.by_addr.get(&a)) else {
            return;
        };
        debug_assert_eq!(i, dev);
        let keys = self.devices[i].keys;
        let hint = self.ns[i].last_fcnt_up.map_or(0, |f| f + 1);
        let Some(data) = mac::open(frame, &keys, hint) else {
            return;
        };
        if self.ns[i]
            .last_fcnt_up
            .is_some_and(|last| data.fcnt <= last)
        {
            return;
        }
        self.ns[i].last_fcnt_up = Some(data.fcnt);
        if let Some(port) = data.port.filter(|&p| p != 0) {
            let uplink = NsUplink {
                device: i,
                dev: self.devices[i].eui,
                dev_addr: self.devices[i].addr,
                fcnt: data.fcnt,
                port,
                payload: &data.payload,
                end,
                freq_hz: freq,
                dr,
                gateways: heard,
            };
            self.backend.handle_uplink(self.now, &uplink);
            self.backend_step();
        }
        self.class_a_downlink(i, end, freq, dr, heard[0]);
    }

    /// Sends the head of the device's queue in its RX1 (or RX2) window.
    fn class_a_downlink(&mut self, i: usize, end: Micros, up_freq: u32, up_dr: u8, gw: usize) {
        let band = self.band;
        if self.ns[i].queue.is_empty() {
            return;
        }
        let (f1, dr1) = band.rx1(up_freq, up_dr);
        let (f2, dr2) = band.rx2(self.cfg.rx2_dr);
        let rx1_at = end + RX1_DELAY;
        let rx2_at = end + RX2_DELAY;
        // RX2 on the class C channel would take airtime from the multicast and collide
        // with it: not while a round is being sent.
        let (mc_freq, _) = self.backend.class_c_channel();
        let rx2_free = f2 != mc_freq || !self.backend.is_multicasting();
        // With frames from outside in the gateway's queue, a window that overlaps one of
        // them is not free either.
        let (now, track) = (self.now, self.track_queues);
        let len = self.ns[i].queue.front().map_or(0, |(_, p)| p.len() + 13);
        let g = &mut self.gateways[gw];
        let mut queue_free = |at: Micros, dr: u8| {
            let air = time_on_air_us(band.downlink_modulation(dr), Frame::downlink(len));
            !track || !g.clashes(now, at, at + air)
        };
        let rx1_free = queue_free(rx1_at, dr1);
        let rx2_free = rx2_free && queue_free(rx2_at, dr2);
        let g = &self.gateways[gw];
        let (at, freq, dr) = if rx1_free && g.duty.earliest(band.0, f1, rx1_at) == rx1_at {
            (rx1_at, f1, dr1)
        } else if rx2_free && g.duty.earliest(band.0, f2, rx2_at) == rx2_at {
            (rx2_at, f2, dr2)
        } else {
            self.gateways[gw].stats.refused += 1;
            return;
        };
        let ns = &mut self.ns[i];
        let Some((port, payload)) = ns.queue.pop_front() else {
            return;
        };
        let d = &self.devices[i];
        let pending = !ns.queue.is_empty();
        let Some(frame) = mac::build(
            false,
            d.addr,
            ns.fcnt_down,
            port,
            &payload,
            pending,
            &d.keys,
        ) else {
            return;
        };
        ns.fcnt_down += 1;
        // The network server books the gateway's airtime when it decides, so that later
        // decisions see it.
        let modulation = band.downlink_modulation(dr);
        let airtime = time_on_air_us(modulation, Frame::downlink(frame.len()));
        self.gateways[gw].duty.book(band.0, freq, at, airtime);
        if self.track_queues {
            self.gateways[gw].queue.push((at, at + airtime));
        }
        self.schedule(
            at,
            Event::GatewayTx(GatewayTx {
                gw,
                freq,
                dr,
                modulation,
                power_dbm: band.gateway_power_dbm(freq),
                frame,
                to: Downlink::Unicast(i),
                booked: true,
            }),
        );
    }

    fn backend_step(&mut self) {
        while let Some(out) = self.backend.poll_output() {
            match out {
                AppOutput::Unicast { dev, port, payload } => {
                    if let Some(&i) = self.by_eui.get(&dev) {
                        self.ns[i].queue.push_back((port, payload));
                    }
                }
                AppOutput::Multicast(f) => {
                    let modulation = self.band.downlink_modulation(f.dr);
                    let airtime = time_on_air_us(modulation, Frame::downlink(f.phy.len()));
                    let mut at = f.at;
                    for k in 0..self.multicast_gateways.len() {
                        let gw = self.multicast_gateways[k];
                        self.schedule(
                            at,
                            Event::GatewayTx(GatewayTx {
                                gw,
                                freq: f.freq_hz,
                                dr: f.dr,
                                modulation,
                                power_dbm: self.band.gateway_power_dbm(f.freq_hz),
                                frame: f.phy.clone(),
                                to: Downlink::Multicast { addr: f.mc_addr },
                                booked: false,
                            }),
                        );
                        at += airtime + MULTICAST_GAP;
                    }
                    if f.fragment {
                        self.stats.multicast_frames_sent += 1;
                    }
                }
            }
        }
        if self.backend.is_finished() {
            self.done = true;
            return;
        }
        if let Some(t) = self.backend.poll_timeout() {
            let at = t.max(self.now);
            if self
                .backend_timer_at
                .is_none_or(|old| at < old || old < self.now)
            {
                self.backend_timer_at = Some(at);
                self.schedule(at, Event::BackendTimer);
            }
        }
    }

    fn gateway_tx(&mut self, tx: GatewayTx) {
        let (gw, freq, dr, to) = (tx.gw, tx.freq, tx.dr, tx.to);
        let band = self.band;
        let modulation = tx.modulation;
        let airtime = time_on_air_us(modulation, Frame::downlink(tx.frame.len()));
        let g = &mut self.gateways[gw];
        // Unicast airtime was booked when the downlink was scheduled (and that of a frame
        // from outside when it was accepted); the engine's multicast frame goes out as soon
        // as the band allows.
        if !tx.booked {
            let free = g.duty.earliest(band.0, freq, self.now);
            if free > self.now {
                g.stats.refused += 1;
                self.schedule(free, Event::GatewayTx(tx));
                return;
            }
            g.duty.book(band.0, freq, self.now, airtime);
        }
        g.stats.tx_us += airtime;
        match to {
            Downlink::Unicast(_) => {
                g.stats.downlinks += 1;
                self.stats.unicast_downlinks_sent += 1;
            }
            Downlink::Multicast { .. } => g.stats.multicast_frames += 1,
        }
        let on_air = self.air.transmit(Transmission {
            id: 0,
            from: Node::Gateway(gw as u32),
            pos: g.pos,
            start: self.now,
            end: self.now + airtime,
            freq_hz: freq,
            modulation,
            power_dbm: tx.power_dbm,
        });
        self.schedule(
            self.now + airtime,
            Event::DownlinkEnd {
                tx: on_air,
                dr,
                frame: tx.frame,
                to,
            },
        );
    }

    fn downlink_end(&mut self, tx: u64, dr: u8, frame: &[u8], to: Downlink) {
        let Some(t) = self.air.get(tx).copied() else {
            return;
        };
        match to {
            Downlink::Unicast(i) => {
                let d = &self.devices[i];
                let in_window =
                    d.power == Power::On && d.rx_windows.iter().flatten().any(|&w| w == t.start);
                if !in_window || !self.heard(i, tx) {
                    return;
                }
                let d = &self.devices[i];
                let hint = d.last_fcnt_down.map_or(0, |f| f + 1);
                let Some(data) = mac::open(frame, &d.keys, hint) else {
                    return;
                };
                if d.last_fcnt_down.is_some_and(|last| data.fcnt <= last) {
                    return;
                }
                self.stats.unicast_downlinks_received += 1;
                let d = &mut self.devices[i];
                d.last_fcnt_down = Some(data.fcnt);
                d.rx_windows = [None; 2];
                if let Some(port) = data.port {
                    self.deliver(i, Via::Unicast, port, &data.payload);
                }
                // FPending: the firmware sends an uplink soon to fetch the rest.
                if data.f_pending && self.devices[i].outbox.is_empty() {
                    self.devices[i].outbox.push_back((2, Vec::new()));
                    self.try_uplink_soon(i, self.now);
                }
            }
            Downlink::Multicast { addr } => {
                let Node::Gateway(gw) = t.from else { return };
                let audience = if (t.freq_hz, dr) == self.audience_channel {
                    std::mem::take(&mut self.audience[gw as usize])
                } else {
                    (0..self.devices.len()).collect()
                };
                // Every device of the group opens the same frame under the same keys: the
                // result for a (keys, counter) pair is worked out once.
                let mut opened: Option<(SessionKeys, u32, Option<mac::DataFrame>)> = None;
                for &i in &audience {
                    let Some(c) = self.listening[i] else { continue };
                    if c.freq_hz != t.freq_hz || c.dr != dr {
                        continue;
                    }
                    let Some(group) =
                        self.groups[i][usize::from(c.group & 3)].filter(|g| g.addr == addr)
                    else {
                        continue;
                    };
                    if !self.heard(i, tx) {
                        continue;
                    }
                    let hint = group.last_fcnt.map_or(group.min_fcnt, |f| f + 1);
                    let Some(low) = mac::fcnt_low(frame) else {
                        continue;
                    };
                    let fcnt = mac::full_fcnt(low, hint);
                    let data = match &opened {
                        Some((k, f, data)) if *k == group.keys && *f == fcnt => data,
                        _ => {
                            let data = mac::open(frame, &group.keys, hint);
                            &opened.insert((group.keys, fcnt, data)).2
                        }
                    };
                    let Some(data) = data else {
                        continue;
                    };
                    if data.fcnt < group.min_fcnt
                        || data.fcnt > group.max_fcnt
                        || group.last_fcnt.is_some_and(|l| data.fcnt <= l)
                    {
                        continue;
                    }
                    if let Some(g) = self.groups[i][usize::from(c.group & 3)].as_mut() {
                        g.last_fcnt = Some(data.fcnt);
                    }
                    if let Some(port) = data.port {
                        self.deliver(i, Via::Multicast(c.group), port, &data.payload);
                    }
                }
                if (t.freq_hz, dr) == self.audience_channel {
                    self.audience[gw as usize] = audience;
                }
            }
        }
    }

    /// Hands an application payload to device `i`'s agent.
    fn deliver(&mut self, i: usize, via: Via, port: u8, payload: &[u8]) {
        let d = &mut self.devices[i];
        if port == fuota_codec::fragmentation::PORT && payload.first() == Some(&0x08) {
            match via {
                Via::Unicast => d.stats.unicast_fragments += 1,
                Via::Multicast(_) => d.stats.multicast_fragments += 1,
            }
        }
        let now = d.local_ms(self.now);
        if let Some(a) = d.agent.as_mut() {
            a.handle_downlink(now, via, port, payload);
        }
        self.agent_step(i);
    }

    /// Whether device `i` decodes downlink `tx` (radio, then the extra loss).
    fn heard(&mut self, i: usize, tx: u64) -> bool {
        match self
            .air
            .receive(tx, Node::Device(i as u32), self.positions[i])
        {
            Ok(_) => {
                let p = self.cfg.extra_downlink_loss;
                p <= 0.0 || self.rng.gen::<f64>() >= p
            }
            Err(loss) => {
                self.stats.losses[loss as usize] += 1;
                false
            }
        }
    }

    /// Lets identical flash sectors of all devices be shared (see [`CowFlash::intern`]).
    pub fn share_flash(&mut self) -> usize {
        let pool = &mut self.pool;
        self.devices
            .iter()
            .map(|d| d.flash.borrow_mut().intern(pool))
            .sum()
    }

    /// The index of device `eui`.
    pub fn device_index(&self, eui: DevEui) -> Option<usize> {
        self.by_eui.get(&eui).copied()
    }
}

impl SimDevice {
    /// (primary, secondary) slots from the agent's layout.
    pub fn primary_and_secondary(
        &self,
    ) -> (
        fuota_device_agent::slot::Region,
        fuota_device_agent::slot::Region,
    ) {
        (self.layout().primary, self.layout().secondary)
    }
}
