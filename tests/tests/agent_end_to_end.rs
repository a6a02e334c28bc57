//! The whole device path through the agent's public face: the server's TS003/TS005/TS004
//! commands built with the codec, a patch from `fuota_server::patch::create` between two
//! MCUboot images (simba-programmer pair), fragments from the server's encoder with 10 %
//! random loss on the multicast group, then the install, a reboot after a simulated swap
//! (Booted, confirm) or without one (Reverted). A reboot in the middle of reception loses
//! nothing.

use std::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::clock_sync::{self, AppTimeAns};
use fuota_codec::fragmentation;
use fuota_codec::keys::{encrypt_mc_key, mc_ke_key, mc_root_key_lorawan_1_1, Key128};
use fuota_codec::multicast_setup::{self, DlFrequ, McClassCSessionReq, McGroupSetupReq};
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentConfig, Event, Layout};
use fuota_device_agent::frag_session::{FragAreas, Via};
use fuota_device_agent::mcuboot::{self, Trailer};
use fuota_device_agent::multicast::{McEvent, RadioLimits};
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;
use fuota_tests::{padded, simba_update, ts004_session, SimbaUpdate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SECTOR: usize = 1024;
type Flash = SimFlash<8, SECTOR>;
const KB: u32 = 1024;
const LAYOUT: Layout = Layout {
    primary: Region {
        offset: 0,
        len: 32 * KB,
    },
    secondary: Region {
        offset: 32 * KB,
        len: 32 * KB,
    },
    fragments: FragAreas {
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
    },
    journal: Region {
        offset: 92 * KB,
        len: 4 * KB,
    },
};
const APP_KEY: [u8; 16] = [0x2b; 16];

fn config(s: &SimbaUpdate) -> AgentConfig {
    let root = mc_root_key_lorawan_1_1(&Key128::from_bytes(APP_KEY));
    AgentConfig {
        version: Version::V2,
        mc_ke_key: mc_ke_key(&root),
        data_block_int_key: fuota_codec::keys::data_block_int_key(&Key128::from_bytes(APP_KEY)),
        limits: RadioLimits::EU868,
        patch_key: *s.key.verifying_key(),
        layout: LAYOUT,
        boot_max_align: 8,
        permanent: false,
        max_lost: 64,
        seed: 7,
    }
}

fn drain(agent: &mut Agent<'_, Flash, 64>, now: u64) -> (Vec<(u8, Vec<u8>)>, Vec<Event>) {
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

fn build<T>(f: impl FnOnce(&mut [u8]) -> Result<&[u8], T>) -> Vec<u8>
where
    T: std::fmt::Debug,
{
    let mut buf = [0u8; 64];
    f(&mut buf).unwrap().to_vec()
}

#[test]
fn fragments_in_new_image_out_then_booted_or_reverted() {
    let s = simba_update(21);
    let mut flash = Flash::new(96);
    flash.write(0, &padded(&s.old)).unwrap();
    let flash = RefCell::new(flash);
    let mut ws = vec![0u8; 8 * 1024];
    let frag_size = 48;
    let gps0: i64 = 1_400_000_000;

    let (setup, frames) = ts004_session(
        &s.patch,
        frag_size,
        40,
        &config(&s).data_block_int_key,
        3,
        [0xf0, 0, 0, 1],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let kept: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|_| rng.gen_range(0..10) != 0)
        .collect();
    let half = kept.len() / 3;

    {
        let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
        // Clock sync: the first AppTimeReq, answered with the GPS offset.
        let (ups, _) = drain(&mut agent, 0);
        assert_eq!(ups[0].0, clock_sync::PORT);
        let ans = clock_sync::Downlink::AppTimeAns(AppTimeAns {
            time_correction: gps0 as i32,
            token_ans: 0,
        });
        agent.handle_downlink(
            1000,
            Via::Unicast,
            clock_sync::PORT,
            &build(|b| ans.build_into(Version::V2, b)),
        );
        // Multicast group 0 and a class C session 60 s ahead.
        let mc_key = Key128::from_bytes([0x33; 16]);
        let setup_mc = multicast_setup::Downlink::McGroupSetupReq(McGroupSetupReq {
            mc_group_id: 0,
            mc_addr: 0x00ab_cdef,
            mc_key_encrypted: encrypt_mc_key(&config(&s).mc_ke_key, &mc_key),
            min_mc_fcount: 0,
            max_mc_fcount: 0xffff,
        });
        agent.handle_downlink(
            2000,
            Via::Unicast,
            multicast_setup::PORT,
            &build(|b| setup_mc.build_into(Version::V2, b)),
        );
        let session_time = (gps0 + 2 + 60) as u32;
        let class_c = multicast_setup::Downlink::McClassCSessionReq(McClassCSessionReq {
            mc_group_id: 0,
            session_time,
            time_out: 12,
            dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
            dr: 0,
        });
        agent.handle_downlink(
            2000,
            Via::Unicast,
            multicast_setup::PORT,
            &build(|b| class_c.build_into(Version::V2, b)),
        );
        let setup_dl = fragmentation::Downlink::FragSessionSetupReq(setup);
        agent.handle_downlink(
            3000,
            Via::Unicast,
            fragmentation::PORT,
            &build(|b| setup_dl.build_into(Version::V2, b)),
        );
        let (ups, evs) = drain(&mut agent, 3000);
        let ports: Vec<u8> = ups.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            ports,
            [
                multicast_setup::PORT,
                multicast_setup::PORT,
                fragmentation::PORT
            ]
        );
        // McClassCSessionAns: no error bits, TimeToStart 59 s.
        assert_eq!(ups[1].1[1], 0);
        assert!(matches!(
            evs[..],
            [Event::Multicast(McEvent::GroupKeys { id: 0, .. })]
        ));
        // The session starts on time.
        let start = agent.poll_timeout(3000);
        assert!((61_000..=63_000).contains(&start), "{start}");
        agent.handle_timeout(start);
        let (_, evs) = drain(&mut agent, start);
        assert_eq!(
            evs,
            [Event::Multicast(McEvent::ClassCStart {
                id: 0,
                freq_hz: 869_525_000,
                dr: 0
            })]
        );
        // A third of the fragments, then the power goes.
        for f in &kept[..half] {
            agent.handle_downlink(start + 1000, Via::Multicast(0), fragmentation::PORT, f);
        }
    }
    // Reboot mid-reception: the journal brings back the group, session and fragments.
    let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
    let mut done = None;
    for f in &kept[half..] {
        agent.handle_downlink(70_000, Via::Multicast(0), fragmentation::PORT, f);
        let (ups, evs) = drain(&mut agent, 70_000);
        if evs.iter().any(|e| matches!(e, Event::BlockComplete { .. })) {
            done = Some(ups);
            break;
        }
    }
    let ups = done.expect("block never completed");
    // FragDataBlockReceivedReq (CID 0x04), no MIC error.
    assert!(ups
        .iter()
        .any(|(p, b)| *p == fragmentation::PORT && b[0] == 0x04 && b[1] & 0x04 == 0));
    // The install runs at the next timeout.
    agent.handle_timeout(71_000);
    let (_, evs) = drain(&mut agent, 71_000);
    let v9 = ImageVersion {
        major: 0,
        minor: 9,
        revision: 0,
        build: 0,
    };
    assert!(
        evs.contains(&Event::RebootWanted { version: v9 }),
        "{evs:?}"
    );
    {
        let f = flash.borrow();
        let sec = LAYOUT.secondary.offset as usize;
        assert!(f.as_bytes()[sec..sec + s.new.len()] == s.new[..]);
        assert!(
            f.as_bytes()[..s.old.len()] == s.old[..],
            "primary untouched"
        );
    }
    let snapshot = flash.borrow().clone();

    // A: the bootloader swapped (simulated: the new image copied into the primary slot).
    {
        let mut f = snapshot.clone();
        f.erase(0, LAYOUT.primary.len).unwrap();
        f.write(0, &padded(&s.new)).unwrap();
        let flash = RefCell::new(f);
        let mut ws = vec![0u8; 8 * 1024];
        let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
        let (_, evs) = drain(&mut agent, 0);
        assert!(evs.contains(&Event::Booted { version: v9 }), "{evs:?}");
        agent.confirm().unwrap();
        let t = Trailer::new(LAYOUT.primary.len, 8).unwrap();
        assert!(
            mcuboot::read_trailer(&mut *flash.borrow_mut(), LAYOUT.primary, t)
                .unwrap()
                .image_ok
        );
    }
    // B: the bootloader went back (old image in primary, secondary trailer consumed).
    {
        let mut f = snapshot.clone();
        let trailer_sector = LAYOUT.secondary.end() - SECTOR as u32;
        f.erase(trailer_sector, LAYOUT.secondary.end()).unwrap();
        let flash = RefCell::new(f);
        let mut ws = vec![0u8; 8 * 1024];
        let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
        let (_, evs) = drain(&mut agent, 0);
        assert!(evs.contains(&Event::Reverted { version: v9 }), "{evs:?}");
    }
}

/// A class C session scheduled but not yet started survives a reboot: it opens on time
/// afterwards.
#[test]
fn a_scheduled_session_survives_a_reboot() {
    let s = simba_update(21);
    let mut flash = Flash::new(96);
    flash.write(0, &padded(&s.old)).unwrap();
    let flash = RefCell::new(flash);
    let gps0: i64 = 1_400_000_000;
    let session_time = (gps0 + 100) as u32;
    {
        let mut ws = vec![0u8; 8 * 1024];
        let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
        drain(&mut agent, 0);
        let ans = clock_sync::Downlink::AppTimeAns(AppTimeAns {
            time_correction: gps0 as i32,
            token_ans: 0,
        });
        agent.handle_downlink(
            0,
            Via::Unicast,
            clock_sync::PORT,
            &build(|b| ans.build_into(Version::V2, b)),
        );
        let setup_mc = multicast_setup::Downlink::McGroupSetupReq(McGroupSetupReq {
            mc_group_id: 2,
            mc_addr: 0x0102_0304,
            mc_key_encrypted: encrypt_mc_key(&config(&s).mc_ke_key, &Key128::from_bytes([9; 16])),
            min_mc_fcount: 0,
            max_mc_fcount: 100,
        });
        agent.handle_downlink(
            0,
            Via::Unicast,
            multicast_setup::PORT,
            &build(|b| setup_mc.build_into(Version::V2, b)),
        );
        let class_c = multicast_setup::Downlink::McClassCSessionReq(McClassCSessionReq {
            mc_group_id: 2,
            session_time,
            time_out: 8,
            dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
            dr: 3,
        });
        agent.handle_downlink(
            1_000,
            Via::Unicast,
            multicast_setup::PORT,
            &build(|b| class_c.build_into(Version::V2, b)),
        );
    }
    // Reboot 10 s later; the clock is synced again, then the session's time comes.
    let mut ws = vec![0u8; 8 * 1024];
    let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
    drain(&mut agent, 0);
    let ans = clock_sync::Downlink::AppTimeAns(AppTimeAns {
        time_correction: (gps0 + 10) as i32,
        token_ans: 0,
    });
    agent.handle_downlink(
        0,
        Via::Unicast,
        clock_sync::PORT,
        &build(|b| ans.build_into(Version::V2, b)),
    );
    let start = agent.poll_timeout(0);
    assert_eq!(start, 90_000);
    agent.handle_timeout(start);
    let (_, evs) = drain(&mut agent, start);
    assert_eq!(
        evs,
        [Event::Multicast(McEvent::ClassCStart {
            id: 2,
            freq_hz: 869_525_000,
            dr: 3
        })]
    );
}
