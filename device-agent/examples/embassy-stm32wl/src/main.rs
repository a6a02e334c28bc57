//! The FUOTA agent in an embassy firmware for an STM32WLE5JC (Cortex-M4, SX126x sub-GHz radio
//! inside, 256 KiB flash, 64 KiB RAM), class A on `lorawan-device` over `lora-phy`.
//!
//! One task drives everything: it joins (OTAA), hands every downlink to the agent, sends the
//! agent's answers as unconfirmed uplinks, calls `handle_timeout` when the agent asks, and
//! acts on its events (multicast groups and class C sessions, reboot into a new image,
//! confirming it once healthy). Between uplinks it sleeps, or, while a multicast class C
//! session runs, listens on the session's channel.
#![no_std]
#![no_main]

mod multicast;
mod radio;

use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, Ordering};

use defmt::{error, info, warn};
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_stm32::flash::{Blocking, Flash};
use embassy_stm32::gpio::{Level, Output, Speed};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::spi::Spi;
use embassy_stm32::{bind_interrupts, dma, peripherals};
use embassy_time::{Delay, Duration, Instant, Timer};
use embedded_storage::nor_flash::ReadNorFlash;
use fuota_device_agent::agent::{Agent, AgentConfig, Event, Layout, UpdateFailure};
use fuota_device_agent::codec::fec::decoder::DecoderState;
use fuota_device_agent::codec::keys::{self, Key128};
use fuota_device_agent::codec::patch::VerifyingKey;
use fuota_device_agent::codec::Version;
use fuota_device_agent::frag_session::{FragAreas, Via};
use fuota_device_agent::hooks::{SelfTest, UpdateHooks};
use fuota_device_agent::mcuboot::{ImageHeader, HEADER_LEN};
use fuota_device_agent::multicast::{McEvent, RadioLimits};
use fuota_device_agent::slot::Region;
use lora_phy::lorawan_radio::LorawanRadio;
use lora_phy::sx126x::{self, Stm32wl, Sx126x, TcxoCtrlVoltage};
use lora_phy::LoRa;
use lorawan_device::async_device::radio::{PhyRxTx, RfConfig, RxConfig, RxMode};
use lorawan_device::async_device::{region, Device, JoinMode, JoinResponse, SendResponse};
use lorawan_device::default_crypto::DefaultFactory;
use lorawan_device::{AppEui, AppKey, DevEui};
use panic_probe as _;

use crate::multicast::McGroups;
use crate::radio::{RadioIrqHandler, Stm32wlInterface, SubGhzSpi};

// ---- The integrator's part: identity and keys --------------------------------------------
// Placeholders: fill in the device's own values (from the network server / join server). In a
// product they come from a provisioning area or a secure element rather than the image.

/// DevEUI, LSB first (as lorawan-device takes it; the LNS shows it MSB first).
const DEV_EUI: [u8; 8] = [0; 8];
/// JoinEUI (AppEUI), LSB first.
const JOIN_EUI: [u8; 8] = [0; 8];
/// AppKey, MSB first (as the LNS shows it). Root key of the OTAA join.
const APP_KEY: [u8; 16] = [0; 16];
/// GenAppKey (LoRaWAN 1.0.x), MSB first: root of McKEKey (TS005) and DataBlockIntKey (TS004
/// v2). The FUOTA server holds the same key.
const GEN_APP_KEY: [u8; 16] = [0; 16];
/// Public key the patches are signed with: SEC1 uncompressed (0x04, X, Y). The placeholder is
/// the P-256 generator point (private key 1!) so that the firmware boots as shipped; replace it
/// with the last 65 bytes of `openssl pkey -pubin -in KEY.pub.pem -outform DER`, where
/// KEY.pub.pem is what `fuota keys generate` wrote.
const PATCH_KEY_SEC1: [u8; 65] = [
    0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
    0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2,
    0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
    0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51,
    0xf5,
];

