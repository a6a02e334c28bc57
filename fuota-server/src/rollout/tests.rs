//! The wave logic against a stand-in campaign whose devices end as their DevEUI says: the
//! slicing, the windows, the thresholds, pause, resume, cancel and retry. (The simulator runs
//! rollouts of real engines and agents.)

use super::*;
use crate::engine::{Request, RootKey};
use fuota_codec::Version;

const T0: GpsMillis = 1_400_000_000_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

/// Ends at its window's start + 1 h: devices whose root key ends in 0x01 revert, 0x02 never
/// answer, the rest update. Sends one unicast per device when built.
struct Fake {
    cfg: CampaignConfig,
    devices: BTreeMap<DevEui, DeviceProgress>,
    fate: BTreeMap<DevEui, u8>,
    outputs: Vec<Output>,
    done: bool,
    /// Frames the driver said no gateway sent.
    refused: Vec<u32>,
}

fn fake(
    cfg: CampaignConfig,
    devices: Vec<DeviceSpec>,
    _now: GpsMillis,
) -> Result<Fake, ConfigError> {
    let outputs = devices
        .iter()
        .map(|d| Output::Unicast {
            dev: d.dev_eui,
            port: 201,
            payload: vec![cfg.mc_addr as u8],
        })
        .collect();
    Ok(Fake {
        devices: devices
            .iter()
            .map(|d| (d.dev_eui, DeviceProgress::new()))
            .collect(),
        fate: devices
            .iter()
            .map(|d| {
                let (RootKey::AppKey(k) | RootKey::GenAppKey(k)) = &d.root_key;
                (d.dev_eui, k.as_bytes()[15])
            })
            .collect(),
        cfg,
        outputs,
        done: false,
        refused: Vec::new(),
    })
}

impl Campaign for Fake {
    fn handle_uplink(&mut self, _now: GpsMillis, _dev: DevEui, _port: u8, _bytes: &[u8]) {}
    fn handle_timeout(&mut self, now: GpsMillis) {
        if now < self.cfg.session_start + HOUR || self.done {
            return;
        }
        for (dev, p) in &mut self.devices {
            p.phase = match self.fate[dev] {
                1 => Phase::Failed(Failure::NotUpdated { running: 1 }),
                2 => Phase::Failed(Failure::NoAnswer(Request::DevVersion)),
                _ => Phase::Updated,
            };
        }
        self.done = true;
    }
    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop()
    }
    fn poll_timeout(&mut self) -> Option<GpsMillis> {
        (!self.done).then_some(self.cfg.session_start + HOUR)
    }
    fn is_finished(&self) -> bool {
        self.done
    }
    fn progress(&self, dev: DevEui) -> Option<&DeviceProgress> {
        self.devices.get(&dev)
    }
    fn handle_tx_refused(&mut self, _now: GpsMillis, frame: &MulticastFrame) {
        self.refused.push(frame.fcnt);
        // Sent again: the engine's answer to a refusal.
        self.outputs.push(Output::Multicast(frame.clone()));
    }
}

fn template() -> CampaignConfig {
    CampaignConfig {
        version: Version::V2,
        data: vec![1; 100],
        frag_size: 50,
        redundancy: 5,
        frag_index: 0,
        descriptor: [0; 4],
        session_cnt: 7,
        block_ack_delay: 0,
        mc_group_id: 0,
        mc_addr: 0x0100_0000,
        mc_key: Key128::from_bytes([9; 16]),
        first_mc_fcnt: 0,
        freq_hz: 869_525_000,
        dr: 3,
        session_start: 0,
        timeout_exp: 10,
        spacing_ms: 2_000,
        window_end: 0,
        target_fw_version: 2,
        retry_ms: 60_000,
        max_attempts: 3,
        reboot_wait_ms: 30_000,
        unicast_repair_max_devices: 0,
        status_wait_ms: 30_000,
        multicast_lead_ms: 0,
    }
}

fn config(slicing: Slicing) -> RolloutConfig {
    RolloutConfig {
        template: template(),
        slicing,
        success_threshold: RolloutConfig::SUCCESS,
        failure_threshold: RolloutConfig::FAILURE,
        first_window: T0 + 3 * HOUR,
        window_len_ms: 4 * HOUR,
        window_every_ms: DAY,
        setup_lead_ms: 3 * HOUR,
        seed: 1,
    }
}

