//! What lies beyond the simulated radio network: the application the network server hands
//! uplinks to and takes downlinks from, and whatever listens to the gateways.
//!
//! The world is generic over a [`Backend`], so the in-process path is monomorphized: the
//! campaign engine in virtual time ([`EngineBackend`], what `fuota-sim run` uses) costs no
//! more than calling the engine directly, and the hooks it does not need compile to nothing.
//! The live simulator's backend (`live::integration`) plays ChirpStack's MQTT application
//! integration instead; another in-process backend (a staged rollout, say) fits the same
//! trait.
//!
//! Inputs: [`Backend::handle_uplink`], [`Backend::handle_timeout`], [`Backend::gateway_heard`];
//! after each, the world drains [`Backend::poll_output`] and sleeps until
//! [`Backend::poll_timeout`]. Getters: [`Backend::is_finished`], [`Backend::class_c_channel`],
//! [`Backend::is_multicasting`].

use fuota_codec::keys::Key128;
use fuota_server::engine::{DevEui, Engine, FrameKind, MulticastFrame, Output};
use fuota_server::plan::airtime::Modulation;

use crate::mac::{self, SessionKeys};
use crate::radio::Micros;

/// A device's uplink as the network server passes it on: deduplicated, MIC and counter
/// checked, decrypted, with an FPort other than 0.
#[derive(Debug, Clone, Copy)]
pub struct NsUplink<'a> {
    /// Index of the device in the world.
    pub device: usize,
    pub dev: DevEui,
    pub dev_addr: u32,
    pub fcnt: u32,
    pub port: u8,
    pub payload: &'a [u8],
    /// End of the transmission (when the gateways timestamp it).
    pub end: Micros,
    pub freq_hz: u32,
    pub dr: u8,
    /// Gateways that decoded it, the best first.
    pub gateways: &'a [usize],
}

/// A frame a gateway decoded (what a packet forwarder reports upstream).
#[derive(Debug, Clone, Copy)]
pub struct HeardFrame<'a> {
    /// Index of the transmitting device.
    pub dev: usize,
    /// End of the reception.
    pub end: Micros,
    pub freq_hz: u32,
    pub modulation: Modulation,
    pub rssi_dbm: f64,
    pub phy: &'a [u8],
}

/// A multicast frame to put on the air from the multicast gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastTx {
    pub at: Micros,
    pub freq_hz: u32,
    pub dr: u8,
    pub mc_addr: u32,
    /// The whole PHY payload (MHDR to MIC).
    pub phy: Vec<u8>,
    /// Whether it carries a fragment (for the run's counters).
    pub fragment: bool,
}

/// What the application asks of the network server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppOutput {
    /// Queue for the device's next class A window.
    Unicast {
        dev: DevEui,
        port: u8,
        payload: Vec<u8>,
    },
    Multicast(MulticastTx),
}

/// The application side of the simulated network server (see the module's doc).
pub trait Backend {
    fn handle_uplink(&mut self, now: Micros, uplink: &NsUplink<'_>);
    fn handle_timeout(&mut self, now: Micros);
    fn poll_output(&mut self) -> Option<AppOutput>;
    /// When [`Backend::handle_timeout`] must run next.
    fn poll_timeout(&mut self) -> Option<Micros>;
    /// Nothing more will happen: the world stops.
    fn is_finished(&self) -> bool;
    /// Frequency and data rate of the class C session (the devices' multicast audiences
    /// are worked out for it; other channels are checked device by device).
    fn class_c_channel(&self) -> (u32, u8);
    /// A multicast round is being sent: RX2 keeps off its channel.
    fn is_multicasting(&self) -> bool;
    /// Gateway `gw` decoded a frame.
    fn gateway_heard(&mut self, _gw: usize, _frame: &HeardFrame<'_>) {}
}

/// The LoRaWAN frame of an engine's multicast output under the group's (McAppSKey,
/// McNwkSKey); `None` if it cannot be built.
pub fn multicast_tx(f: &MulticastFrame, (app, nwk): (Key128, Key128)) -> Option<MulticastTx> {
    let keys = SessionKeys {
        nwk_s_key: *nwk.as_bytes(),
        app_s_key: *app.as_bytes(),
    };
    let phy = mac::build(false, f.mc_addr, f.fcnt, f.port, &f.payload, false, &keys)?;
    Some(MulticastTx {
        at: f.at * 1000,
        freq_hz: f.freq_hz,
        dr: f.dr,
        mc_addr: f.mc_addr,
        phy,
        fragment: matches!(
            f.kind,
            FrameKind::DataFragment | FrameKind::CodedFragment | FrameKind::RepairFragment
        ),
    })
}

/// The campaign engine in process, in virtual time: `fuota-sim run`'s backend.
#[derive(Debug)]
pub struct EngineBackend {
    pub engine: Engine,
}

impl EngineBackend {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn us_to_ms(t: Micros) -> u64 {
    t / 1000
}

impl Backend for EngineBackend {
    fn handle_uplink(&mut self, _now: Micros, u: &NsUplink<'_>) {
        // The engine's clock is the uplink's end, as a gateway timestamps it.
        self.engine
            .handle_uplink(us_to_ms(u.end), u.dev, u.port, u.payload);
    }

    fn handle_timeout(&mut self, now: Micros) {
        self.engine.handle_timeout(us_to_ms(now));
    }

    fn poll_output(&mut self) -> Option<AppOutput> {
        loop {
            match self.engine.poll_output()? {
                Output::Unicast { dev, port, payload } => {
                    return Some(AppOutput::Unicast { dev, port, payload })
                }
                Output::Multicast(f) => {
                    // A frame that cannot be built is skipped (as a driver would log it).
                    if let Some(tx) = multicast_tx(&f, self.engine.multicast_keys()) {
                        return Some(AppOutput::Multicast(tx));
                    }
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Micros> {
        self.engine.poll_timeout().map(|t| t * 1000)
    }

    fn is_finished(&self) -> bool {
        self.engine.is_finished()
    }

    fn class_c_channel(&self) -> (u32, u8) {
        let (freq, dr, _, _) = self.engine.class_c_session();
        (freq, dr)
    }

    fn is_multicasting(&self) -> bool {
        self.engine.is_multicasting()
    }
}