// ---- Flash layout ---------------------------------------------------------------------------
// 256 KiB in 128 pages of 2 KiB; offsets from 0x0800_0000 (embassy's flash driver counts from
// the start of flash). memory.x links the application into the primary slot: keep the two in
// step.
//
//   0x0000_0000  MCUboot                  24 KiB   ECDSA-P256, swap-using-move, no logging
//   0x0000_6000  primary slot (running)  104 KiB   header 0x200, image, TLVs, a free page, trailer
//   0x0002_0000  secondary slot (update) 104 KiB   the agent writes the rebuilt image here
//   0x0003_a000  fragment log             10 KiB   every fragment received, replayed on boot
//   0x0003_c800  data block                6 KiB   the patch the fragments decode into
//   0x0003_e000  spare fragment slots      4 KiB   the decoder's rewrites
//   0x0003_f000  journal                   4 KiB   two pages: agent state, power-safe
//
// This firmware is ~97 KB, so the slots take most of the part and a patch (the data block)
// can be 6 KiB: enough for a delta between close builds, not for a whole image. The STM32WL
// tops out at 256 KiB; larger patches want the secondary slot and fragment areas in external
// SPI NOR (another `NorFlash` driver for the agent).
const KB: u32 = 1024;
const LAYOUT: Layout = Layout {
    primary: Region {
        offset: 24 * KB,
        len: 104 * KB,
    },
    secondary: Region {
        offset: 128 * KB,
        len: 104 * KB,
    },
    fragments: [FragAreas {
        log: Region {
            offset: 232 * KB,
            len: 10 * KB,
        },
        block: Region {
            offset: 242 * KB,
            len: 6 * KB,
        },
        spare: Region {
            offset: 248 * KB,
            len: 4 * KB,
        },
    }],
    journal: Region {
        offset: 252 * KB,
        len: 4 * KB,
    },
};

/// Data fragments a session may have (the 6 KiB block in fragments down to 12 bytes).
const MAX_NB_FRAG: usize = 512;
/// Lost data fragments the decoder can recover. Each recovered one takes a spare slot: the 4
/// KiB spare area holds 16 of the largest fragments (more of smaller ones); past that a
/// session fails with `NoSpare` rather than writing outside its area.
const MAX_LOST: usize = 32;
/// Largest fragment: an EU868 DR5 downlink carries 242 bytes of FRMPayload.
const MAX_FRAG: usize = 242;
/// Spare-slot table entries in RAM (at most one per recovered fragment).
const SPARES: usize = MAX_LOST;
const WORKSPACE: usize = DecoderState::workspace_len(MAX_NB_FRAG, MAX_LOST, MAX_FRAG);
/// MCUboot's BOOT_MAX_ALIGN for this part (8-byte flash writes).
const BOOT_MAX_ALIGN: u32 = 8;

// ---- Types ------------------------------------------------------------------------------------

type FlashDriver = Flash<'static, Blocking>;
/// The agent over the internal flash. Its generics (and any it gains) are set here only.
type FuotaAgent<'a> = Agent<'a, FlashDriver, SPARES, 1, VerifyingKey, HealthCheck>;

/// An uplink went out under the running image (set by the main loop).
static UPLINK_SENT: AtomicBool = AtomicBool::new(false);

/// The firmware's say in an update. Installs may always start here (a battery-powered
/// product would look at its supply); the new image is good once it has joined and an
/// uplink went out under it, the health check of this example.
struct HealthCheck;

impl UpdateHooks for HealthCheck {
    fn self_test(&mut self, _now: u64) -> SelfTest {
        if UPLINK_SENT.load(Ordering::Relaxed) {
            SelfTest::Pass
        } else {
            SelfTest::Later
        }
    }
    fn retry_ms(&self) -> u64 {
        30_000
    }
}
/// Highest output power the board's PA path is allowed (dBm).
const MAX_TX_POWER: u8 = 14;
type Radio = LorawanRadio<Sx126x<SubGhzSpi, Stm32wlInterface, Stm32wl>, Delay, MAX_TX_POWER>;
/// Class A device (256-byte radio buffer, one downlink per uplink): multicast class C frames
/// bypass it (multicast.rs).
type LoraDevice = Device<Radio, DefaultFactory, EmbassyTimer, lorawan_device::Prng>;

// ---- Application -----------------------------------------------------------------------------

/// The product's own uplink (here: the running image's version). Besides reporting, it opens
/// the class A receive windows through which the FUOTA server reaches the device.
const APP_PORT: u8 = 1;
const APP_PERIOD: Duration = Duration::from_secs(300);
/// Longest sleep between two looks at the agent, so that a far-off timeout never overflows
/// the timer and a changed plan is seen.
const MAX_SLEEP: Duration = Duration::from_secs(60);

bind_interrupts!(struct Irqs {
    SUBGHZ_RADIO => RadioIrqHandler;
    RNG => rng::InterruptHandler<peripherals::RNG>;
    DMA1_CHANNEL1 => dma::InterruptHandler<peripherals::DMA1_CH1>;
    DMA1_CHANNEL2 => dma::InterruptHandler<peripherals::DMA1_CH2>;
});

