//! The firmware's hooks around an update, through the agent's public face: an install put
//! off while the battery is low (and reported), a new image that fails its self-test (the
//! agent asks for the reboot that takes the old one back, and the reason reaches the server
//! even across that reboot), and a boot loop after a permanent swap (the agent has the
//! bootloader swap the old image back in).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::agent_report::{self, Outcome, Refusal, UpdateReport};
use fuota_codec::firmware_management::fw_version;
use fuota_codec::fragmentation;
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentConfig, Event};
use fuota_device_agent::frag_session::Via;
use fuota_device_agent::hooks::{SelfTest, UpdateHooks};
use fuota_device_agent::mcuboot::{self, Trailer, SWAP_TYPE_PERM};
use fuota_tests::rig::{build, config, drain, fragment_patch, Flash, LAYOUT, SECTORS};
use fuota_tests::{padded, simba_update, SimbaUpdate};

const V9: ImageVersion = ImageVersion {
    major: 0,
    minor: 9,
    revision: 0,
    build: 0,
};

/// Hooks the test steers from outside.
#[derive(Clone, Default)]
struct Steer {
    battery_low: Rc<Cell<bool>>,
    self_test: Rc<Cell<Option<SelfTest>>>,
    asked: Rc<Cell<u32>>,
}

impl UpdateHooks for Steer {
    fn may_update(&mut self, _now: u64) -> Result<(), Refusal> {
        self.asked.set(self.asked.get() + 1);
        if self.battery_low.get() {
            Err(Refusal::LowBattery)
        } else {
            Ok(())
        }
    }
    fn retry_ms(&self) -> u64 {
        60_000
    }
    fn self_test(&mut self, _now: u64) -> SelfTest {
        self.self_test.get().unwrap_or(SelfTest::Pass)
    }
}

type Hooked<'a> = Agent<'a, Flash, 64, 1, fuota_codec::patch::VerifyingKey, Steer>;

fn agent<'a>(
    flash: &'a RefCell<Flash>,
    cfg: AgentConfig,
    steer: &Steer,
    ws: &'a mut [u8],
) -> Hooked<'a> {
    Agent::with_hooks(flash, cfg, ws, 0, steer.clone()).unwrap()
}

/// The update's fragments by unicast until the block is complete.
fn deliver(agent: &mut Hooked<'_>, s: &SimbaUpdate, now: u64) {
    let (setup, frames) = fragment_patch(s, 48, 3);
    let setup = fragmentation::Downlink::FragSessionSetupReq(setup);
    agent.handle_downlink(
        now,
        Via::Unicast,
        fragmentation::PORT,
        &build(|b| setup.build_into(Version::V2, b)),
    );
    for f in &frames {
        agent.handle_downlink(now, Via::Unicast, fragmentation::PORT, f);
        let (_, evs) = drain(agent, now);
        if evs.iter().any(|e| matches!(e, Event::BlockComplete { .. })) {
            return;
        }
    }
    panic!("the block never completed");
}

fn reports(ups: &[(u8, Vec<u8>)]) -> Vec<UpdateReport> {
    ups.iter()
        .filter(|(p, _)| *p == agent_report::PORT)
        .map(|(_, b)| UpdateReport::parse(b).unwrap())
        .collect()
}

fn fresh(s: &SimbaUpdate) -> RefCell<Flash> {
    let mut flash = Flash::new(SECTORS);
    flash.write(0, &padded(&s.old)).unwrap();
    RefCell::new(flash)
}

fn image_into(f: &mut Flash, slot: fuota_device_agent::slot::Region, image: &[u8]) {
    f.erase(slot.offset, slot.end()).unwrap();
    f.write(slot.offset, &padded(image)).unwrap();
}

#[test]
fn a_low_battery_puts_the_install_off_and_it_is_reported_once() {
    let s = simba_update(31);
    let flash = fresh(&s);
    let steer = Steer::default();
    steer.battery_low.set(true);
    let mut ws = vec![0u8; 8 * 1024];
    let mut a = agent(&flash, config(&s), &steer, &mut ws);
    drain(&mut a, 0);
    deliver(&mut a, &s, 1_000);
    // Due at once; refused: reported, and asked again a minute later.
    assert_eq!(a.poll_timeout(2_000), 2_000);
    a.handle_timeout(2_000);
    let (ups, evs) = drain(&mut a, 2_000);
    assert!(
        evs.contains(&Event::InstallDeferred(Refusal::LowBattery)),
        "{evs:?}"
    );
    assert_eq!(
        reports(&ups),
        [UpdateReport {
            outcome: Outcome::Deferred(Refusal::LowBattery),
            fw_version: 0
        }]
    );
    // (Other timers may come first: the block's acknowledgement.)
    assert!(a.poll_timeout(2_000) <= 62_000);
    a.handle_timeout(30_000);
    assert_eq!(steer.asked.get(), 1, "not asked before its time");
    // Still low: asked, but not reported again.
    a.handle_timeout(62_000);
    let (ups, evs) = drain(&mut a, 62_000);
    assert_eq!(steer.asked.get(), 2);
    assert!(
        reports(&ups).is_empty() && evs.is_empty(),
        "{ups:?} {evs:?}"
    );
    // Charged: the install runs at the next try.
    steer.battery_low.set(false);
    a.handle_timeout(122_000);
    let (_, evs) = drain(&mut a, 122_000);
    assert!(
        evs.contains(&Event::RebootWanted { version: V9 }),
        "{evs:?}"
    );
    let f = flash.borrow();
    let sec = LAYOUT.secondary.offset as usize;
    assert!(f.as_bytes()[sec..sec + s.new.len()] == s.new[..]);
}

