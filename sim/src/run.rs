//! Running a scenario to its end, with progress.

use anyhow::Result;
use fuota_server::engine::Phase;

use crate::radio::Micros;
use crate::report::Report;
use crate::scenario::{build, Built, Scenario};
use crate::world::World;

/// Virtual time between two progress updates.
const STEP: Micros = 60_000_000;

/// Runs `s` until every device is done or the window has closed. `progress` is called with
/// (devices updated, devices, simulated seconds) as the run goes.
pub fn run(
    s: &Scenario,
    mut progress: impl FnMut(usize, usize, u64),
) -> Result<(World, Built, Report)> {
    let (mut world, built) = build(s)?;
    // The engine fails whatever is left at the window's end; a little after, all is said.
    let end = built.campaign.window_end * 1000 + 10 * STEP;
    let n = world.devices.len();
    let mut step = 0u64;
    while world.now < end {
        // Every ten simulated minutes, the sectors the devices wrote alike are shared.
        step += 1;
        if step % 10 == 0 {
            world.share_flash();
        }
        let done = world.run_until((world.now + STEP).min(end));
        let updated = world
            .engine()
            .devices()
            .filter(|(_, p)| p.phase == Phase::Updated)
            .count();
        progress(updated, n, (world.now - built.start) / 1_000_000);
        if done {
            break;
        }
    }
    let report = Report::new(&s.name, s.seed, &world, &built);
    Ok((world, built, report))
}
