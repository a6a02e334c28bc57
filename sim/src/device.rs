//! A simulated end device: the real agent over its own (copy-on-write) flash, a minimal
//! LoRaWAN MAC (one unicast session, up to four multicast groups with their FCnt windows,
//! class A receive windows, class C while a session runs), the firmware's reactions to the
//! agent's events, and counters for the report.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use fuota_device_agent::agent::{Agent, AgentConfig, AgentError};
use fuota_device_agent::clock::Millis;
use fuota_device_agent::codec::patch::VerifyingKey;
use fuota_device_agent::hooks::{Refusal, SelfTest, UpdateHooks};

use crate::flash::{CowFlash, FlashError};
use crate::mac::SessionKeys;
use crate::radio::{DutyCycle, Micros, Position};

/// Spare fragment slots of a simulated device (as many as it may lose).
pub const SPARES: usize = 256;

/// The agent's handle on the device's flash. It holds a weak link: the device owns the
/// flash, and the agent (whose borrow must live as long as it does) never keeps it alive
/// after the device is gone.
#[derive(Debug)]
pub struct FlashPort(Weak<RefCell<CowFlash>>);

impl FlashPort {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut CowFlash) -> Result<T, FlashError>,
    ) -> Result<T, FlashError> {
        let flash = self.0.upgrade().ok_or(FlashError::OutOfBounds)?;
        let mut flash = flash.borrow_mut();
        f(&mut flash)
    }
}

impl ErrorType for FlashPort {
    type Error = FlashError;
}

impl ReadNorFlash for FlashPort {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        self.with(|f| f.read(offset, bytes))
    }
    fn capacity(&self) -> usize {
        self.with(|f| Ok(f.capacity())).unwrap_or(0)
    }
}

impl NorFlash for FlashPort {
    const WRITE_SIZE: usize = crate::flash::WRITE;
    const ERASE_SIZE: usize = crate::flash::SECTOR;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        self.with(|f| f.erase(from, to))
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        self.with(|f| f.write(offset, bytes))
    }
}

/// The firmware's update hooks of a simulated device: its behaviour, on the agent's clock.
#[derive(Debug, Clone, Copy)]
pub struct SimHooks {
    pub fails_self_test: bool,
    /// A low battery until this time on the agent's clock: installs are put off.
    pub low_battery_until: Option<Millis>,
}

impl UpdateHooks for SimHooks {
    fn may_update(&mut self, now: Millis) -> Result<(), Refusal> {
        match self.low_battery_until {
            Some(until) if now < until => Err(Refusal::LowBattery),
            _ => Ok(()),
        }
    }
    fn self_test(&mut self, _now: Millis) -> SelfTest {
        if self.fails_self_test {
            SelfTest::Fail
        } else {
            SelfTest::Pass
        }
    }
}

pub type DeviceAgent = Agent<'static, FlashPort, SPARES, 1, VerifyingKey, SimHooks>;

/// A multicast group the stack listens to (installed on the agent's GroupKeys event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub addr: u32,
    pub keys: SessionKeys,
    pub min_fcnt: u32,
    pub max_fcnt: u32,
    /// Last FCnt accepted: a frame must be above it (replays are dropped).
    pub last_fcnt: Option<u32>,
}

/// Class C reception of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassC {
    pub group: u8,
    pub freq_hz: u32,
    pub dr: u8,
}

/// How the firmware behaves after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Behaviour {
    /// The new image fails its self-test: it is not confirmed and the device reboots,
    /// so MCUboot reverts.
    pub fails_self_test: bool,
    /// It does not reset when the agent wants a reboot.
    pub no_reboot: bool,
    /// Its battery is low until this world time: it puts installs off.
    pub low_battery_until: Option<Micros>,
}

/// Counters for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceStats {
    pub uplinks: u64,
    pub tx_us: u64,
    /// Time with the receiver on (class A windows and class C).
    pub rx_us: u64,
    /// DataFragments the agent got by multicast.
    pub multicast_fragments: u64,
    /// DataFragments the agent got by unicast.
    pub unicast_fragments: u64,
    pub reboots: u32,
    /// Times the firmware put the install off.
    pub deferrals: u32,
    pub reverted: bool,
    /// When the new image first ran and was confirmed.
    pub confirmed_at: Option<Micros>,
}

/// Whether the device is running or in its bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    On,
    /// Off the air until the bootloader is done.
    Booting {
        until: Micros,
    },
}