/// `n` devices; those in `bad` get `fate` as the last byte of their root key (others 0).
fn fleet(n: u64, bad: &[u64], fate: u8) -> Vec<RolloutDevice> {
    (1..=n)
        .map(|i| {
            let mut key = [i as u8; 16];
            key[15] = if bad.contains(&i) { fate } else { 0 };
            RolloutDevice {
                spec: DeviceSpec {
                    dev_eui: i,
                    root_key: RootKey::AppKey(Key128::from_bytes(key)),
                },
                group: None,
            }
        })
        .collect()
}

/// Runs the rollout's timers until nothing is due or `until`.
fn run(r: &mut Rollout<Fake>, until: GpsMillis) -> Vec<RolloutOutput> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_timeout() {
        if t > until {
            break;
        }
        r.handle_timeout(t);
        out.extend(std::iter::from_fn(|| r.poll_output()));
    }
    out
}

#[test]
fn percentages_cut_the_fleet_into_growing_waves_in_a_seeded_order() {
    let r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(200, &[], 0), T0, fake).unwrap();
    let sizes: Vec<usize> = r.waves().iter().map(|w| w.devices).collect();
    assert_eq!(sizes, [2, 18, 30, 50, 100]);
    let names: Vec<String> = r.waves().iter().map(|w| w.name.clone()).collect();
    assert_eq!(names, ["1 %", "10 %", "25 %", "50 %", "100 %"]);
    // Every device in exactly one wave; another seed, another order.
    let mut all: Vec<DevEui> = r.waves.iter().flat_map(|w| w.devices.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    let mut other = config(Slicing::default());
    other.seed = 2;
    let r2 = Rollout::with_campaigns(other, fleet(200, &[], 0), T0, fake).unwrap();
    assert_ne!(r.waves[1].devices, r2.waves[1].devices);
    // A tiny fleet still gets a device per wave while any are left.
    let small =
        Rollout::with_campaigns(config(Slicing::default()), fleet(3, &[], 0), T0, fake).unwrap();
    let sizes: Vec<usize> = small.waves().iter().map(|w| w.devices).collect();
    assert_eq!(sizes, [1, 1, 1]);
}

#[test]
fn healthy_waves_follow_each_other_one_window_apart_then_complete() {
    let mut r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    // The first wave's setup starts at once (its window is 3 h away).
    assert_eq!(r.waves()[0].status, WaveStatus::Running);
    let first = std::iter::from_fn(|| r.poll_output()).collect::<Vec<_>>();
    assert_eq!(first.len(), 1);
    assert!(first.iter().all(|o| o.wave == 0));
    let out = run(&mut r, T0 + 10 * DAY);
    assert_eq!(r.state(), &RolloutState::Completed);
    let waves = r.waves();
    assert!(waves.iter().all(|w| w.status == WaveStatus::Passed));
    for (k, w) in waves.iter().enumerate() {
        let start = T0 + 3 * HOUR + k as u64 * DAY;
        assert_eq!(w.window, Some((start, start + 4 * HOUR)), "wave {k}");
        assert_eq!(w.updated, w.devices);
    }
    // Each wave's outputs are tagged with it, and each has its own group.
    assert_eq!(out.len(), 99);
    for k in 0..waves.len() {
        let cfg = r.wave_config(k).unwrap();
        assert_eq!(cfg.mc_addr, 0x0100_0000 + k as u32);
        assert_eq!(cfg.session_cnt, 7 + k as u16);
        assert!(out.iter().filter(|o| o.wave == k).all(
            |o| matches!(&o.output, Output::Unicast { payload, .. } if payload[0] == k as u8)
        ));
    }
    assert_ne!(
        r.wave_config(0).unwrap().mc_key,
        r.wave_config(1).unwrap().mc_key
    );
    let (wave, progress) = r.device(50).unwrap();
    assert_eq!(progress.phase, Phase::Updated);
    assert!(r.waves[wave].devices.contains(&50));
}