#[test]
fn a_failed_self_test_reverts_and_the_reason_outlives_the_reboot() {
    let s = simba_update(32);
    let flash = fresh(&s);
    let steer = Steer::default();
    {
        let mut ws = vec![0u8; 8 * 1024];
        let mut a = agent(&flash, config(&s), &steer, &mut ws);
        deliver(&mut a, &s, 1_000);
        a.handle_timeout(2_000);
        let (_, evs) = drain(&mut a, 2_000);
        assert!(evs.contains(&Event::RebootWanted { version: V9 }));
    }
    // The bootloader's test swap: the new image runs.
    image_into(&mut flash.borrow_mut(), LAYOUT.primary, &s.new);
    steer.self_test.set(Some(SelfTest::Fail));
    {
        let mut ws = vec![0u8; 8 * 1024];
        let mut a = agent(&flash, config(&s), &steer, &mut ws);
        let (_, evs) = drain(&mut a, 0);
        assert!(evs.contains(&Event::Booted { version: V9 }), "{evs:?}");
        assert_eq!(a.poll_timeout(0), 0, "the self-test is due");
        a.handle_timeout(0);
        let evs: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(
            evs.contains(&Event::RevertWanted { version: V9 }),
            "{evs:?}"
        );
        // The firmware resets at once, before the report went out.
    }
    let t = Trailer::new(LAYOUT.primary.len, 8).unwrap();
    assert!(
        !mcuboot::read_trailer(&mut *flash.borrow_mut(), LAYOUT.primary, t)
            .unwrap()
            .image_ok
    );
    // MCUboot goes back (the image was never confirmed).
    image_into(&mut flash.borrow_mut(), LAYOUT.primary, &s.old);
    let mut ws = vec![0u8; 8 * 1024];
    let mut a = agent(&flash, config(&s), &steer, &mut ws);
    let (ups, evs) = drain(&mut a, 0);
    assert!(evs.contains(&Event::Reverted { version: V9 }), "{evs:?}");
    // The precise reason, not a bare "reverted", and only once.
    assert_eq!(
        reports(&ups),
        [UpdateReport {
            outcome: Outcome::SelfTestFailed,
            fw_version: fw_version(0, 9, 0)
        }]
    );
    drop(a);
    let mut ws = vec![0u8; 8 * 1024];
    let mut a = agent(&flash, config(&s), &steer, &mut ws);
    let (ups, _) = drain(&mut a, 0);
    assert!(reports(&ups).is_empty(), "sent already: {ups:?}");
}

#[test]
fn a_boot_loop_after_a_permanent_swap_swaps_the_old_image_back() {
    let s = simba_update(33);
    let flash = fresh(&s);
    let steer = Steer::default();
    let mut cfg = config(&s);
    cfg.permanent = true;
    {
        let mut ws = vec![0u8; 8 * 1024];
        let mut a = agent(&flash, cfg.clone(), &steer, &mut ws);
        deliver(&mut a, &s, 1_000);
        a.handle_timeout(2_000);
        let (_, evs) = drain(&mut a, 2_000);
        assert!(evs.contains(&Event::RebootWanted { version: V9 }));
    }
    // MCUboot's permanent swap: the images exchanged, the new one marked good by it.
    let t = Trailer::new(LAYOUT.primary.len, 8).unwrap();
    {
        let mut f = flash.borrow_mut();
        image_into(&mut f, LAYOUT.primary, &s.new);
        image_into(&mut f, LAYOUT.secondary, &s.old);
        mcuboot::confirm(&mut *f, LAYOUT.primary, t).unwrap();
    }
    // The new image crashes before its self-test can pass: three boots are tolerated.
    steer.self_test.set(Some(SelfTest::Later));
    for boot in 1..=3 {
        let mut ws = vec![0u8; 8 * 1024];
        let mut a = agent(&flash, cfg.clone(), &steer, &mut ws);
        let (_, evs) = drain(&mut a, 0);
        assert!(
            evs.contains(&Event::Booted { version: V9 }),
            "boot {boot}: {evs:?}"
        );
        a.handle_timeout(0);
        assert!(
            std::iter::from_fn(|| a.poll_event()).all(|e| !matches!(e, Event::RevertWanted { .. }))
        );
    }
    let mut ws = vec![0u8; 8 * 1024];
    let mut a = agent(&flash, cfg.clone(), &steer, &mut ws);
    let (ups, evs) = drain(&mut a, 0);
    assert!(
        evs.contains(&Event::RevertWanted { version: V9 }),
        "{evs:?}"
    );
    assert_eq!(
        reports(&ups),
        [UpdateReport {
            outcome: Outcome::BootLoop,
            fw_version: fw_version(0, 9, 0)
        }]
    );
    // The old image in the secondary slot is asked for, for good.
    let back = mcuboot::read_trailer(&mut *flash.borrow_mut(), LAYOUT.secondary, t).unwrap();
    assert!(back.magic_good);
    assert_eq!(back.swap_info, SWAP_TYPE_PERM);
}
