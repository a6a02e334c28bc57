//! The device agent fed arbitrary downlinks: any port, unicast or any multicast group, any
//! bytes, in any order, with timeouts between. Never a panic (a RefCell double borrow
//! included); the primary slot is never written.
#![no_main]

use std::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_device_agent::agent::{Agent, AgentConfig, Layout};
use fuota_device_agent::codec::keys::Key128;
use fuota_device_agent::codec::patch::VerifyingKey;
use fuota_device_agent::codec::Version;
use fuota_device_agent::frag_session::{FragAreas, Via};
use fuota_device_agent::multicast::RadioLimits;
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;
use libfuzzer_sys::fuzz_target;

const KB: u32 = 1024;
const LAYOUT: Layout<2> = Layout {
    primary: Region { offset: 0, len: 8 * KB },
    secondary: Region { offset: 8 * KB, len: 8 * KB },
    // Two fragmentation sessions side by side.
    fragments: [
        FragAreas {
            log: Region { offset: 16 * KB, len: 8 * KB },
            block: Region { offset: 24 * KB, len: 4 * KB },
            spare: Region { offset: 28 * KB, len: 2 * KB },
        },
        FragAreas {
            log: Region { offset: 32 * KB, len: 8 * KB },
            block: Region { offset: 40 * KB, len: 4 * KB },
            spare: Region { offset: 44 * KB, len: 2 * KB },
        },
    ],
    journal: Region { offset: 30 * KB, len: 2 * KB },
};

fuzz_target!(|input: &[u8]| {
    let mut flash = SimFlash::<8, 1024>::new(46);
    let primary: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 253) as u8).collect();
    if flash.write(0, &primary).is_err() {
        return;
    }
    let flash = RefCell::new(flash);
    let key = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("fixed scalar");
    let patch_key =
        VerifyingKey::from_sec1_bytes(key.verifying_key().to_encoded_point(false).as_bytes())
            .expect("the p256 crate's key is a valid point");
    let config = AgentConfig {
        version: if input.first().is_some_and(|b| b & 1 == 1) { Version::V1 } else { Version::V2 },
        mc_ke_key: Key128::from_bytes([1; 16]),
        data_block_int_key: Key128::from_bytes([2; 16]),
        limits: RadioLimits::EU868,
        patch_key,
        layout: LAYOUT,
        boot_max_align: 8,
        permanent: false,
        max_lost: 16,
        seed: 1,
        hw_version: 1,
    };
    let mut ws = vec![0u8; 4096];
    let mut agent = Agent::<_, 16, 2>::new(&flash, config, &mut ws, 0).expect("a valid layout");
    let mut now = 0u64;
    let mut rest = input.get(1..).unwrap_or(&[]);
    let mut buf = [0u8; 64];
    while let [port, via, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        let via = match via % 5 {
            4 => Via::Unicast,
            g => Via::Multicast(g),
        };
        let port = match port % 5 {
            0 => 200,
            1 => 201,
            2 => 202,
            3 => 203,
            _ => *port,
        };
        agent.handle_downlink(now, via, port, payload);
        now += u64::from(*len) * 997;
        if now >= agent.poll_timeout(now) {
            agent.handle_timeout(now);
        }
        while agent.poll_uplink(now, &mut buf).is_some() {}
        while agent.poll_event().is_some() {}
    }
    assert!(flash.borrow().as_bytes()[..4096] == primary[..], "primary slot written");
});