#[derive(Debug)]
pub struct SimDevice {
    pub index: u32,
    pub eui: u64,
    pub addr: u32,
    pub pos: Position,
    pub keys: SessionKeys,
    pub flash: Rc<RefCell<CowFlash>>,
    port: &'static RefCell<FlashPort>,
    pub agent: Option<DeviceAgent>,
    config: AgentConfig,
    workspace_len: usize,
    /// GPS microseconds at which the device's own clock read 0.
    pub clock_origin: Micros,
    pub fcnt_up: u32,
    pub last_fcnt_down: Option<u32>,
    pub class_c: Option<ClassC>,
    /// Application uplinks waiting for the radio: (port, payload).
    pub outbox: VecDeque<(u8, Vec<u8>)>,
    pub duty: DutyCycle,
    /// Uplink data rate, from its link to the best gateway.
    pub up_dr: u8,
    /// Start times of its open class A windows (RX1, RX2).
    pub rx_windows: [Option<Micros>; 2],
    pub power: Power,
    pub behaviour: Behaviour,
    pub stats: DeviceStats,
    /// A class C session began at this time (for the receive-time count).
    pub class_c_since: Option<Micros>,
    /// The next uplink try is scheduled (so tries are not stacked).
    pub uplink_scheduled: bool,
    /// The agent may have uplinks to give (it is asked when the radio is free).
    pub agent_may_send: bool,
    /// The agent's next timeout as scheduled in the world.
    pub timer_at: Option<Micros>,
}

impl SimDevice {
    /// A device whose flash is `factory` (shared) and whose agent starts at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u32,
        eui: u64,
        addr: u32,
        pos: Position,
        keys: SessionKeys,
        factory: &CowFlash,
        config: AgentConfig,
        workspace_len: usize,
        clock_origin: Micros,
        behaviour: Behaviour,
    ) -> Result<Self, AgentError<FlashError>> {
        let flash = Rc::new(RefCell::new(factory.clone()));
        // The port is a few bytes, leaked once per device: the agent needs a 'static borrow.
        let port: &'static RefCell<FlashPort> =
            Box::leak(Box::new(RefCell::new(FlashPort(Rc::downgrade(&flash)))));
        let mut device = Self {
            index,
            eui,
            addr,
            pos,
            keys,
            flash,
            port,
            agent: None,
            config,
            workspace_len,
            clock_origin,
            fcnt_up: 0,
            last_fcnt_down: None,
            class_c: None,
            outbox: VecDeque::new(),
            duty: DutyCycle::default(),
            up_dr: 0,
            rx_windows: [None; 2],
            power: Power::On,
            behaviour,
            stats: DeviceStats::default(),
            class_c_since: None,
            uplink_scheduled: false,
            agent_may_send: false,
            timer_at: None,
        };
        device.start_agent(clock_origin)?;
        Ok(device)
    }

    /// The device's own clock at world time `now`, ms.
    pub fn local_ms(&self, now: Micros) -> u64 {
        now.saturating_sub(self.clock_origin) / 1000
    }

    /// (Re)starts the agent after a boot at `now`. Its decoder RAM is leaked: it must live
    /// as long as the agent's borrow (a few KiB per boot).
    pub fn start_agent(&mut self, now: Micros) -> Result<(), AgentError<FlashError>> {
        self.agent = None;
        let workspace: &'static mut [u8] =
            Box::leak(vec![0u8; self.workspace_len].into_boxed_slice());
        let agent = Agent::with_hooks(
            self.port,
            self.config.clone(),
            workspace,
            self.local_ms(now),
            SimHooks {
                fails_self_test: self.behaviour.fails_self_test,
                low_battery_until: self.behaviour.low_battery_until.map(|t| self.local_ms(t)),
            },
        )?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Stops the agent (power off) and forgets the volatile MAC state of class C.
    pub fn power_off(&mut self) {
        self.agent = None;
        self.class_c = None;
        self.rx_windows = [None; 2];
    }

    /// The flash layout the agent was given.
    pub fn layout(&self) -> &fuota_device_agent::agent::Layout {
        &self.config.layout
    }

    /// Whether the device listens on `freq`/`dr` for group `group` at this moment.
    pub fn listens_class_c(&self, group: u8) -> bool {
        self.power == Power::On && self.class_c.is_some_and(|c| c.group == group)
    }
}