/// Milliseconds since boot: the agent's clock (TS003 maps it to GPS time).
fn now_ms() -> u64 {
    Instant::now().as_millis()
}

/// lorawan-device's timer over embassy-time 0.5 (its own `embassy-time` feature is for 0.3).
struct EmbassyTimer {
    start: Instant,
}

impl lorawan_device::async_device::radio::Timer for EmbassyTimer {
    fn reset(&mut self) {
        self.start = Instant::now();
    }

    async fn at(&mut self, millis: u64) {
        Timer::at(self.start + Duration::from_millis(millis)).await;
    }

    async fn delay_ms(&mut self, millis: u64) {
        Timer::after_millis(millis).await;
    }
}

/// HSE from the module's 32 MHz TCXO (powered through PB0-VDDTCXO), PLL to 48 MHz for the
/// core and (Q) for the RNG; the sub-GHz SPI runs at PCLK3 / 2.
fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::*;
    use embassy_stm32::time::Hertz;
    let mut config = embassy_stm32::Config::default();
    config.rcc.hse = Some(Hse {
        freq: Hertz(32_000_000),
        mode: HseMode::Bypass,
        prescaler: HsePrescaler::DIV1,
    });
    config.rcc.pll = Some(Pll {
        source: PllSource::HSE,
        prediv: PllPreDiv::DIV2,
        mul: PllMul::MUL6,
        divp: None,
        divq: Some(PllQDiv::DIV2),
        divr: Some(PllRDiv::DIV2),
    });
    config.rcc.sys = Sysclk::PLL1_R;
    config
}

