//! Whole campaigns in the simulator: the real agents and the real engine over the radio.

use fuota_server::engine::Phase;
use fuota_sim::scenario::{build, Scenario};

const SMALL: &str = r#"
name = "test"
seed = 3
devices = 12
radius_m = 90
gateways = 1
[traffic]
uplink_period = "2m"
[firmware]
synthetic_size = 16384
[campaign]
dr = 3
setup = "20m"
window = "2h"
"#;

#[test]
fn a_small_campaign_updates_every_device() {
    let s = Scenario::from_toml(SMALL).unwrap();
    let (mut world, built) = build(&s).unwrap();
    let end = built.start + (20 * 60 + 2 * 3600 + 60) * 1_000_000;
    world.run_until(end);
    let phases: Vec<Phase> = world
        .engine()
        .devices()
        .map(|(_, p)| p.phase.clone())
        .collect();
    let updated = phases.iter().filter(|p| **p == Phase::Updated).count();
    assert_eq!(
        updated,
        12,
        "{phases:?} {:?} {:?}",
        world.stats,
        world.engine().counters()
    );
    for d in &world.devices {
        let primary = d
            .flash
            .borrow()
            .read_vec(0, built.update.new.len())
            .unwrap();
        assert!(
            primary == built.update.new,
            "device {} runs the new image",
            d.index
        );
        assert!(d.stats.confirmed_at.is_some());
    }
}

fn small(seed: u64, extra: &str) -> Scenario {
    let text = format!("{SMALL}\n{extra}").replace("seed = 3", &format!("seed = {seed}"));
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let report = |seed| {
        let (_, _, r) = fuota_sim::run::run(&small(seed, ""), |_, _, _| {}).unwrap();
        serde_json::to_string(&r).unwrap()
    };
    let a = report(5);
    assert_eq!(a, report(5));
    assert_ne!(a, report(6));
}

#[test]
fn devices_that_fail_their_self_test_revert_and_are_reported() {
    let s = small(4, "[behaviour]\nfails_self_test = 1.0\n");
    let (world, built, report) = fuota_sim::run::run(&s, |_, _, _| {}).unwrap();
    assert_eq!(report.updated, 0, "{:?}", report.failures);
    // The agents' reports tell the server why (UpdateReport on port 204); a report lost on
    // the air leaves the plainer reason the version gives.
    let f = &report.failures;
    let precise = f.get("self-test failed").copied().unwrap_or(0);
    let plain = f.get("reverted or not installed").copied().unwrap_or(0);
    assert!(precise >= 10 && precise + plain == 12, "{f:?}");
    for d in &world.devices {
        assert!(d.stats.reverted, "device {} saw its revert", d.index);
        let primary = d
            .flash
            .borrow()
            .read_vec(0, built.update.old.len())
            .unwrap();
        assert!(
            primary == built.update.old,
            "device {} runs the old image",
            d.index
        );
    }
}

#[test]
fn devices_on_a_low_battery_put_the_install_off_then_update() {
    let s = small(
        4,
        "[behaviour]\nlow_battery = 0.5\nlow_battery_for = \"40m\"\n",
    );
    let (world, _, report) = fuota_sim::run::run(&s, |_, _, _| {}).unwrap();
    let deferring: Vec<&fuota_sim::device::SimDevice> = world
        .devices
        .iter()
        .filter(|d| d.behaviour.low_battery_until.is_some())
        .collect();
    assert!(!deferring.is_empty() && deferring.len() < 12);
    assert!(deferring.iter().all(|d| d.stats.deferrals > 0));
    // Their reason reached the server, and they updated once charged.
    assert_eq!(report.updated, 12, "{:?}", report.failures);
    let reasons: Vec<Option<String>> = world
        .engine()
        .devices()
        .map(|(_, p)| p.report.clone())
        .collect();
    assert!(
        reasons
            .iter()
            .filter(|r| r.as_deref() == Some("install put off: low battery"))
            .count()
            >= 1,
        "{reasons:?}"
    );
}

#[test]
fn heavy_downlink_loss_is_repaired() {
    // Repairs by multicast only, so that the rounds show.
    let text = SMALL.replace("seed = 3", "seed = 8").replace(
        "window = \"2h\"",
        "window = \"2h\"\nunicast_repair_max_devices = 0",
    );
    let s = Scenario::from_toml(&format!("{text}[radio]\nextra_downlink_loss = 0.35\n")).unwrap();
    let (_, _, report) = fuota_sim::run::run(&s, |_, _, _| {}).unwrap();
    assert!(
        report.repair_rounds > 0,
        "no repair round at 35 % loss: {report:?}"
    );
    assert!(
        report.updated >= 10,
        "{} of 12 updated: {:?}",
        report.updated,
        report.failures
    );
}

