//! The radio: who hears a transmission, and whether it survives what else is on the air.
//!
//! - Path loss: log-distance with log-normal shadowing (LoRaSim/FLoRa: d0 = 40 m,
//!   PL(d0) = 127.41 dB, gamma = 2.08, sigma = 3.57 dB). Shadowing is fixed per link: drawn
//!   from a hash of the seed and the two ends, so a run is reproducible and a link does not
//!   change from one packet to the next.
//! - Sensitivity per SF and bandwidth (SX1276 datasheet, 125 kHz; +3 dB per bandwidth
//!   doubling).
//! - Interference: every overlapping transmission on the same channel is checked with the
//!   SIR thresholds per SF pair of ns-3's lorawan module (Goursaud et al.); a stronger
//!   same-SF signal captures the receiver at 6 dB.
//! - Gateways: 8 demodulator paths, half-duplex (a gateway that transmits hears nothing).
//! - Duty cycle per sub-band, for devices and gateways.

use std::collections::VecDeque;

use fuota_server::plan::airtime::Modulation;
use fuota_server::plan::Region;

/// Microseconds of simulated time.
pub type Micros = u64;

/// A point on the map, metres.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub x: f64,
    pub y: f64,
}

impl Position {
    pub fn distance(&self, o: &Position) -> f64 {
        ((self.x - o.x).powi(2) + (self.y - o.y).powi(2)).sqrt()
    }
}

/// Propagation parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Propagation {
    pub d0_m: f64,
    pub pl_d0_db: f64,
    pub gamma: f64,
    pub sigma_db: f64,
    /// Antenna gains added to every link (gateway and device together).
    pub gains_db: f64,
}

impl Default for Propagation {
    fn default() -> Self {
        Self {
            d0_m: 40.0,
            pl_d0_db: 127.41,
            gamma: 2.08,
            sigma_db: 3.57,
            gains_db: 0.0,
        }
    }
}

/// Who is at either end of a link (for the shadowing draw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Device(u32),
    Gateway(u32),
}

impl Node {
    fn key(self) -> u64 {
        match self {
            Node::Device(i) => u64::from(i) << 1,
            Node::Gateway(i) => (u64::from(i) << 1) | 1,
        }
    }
}