#[test]
fn reverts_above_the_threshold_halt_the_rollout_before_the_next_wave() {
    // 100 devices: wave 2 (10 %, 9 devices) has two that revert.
    let probe =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    let second: Vec<u64> = probe.waves[1].devices[..2].to_vec();
    let mut r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &second, 1), T0, fake)
            .unwrap();
    run(&mut r, T0 + 10 * DAY);
    let RolloutState::Halted(why) = r.state().clone() else {
        panic!("{:?}", r.state());
    };
    assert!(why.contains("wave 2") && why.contains("reverted"), "{why}");
    let waves = r.waves();
    assert_eq!(waves[0].status, WaveStatus::Passed);
    assert_eq!(waves[1].status, WaveStatus::Missed);
    assert_eq!((waves[1].reverted, waves[1].updated), (2, 7));
    assert!(waves[2..].iter().all(|w| w.status == WaveStatus::Pending));
    assert_eq!(r.poll_timeout(), None);
    // Retrying the two starts a wave of them, next in line, at the next window.
    assert_eq!(r.retry_failed(T0 + 2 * DAY), 2);
    assert_eq!(r.state(), &RolloutState::Running);
    assert_eq!(r.waves()[2].devices, 2);
    assert_eq!(r.waves()[2].name, "retry of 2 failed");
    run(&mut r, T0 + 20 * DAY);
    // They revert again (the stand-in's devices always do): halted at the retry wave.
    let RolloutState::Halted(why) = r.state().clone() else {
        panic!("{:?}", r.state());
    };
    assert!(why.contains("wave 3"), "{why}");
}

#[test]
fn too_few_updated_devices_halt_as_well() {
    // Failure threshold 50 %, success 95 %: one of the two canaries never answers.
    let mut cfg = config(Slicing::default());
    cfg.failure_threshold = 0.5;
    let probe =
        Rollout::with_campaigns(config(Slicing::default()), fleet(200, &[], 0), T0, fake).unwrap();
    let canary = probe.waves[0].devices[0];
    let mut r = Rollout::with_campaigns(cfg, fleet(200, &[canary], 2), T0, fake).unwrap();
    run(&mut r, T0 + 10 * DAY);
    let RolloutState::Halted(why) = r.state().clone() else {
        panic!("{:?}", r.state());
    };
    assert!(
        why.contains("wave 1") && why.contains("short of the 95.0 %"),
        "{why}"
    );
}

#[test]
fn pause_lets_the_running_wave_finish_and_resume_takes_the_next_window() {
    let mut r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    r.pause(T0 + HOUR);
    assert_eq!(r.state(), &RolloutState::Paused);
    run(&mut r, T0 + 5 * DAY);
    let waves = r.waves();
    assert_eq!(waves[0].status, WaveStatus::Passed);
    assert_eq!(waves[1].status, WaveStatus::Pending);
    // Resumed on day 5 (hour 1): the next window whose setup can start is day 5's.
    r.resume(T0 + 5 * DAY + HOUR);
    assert_eq!(r.state(), &RolloutState::Running);
    let start = T0 + 6 * DAY + 3 * HOUR;
    assert_eq!(r.waves()[1].window, Some((start, start + 4 * HOUR)));
    run(&mut r, T0 + 20 * DAY);
    assert_eq!(r.state(), &RolloutState::Completed);
}

#[test]
fn cancel_stops_the_running_wave_at_once() {
    let mut r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    r.cancel(T0 + HOUR);
    assert_eq!(r.state(), &RolloutState::Cancelled);
    assert_eq!(r.poll_output(), None);
    assert_eq!(r.waves()[0].status, WaveStatus::Cancelled);
    assert_eq!(r.poll_timeout(), None);
    assert!(run(&mut r, T0 + 10 * DAY).is_empty());
    assert_eq!(r.retry_failed(T0 + DAY), 0);
}

#[test]
fn groups_make_waves_in_their_order_and_the_rest_last() {
    let mut devices = fleet(6, &[], 0);
    for (d, g) in devices
        .iter_mut()
        .zip(["b", "a", "b", "critical", "x", "a"])
    {
        d.group = Some(g.into());
    }
    devices[4].group = None;
    let slicing = Slicing::Groups(vec!["a".into(), "b".into(), "critical".into()]);
    let r = Rollout::with_campaigns(config(slicing), devices, T0, fake).unwrap();
    let waves: Vec<(String, Vec<DevEui>)> = r
        .waves
        .iter()
        .map(|w| (w.name.clone(), w.devices.clone()))
        .collect();
    assert_eq!(
        waves,
        [
            ("a".to_string(), vec![2, 6]),
            ("b".to_string(), vec![1, 3]),
            ("critical".to_string(), vec![4]),
            ("(other devices)".to_string(), vec![5]),
        ]
    );
}

