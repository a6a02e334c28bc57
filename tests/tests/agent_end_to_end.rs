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
use fuota_codec::keys::{data_block_mic, encrypt_mc_key, mc_app_s_key, mc_nwk_s_key, Key128};
use fuota_codec::multicast_setup::{self, DlFrequ, McClassCSessionReq, McGroupSetupReq};
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentError, Event, Layout};
use fuota_device_agent::frag_session::Via;
use fuota_device_agent::mcuboot::{self, Trailer};
use fuota_device_agent::multicast::McEvent;
use fuota_device_agent::slot::Region;
use fuota_tests::rig::{
    build, config, config_with, drain, fragment_block, fragment_patch, Flash, LAYOUT, SECTOR,
    SECTORS,
};
use fuota_tests::{padded, simba_update};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn fragments_in_new_image_out_then_booted_or_reverted() {
    let s = simba_update(21);
    let mut flash = Flash::new(SECTORS);
    flash.write(0, &padded(&s.old)).unwrap();
    let flash = RefCell::new(flash);
    let mut ws = vec![0u8; 8 * 1024];
    let frag_size = 48;
    let gps0: i64 = 1_400_000_000;

    let (setup, frames) = fragment_patch(&s, frag_size, 3);
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
            [Event::Multicast(McEvent::GroupKeys { id: 0 })]
        ));
        let group = agent.multicast_group(0).unwrap();
        assert_eq!(group.addr, 0x00ab_cdef);
        assert_eq!(group.app_s_key, mc_app_s_key(&mc_key, 0x00ab_cdef));
        assert_eq!(group.nwk_s_key, mc_nwk_s_key(&mc_key, 0x00ab_cdef));
        assert_eq!((group.min_fcount, group.max_fcount), (0, 0xffff));
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
    let mut done = false;
    for f in &kept[half..] {
        agent.handle_downlink(70_000, Via::Multicast(0), fragmentation::PORT, f);
        let (_, evs) = drain(&mut agent, 70_000);
        if evs.iter().any(|e| matches!(e, Event::BlockComplete { .. })) {
            done = true;
            break;
        }
    }
    assert!(done, "block never completed");
    // The install runs at the next timeout.
    agent.handle_timeout(71_000);
    let (_, evs) = drain(&mut agent, 71_000);
    // FragDataBlockReceivedReq (CID 0x04), no MIC error, within BlockAckDelay (2^4 s).
    let (ups, _) = drain(&mut agent, 70_000 + 16_000);
    assert!(ups
        .iter()
        .any(|(p, b)| *p == fragmentation::PORT && b[0] == 0x04 && b[1] & 0x04 == 0));
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
    // What the bootloader does to the primary slot, simulated: `image` copied in.
    let into_primary = |f: &mut Flash, image: &[u8]| {
        f.erase(0, LAYOUT.primary.len).unwrap();
        f.write(0, &padded(image)).unwrap();
    };
    // The agent after a reset, and its events.
    let boot = |flash: &RefCell<Flash>| {
        let mut ws = vec![0u8; 8 * 1024];
        let mut agent = Agent::<_, 64>::new(flash, config(&s), &mut ws, 0).unwrap();
        drain(&mut agent, 0).1
    };

    // A: the bootloader swapped (the new image in the primary slot).
    {
        let mut f = snapshot.clone();
        into_primary(&mut f, &s.new);
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
    // C: the new image booted but was never confirmed; at the next reset MCUboot went back.
    {
        let mut f = snapshot.clone();
        into_primary(&mut f, &s.new);
        let flash = RefCell::new(f);
        let evs = boot(&flash);
        assert!(evs.contains(&Event::Booted { version: v9 }), "{evs:?}");
        into_primary(&mut flash.borrow_mut(), &s.old);
        let evs = boot(&flash);
        assert!(evs.contains(&Event::Reverted { version: v9 }), "{evs:?}");
    }
    // B: the bootloader went back (old image in primary, secondary trailer consumed).
    {
        let mut f = snapshot.clone();
        let trailer_sector = LAYOUT.secondary.end() - SECTOR as u32;
        f.erase(trailer_sector, LAYOUT.secondary.end()).unwrap();
        let evs = boot(&RefCell::new(f));
        assert!(evs.contains(&Event::Reverted { version: v9 }), "{evs:?}");
    }
}

