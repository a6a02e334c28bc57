//! The STM32WL's sub-GHz radio for lora-phy: an SPI device on SUBGHZSPI whose chip select is
//! a PWR register bit, and an interface variant for the radio's reset (RCC), BUSY line (PWR)
//! and interrupt (the SUBGHZ_RADIO vector). Neither lora-phy 3 nor embassy-stm32 0.6 ships
//! these for the STM32WL, so the firmware brings its own.

use core::sync::atomic::{compiler_fence, Ordering};

use embassy_stm32::gpio::Output;
use embassy_stm32::interrupt;
use embassy_stm32::interrupt::typelevel::Interrupt as _;
use embassy_stm32::mode::Async;
use embassy_stm32::pac;
use embassy_stm32::spi::{self, mode::Master, Spi};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant};
use embedded_hal_async::delay::DelayNs;
use embedded_hal_async::spi::{ErrorType, Operation, SpiBus, SpiDevice};
use lora_phy::mod_params::RadioError;
use lora_phy::mod_traits::InterfaceVariant;

/// The radio raised its interrupt line (the handler masks it until the next wait).
static RADIO_IRQ: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// BUSY normally drops within microseconds (a few ms after a wake from sleep); longer means
/// the radio is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// SUBGHZ_RADIO handler: the line stays asserted until the driver clears the radio's IRQ
/// flags over SPI, so mask it here and let the waiting task unmask it.
pub struct RadioIrqHandler;

impl interrupt::typelevel::Handler<interrupt::typelevel::SUBGHZ_RADIO> for RadioIrqHandler {
    unsafe fn on_interrupt() {
        interrupt::typelevel::SUBGHZ_RADIO::disable();
        RADIO_IRQ.signal(());
    }
}

/// NSS of the sub-GHz SPI (PWR_SUBGHZSPICR.NSS; low selects the radio).
fn select(selected: bool) {
    pac::PWR.subghzspicr().modify(|w| w.set_nss(!selected));
}

/// Deselects the radio when a transaction ends, also when its future is dropped mid-way
/// (the main loop cancels a listening receive when a timer fires first).
struct Deselect;

impl Drop for Deselect {
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        select(false);
    }
}

/// The radio as an `embedded-hal-async` SPI device (what lora-phy's Sx126x takes).
pub struct SubGhzSpi {
    bus: Spi<'static, Async, Master>,
}

impl SubGhzSpi {
    pub fn new(bus: Spi<'static, Async, Master>) -> Self {
        select(false);
        Self { bus }
    }
}

impl ErrorType for SubGhzSpi {
    type Error = spi::Error;
}

impl SpiDevice for SubGhzSpi {
    async fn transaction(
        &mut self,
        operations: &mut [Operation<'_, u8>],
    ) -> Result<(), spi::Error> {
        select(true);
        let _deselect = Deselect;
        for op in operations {
            match op {
                Operation::Read(buf) => self.bus.read(buf).await?,
                Operation::Write(buf) => self.bus.write(buf).await?,
                Operation::Transfer(read, write) => self.bus.transfer(read, write).await?,
                Operation::TransferInPlace(buf) => self.bus.transfer_in_place(buf).await?,
                Operation::DelayNs(ns) => embassy_time::Timer::after_nanos(u64::from(*ns)).await,
            }
        }
        SpiBus::<u8>::flush(&mut self.bus).await
    }
}

/// Reset, BUSY and IRQ of the internal radio, and the board's RF switch.
///
/// The RF switch is board wiring: this one is the Seeed Wio-E5 (STM32WLE5JC) module's, two
/// GPIOs (PA4 high = receive path, PA5 high = transmit through the high-power PA). Other boards
/// (Nucleo-WL55JC: PC3/PC4/PC5) need their own pins and truth table here.
pub struct Stm32wlInterface {
    rf_rx: Output<'static>,
    rf_tx: Output<'static>,
}

impl Stm32wlInterface {
    /// Binds the radio interrupt (`SUBGHZ_RADIO => RadioIrqHandler` in `bind_interrupts!`).
    pub fn new(
        rf_rx: Output<'static>,
        rf_tx: Output<'static>,
        _irq: impl interrupt::typelevel::Binding<interrupt::typelevel::SUBGHZ_RADIO, RadioIrqHandler>,
    ) -> Self {
        interrupt::typelevel::SUBGHZ_RADIO::disable();
        interrupt::typelevel::SUBGHZ_RADIO::unpend();
        Self { rf_rx, rf_tx }
    }
}

/// RFBUSYS is the radio's BUSY; RFBUSYMS masks it while NSS is low (reference manual RM0461,
/// PWR_SR2): the radio is busy only when both are set.
fn radio_busy() -> bool {
    let sr2 = pac::PWR.sr2().read();
    sr2.rfbusys() && sr2.rfbusyms()
}

impl InterfaceVariant for Stm32wlInterface {
    async fn reset(&mut self, delay: &mut impl DelayNs) -> Result<(), RadioError> {
        // RCC_CSR.RFRST holds the radio in reset.
        pac::RCC.csr().modify(|w| w.set_rfrst(true));
        delay.delay_ms(1).await;
        pac::RCC.csr().modify(|w| w.set_rfrst(false));
        delay.delay_ms(1).await;
        self.wait_on_busy().await
    }

    async fn wait_on_busy(&mut self) -> Result<(), RadioError> {
        let start = Instant::now();
        while radio_busy() {
            if start.elapsed() > BUSY_TIMEOUT {
                return Err(RadioError::Busy);
            }
            embassy_futures::yield_now().await;
        }
        Ok(())
    }

    async fn await_irq(&mut self) -> Result<(), RadioError> {
        // A signal left over from a cancelled wait must not end this one: the flags it stood
        // for were handled; if they are still set, unmasking fires the handler again at once.
        RADIO_IRQ.reset();
        // SAFETY: the handler only masks the line and signals; enabling it has no other effect.
        unsafe { interrupt::typelevel::SUBGHZ_RADIO::enable() };
        RADIO_IRQ.wait().await;
        Ok(())
    }

    async fn enable_rf_switch_rx(&mut self) -> Result<(), RadioError> {
        self.rf_tx.set_low();
        self.rf_rx.set_high();
        Ok(())
    }

    async fn enable_rf_switch_tx(&mut self) -> Result<(), RadioError> {
        self.rf_rx.set_low();
        self.rf_tx.set_high();
        Ok(())
    }

    async fn disable_rf_switch(&mut self) -> Result<(), RadioError> {
        self.rf_rx.set_low();
        self.rf_tx.set_low();
        Ok(())
    }
}
