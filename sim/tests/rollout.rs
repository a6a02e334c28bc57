//! Staged rollouts in the simulator: the server's rollout of real engines over the radio,
//! with the real agents.

use fuota_server::engine::Phase;
use fuota_sim::run::{run, run_rollout};
use fuota_sim::scenario::Scenario;

/// The example scenario: 1,000 devices in five waves, one window a night.
const ROLLOUT: &str = include_str!("../examples/rollout.toml");

#[test]
fn a_thousand_devices_in_five_waves_all_update() {
    let s = Scenario::from_toml(ROLLOUT).unwrap();
    let (world, built, report) = run_rollout(&s, |_, _, _| {}).unwrap();
    assert_eq!(
        report.rollout.as_deref(),
        Some("completed"),
        "{}",
        report.table()
    );
    assert_eq!(report.waves.len(), 5);
    let sizes: Vec<usize> = report.waves.iter().map(|w| w.devices).collect();
    assert_eq!(sizes, [10, 90, 150, 250, 500]);
    for w in &report.waves {
        assert_eq!(w.status, "passed", "{}", report.table());
        assert!(w.updated as f64 >= 0.95 * w.devices as f64, "{w:?}");
    }
    // Each wave in its own window, one after the other.
    for pair in report.waves.windows(2) {
        assert!(pair[0].window_end_s.unwrap() <= pair[1].window_start_s.unwrap());
    }
    assert!(report.updated as f64 >= 0.95 * 1000.0, "{}", report.table());
    // Updated devices run the new image; each wave used its own multicast group.
    let mut addrs = std::collections::BTreeSet::new();
    for k in 0..5 {
        addrs.insert(world.backend.rollout.wave_config(k).unwrap().mc_addr);
    }
    assert_eq!(addrs.len(), 5);
    for (i, d) in world.devices.iter().enumerate() {
        let dev = built.devices[i].dev_eui;
        let updated = world
            .backend
            .device(dev)
            .is_some_and(|p| p.phase == Phase::Updated);
        let image = d
            .flash
            .borrow()
            .read_vec(0, built.update.new.len())
            .unwrap();
        assert_eq!(image == built.update.new, updated, "device {i}");
    }
}

/// Wave 2 is a hardware revision whose new image fails its self-test on a third of the
/// devices: they revert, the wave passes the 1 % failure threshold, and wave 3 never starts.
const HALTING: &str = r#"
name = "halting"
seed = 11
devices = 400
radius_m = 150
gateways = 2
[traffic]
uplink_period = "15m"
[firmware]
synthetic_size = 65536
[campaign]
dr = 3
setup = "2h"
window = "3h"
[[groups]]
name = "canary"
share = 0.02
[[groups]]
name = "rev-b"
share = 0.2
fails_self_test = 0.3
[[groups]]
name = "north"
share = 0.3
[[groups]]
name = "south"
share = 0.3
[rollout]
groups = ["canary", "rev-b", "north", "south"]
every = "12h"
"#;

#[test]
fn reverts_in_wave_two_halt_the_rollout_before_wave_three() {
    let s = Scenario::from_toml(HALTING).unwrap();
    let (world, built, report) = run_rollout(&s, |_, _, _| {}).unwrap();
    let table = report.table();
    let names: Vec<&str> = report.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["canary", "rev-b", "north", "south", "(other devices)"]
    );
    let state = report.rollout.as_deref().unwrap();
    assert!(state.starts_with("halted: wave 2 (rev-b)"), "{table}");
    assert_eq!(report.waves[0].status, "passed", "{table}");
    let rev_b = &report.waves[1];
    assert_eq!(rev_b.status, "missed", "{table}");
    // The wave ran to its end: every device of it has an outcome, the reverts above 1 %.
    assert_eq!(rev_b.updated + rev_b.failed + rev_b.reverted, rev_b.devices);
    assert!(
        rev_b.reverted as f64 > 0.01 * rev_b.devices as f64,
        "{table}"
    );
    for w in &report.waves[2..] {
        assert_eq!(w.status, "pending", "{table}");
        assert_eq!((w.updated, w.failed, w.reverted), (0, 0, 0), "{table}");
    }
    // Devices of the waves that never ran still have the old image and no session.
    let (north, south) = (&report.waves[2], &report.waves[3]);
    let untouched = north.devices + south.devices + report.waves[4].devices;
    assert_eq!(
        report
            .per_device
            .iter()
            .filter(|d| d.outcome == "not in a wave")
            .count(),
        untouched
    );
    for (i, d) in world.devices.iter().enumerate() {
        let dev = built.devices[i].dev_eui;
        let image = d
            .flash
            .borrow()
            .read_vec(0, built.update.old.len())
            .unwrap();
        match world.backend.device(dev).map(|p| &p.phase) {
            Some(Phase::Updated) => {}
            // Reverted, failed or never in a wave: the old image runs.
            _ => assert!(image == built.update.old, "device {i} runs the old image"),
        }
    }
    // The run stopped when wave 2 ended, not at the last window.
    assert!(report.run_s < 24.0 * 3600.0, "{table}");
}

#[test]
fn a_rollout_scenario_is_not_run_as_one_campaign() {
    let s = Scenario::from_toml(ROLLOUT).unwrap();
    let err = run(&s, |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("rollout"), "{err}");
}

#[test]
fn bad_rollout_sections_are_refused_with_the_reason() {
    let base = HALTING.replace("seed = 11", "seed = 1");
    let unknown = base.replace(r#"groups = ["canary","#, r#"groups = ["nobody", "canary","#);
    let err = Scenario::from_toml(&unknown).unwrap_err().to_string();
    assert!(err.contains("no group named \"nobody\""), "{err}");
    let both = base.replace("[rollout]\n", "[rollout]\nwaves = [50, 100]\n");
    let err = Scenario::from_toml(&both).unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
    let too_much = base.replace("share = 0.3\n", "share = 0.6\n");
    let err = Scenario::from_toml(&too_much).unwrap_err().to_string();
    assert!(err.contains("more than 1"), "{err}");
    let falling = ROLLOUT.replace("waves = [1, 10, 25, 50, 100]", "waves = [10, 5, 100]");
    let s = Scenario::from_toml(&falling).unwrap();
    let err = run_rollout(&s, |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("must rise"), "{err}");
}
