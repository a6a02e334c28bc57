//! A device on simulated flash, as the agent tests drive it: the layout, the agent's keys and
//! configuration, the server's fragments of an update, and helpers to drain what the agent
//! says.

use fuota_codec::fragmentation::FragSessionSetupReq;
use fuota_codec::keys::{
    data_block_int_key, data_block_mic, mc_ke_key, mc_root_key_lorawan_1_1, Key128,
};
use fuota_codec::patch::SignatureCheck;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentConfig, Event, Layout};
use fuota_device_agent::frag_session::FragAreas;
use fuota_device_agent::hooks::UpdateHooks;
use fuota_device_agent::multicast::RadioLimits;
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;
use fuota_server::fragmentation::{encode_block, Code};

use crate::SimbaUpdate;

pub const SECTOR: usize = 1024;
pub type Flash = SimFlash<8, SECTOR>;
/// Sectors of [`Flash`] that [`LAYOUT`] spans.
pub const SECTORS: usize = 96;
const KB: u32 = 1024;
pub const LAYOUT: Layout = Layout {
    primary: Region {
        offset: 0,
        len: 32 * KB,
    },
    secondary: Region {
        offset: 32 * KB,
        len: 32 * KB,
    },
    fragments: [FragAreas {
        log: Region {
            offset: 64 * KB,
            len: 16 * KB,
        },
        block: Region {
            offset: 80 * KB,
            len: 8 * KB,
        },
        spare: Region {
            offset: 88 * KB,
            len: 4 * KB,
        },
    }],
    journal: Region {
        offset: 92 * KB,
        len: 4 * KB,
    },
};
/// The device's LoRaWAN 1.1 root key, from which McKEKey and DataBlockIntKey derive.
pub const APP_KEY: [u8; 16] = [0x2b; 16];

pub type TestAgent<'a> = Agent<'a, Flash, 64>;

/// The agent's configuration for the update `s` (TS00x v2).
pub fn config(s: &SimbaUpdate) -> AgentConfig {
    config_with(s, LAYOUT)
}

/// [`config`] over another layout (another number of fragmentation sessions).
pub fn config_with<const S: usize>(s: &SimbaUpdate, layout: Layout<S>) -> AgentConfig<S> {
    let root = mc_root_key_lorawan_1_1(&Key128::from_bytes(APP_KEY));
    AgentConfig {
        version: Version::V2,
        mc_ke_key: mc_ke_key(&root),
        data_block_int_key: data_block_int_key(&Key128::from_bytes(APP_KEY)),
        limits: RadioLimits::EU868,
        patch_key: s.device_key(),
        layout,
        boot_max_align: 8,
        permanent: false,
        max_lost: 64,
        seed: 7,
        hw_version: 0x0201,
    }
}

/// The uplinks (port, bytes) and events the agent has for the driver now.
pub fn drain<const S: usize, K: SignatureCheck, H: UpdateHooks>(
    agent: &mut Agent<'_, Flash, 64, S, K, H>,
    now: u64,
) -> (Vec<(u8, Vec<u8>)>, Vec<Event>) {
    let mut ups = Vec::new();
    let mut buf = [0u8; 64];
    while let Some((port, n)) = agent.poll_uplink(now, &mut buf) {
        ups.push((port, buf[..n].to_vec()));
    }
    let mut evs = Vec::new();
    while let Some(e) = agent.poll_event() {
        evs.push(e);
    }
    (ups, evs)
}

/// The bytes a `build_into` builder writes.
pub fn build<T: std::fmt::Debug>(f: impl FnOnce(&mut [u8]) -> Result<&[u8], T>) -> Vec<u8> {
    let mut buf = [0u8; 64];
    f(&mut buf).expect("fits 64 bytes").to_vec()
}

/// The patch of `s` as the server sends it on FragIndex 0 (40 coded fragments).
pub fn fragment_patch(
    s: &SimbaUpdate,
    frag_size: usize,
    session_cnt: u16,
) -> (FragSessionSetupReq, Vec<Vec<u8>>) {
    fragment_block(&s.patch, frag_size, 40, session_cnt)
}

/// `block` as the server sends it on FragIndex 0: the setup (v2 MIC with `session_cnt`,
/// multicast group 0, AckReception) and every DataFragment frame (the M uncoded ones, then
/// `coded` more).
pub fn fragment_block(
    block: &[u8],
    frag_size: usize,
    coded: usize,
    session_cnt: u16,
) -> (FragSessionSetupReq, Vec<Vec<u8>>) {
    let (layout, frames) =
        encode_block(block, frag_size, coded, Code::Ts004(Version::V2), 0).expect("the block fits");
    let descriptor = [0xf0, 0, 0, 1];
    let key = data_block_int_key(&Key128::from_bytes(APP_KEY));
    let mic = data_block_mic(&key, session_cnt, 0, descriptor, block).expect("block MIC");
    let setup = FragSessionSetupReq {
        frag_index: 0,
        mc_group_bit_mask: 0b0001,
        nb_frag: layout.nb_frag as u16,
        frag_size: frag_size as u8,
        frag_algo: 0,
        block_ack_delay: 0,
        ack_reception: true,
        padding: layout.padding as u8,
        descriptor,
        session_cnt,
        mic,
    };
    (setup, frames)
}
