//! Running a scenario to its end, with progress.

use anyhow::{bail, Result};
use fuota_server::engine::Phase;

use crate::backend::Backend;
use crate::radio::Micros;
use crate::report::Report;
use crate::rollout::{self, RolloutBackend};
use crate::scenario::{build, build_with, Built, Scenario, START_GPS_S};
use crate::world::World;

/// Virtual time between two progress updates.
const STEP: Micros = 60_000_000;

/// Runs `s` (a single campaign: a scenario with a `[rollout]` goes to [`run_rollout`])
/// until every device is done or the window has closed. `progress` is called with
/// (devices updated, devices, simulated seconds) as the run goes.
pub fn run(
    s: &Scenario,
    mut progress: impl FnMut(usize, usize, u64),
) -> Result<(World, Built, Report)> {
    if s.rollout.is_some() {
        bail!(
            "scenario {:?} describes a rollout: run it with fuota_sim::run::run_rollout",
            s.name
        );
    }
    let (mut world, built) = build(s)?;
    // The engine fails whatever is left at the window's end; a little after, all is said.
    let end = built.campaign.window_end * 1000 + 10 * STEP;
    drive(&mut world, &built, end, &mut progress, |w| {
        w.engine()
            .devices()
            .filter(|(_, p)| p.phase == Phase::Updated)
            .count()
    });
    let report = Report::new(&s.name, s.seed, &world, &built);
    Ok((world, built, report))
}

/// Runs the staged rollout of `s` (its `[rollout]` section) until it completes, halts or its
/// last window has closed; the report has a row per wave.
pub fn run_rollout(
    s: &Scenario,
    mut progress: impl FnMut(usize, usize, u64),
) -> Result<(World<RolloutBackend>, Built, Report)> {
    let section = rollout::section(s)?;
    let (mut world, built) = build_with(s, START_GPS_S * 1000, |built| {
        RolloutBackend::new(section, built, s.seed)
    })?;
    // Every wave may have to wait one window for the previous one to end.
    let waves = world.backend.rollout.waves().len() as u64;
    let (first, _) = world
        .backend
        .rollout
        .wave_config(0)
        .map(|c| (c.session_start, c.window_end))
        .unwrap_or((built.campaign.session_start, built.campaign.window_end));
    let every = world.backend.window_every_ms;
    let end = (first + 2 * waves * every) * 1000 + 10 * STEP;
    drive(&mut world, &built, end, &mut progress, |w| {
        built
            .devices
            .iter()
            .filter(|d| {
                w.backend
                    .device(d.dev_eui)
                    .is_some_and(|p| p.phase == Phase::Updated)
            })
            .count()
    });
    let report = Report::of_rollout(&s.name, s.seed, &world, &built);
    Ok((world, built, report))
}

fn drive<B: Backend>(
    world: &mut World<B>,
    built: &Built,
    end: Micros,
    progress: &mut impl FnMut(usize, usize, u64),
    updated: impl Fn(&World<B>) -> usize,
) {
    let n = world.devices.len();
    let mut step = 0u64;
    while world.now < end {
        // Every ten simulated minutes, the sectors the devices wrote alike are shared.
        step += 1;
        if step % 10 == 0 {
            world.share_flash();
        }
        let done = world.run_until((world.now + STEP).min(end));
        progress(updated(world), n, (world.now - built.start) / 1_000_000);
        if done {
            break;
        }
    }
}
