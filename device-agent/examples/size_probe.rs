//! Links the whole agent for a Cortex-M4F (STM32WL-class) and drives every entry point, so
//! that the linker keeps everything a real firmware would: the size report in the README.
//!
//! `cargo build --release -p fuota-device-agent --example size-probe --target thumbv7em-none-eabihf`
//! then `size -A` on `target/thumbv7em-none-eabihf/release/examples/size-probe`.
//!
//! Inputs come through `core::hint::black_box`, so nothing is constant-folded away. The flash
//! driver is a stand-in (reads copy from the mapped flash, writes and erases go nowhere): its own code is not what
//! is measured. Built with `RUSTFLAGS="--cfg fuota_probe_pka"`, patch signatures go to a
//! stand-in for a hardware accelerator (the STM32WL's PKA) instead of the software P-256
//! verifier, which shows what the software verifier costs. The decoder workspace (M = 1024, 64 lost, 242-byte fragments) and the agent
//! live in `.bss`, as they would in a product.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![allow(unsafe_code)]

#[cfg(not(target_os = "none"))]
fn main() {
    // The probe only means something on the target; on the host it builds as a stub.
}

#[cfg(target_os = "none")]
mod probe {
    use core::cell::RefCell;
    use core::hint::black_box;
    use core::mem::MaybeUninit;

    use cortex_m_rt::entry;
    use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
    use fuota_device_agent::agent::{Agent, AgentConfig, Layout};
    use fuota_device_agent::codec::fec::decoder::DecoderState;
    use fuota_device_agent::codec::keys::Key128;
    #[cfg(not(fuota_probe_pka))]
    use fuota_device_agent::codec::patch::VerifyingKey;
    use fuota_device_agent::codec::Version;
    use fuota_device_agent::frag_session::{FragAreas, Via};
    use fuota_device_agent::multicast::RadioLimits;
    use fuota_device_agent::slot::Region;
    use panic_halt as _;

    /// Stand-in for the MCU's flash driver.
    struct Flash;

    /// Where an STM32's flash is mapped.
    const FLASH_BASE: usize = 0x0800_0000;

    impl ErrorType for Flash {
        type Error = NorFlashErrorKind;
    }

    impl ReadNorFlash for Flash {
        const READ_SIZE: usize = 1;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            // As the STM32 drivers do: a copy out of the memory-mapped flash.
            let at = black_box(FLASH_BASE + offset as usize) as *const u8;
            // SAFETY: the probe is linked, never run; on a device this is the mapped flash.
            bytes.copy_from_slice(unsafe { core::slice::from_raw_parts(at, bytes.len()) });
            black_box(bytes);
            Ok(())
        }
        fn capacity(&self) -> usize {
            256 * 1024
        }
    }

    impl NorFlash for Flash {
        const WRITE_SIZE: usize = 8;
        const ERASE_SIZE: usize = 2048;
        fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            black_box((from, to));
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            black_box((offset, bytes));
            Ok(())
        }
    }

    const WORKSPACE: usize = DecoderState::workspace_len(1024, 64, 242);
    const KB: u32 = 1024;
    const LAYOUT: Layout = Layout {
        primary: Region {
            offset: 0,
            len: 96 * KB,
        },
        secondary: Region {
            offset: 96 * KB,
            len: 96 * KB,
        },
        fragments: [FragAreas {
            log: Region {
                offset: 192 * KB,
                len: 32 * KB,
            },
            block: Region {
                offset: 224 * KB,
                len: 16 * KB,
            },
            spare: Region {
                offset: 240 * KB,
                len: 8 * KB,
            },
        }],
        journal: Region {
            offset: 248 * KB,
            len: 8 * KB,
        },
    };

    static mut WS: [u8; WORKSPACE] = [0; WORKSPACE];
    static mut FLASH: MaybeUninit<RefCell<Flash>> = MaybeUninit::uninit();
    /// Stand-in for a driver of the MCU's public-key accelerator.
    #[cfg(fuota_probe_pka)]
    #[derive(Debug)]
    struct Pka;

    #[cfg(fuota_probe_pka)]
    impl fuota_device_agent::codec::patch::SignatureCheck for Pka {
        fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
            black_box((digest, signature));
            black_box(true)
        }
    }

    #[cfg(fuota_probe_pka)]
    type Check = Pka;
    #[cfg(not(fuota_probe_pka))]
    type Check = VerifyingKey;

    #[cfg(fuota_probe_pka)]
    fn patch_key() -> Check {
        Pka
    }

    #[cfg(not(fuota_probe_pka))]
    fn patch_key() -> Check {
        let key_bytes: [u8; 65] = black_box([4; 65]);
        let Ok(key) = VerifyingKey::from_sec1_bytes(&key_bytes) else {
            panic!("patch key");
        };
        key
    }

    static mut AGENT: MaybeUninit<Agent<'static, Flash, 64, 1, Check>> = MaybeUninit::uninit();

    #[entry]
    fn main() -> ! {
        // SAFETY: `main` runs once; these statics are touched nowhere else.
        let (ws, flash, slot) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(WS),
                (*core::ptr::addr_of_mut!(FLASH)).write(RefCell::new(Flash)),
                &mut *core::ptr::addr_of_mut!(AGENT),
            )
        };
        let patch_key = patch_key();
        let config = AgentConfig {
            version: if black_box(true) {
                Version::V2
            } else {
                Version::V1
            },
            mc_ke_key: Key128::from_bytes(black_box([1; 16])),
            data_block_int_key: Key128::from_bytes(black_box([2; 16])),
            limits: RadioLimits::EU868,
            patch_key,
            layout: LAYOUT,
            boot_max_align: black_box(8),
            permanent: black_box(false),
            max_lost: 64,
            seed: black_box(1),
            hw_version: black_box(1),
        };
        let Ok(agent) = Agent::new(flash, config, ws, 0) else {
            panic!("agent");
        };
        let agent = slot.write(agent);
        let mut now = 0u64;
        let mut frame = [0u8; 242];
        let mut up = [0u8; 64];
        loop {
            let port: u8 = black_box(201);
            let via = if black_box(now) & 1 == 0 {
                Via::Unicast
            } else {
                Via::Multicast(black_box(0))
            };
            let len = black_box(frame.len());
            black_box(&mut frame);
            agent.handle_downlink(now, via, port, &frame[..len]);
            if agent.poll_timeout(now) <= now {
                agent.handle_timeout(now);
            }
            while let Some((p, n)) = agent.poll_uplink(now, &mut up) {
                black_box((p, &up[..n]));
            }
            while let Some(e) = agent.poll_event() {
                black_box(&e);
            }
            if black_box(false) {
                let _ = agent.confirm();
            }
            now += black_box(1000);
        }
    }
}