#[test]
fn the_cli_reports_plots_and_dumps_a_device() {
    let dir = std::env::temp_dir().join(format!("fuota-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("s.toml");
    std::fs::write(&scenario, SMALL).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fuota-sim"))
        .arg("run")
        .arg(&scenario)
        .arg("--json")
        .arg("--plots")
        .arg(dir.join("plots"))
        .args(["--dump-flash", "0"])
        .arg(dir.join("dump"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["devices"], 12);
    assert_eq!(json["updated"], 12);
    assert_eq!(json["failed"], 0);
    for plot in ["completion_cdf.svg", "map.svg", "fragments.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
    }
    let s = Scenario::from_toml(SMALL).unwrap();
    let update = s.update().unwrap();
    let primary = std::fs::read(dir.join("dump/primary.bin")).unwrap();
    assert!(primary[..update.new.len()] == update.new[..]);
    let secondary = std::fs::read(dir.join("dump/secondary.bin")).unwrap();
    assert!(
        secondary[..update.old.len()] == update.old[..],
        "the old image, for a revert"
    );
    // A bad scenario is refused with its reason.
    std::fs::write(&scenario, "name = 1").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fuota-sim"))
        .arg("run")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("s.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sweep_fills_its_grid() {
    let s = small(9, "");
    let sw = fuota_sim::sweep::sweep(
        &s,
        (fuota_sim::sweep::Axis::Loss, &[0.0, 0.2]),
        (fuota_sim::sweep::Axis::Redundancy, &[4.0, 30.0]),
        |_| {},
    )
    .unwrap();
    assert_eq!(sw.cells.len(), 4);
    assert_eq!(sw.grid().len(), 2);
    assert!(sw.table().contains("20 %"));
    assert!(sw.cells.iter().all(|c| c.devices == 12));
}

/// Fifty devices close to their gateway, no extra loss, and a firmware that waits for a
/// maintenance reboot: every device ends with the v2 image in its secondary slot (by SHA-256)
/// and MCUboot's test-swap request; the first round was enough, no repair was sent.
#[test]
fn fifty_devices_end_with_the_new_image_and_a_test_swap_and_no_repair() {
    use fuota_device_agent::mcuboot::{read_trailer, Trailer, SWAP_TYPE_TEST};
    use sha2::{Digest, Sha256};
    let text = SMALL
        .replace("devices = 12", "devices = 50")
        .replace("radius_m = 90", "radius_m = 40");
    let s = Scenario::from_toml(&format!("{text}\n[behaviour]\nno_reboot = true\n")).unwrap();
    let (world, built, report) = fuota_sim::run::run(&s, |_, _, _| {}).unwrap();
    assert_eq!(
        (report.repair_rounds, report.repair_sent),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(report.unicast_fragments, 0);
    let want: [u8; 32] = Sha256::digest(&built.update.new).into();
    for d in &world.devices {
        let (_, secondary) = d.primary_and_secondary();
        let mut flash = d.flash.borrow_mut();
        let image = flash
            .read_vec(secondary.offset, built.update.new.len())
            .unwrap();
        let got: [u8; 32] = Sha256::digest(&image).into();
        assert_eq!(got, want, "device {}", d.index);
        let t = read_trailer(
            &mut *flash,
            secondary,
            Trailer::new(secondary.len, 8).unwrap(),
        )
        .unwrap();
        assert!(
            t.magic_good && t.swap_info == SWAP_TYPE_TEST && !t.image_ok,
            "{t:?}"
        );
    }
}

/// A device placed 20 km away hears nothing and is heard by nothing: it ends failed, with
/// that reason, and the others are not held up.
#[test]
fn a_device_out_of_range_fails_with_its_reason() {
    let s = small(11, "[[placed]]\nx = 20000.0\ny = 0.0\n");
    let (world, _, report) = fuota_sim::run::run(&s, |_, _, _| {}).unwrap();
    assert_eq!(report.devices, 13);
    assert_eq!(report.updated, 12, "{:?}", report.failures);
    assert_eq!(report.failures.get("no answer to setup"), Some(&1));
    let far = world.devices.last().unwrap();
    assert_eq!(far.pos.x, 20_000.0);
    let outcome = &report
        .per_device
        .iter()
        .find(|d| d.x == 20_000.0)
        .unwrap()
        .outcome;
    assert!(outcome.contains("no answer"), "{outcome}");
}
