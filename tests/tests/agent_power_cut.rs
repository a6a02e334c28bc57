//! The whole device flow under power cuts, through the agent's public face: clock sync, a
//! multicast group, a fragmentation session, the fragments of a real patch with 10 % loss on
//! the multicast group, the decode, the install and the swap request. The power is cut after
//! the k-th flash write or erase, for every k from the first to the last operation of an
//! uninterrupted run. After the cut the device boots again, and the network goes on: it
//! answers the new AppTimeReq and sends again the downlink whose answer it never got.
//!
//! Every run must end with the new image in the secondary slot and a test swap requested,
//! the primary slot untouched; the session survives every cut (the block completes from the
//! same fragments, none sent twice but the one the cut interrupted).

use std::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::clock_sync::{self, AppTimeAns, Uplink as ClockUplink};
use fuota_codec::fragmentation;
use fuota_codec::keys::{encrypt_mc_key, Key128};
use fuota_codec::multicast_setup::{self, McGroupSetupReq};
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, Event};
use fuota_device_agent::frag_session::Via;
use fuota_device_agent::mcuboot::{read_trailer, Trailer, SWAP_TYPE_TEST};
use fuota_tests::rig::{build, config, drain, fragment_patch, Flash, TestAgent, LAYOUT, SECTORS};
use fuota_tests::{padded, simba_update, SimbaUpdate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GPS0: i64 = 1_400_000_000;

/// The server's side of the exchange: downlinks in order (port, how, bytes).
fn script(s: &SimbaUpdate) -> Vec<(u8, Via, Vec<u8>)> {
    let mc_group = multicast_setup::Downlink::McGroupSetupReq(McGroupSetupReq {
        mc_group_id: 0,
        mc_addr: 0x00ab_cdef,
        mc_key_encrypted: encrypt_mc_key(&config(s).mc_ke_key, &Key128::from_bytes([0x33; 16])),
        min_mc_fcount: 0,
        max_mc_fcount: 0xffff,
    });
    let (setup, frames) = fragment_patch(s, 48, 3);
    let setup = fragmentation::Downlink::FragSessionSetupReq(setup);
    let mut out = vec![
        (
            multicast_setup::PORT,
            Via::Unicast,
            build(|b| mc_group.build_into(Version::V2, b)),
        ),
        (
            fragmentation::PORT,
            Via::Unicast,
            build(|b| setup.build_into(Version::V2, b)),
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    out.extend(
        frames
            .into_iter()
            .filter(|_| rng.gen_range(0..10) != 0)
            .map(|f| (fragmentation::PORT, Via::Multicast(0), f)),
    );
    out
}

/// Answers the agent's AppTimeReq, if it sent one, with its own token.
fn sync_clock(agent: &mut TestAgent<'_>, ups: &[(u8, Vec<u8>)], now: u64) {
    for (port, bytes) in ups {
        if *port != clock_sync::PORT {
            continue;
        }
        for up in clock_sync::uplinks(Version::V2, bytes).flatten() {
            if let ClockUplink::AppTimeReq(req) = up {
                let ans = clock_sync::Downlink::AppTimeAns(AppTimeAns {
                    time_correction: (GPS0 - i64::from(req.device_time)) as i32,
                    token_ans: req.token_req,
                });
                agent.handle_downlink(
                    now,
                    Via::Unicast,
                    clock_sync::PORT,
                    &build(|b| ans.build_into(Version::V2, b)),
                );
            }
        }
    }
}

#[derive(Debug)]
struct Outcome {
    boots: usize,
    reboot_wanted: bool,
    /// Flash operations of the device (the cut one included).
    operations: u64,
}

/// One device through the script; the power goes after `cut_after` flash operations.
fn run(s: &SimbaUpdate, steps: &[(u8, Via, Vec<u8>)], cut_after: Option<u64>) -> Outcome {
    let mut flash = Flash::new(SECTORS);
    flash.write(0, &padded(&s.old)).unwrap();
    let before = flash.operations();
    if let Some(k) = cut_after {
        flash.cut_power_after(k);
    }
    let flash = RefCell::new(flash);
    let mut ws = vec![0u8; 8 * 1024];
    let mut step = 0;
    let mut boots = 0;
    let mut reboot_wanted = false;
    let mut now = 0u64;
    'boot: loop {
        boots += 1;
        assert!(
            boots <= 3,
            "a single cut made the device boot {boots} times"
        );
        if flash.borrow().is_off() {
            flash.borrow_mut().reboot();
        }
        let mut agent = match Agent::new(&flash, config(s), &mut ws, now) {
            Ok(a) => a,
            Err(e) => {
                assert!(flash.borrow().is_off(), "agent failed to start: {e:?}");
                continue;
            }
        };
        let (ups, evs) = drain(&mut agent, now);
        reboot_wanted |= evs.iter().any(|e| matches!(e, Event::RebootWanted { .. }));
        sync_clock(&mut agent, &ups, now);
        loop {
            now += 1_000;
            if step < steps.len() {
                let (port, via, bytes) = &steps[step];
                agent.handle_downlink(now, *via, *port, bytes);
            }
            if agent.poll_timeout(now) <= now {
                agent.handle_timeout(now);
            }
            let (ups, evs) = drain(&mut agent, now);
            if flash.borrow().is_off() {
                // The downlink of this step is sent again after the reboot.
                continue 'boot;
            }
            reboot_wanted |= evs.iter().any(|e| matches!(e, Event::RebootWanted { .. }));
            sync_clock(&mut agent, &ups, now);
            if step == steps.len() {
                if reboot_wanted {
                    break 'boot;
                }
                assert!(
                    agent.poll_timeout(now) > now + 1_000_000,
                    "script over, no install and nothing due (cut after {cut_after:?})"
                );
                panic!("the block never completed (cut after {cut_after:?}): {evs:?}");
            }
            step += 1;
        }
    }
    let f = flash.borrow();
    assert!(
        f.as_bytes()[..s.old.len()] == s.old[..],
        "primary slot written (cut after {cut_after:?})"
    );
    let sec = LAYOUT.secondary.offset as usize;
    assert!(
        f.as_bytes()[sec..sec + s.new.len()] == s.new[..],
        "secondary slot is not the new image (cut after {cut_after:?})"
    );
    drop(f);
    let trailer = Trailer::new(LAYOUT.secondary.len, 8).unwrap();
    let t = read_trailer(&mut *flash.borrow_mut(), LAYOUT.secondary, trailer).unwrap();
    assert!(
        t.magic_good && t.swap_info == SWAP_TYPE_TEST && !t.image_ok,
        "no test swap requested (cut after {cut_after:?}): {t:?}"
    );
    let operations = flash.borrow().operations() - before;
    Outcome {
        boots,
        reboot_wanted,
        operations,
    }
}

#[test]
fn a_power_cut_at_any_flash_operation_of_the_whole_update_loses_nothing() {
    let s = simba_update(31);
    let steps = script(&s);
    let clean = run(&s, &steps, None);
    assert_eq!(clean.boots, 1);
    assert!(clean.reboot_wanted);
    let total = clean.operations;
    assert!(total > 300, "only {total} flash operations");
    let mut rebooted = 0;
    for k in 0..total {
        let out = run(&s, &steps, Some(k));
        assert!(out.reboot_wanted);
        rebooted += usize::from(out.boots > 1);
    }
    // Every cut point before the end of the run really cut the power.
    assert_eq!(rebooted as u64, total);
    println!("{total} cut points over the whole update, each ending with the new image");
}
