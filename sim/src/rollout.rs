//! Staged rollouts in the simulator: the server's [`Rollout`] of engines as the world's
//! backend, so that a utility can rehearse its waves (slices, thresholds, windows) on a
//! simulated fleet before it runs them on the real one.
//!
//! Each wave is a campaign of its own, with its own multicast group address and keys; the
//! backend builds every multicast frame with the keys of the wave it belongs to.

use anyhow::{bail, Result};
use fuota_server::engine::{Counters, DevEui, DeviceProgress, Output};
use fuota_server::rollout::{Rollout, RolloutConfig, RolloutDevice, RolloutState, Slicing};

use crate::backend::{multicast_tx, AppOutput, Backend, NsUplink};
use crate::radio::Micros;
use crate::scenario::{Built, RolloutSection, Scenario};

/// A rollout of engines behind the simulated network server.
#[derive(Debug)]
pub struct RolloutBackend {
    pub rollout: Rollout,
    /// The class C channel every wave uses (the campaign template's).
    channel: (u32, u8),
    /// From one maintenance window's start to the next, ms.
    pub window_every_ms: u64,
}

impl RolloutBackend {
    /// The rollout a scenario's `[rollout]` section describes, over the devices `built`
    /// holds, each wave's campaign like `built.campaign` (whose session start is the first
    /// wave's window).
    pub fn new(r: &RolloutSection, built: &Built, seed: u64) -> Result<Self> {
        let template = built.campaign.clone();
        let window_len_ms = template.window_end - template.session_start;
        let setup_lead_ms = template.session_start.saturating_sub(built.start / 1000);
        let slicing = match (&r.waves, &r.groups) {
            (_, Some(groups)) => Slicing::Groups(groups.clone()),
            (Some(p), None) => Slicing::Percent(p.clone()),
            (None, None) => Slicing::default(),
        };
        let every = r
            .every
            .map_or(setup_lead_ms + window_len_ms, |d| d.0 * 1000);
        if every < window_len_ms {
            bail!(
                "rollout: windows every {} s overlap the campaign's {} s window",
                every / 1000,
                window_len_ms / 1000
            );
        }
        let cfg = RolloutConfig {
            template,
            slicing,
            success_threshold: r.success,
            failure_threshold: r.failure,
            first_window: built.campaign.session_start,
            window_len_ms,
            window_every_ms: every,
            setup_lead_ms,
            seed,
        };
        let devices = built
            .devices
            .iter()
            .zip(&built.groups)
            .map(|(spec, group)| RolloutDevice {
                spec: spec.clone(),
                group: group.clone(),
            })
            .collect();
        let channel = (cfg.template.freq_hz, cfg.template.dr);
        let rollout = Rollout::new(cfg, devices, built.start / 1000)
            .map_err(|e| anyhow::anyhow!("rollout: {e}"))?;
        Ok(Self {
            rollout,
            channel,
            window_every_ms: every,
        })
    }

    /// A device's progress in the wave it is in (`None`: no wave took it yet).
    pub fn device(&self, dev: DevEui) -> Option<&DeviceProgress> {
        self.rollout.device(dev).map(|(_, p)| p)
    }

    /// The counters of every wave's campaign, added up.
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for k in 0..self.rollout.waves().len() {
            let Some(c) = self.rollout.campaign(k).map(|e| e.counters()) else {
                continue;
            };
            sum.data_fragments += c.data_fragments;
            sum.coded_fragments += c.coded_fragments;
            sum.repair_fragments += c.repair_fragments;
            sum.unicast_fragments += c.unicast_fragments;
            sum.unicast_downlinks += c.unicast_downlinks;
            sum.multicast_status_requests += c.multicast_status_requests;
            sum.repair_rounds += c.repair_rounds;
            sum.refused_frames += c.refused_frames;
        }
        sum
    }
}

impl Backend for RolloutBackend {
    fn handle_uplink(&mut self, _now: Micros, u: &NsUplink<'_>) {
        self.rollout
            .handle_uplink(u.end / 1000, u.dev, u.port, u.payload);
    }

    fn handle_timeout(&mut self, now: Micros) {
        self.rollout.handle_timeout(now / 1000);
    }

    fn poll_output(&mut self) -> Option<AppOutput> {
        loop {
            let out = self.rollout.poll_output()?;
            match out.output {
                Output::Unicast { dev, port, payload } => {
                    return Some(AppOutput::Unicast { dev, port, payload })
                }
                Output::Multicast(f) => {
                    // Each wave's frames under its own group's keys.
                    let keys = self.rollout.campaign(out.wave).map(|c| c.multicast_keys());
                    if let Some(tx) = keys.and_then(|k| multicast_tx(&f, k)) {
                        return Some(AppOutput::Multicast(tx));
                    }
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Micros> {
        self.rollout.poll_timeout().map(|t| t * 1000)
    }

    fn is_finished(&self) -> bool {
        let over = matches!(
            self.rollout.state(),
            RolloutState::Completed | RolloutState::Halted(_) | RolloutState::Cancelled
        );
        over && self.rollout.running().is_none()
    }

    fn class_c_channel(&self) -> (u32, u8) {
        self.channel
    }

    fn is_multicasting(&self) -> bool {
        self.rollout
            .running()
            .is_some_and(|(_, e)| e.is_multicasting())
    }
}

/// The rollout section of `s`, or an error saying the scenario has none.
pub fn section(s: &Scenario) -> Result<&RolloutSection> {
    match &s.rollout {
        Some(r) => Ok(r),
        None => bail!("scenario {:?} has no [rollout] section", s.name),
    }
}