/// A class C session scheduled but not yet started survives a reboot: it opens on time
/// afterwards.
#[test]
fn a_scheduled_session_survives_a_reboot() {
    let s = simba_update(21);
    let mut flash = Flash::new(SECTORS);
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

/// A layout the agent cannot work with, a BOOT_MAX_ALIGN MCUboot does not have, or a
/// workspace too small for the applier's window, is refused at start with its reason, before
/// anything is written.
#[test]
fn a_bad_layout_boot_max_align_or_workspace_is_refused() {
    let s = simba_update(21);
    let flash = RefCell::new(Flash::new(SECTORS));
    let mut ws = vec![0u8; 8 * 1024];
    let start = |config, ws: &mut [u8]| {
        Agent::<_, 64>::new(&flash, config, ws, 0)
            .map(|_| ())
            .unwrap_err()
    };
    let mut overlap = config(&s);
    overlap.layout.secondary.offset -= SECTOR as u32;
    assert_eq!(start(overlap, &mut ws), AgentError::Layout);
    let mut unaligned = config(&s);
    unaligned.layout.journal.len -= 8;
    assert_eq!(start(unaligned, &mut ws), AgentError::Layout);
    let mut outside = config(&s);
    outside.layout.journal.offset = (SECTORS * SECTOR) as u32;
    assert_eq!(start(outside, &mut ws), AgentError::Layout);
    for align in [0, 4, 12, 64] {
        let mut bad = config(&s);
        bad.boot_max_align = align;
        assert_eq!(start(bad, &mut ws), AgentError::BootMaxAlign, "{align}");
    }
    // An install borrows the heatshrink window from the complete session's workspace share.
    assert_eq!(
        start(config(&s), &mut ws[..511]),
        AgentError::Workspace {
            share: 511,
            needed: 512
        }
    );
    assert_eq!(flash.borrow().operations(), 0);
}

/// Two fragmentation sessions at once: the patch comes on FragIndex 1 while FragIndex 0 is
/// still open and half received; the complete one is installed. After the swap and the
/// confirmation, reboots bring both sessions back without installing the used block again.
#[test]
fn two_sessions_at_once_and_a_used_block_is_not_installed_again() {
    let s = simba_update(21);
    let mut layout = Layout {
        primary: LAYOUT.primary,
        secondary: LAYOUT.secondary,
        fragments: [LAYOUT.fragments[0]; 2],
        journal: LAYOUT.journal,
    };
    let second = LAYOUT.journal.end();
    layout.fragments[1].log = Region {
        offset: second,
        len: 16 * 1024,
    };
    layout.fragments[1].block = Region {
        offset: second + 16 * 1024,
        len: 8 * 1024,
    };
    layout.fragments[1].spare = Region {
        offset: second + 24 * 1024,
        len: 4 * 1024,
    };
    let sectors = (layout.fragments[1].spare.end() as usize) / SECTOR;
    let mut flash = Flash::new(sectors);
    flash.write(0, &padded(&s.old)).unwrap();
    let flash = RefCell::new(flash);
    // The RAM of three boots.
    let (mut ws1, mut ws2, mut ws3) =
        (vec![0u8; 16 * 1024], vec![0; 16 * 1024], vec![0; 16 * 1024]);
    let boot = |ws| Agent::<_, 64, 2>::new(&flash, config_with(&s, layout), ws, 0).unwrap();

    let (mut patch_setup, patch_frames) = fragment_patch(&s, 48, 3);
    // The frames carry their FragIndex in the first byte after the CID (bits 15:14 of n).
    patch_setup.frag_index = 1;
    patch_setup.mic = data_block_mic(
        &config(&s).data_block_int_key,
        3,
        1,
        patch_setup.descriptor,
        &s.patch,
    )
    .unwrap();
    let patch_frames: Vec<Vec<u8>> = patch_frames
        .into_iter()
        .map(|mut f| {
            f[2] |= 1 << 6;
            f
        })
        .collect();
    let other: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (other_setup, other_frames) = fragment_block(&other, 48, 10, 9);
    {
        let mut agent = boot(&mut ws1);
        for setup in [other_setup, patch_setup] {
            let dl = fragmentation::Downlink::FragSessionSetupReq(setup);
            agent.handle_downlink(
                0,
                Via::Unicast,
                fragmentation::PORT,
                &build(|b| dl.build_into(Version::V2, b)),
            );
        }
        let (ups, _) = drain(&mut agent, 0);
        let setup_answers: Vec<&Vec<u8>> = ups
            .iter()
            .filter(|(p, b)| *p == fragmentation::PORT && b[0] == 0x02)
            .map(|(_, b)| b)
            .collect();
        // Both accepted: FragIndex in bits 7:6, no error bits.
        assert_eq!(setup_answers, [&vec![0x02, 0x00], &vec![0x02, 0x40]]);
        let mut installed = false;
        for (i, f) in patch_frames.iter().enumerate() {
            if let Some(o) = other_frames.get(i).filter(|_| i < 20) {
                agent.handle_downlink(1_000, Via::Multicast(0), fragmentation::PORT, o);
            }
            agent.handle_downlink(1_000, Via::Multicast(0), fragmentation::PORT, f);
            if agent.poll_timeout(1_000) <= 1_000 {
                agent.handle_timeout(1_000);
            }
            let (_, evs) = drain(&mut agent, 1_000);
            if evs.iter().any(|e| matches!(e, Event::RebootWanted { .. })) {
                installed = true;
                break;
            }
        }
        assert!(installed);
    }
    let sec = LAYOUT.secondary.offset as usize;
    assert!(flash.borrow().as_bytes()[sec..sec + s.new.len()] == s.new[..]);
    // The bootloader swaps; the new image confirms itself.
    {
        let mut f = flash.borrow_mut();
        f.erase(0, LAYOUT.primary.len).unwrap();
        f.write(0, &padded(&s.new)).unwrap();
    }
    {
        let mut agent = boot(&mut ws2);
        let (_, evs) = drain(&mut agent, 0);
        assert!(
            evs.iter().any(|e| matches!(e, Event::Booted { .. })),
            "{evs:?}"
        );
        agent.confirm().unwrap();
    }
    // Later boots: both sessions are back, nothing is installed again.
    let before = flash.borrow().as_bytes().to_vec();
    let mut agent = boot(&mut ws3);
    agent.handle_timeout(agent.poll_timeout(0));
    let (_, evs) = drain(&mut agent, 0);
    assert_eq!(evs, []);
    // Status of both sessions: the patch complete, the other still missing fragments.
    for index in [0u8, 1] {
        let req =
            fragmentation::Downlink::FragSessionStatusReq(fragmentation::FragSessionStatusReq {
                participants: true,
                frag_index: index,
            });
        agent.handle_downlink(
            0,
            Via::Unicast,
            fragmentation::PORT,
            &build(|b| req.build_into(Version::V2, b)),
        );
    }
    let (ups, _) = drain(&mut agent, 60_000);
    let status: Vec<(u8, u8)> = ups
        .iter()
        .filter(|(p, _)| *p == fragmentation::PORT)
        .flat_map(|(_, b)| fragmentation::uplinks(Version::V2, b).flatten())
        .filter_map(|u| match u {
            fragmentation::Uplink::FragSessionStatusAns(a) => Some((a.frag_index, a.missing_frag)),
            _ => None,
        })
        .collect();
    assert_eq!(status.len(), 2, "{ups:?}");
    assert!(status.contains(&(1, 0)), "{status:?}");
    assert!(
        status.iter().any(|&(i, missing)| i == 0 && missing > 0),
        "{status:?}"
    );
    // The secondary slot and the used session's areas were not touched (the open session's
    // block is decoded again from its log, its own areas only).
    let after = flash.borrow().as_bytes().to_vec();
    let areas = layout.fragments[1];
    for r in [LAYOUT.secondary, areas.log, areas.block, areas.spare] {
        let (a, b) = (r.offset as usize, r.end() as usize);
        assert!(before[a..b] == after[a..b], "{r:?} changed");
    }
}

/// TS006 on port 203: the running version, then what waits in the secondary slot before and
/// after an update is installed.
#[test]
fn firmware_management_reports_the_running_and_the_waiting_image() {
    use fuota_codec::firmware_management::{self as fmp, fw_version, UpImageStatus};
    let s = simba_update(21);
    let mut flash = Flash::new(SECTORS);
    flash.write(0, &padded(&s.old)).unwrap();
    let flash = RefCell::new(flash);
    let mut ws = vec![0u8; 8 * 1024];
    let mut agent = Agent::<_, 64>::new(&flash, config(&s), &mut ws, 0).unwrap();
    drain(&mut agent, 0);
    let ask = |agent: &mut fuota_tests::rig::TestAgent<'_>| {
        agent.handle_downlink(0, Via::Unicast, fmp::PORT, &[0x00, 0x01, 0x04]);
        let (ups, _) = drain(agent, 0);
        assert_eq!(ups.len(), 1, "one frame for the three answers");
        fmp::uplinks(Version::V1, &ups[0].1)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let answers = ask(&mut agent);
    assert_eq!(
        answers,
        [
            fmp::Uplink::PackageVersionAns {
                package_identifier: 4,
                package_version: 1
            },
            fmp::Uplink::DevVersionAns(fmp::DevVersionAns {
                fw_version: fw_version(0, 8, 0),
                hw_version: 0x0201
            }),
            fmp::Uplink::DevUpgradeImageAns(UpImageStatus::Absent),
        ]
    );
    // Over multicast: ignored.
    agent.handle_downlink(0, Via::Multicast(0), fmp::PORT, &[0x01]);
    assert_eq!(drain(&mut agent, 0).0, []);
    // The new image in the secondary slot, not yet installed by the agent: valid, newer.
    flash
        .borrow_mut()
        .write(LAYOUT.secondary.offset, &padded(&s.new))
        .unwrap();
    let answers = ask(&mut agent);
    assert_eq!(
        answers[2],
        fmp::Uplink::DevUpgradeImageAns(UpImageStatus::Valid {
            firmware_id: fw_version(0, 9, 0)
        })
    );
    // A sector of it erased: corrupt.
    {
        let mut f = flash.borrow_mut();
        let at = LAYOUT.secondary.offset + 0x400;
        f.erase(at, at + SECTOR as u32).unwrap();
    }
    assert_eq!(
        ask(&mut agent)[2],
        fmp::Uplink::DevUpgradeImageAns(UpImageStatus::Corrupt)
    );
}