#[test]
fn plans_that_cannot_run_are_refused_with_a_reason() {
    let bad = |f: &dyn Fn(&mut RolloutConfig)| {
        let mut c = config(Slicing::default());
        f(&mut c);
        Rollout::with_campaigns(c, fleet(10, &[], 0), T0, fake).unwrap_err()
    };
    assert!(matches!(
        bad(&|c| c.slicing = Slicing::Percent(vec![10.0, 5.0, 100.0])),
        RolloutError::Percentages(_)
    ));
    assert!(matches!(
        bad(&|c| c.slicing = Slicing::Percent(vec![10.0, 50.0])),
        RolloutError::Percentages(_)
    ));
    assert_eq!(
        bad(&|c| c.success_threshold = 1.5),
        RolloutError::Thresholds
    );
    assert_eq!(bad(&|c| c.window_every_ms = HOUR), RolloutError::Windows);
    let mut twice = fleet(3, &[], 0);
    twice.push(twice[0].clone());
    assert_eq!(
        Rollout::with_campaigns(config(Slicing::default()), twice, T0, fake).unwrap_err(),
        RolloutError::Duplicate(1)
    );
    assert_eq!(
        Rollout::with_campaigns(config(Slicing::default()), vec![], T0, fake).unwrap_err(),
        RolloutError::NoDevices
    );
    assert!(RolloutError::Windows.to_string().contains("overlap"));
}

fn frame(fcnt: u32) -> MulticastFrame {
    MulticastFrame {
        at: T0,
        mc_addr: 0x0100_0000,
        fcnt,
        freq_hz: 869_525_000,
        dr: 3,
        port: 201,
        payload: vec![8, 1, 0],
        kind: crate::engine::FrameKind::DataFragment,
    }
}

#[test]
fn a_refused_frame_goes_to_its_wave_while_it_runs_and_ended_waves_keep_their_campaign() {
    let mut r =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    std::iter::from_fn(|| r.poll_output()).for_each(drop);
    r.handle_tx_refused(T0 + HOUR, 0, &frame(4));
    // Another wave's, or a wave that does not run: ignored.
    r.handle_tx_refused(T0 + HOUR, 1, &frame(5));
    r.handle_tx_refused(T0 + HOUR, 9, &frame(6));
    let again: Vec<RolloutOutput> = std::iter::from_fn(|| r.poll_output()).collect();
    assert_eq!(
        again,
        [RolloutOutput {
            wave: 0,
            output: Output::Multicast(frame(4))
        }]
    );
    assert_eq!(r.campaign(0).unwrap().refused, [4]);
    assert!(r.campaign(1).is_none());
    let canary = r.wave_devices(0).unwrap()[0];
    let later = r.wave_devices(1).unwrap()[0];
    assert!(r.takes_uplink(canary) && !r.takes_uplink(later));
    run(&mut r, T0 + 2 * DAY);
    // Wave 1 ended: its campaign is still there to read, and takes no more refusals.
    assert_eq!(r.waves()[0].status, WaveStatus::Passed);
    assert!(r.campaign(0).unwrap().done);
    r.handle_tx_refused(T0 + 2 * DAY, 0, &frame(7));
    assert_eq!(r.campaign(0).unwrap().refused, [4]);
    // The planned slices are there before their waves start.
    let planned: usize = (0..r.waves().len())
        .map(|k| r.wave_devices(k).unwrap().len())
        .sum();
    assert_eq!(planned, 100);
    assert_eq!(r.wave_devices(9), None);
}

#[test]
fn the_same_inputs_operator_actions_included_give_the_same_rollout() {
    let probe =
        Rollout::with_campaigns(config(Slicing::default()), fleet(100, &[], 0), T0, fake).unwrap();
    let second: Vec<u64> = probe.waves[1].devices[..2].to_vec();
    let drive = || {
        let mut r =
            Rollout::with_campaigns(config(Slicing::default()), fleet(100, &second, 1), T0, fake)
                .unwrap();
        let mut out: Vec<RolloutOutput> = std::iter::from_fn(|| r.poll_output()).collect();
        r.pause(T0 + HOUR);
        out.extend(run(&mut r, T0 + 2 * DAY));
        r.resume(T0 + 2 * DAY);
        out.extend(run(&mut r, T0 + 5 * DAY));
        assert!(matches!(r.state(), RolloutState::Halted(_)));
        assert_eq!(r.retry_candidates().len(), 2);
        assert_eq!(r.retry_failed(T0 + 5 * DAY), 2);
        assert!(
            r.retry_candidates().is_empty(),
            "a wave of them runs or waits"
        );
        out.extend(run(&mut r, T0 + 6 * DAY + 2 * HOUR));
        r.cancel(T0 + 6 * DAY + 2 * HOUR);
        assert!(r.retry_candidates().is_empty());
        (out, r.waves(), r.state().clone())
    };
    let (a, b) = (drive(), drive());
    assert_eq!(a, b);
    assert!(!a.0.is_empty());
}
