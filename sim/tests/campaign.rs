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
        .engine
        .devices()
        .map(|(_, p)| p.phase.clone())
        .collect();
    let updated = phases.iter().filter(|p| **p == Phase::Updated).count();
    assert_eq!(
        updated,
        12,
        "{phases:?} {:?} {:?}",
        world.stats,
        world.engine.counters()
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