#[embassy_executor::main]
async fn main(_spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    info!("FUOTA agent on STM32WL");

    let mut rng = Rng::new(p.RNG, Irqs);
    let flash = RefCell::new(Flash::new_blocking(p.FLASH));
    let running = running_version(&flash);

    // The agent: its state comes back from the journal (groups, a fragment session, an update
    // in progress), and it looks at what the bootloader did after a swap.
    let Ok(patch_key) = VerifyingKey::from_sec1_bytes(&PATCH_KEY_SEC1) else {
        defmt::panic!("PATCH_KEY_SEC1 is not a P-256 public key");
    };
    let gen_app_key = Key128::from_bytes(GEN_APP_KEY);
    let config = AgentConfig {
        version: Version::V2,
        mc_ke_key: keys::mc_ke_key(&keys::mc_root_key_lorawan_1_0(&gen_app_key)),
        data_block_int_key: keys::data_block_int_key(&gen_app_key),
        limits: RadioLimits::EU868,
        patch_key,
        layout: LAYOUT,
        boot_max_align: BOOT_MAX_ALIGN,
        permanent: false, // test swap: MCUboot reverts unless the new image confirms itself
        max_lost: MAX_LOST,
        seed: rng.next_u64() ^ u64::from_le_bytes(DEV_EUI),
        // TS006 DevVersionAns: the board revision.
        hw_version: 1,
    };
    let mut workspace = [0u8; WORKSPACE];
    let agent = Agent::with_hooks(&flash, config, &mut workspace, now_ms(), HealthCheck);
    let mut agent: FuotaAgent<'_> = match agent {
        Ok(agent) => agent,
        Err(_) => defmt::panic!("agent: journal unreadable or layout not whole pages"),
    };

    // The radio: SUBGHZSPI with DMA, the STM32WL variant of the SX126x (TCXO on DIO3, DC-DC).
    let spi = SubGhzSpi::new(Spi::new_subghz(p.SUBGHZSPI, p.DMA1_CH1, p.DMA1_CH2, Irqs));
    let iv = Stm32wlInterface::new(
        Output::new(p.PA4, Level::Low, Speed::High),
        Output::new(p.PA5, Level::Low, Speed::High),
        Irqs,
    );
    let chip = Sx126x::new(
        spi,
        iv,
        sx126x::Config {
            chip: Stm32wl {
                use_high_power_pa: true,
            },
            tcxo_ctrl: Some(TcxoCtrlVoltage::Ctrl1V7),
            use_dcdc: true,
            rx_boost: true,
        },
    );
    let lora = match LoRa::new(chip, true, Delay).await {
        Ok(lora) => lora,
        Err(e) => defmt::panic!("radio init: {}", e),
    };
    let radio: Radio = lora.into();
    let mut device: LoraDevice = Device::new_with_seed(
        region::Configuration::new(region::Region::EU868),
        radio,
        EmbassyTimer {
            start: Instant::now(),
        },
        rng.next_u64(),
    );

    let mut groups = McGroups::new();
    let mut rx_buf = [0u8; 256];
    // The channel the radio is set to for multicast reception (any uplink reconfigures it).
    let mut listening: Option<RfConfig> = None;
    let mut joined = false;
    let mut next_app_uplink = Instant::now();
    let mut reboot_pending = false;
    let mut up = [0u8; 64];

    loop {
        if !joined {
            join(&mut device).await;
            joined = true;
            listening = None;
        }

        let now = now_ms();
        if agent.poll_timeout(now) <= now {
            agent.handle_timeout(now);
        }
        on_events(&mut agent, &mut groups, &mut reboot_pending);

        // The agent's answers first, then the product's own uplink when due.
        let mut sent_ok = false;
        while let Some((port, n)) = agent.poll_uplink(now_ms(), &mut up) {
            match send(&mut device, &mut agent, port, &up[..n]).await {
                Sent::Ok => sent_ok = true,
                Sent::Failed => {}
                Sent::Rejoin => joined = false,
            }
            listening = None;
        }
        if joined && Instant::now() >= next_app_uplink {
            next_app_uplink = Instant::now() + APP_PERIOD;
            match send(&mut device, &mut agent, APP_PORT, &running).await {
                Sent::Ok => sent_ok = true,
                Sent::Failed => {}
                Sent::Rejoin => joined = false,
            }
            listening = None;
        }
        if sent_ok {
            // The health check the agent's self-test (HealthCheck) asks for.
            UPLINK_SENT.store(true, Ordering::Relaxed);
        }
        // Answers to what came in the receive windows and events they raised go out first.
        on_events(&mut agent, &mut groups, &mut reboot_pending);
        if reboot_pending {
            // The swap request is journaled and the answers above went out.
            info!("rebooting into the new image");
            Timer::after_millis(100).await; // let the log drain
            cortex_m::peripheral::SCB::sys_reset();
        }
        if !joined {
            continue;
        }

        // Sleep until the agent, or the product, wants the next thing; meanwhile listen to a
        // running class C session.
        let now = now_ms();
        // Clamped before the conversion: a far-off timeout would overflow the tick count.
        let wake = agent
            .poll_timeout(now)
            .clamp(now, now + MAX_SLEEP.as_millis());
        let wake = Instant::from_millis(wake).min(next_app_uplink);
        let Some(channel) = groups.listen_channel() else {
            Timer::at(wake).await;
            continue;
        };
        let heard = select(
            listen(device.get_mut_radio(), channel, &mut listening, &mut rx_buf),
            Timer::at(wake),
        )
        .await;
        match heard {
            Either::First(Ok(n)) => {
                let accepted = rx_buf.get_mut(..n).and_then(|f| groups.accept(f));
                if let Some(frame) = accepted {
                    let payload = rx_buf.get(frame.payload).unwrap_or(&[]);
                    let via = Via::Multicast(frame.group);
                    agent.handle_downlink(now_ms(), via, frame.port, payload);
                }
            }
            Either::First(Err(e)) => {
                warn!("class C receive: {}", e);
                listening = None;
                Timer::after_millis(100).await;
            }
            Either::Second(()) => {}
        }
    }
}

/// Joins by OTAA, retrying with a growing pause (capped at ten minutes).
async fn join(device: &mut LoraDevice) {
    let mode = JoinMode::OTAA {
        deveui: DevEui::from(DEV_EUI),
        appeui: AppEui::from(JOIN_EUI),
        appkey: AppKey::from(APP_KEY),
    };
    let mut pause = Duration::from_secs(10);
    loop {
        match device.join(&mode).await {
            Ok(JoinResponse::JoinSuccess) => {
                info!("joined");
                return;
            }
            Ok(JoinResponse::NoJoinAccept) => warn!("no join accept"),
            Err(e) => warn!("join: {}", e),
        }
        Timer::after(pause).await;
        pause = (pause * 2).min(Duration::from_secs(600));
    }
}

enum Sent {
    Ok,
    Failed,
    Rejoin,
}

/// Sends one unconfirmed uplink and hands what came in its receive windows to the agent
/// (`Via::Unicast`: these are the device's own downlinks).
async fn send(
    device: &mut LoraDevice,
    agent: &mut FuotaAgent<'_>,
    port: u8,
    payload: &[u8],
) -> Sent {
    let sent = match device.send(payload, port, false).await {
        Ok(SendResponse::SessionExpired) => {
            warn!("session expired: rejoining");
            Sent::Rejoin
        }
        Ok(_) => Sent::Ok,
        Err(e) => {
            warn!("uplink on port {}: {}", port, e);
            Sent::Failed
        }
    };
    while let Some(downlink) = device.take_downlink() {
        if downlink.fport == APP_PORT {
            // The product's own downlinks would be handled here.
            continue;
        }
        agent.handle_downlink(now_ms(), Via::Unicast, downlink.fport, &downlink.data);
    }
    sent
}