/// Where a node's entry sits in per-node tables: (devices 0 or gateways 1, index).
fn node_slot(n: Node) -> (usize, usize) {
    match n {
        Node::Device(i) => (0, i as usize),
        Node::Gateway(i) => (1, i as usize),
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Propagation {
    /// Mean path loss at `d` metres, dB.
    pub fn mean_loss_db(&self, d: f64) -> f64 {
        self.pl_d0_db + 10.0 * self.gamma * (d.max(1.0) / self.d0_m).log10()
    }

    /// The link's shadowing, dB: a standard normal draw from a hash of the seed and the
    /// unordered pair of ends, times sigma.
    pub fn shadowing_db(&self, seed: u64, a: Node, b: Node) -> f64 {
        let (lo, hi) = if a.key() < b.key() {
            (a.key(), b.key())
        } else {
            (b.key(), a.key())
        };
        let h1 = mix(seed ^ mix(lo.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi));
        let h2 = mix(h1);
        // Box-Muller from two uniforms in (0, 1].
        let u1 = ((h1 >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        z * self.sigma_db
    }

    /// Received power, dBm.
    pub fn rssi_dbm(
        &self,
        seed: u64,
        tx_dbm: f64,
        a: (Node, Position),
        b: (Node, Position),
    ) -> f64 {
        tx_dbm + self.gains_db
            - self.mean_loss_db(a.1.distance(&b.1))
            - self.shadowing_db(seed, a.0, b.0)
    }
}

/// Receiver sensitivity, dBm (SX1276 datasheet at 125 kHz; 3 dB worse per doubling).
pub fn sensitivity_dbm(m: Modulation) -> f64 {
    match m {
        Modulation::Lora { sf, bw_khz } => {
            let base = match sf {
                7 => -123.0,
                8 => -126.0,
                9 => -129.0,
                10 => -132.0,
                11 => -134.5,
                _ => -137.0,
            };
            base + 10.0 * (f64::from(bw_khz) / 125.0).log10()
        }
        Modulation::Fsk { .. } => -105.0,
    }
}

/// Minimum signal-to-interference ratio (dB) for a signal of spreading factor `sf` to
/// survive an interferer of spreading factor `isf` (ns-3 lorawan, Goursaud matrix).
pub fn sir_threshold_db(sf: u8, isf: u8) -> f64 {
    const M: [[f64; 6]; 6] = [
        [6.0, -16.0, -18.0, -19.0, -19.0, -20.0],
        [-24.0, 6.0, -20.0, -22.0, -22.0, -22.0],
        [-27.0, -27.0, 6.0, -23.0, -25.0, -25.0],
        [-30.0, -30.0, -30.0, 6.0, -26.0, -28.0],
        [-33.0, -33.0, -33.0, -33.0, 6.0, -29.0],
        [-36.0, -36.0, -36.0, -36.0, -36.0, 6.0],
    ];
    let i = usize::from(sf.clamp(7, 12) - 7);
    let j = usize::from(isf.clamp(7, 12) - 7);
    M[i][j]
}

fn sf_of(m: Modulation) -> u8 {
    match m {
        Modulation::Lora { sf, .. } => sf,
        // FSK is treated as the fastest LoRa rate for interference.
        Modulation::Fsk { .. } => 7,
    }
}

/// One transmission on the air.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transmission {
    pub id: u64,
    pub from: Node,
    pub pos: Position,
    pub start: Micros,
    pub end: Micros,
    pub freq_hz: u32,
    pub modulation: Modulation,
    pub power_dbm: f64,
}

/// Why a receiver missed a transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Loss {
    BelowSensitivity,
    Interference,
    /// The receiver was transmitting.
    HalfDuplex,
    /// Every demodulator path of the gateway was busy.
    NoPath,
}

/// Everything recently on the air, for interference checks.
#[derive(Debug, Clone)]
pub struct Air {
    pub propagation: Propagation,
    pub seed: u64,
    txs: VecDeque<Transmission>,
    next_id: u64,
    /// Mean path loss and shadowing of every gateway-device link, by `gateway * devices +
    /// device` (see [`Air::cache_links`]): the logarithm, the Box-Muller draw and the
    /// distance of a link are worked out once, not at every frame.
    links: Vec<(f64, f64)>,
    devices: usize,
    /// The same transmissions by frequency, for the interference check (only the channel's
    /// own matter), pruned with `txs`.
    channels: Vec<(u32, VecDeque<Transmission>)>,
    /// Latest end of each node's transmissions: a receiver that has not transmitted since a
    /// frame began cannot be half-duplex blocked, without a scan.
    last_end: [Vec<Micros>; 2],
}

/// Transmissions longer than this are not expected (SF12 at 255 bytes is 2.8 s).
const MAX_AIRTIME: Micros = 4_000_000;

impl Air {
    pub fn new(propagation: Propagation, seed: u64) -> Self {
        Self {
            propagation,
            seed,
            txs: VecDeque::new(),
            next_id: 1,
            links: Vec::new(),
            devices: 0,
            channels: Vec::new(),
            last_end: [Vec::new(), Vec::new()],
        }
    }

    /// Works out every gateway-device link once (devices and gateways numbered as in
    /// [`Node`], at these positions, which must not move afterwards).
    pub fn cache_links(&mut self, devices: &[Position], gateways: &[Position]) {
        let (p, seed) = (self.propagation, self.seed);
        self.devices = devices.len();
        self.links = gateways
            .iter()
            .enumerate()
            .flat_map(|(g, gp)| {
                devices.iter().enumerate().map(move |(d, dp)| {
                    let (a, b) = (Node::Gateway(g as u32), Node::Device(d as u32));
                    (p.mean_loss_db(gp.distance(dp)), p.shadowing_db(seed, a, b))
                })
            })
            .collect();
    }

    /// Received power on the link from `a` to `b`, dBm: [`Propagation::rssi_dbm`], from the
    /// cache for gateway-device links (the same arithmetic, so the same bits).
    pub fn rssi(&self, tx_dbm: f64, a: (Node, Position), b: (Node, Position)) -> f64 {
        let link = match (a.0, b.0) {
            (Node::Gateway(g), Node::Device(d)) | (Node::Device(d), Node::Gateway(g)) => {
                { (d as usize) < self.devices }
                    .then(|| self.links.get(g as usize * self.devices + d as usize))
                    .flatten()
            }
            _ => None,
        };
        match link {
            Some(&(mean, shadow)) => tx_dbm + self.propagation.gains_db - mean - shadow,
            None => self.propagation.rssi_dbm(self.seed, tx_dbm, a, b),
        }
    }

    /// Puts a transmission on the air (starts must come in time order); returns its id.
    pub fn transmit(&mut self, mut tx: Transmission) -> u64 {
        tx.id = self.next_id;
        self.next_id += 1;
        // Nothing that ended before anything now starting could overlap can matter again.
        let stale = |t: &Transmission| t.end + MAX_AIRTIME < tx.start;
        while self.txs.front().is_some_and(stale) {
            self.txs.pop_front();
        }
        for (_, list) in &mut self.channels {
            while list.front().is_some_and(stale) {
                list.pop_front();
            }
        }
        match self.channels.iter_mut().find(|(f, _)| *f == tx.freq_hz) {
            Some((_, list)) => list.push_back(tx),
            None => self.channels.push((tx.freq_hz, VecDeque::from([tx]))),
        }
        let (kind, i) = node_slot(tx.from);
        let ends = &mut self.last_end[kind];
        if ends.len() <= i {
            ends.resize(i + 1, 0);
        }
        ends[i] = ends[i].max(tx.end);
        self.txs.push_back(tx);
        tx.id
    }

    pub fn get(&self, id: u64) -> Option<&Transmission> {
        // Ids grow in the order transmissions are pushed.
        let i = self.txs.binary_search_by_key(&id, |t| t.id).ok()?;
        self.txs.get(i)
    }

    /// Whether `node` transmitted at any time during `[start, end)`.
    pub fn transmitting(&self, node: Node, start: Micros, end: Micros) -> bool {
        let (kind, i) = node_slot(node);
        if self.last_end[kind].get(i).is_none_or(|&e| e <= start) {
            return false;
        }
        self.txs
            .iter()
            .any(|t| t.from == node && t.start < end && start < t.end)
    }

    /// Whether receiver `rx` at `pos` decodes transmission `id`: power above sensitivity,
    /// not transmitting itself, and no overlapping transmission on the channel beating the
    /// SIR threshold. Returns the RSSI on success.
    pub fn receive(&self, id: u64, rx: Node, pos: Position) -> Result<f64, Loss> {
        let Some(tx) = self.get(id) else {
            return Err(Loss::Interference);
        };
        let rssi = self.rssi(tx.power_dbm, (tx.from, tx.pos), (rx, pos));
        if rssi < sensitivity_dbm(tx.modulation) {
            return Err(Loss::BelowSensitivity);
        }
        if self.transmitting(rx, tx.start, tx.end) {
            return Err(Loss::HalfDuplex);
        }
        let sf = sf_of(tx.modulation);
        let channel = self
            .channels
            .iter()
            .find(|(f, _)| *f == tx.freq_hz)
            .map(|(_, list)| list);
        for other in channel.into_iter().flatten() {
            if other.id == tx.id
                || other.freq_hz != tx.freq_hz
                || other.from == rx
                || other.end <= tx.start
                || tx.end <= other.start
            {
                continue;
            }
            let irssi = self.rssi(other.power_dbm, (other.from, other.pos), (rx, pos));
            if rssi - irssi < sir_threshold_db(sf, sf_of(other.modulation)) {
                return Err(Loss::Interference);
            }
        }
        Ok(rssi)
    }
}

/// A gateway's 8 demodulator paths.
#[derive(Debug, Clone, Default)]
pub struct Demodulators {
    busy_until: Vec<Micros>,
}

impl Demodulators {
    pub const PATHS: usize = 8;

    /// Takes a path for a reception of `[start, end)`; false when all are busy.
    pub fn lock(&mut self, start: Micros, end: Micros) -> bool {
        self.busy_until.retain(|&t| t > start);
        if self.busy_until.len() >= Self::PATHS {
            return false;
        }
        self.busy_until.push(end);
        true
    }
}

/// Transmit time per duty-cycle sub-band.
#[derive(Debug, Clone, Default)]
pub struct DutyCycle {
    /// (band index, the band is free again at).
    free_at: Vec<(usize, Micros)>,
}

impl DutyCycle {
    fn band(region: Region, freq_hz: u32) -> Option<(usize, f64)> {
        let bands = region.sub_bands();
        bands
            .iter()
            .position(|b| (b.from_hz..b.to_hz).contains(&freq_hz))
            .map(|i| (i, bands[i].duty_cycle))
    }

    /// When a transmission at `freq_hz` may start, at `now` or later.
    pub fn earliest(&self, region: Region, freq_hz: u32, now: Micros) -> Micros {
        match Self::band(region, freq_hz) {
            Some((b, _)) => self
                .free_at
                .iter()
                .find(|(i, _)| *i == b)
                .map_or(now, |&(_, t)| t.max(now)),
            None => now,
        }
    }

    /// Books a transmission of `airtime` starting at `start`: the band rests
    /// `airtime * (1/dc - 1)` after it.
    pub fn book(&mut self, region: Region, freq_hz: u32, start: Micros, airtime: Micros) {
        let Some((b, dc)) = Self::band(region, freq_hz) else {
            return;
        };
        let free = start + (airtime as f64 / dc) as Micros;
        match self.free_at.iter_mut().find(|(i, _)| *i == b) {
            Some(slot) => slot.1 = slot.1.max(free),
            None => self.free_at.push((b, free)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: Position = Position { x: 0.0, y: 0.0 };

    #[test]
    fn path_loss_and_shadowing() {
        let p = Propagation::default();
        assert!((p.mean_loss_db(40.0) - 127.41).abs() < 1e-9);
        assert!((p.mean_loss_db(400.0) - (127.41 + 20.8)).abs() < 1e-9);
        // Same link, same draw, either direction; another seed, another draw.
        let (a, b) = (Node::Device(3), Node::Gateway(1));
        assert_eq!(p.shadowing_db(7, a, b), p.shadowing_db(7, b, a));
        assert_ne!(p.shadowing_db(7, a, b), p.shadowing_db(8, a, b));
        // The draws have the model's spread.
        let draws: Vec<f64> = (0..20_000)
            .map(|i| p.shadowing_db(1, Node::Device(i), Node::Gateway(0)))
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let sd =
            (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64).sqrt();
        assert!(mean.abs() < 0.1, "{mean}");
        assert!((sd - 3.57).abs() < 0.1, "{sd}");
    }

    #[test]
    fn sensitivity_and_sir() {
        assert_eq!(
            sensitivity_dbm(Modulation::Lora {
                sf: 12,
                bw_khz: 125
            }),
            -137.0
        );
        let s500 = sensitivity_dbm(Modulation::Lora { sf: 7, bw_khz: 500 });
        assert!((s500 - (-123.0 + 6.0206)).abs() < 0.01);
        assert_eq!(sir_threshold_db(7, 7), 6.0);
        assert_eq!(sir_threshold_db(12, 7), -36.0);
        assert_eq!(sir_threshold_db(7, 12), -20.0);
    }

    fn tx(from: Node, pos: Position, start: Micros, sf: u8, power: f64) -> Transmission {
        Transmission {
            id: 0,
            from,
            pos,
            start,
            end: start + 100_000,
            freq_hz: 868_100_000,
            modulation: Modulation::Lora { sf, bw_khz: 125 },
            power_dbm: power,
        }
    }

    #[test]
    fn interference_capture_and_half_duplex() {
        let prop = Propagation {
            sigma_db: 0.0,
            ..Propagation::default()
        };
        let mut air = Air::new(prop, 1);
        let gw = (Node::Gateway(0), P0);
        // This model's SF7 range at 14 dBm is about 100 m.
        let near = Position { x: 40.0, y: 0.0 };
        let far = Position { x: 90.0, y: 0.0 };
        let a = air.transmit(tx(Node::Device(1), near, 0, 7, 14.0));
        // Alone and in range.
        assert!(air.receive(a, gw.0, gw.1).is_ok());
        // A weaker same-SF packet overlapping: the near one captures (SIR about 7 dB);
        // the far one is lost.
        let b = air.transmit(tx(Node::Device(2), far, 50_000, 7, 14.0));
        assert!(air.receive(a, gw.0, gw.1).is_ok());
        assert_eq!(air.receive(b, gw.0, gw.1), Err(Loss::Interference));
        // Another SF is nearly orthogonal.
        let mut air2 = Air::new(prop, 1);
        let c = air2.transmit(tx(
            Node::Device(1),
            Position { x: 150.0, y: 0.0 },
            0,
            9,
            14.0,
        ));
        air2.transmit(tx(Node::Device(2), near, 10_000, 7, 14.0));
        assert!(air2.receive(c, gw.0, gw.1).is_ok());
        // Out of range.
        let d = air2.transmit(tx(
            Node::Device(3),
            Position { x: 5_000.0, y: 0.0 },
            500_000,
            7,
            14.0,
        ));
        assert_eq!(air2.receive(d, gw.0, gw.1), Err(Loss::BelowSensitivity));
        // The gateway transmitting meanwhile hears nothing.
        let e = air2.transmit(tx(Node::Device(4), near, 700_000, 7, 14.0));
        let mut down = tx(Node::Gateway(0), P0, 750_000, 12, 27.0);
        down.freq_hz = 869_525_000;
        air2.transmit(down);
        assert_eq!(air2.receive(e, gw.0, gw.1), Err(Loss::HalfDuplex));
    }

    #[test]
    fn demodulators_and_duty_cycle() {
        let mut d = Demodulators::default();
        for i in 0..8 {
            assert!(d.lock(i, 1_000));
        }
        assert!(!d.lock(10, 1_000));
        assert!(d.lock(1_000, 2_000), "paths free again at their end");
        let mut dc = DutyCycle::default();
        let r = Region::Eu868;
        assert_eq!(dc.earliest(r, 869_525_000, 5), 5);
        dc.book(r, 869_525_000, 0, 100_000);
        // 10 %: free after ten airtimes; another band is unaffected.
        assert_eq!(dc.earliest(r, 869_525_000, 5), 1_000_000);
        assert_eq!(dc.earliest(r, 868_100_000, 5), 5);
        dc.book(r, 868_100_000, 0, 100_000);
        assert_eq!(dc.earliest(r, 868_300_000, 0), 10_000_000);
        assert_eq!(dc.earliest(Region::Us915, 923_300_000, 7), 7);
    }
}