/// Puts the radio on `channel` in continuous receive (once per channel change) and waits for
/// a frame. Dropping the future leaves the radio receiving; the next call picks up from there.
async fn listen(
    radio: &mut Radio,
    channel: RfConfig,
    listening: &mut Option<RfConfig>,
    buf: &mut [u8],
) -> Result<usize, lora_phy::lorawan_radio::Error> {
    if *listening != Some(channel) {
        let config = RxConfig {
            rf: channel,
            mode: RxMode::Continuous,
        };
        radio.setup_rx(config).await?;
        *listening = Some(channel);
    }
    let (n, _quality) = radio.rx_continuous(buf).await?;
    Ok(n)
}

/// Acts on what the agent reports.
fn on_events(agent: &mut FuotaAgent<'_>, groups: &mut McGroups, reboot_pending: &mut bool) {
    while let Some(event) = agent.poll_event() {
        match event {
            // Multicast: lorawan-device 0.12 has no multicast, so the groups live in this
            // firmware (multicast.rs). With a stack that has them, install the group there.
            Event::Multicast(McEvent::GroupKeys { id }) => {
                if let Some(group) = agent.multicast_group(id) {
                    info!("multicast group {}: McAddr {:08x}", id, group.addr);
                    groups.set_group(id, group);
                }
            }
            Event::Multicast(McEvent::GroupDeleted { id }) => {
                info!("multicast group {} deleted", id);
                groups.delete_group(id);
            }
            Event::Multicast(McEvent::ClassCStart { id, freq_hz, dr }) => {
                if groups.start_class_c(id, freq_hz, dr) {
                    info!("class C for group {}: {} Hz DR{}", id, freq_hz, dr);
                } else {
                    warn!("class C for group {}: DR{} not receivable", id, dr);
                }
            }
            Event::Multicast(McEvent::ClassCEnd { id }) => {
                info!("class C for group {} ended", id);
                groups.end_class_c(id);
            }
            Event::BlockComplete { len } => info!("data block complete: {} bytes", len),
            Event::RebootWanted { version } => {
                info!(
                    "image {}.{}.{}+{} ready in the secondary slot",
                    version.major, version.minor, version.revision, version.build
                );
                *reboot_pending = true;
            }
            Event::Booted { version } => info!(
                "running new image {}.{}.{}+{}: confirmed after join and an uplink",
                version.major, version.minor, version.revision, version.build
            ),
            Event::Confirmed { version } => info!(
                "new image {}.{}.{}+{} confirmed",
                version.major, version.minor, version.revision, version.build
            ),
            Event::RevertWanted { version } => {
                warn!(
                    "image {}.{}.{}+{} failed: rebooting back to the old one",
                    version.major, version.minor, version.revision, version.build
                );
                *reboot_pending = true;
            }
            Event::InstallDeferred(_) => info!("install put off by the firmware"),
            Event::Reverted { version } => warn!(
                "bootloader went back: {}.{}.{}+{} did not stay",
                version.major, version.minor, version.revision, version.build
            ),
            Event::UpdateFailed(why) => error!("update failed: {}", failure_name(why)),
        }
    }
}

fn failure_name(why: UpdateFailure) -> &'static str {
    match why {
        UpdateFailure::BlockMic => "data block MIC",
        UpdateFailure::BadSignature => "patch signature",
        UpdateFailure::Rollback => "rollback refused",
        UpdateFailure::BadPatch => "patch does not fit the running image",
        UpdateFailure::BadImage => "rebuilt image failed MCUboot's checks",
        UpdateFailure::Flash => "flash",
        UpdateFailure::Unconfirmed => "the running image is not confirmed yet",
    }
}

/// The running image's version from its MCUboot header (major, minor, revision LE), or zeros
/// when the image was flashed without one (a debug session).
fn running_version(flash: &RefCell<FlashDriver>) -> [u8; 4] {
    let mut header = [0u8; HEADER_LEN];
    let read = flash
        .borrow_mut()
        .read(LAYOUT.primary.offset, &mut header)
        .is_ok();
    match ImageHeader::parse(&header).filter(|_| read) {
        Some(h) => {
            let rev = h.version.revision.to_le_bytes();
            [h.version.major, h.version.minor, rev[0], rev[1]]
        }
        None => [0; 4],
    }
}
