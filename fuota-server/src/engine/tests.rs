//! The engine against hand-written device answers: the setup order, error answers, retries,
//! the multicast schedule, repair and the window's end. (Real agents drive it end to end in
//! `tests/tests/campaign_engine.rs`.)

use super::*;
use fuota_codec::fragmentation::{FragSessionSetupAns, FragSessionStatusAns, PackageVersionAns};
use fuota_codec::multicast_setup::{McGroupSetupAns, McSessionAns};

const T0: GpsMillis = 1_400_000_000_000;

fn config() -> CampaignConfig {
    CampaignConfig {
        version: Version::V2,
        data: (0..1000u32).map(|i| (i * 7) as u8).collect(),
        frag_size: 50,
        redundancy: 5,
        frag_index: 0,
        descriptor: [0; 4],
        session_cnt: 1,
        block_ack_delay: 0,
        mc_group_id: 0,
        mc_addr: 0x0102_0304,
        mc_key: Key128::from_bytes([9; 16]),
        first_mc_fcnt: 0,
        freq_hz: 869_525_000,
        dr: 3,
        session_start: T0 + 600_000,
        timeout_exp: 10,
        spacing_ms: 2_000,
        window_end: T0 + 7_200_000,
        target_fw_version: 0x0002_0000,
        retry_ms: 60_000,
        max_attempts: 3,
        reboot_wait_ms: 30_000,
        unicast_repair_max_devices: 0,
        status_wait_ms: 30_000,
        multicast_lead_ms: 0,
    }
}

fn devices(n: u64) -> Vec<DeviceSpec> {
    (1..=n)
        .map(|dev_eui| DeviceSpec {
            dev_eui,
            root_key: RootKey::AppKey(Key128::from_bytes([dev_eui as u8; 16])),
        })
        .collect()
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn up<T: fmt::Debug>(f: impl FnOnce(&mut [u8]) -> Result<&[u8], T>) -> Vec<u8> {
    let mut buf = [0u8; 64];
    f(&mut buf).unwrap().to_vec()
}

/// Answers of a healthy v2 device to the setup, as uplinks: to the TS004 frame
/// (PackageVersionAns, FragSessionSetupAns), its AppTimeReq, to the TS005 frame
/// (McGroupSetupAns, McClassCSessionAns).
fn setup_answers() -> Vec<(u8, Vec<u8>)> {
    let v = Version::V2;
    vec![
        (
            ts004::PORT,
            up(|b| {
                ts004::Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier: 3,
                    package_version: 2,
                })
                .build_into(v, b)
            }),
        ),
        (ts004::PORT, setup_ans(false, false)),
        (
            ts003::PORT,
            up(|b| {
                ts003::Uplink::AppTimeReq(ts003::AppTimeReq {
                    device_time: 5,
                    token_req: 0,
                    ans_required: true,
                })
                .build_into(v, b)
            }),
        ),
        (
            ts005::PORT,
            up(|b| {
                ts005::Uplink::McGroupSetupAns(McGroupSetupAns {
                    mc_group_id: 0,
                    id_error: false,
                })
                .build_into(v, b)
            }),
        ),
        (ts005::PORT, session_ans(599)),
    ]
}

/// FragSessionSetupAns with these two error bits.
fn setup_ans(not_enough_memory: bool, session_cnt_replay: bool) -> Vec<u8> {
    up(|b| {
        ts004::Uplink::FragSessionSetupAns(FragSessionSetupAns {
            frag_index: 0,
            encoding_unsupported: false,
            not_enough_memory,
            frag_session_index_not_supported: false,
            wrong_descriptor: false,
            session_cnt_replay,
        })
        .build_into(Version::V2, b)
    })
}

/// McClassCSessionAns, no error, with this TimeToStart.
fn session_ans(time_to_start: u32) -> Vec<u8> {
    up(|b| {
        ts005::Uplink::McClassCSessionAns(McSessionAns {
            mc_group_id: 0,
            dr_error: false,
            freq_error: false,
            mc_group_undefined: false,
            start_missed: false,
            time_to_start: Some(time_to_start),
        })
        .build_into(Version::V2, b)
    })
}

fn status(missing: u8) -> Vec<u8> {
    up(|b| {
        ts004::Uplink::FragSessionStatusAns(FragSessionStatusAns {
            frag_index: 0,
            nb_frag_received: 10,
            missing_frag: missing,
            memory_error: false,
            mic_error: false,
            session_does_not_exist: false,
        })
        .build_into(Version::V2, b)
    })
}

fn unicasts_to(outs: &[Output], dev: DevEui) -> Vec<(u8, Vec<u8>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Unicast {
                dev: d,
                port,
                payload,
            } if *d == dev => Some((*port, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Runs the engine's timeouts up to `until`, collecting outputs.
fn run_until(e: &mut Engine, until: GpsMillis) -> Vec<Output> {
    let mut outs = drain(e);
    while let Some(t) = e.poll_timeout() {
        if t > until {
            break;
        }
        e.handle_timeout(t);
        outs.extend(drain(e));
    }
    outs
}

#[test]
fn setup_goes_in_order_and_the_class_c_request_waits_for_the_clock() {
    let mut e = Engine::new(config(), devices(1), T0).unwrap();
    let outs = unicasts_to(&drain(&mut e), 1);
    // One frame: PackageVersionReq (CID 0) then FragSessionSetupReq (CID 2, 1 + 16 bytes).
    assert_eq!(outs.len(), 1);
    assert_eq!(
        (outs[0].0, outs[0].1[0], outs[0].1[1], outs[0].1.len()),
        (201, 0x00, 0x02, 18)
    );
    let cmds: Vec<_> = ts004::downlinks(Version::V2, &outs[0].1)
        .map(Result::unwrap)
        .collect();
    let ts004::Downlink::FragSessionSetupReq(setup) = cmds[1] else {
        panic!("{cmds:?}")
    };
    assert_eq!((setup.nb_frag, setup.frag_size, setup.padding), (20, 50, 0));
    assert!(setup.ack_reception);
    let answers = setup_answers();
    // Both answers: the TS005 frame waits for the clock.
    for (port, bytes) in &answers[..2] {
        e.handle_uplink(T0 + 1000, 1, *port, bytes);
    }
    assert_eq!(unicasts_to(&drain(&mut e), 1), []);
    assert_eq!(e.device(1).unwrap().phase, Phase::Setup(Request::McSetup));
    // AppTimeReq at T0 + 2 s with device time 5 s: the answer, then the TS005 frame.
    e.handle_uplink(T0 + 2_000, 1, answers[2].0, &answers[2].1);
    let outs = unicasts_to(&drain(&mut e), 1);
    assert_eq!(outs[0].0, 202);
    let Ok((ts003::Downlink::AppTimeAns(a), _)) = ts003::Downlink::parse(Version::V2, &outs[0].1)
    else {
        panic!("{outs:?}")
    };
    assert_eq!(a.time_correction, ((T0 + 2_000) / 1000 - 5) as i32);
    assert_eq!(outs[1].0, 200);
    let cmds: Vec<_> = ts005::downlinks(Version::V2, &outs[1].1)
        .map(Result::unwrap)
        .collect();
    let [ts005::Downlink::McGroupSetupReq(g), ts005::Downlink::McClassCSessionReq(s)] = cmds[..]
    else {
        panic!("{cmds:?}")
    };
    assert_eq!(g.mc_addr, 0x0102_0304);
    assert_eq!(
        (s.session_time, s.time_out, s.dr, s.dl_frequ.hz()),
        (((T0 + 600_000) / 1000) as u32, 10, 3, 869_525_000)
    );
    for (port, bytes) in &answers[3..] {
        e.handle_uplink(T0 + 3_000, 1, *port, bytes);
    }
    assert_eq!(e.device(1).unwrap().phase, Phase::Ready);
}

fn ready_engine(n: u64, cfg: CampaignConfig) -> Engine {
    let mut e = Engine::new(cfg, devices(n), T0).unwrap();
    drain(&mut e);
    for dev in 1..=n {
        for (port, bytes) in setup_answers() {
            e.handle_uplink(T0 + 1000, dev, port, &bytes);
        }
    }
    drain(&mut e);
    e
}

#[test]
fn the_multicast_goes_out_on_schedule_with_fresh_fcnts() {
    let mut e = ready_engine(2, config());
    let cfg = config();
    let outs = run_until(&mut e, cfg.session_start + 60_000);
    let frames: Vec<&MulticastFrame> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Multicast(f) => Some(f),
            _ => None,
        })
        .collect();
    // M = 20 data, 5 coded, then three copies of the status request.
    assert_eq!(frames.len(), 28);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.at, cfg.session_start + 1_000 + i as u64 * 2_000);
        assert_eq!(f.fcnt, i as u32);
        assert_eq!((f.freq_hz, f.dr, f.port), (869_525_000, 3, 201));
    }
    assert_eq!(frames[0].kind, FrameKind::DataFragment);
    assert_eq!(frames[20].kind, FrameKind::CodedFragment);
    // FragSessionStatusReq with Participants = 0.
    for f in &frames[25..] {
        assert_eq!(f.kind, FrameKind::StatusRequest);
        assert_eq!(f.payload, [0x01, 0x00]);
    }
    assert_eq!(e.device(1).unwrap().phase, Phase::Receiving);
    let c = e.counters();
    assert_eq!((c.data_fragments, c.coded_fragments), (20, 5));
}

#[test]
fn a_repair_round_by_multicast_then_unicast_repair_of_the_last_one() {
    let mut cfg = config();
    cfg.unicast_repair_max_devices = 1;
    let mut e = ready_engine(3, cfg.clone());
    // Three copies of the status request after the 25 fragments, 2 s apart.
    let status_at = cfg.session_start + 1_000 + 25 * 2_000;
    run_until(&mut e, status_at);
    // Two devices miss fragments (4 and 7); the third says nothing.
    e.handle_uplink(status_at + 7_000, 1, 201, &status(4));
    e.handle_uplink(status_at + 8_000, 2, 201, &status(7));
    // Answers until +52 s (the copies, 16 s of BlockAckDelay, 30 s for late ones); the
    // repair round runs from +53 s, a frame every 2 s.
    let outs = run_until(&mut e, status_at + 75_000);
    let repair: Vec<&MulticastFrame> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Multicast(f) if f.kind == FrameKind::RepairFragment => Some(f),
            _ => None,
        })
        .collect();
    // The most missed (7) plus a margin of 3, numbered after the first round's 25.
    assert_eq!(repair.len(), 10);
    let first = crate::fragmentation::parse_data_fragment(&repair[0].payload).unwrap();
    assert_eq!(first.n, 26);
    assert_eq!(e.counters().repair_rounds, 1);
    // After the round: device 1 reports its block, device 3 has it too, device 2 still
    // misses 2.
    let v2_ack = up(|b| {
        ts004::Uplink::FragDataBlockReceivedReq(ts004::FragDataBlockReceivedReq {
            frag_index: 0,
            mic_error: false,
        })
        .build_into(Version::V2, b)
    });
    e.handle_uplink(status_at + 80_000, 1, 201, &v2_ack);
    assert_eq!(e.device(1).unwrap().phase, Phase::Complete);
    assert_eq!(unicasts_to(&drain(&mut e), 1), [(201, vec![0x04, 0x00])]);
    e.handle_uplink(status_at + 85_000, 3, 201, &status(0));
    assert_eq!(e.device(3).unwrap().phase, Phase::Complete);
    e.handle_uplink(status_at + 86_000, 2, 201, &status(2));
    // One device left: repaired by unicast (2 + 3 coded fragments, then its status).
    let outs = run_until(&mut e, status_at + 140_000);
    let to2 = unicasts_to(&outs, 2);
    assert_eq!(to2.len(), 6, "{to2:?}");
    assert!(to2[..5].iter().all(|(p, b)| *p == 201 && b[0] == 0x08));
    assert_eq!(to2[5], (201, vec![0x01, 0x01]));
    assert_eq!(e.device(2).unwrap().unicast_fragments, 5);
    assert_eq!(e.counters().repair_rounds, 1);
}

#[test]
fn errors_and_silence_end_in_failures_with_reasons() {
    let mut cfg = config();
    cfg.window_end = T0 + 3_600_000;
    let mut e = Engine::new(cfg.clone(), devices(4), T0).unwrap();
    drain(&mut e);
    let answers = setup_answers();
    // 1: speaks TS004 v1 only.
    let v1 = up(|b| {
        ts004::Uplink::PackageVersionAns(PackageVersionAns {
            package_identifier: 3,
            package_version: 1,
        })
        .build_into(Version::V2, b)
    });
    e.handle_uplink(T0 + 1000, 1, 201, &v1);
    // 2: refuses the session for lack of memory.
    e.handle_uplink(T0 + 1000, 2, answers[0].0, &answers[0].1);
    let no_memory = setup_ans(true, false);
    e.handle_uplink(T0 + 1000, 2, 201, &no_memory);
    // 3: never answers. 4: set up, then silent after the multicast.
    for (port, bytes) in &answers {
        e.handle_uplink(T0 + 1000, 4, *port, bytes);
    }
    let outs = run_until(&mut e, cfg.window_end);
    // Device 3 was asked max_attempts (3) times, a retry period apart: the first before.
    assert_eq!(unicasts_to(&outs, 3).len(), 2);
    assert!(e.is_finished());
    let phase = |d| e.device(d).unwrap().phase.clone();
    assert_eq!(
        phase(1),
        Phase::Failed(Failure::PackageVersion {
            identifier: 3,
            version: 1
        })
    );
    assert!(matches!(
        phase(2),
        Phase::Failed(Failure::FragSessionSetup {
            not_enough_memory: true,
            ..
        })
    ));
    assert_eq!(
        phase(3),
        Phase::Failed(Failure::NoAnswer(Request::FragSetup))
    );
    assert_eq!(phase(4), Phase::Failed(Failure::NoAnswer(Request::Status)));
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn after_the_block_the_running_version_decides() {
    let mut e = ready_engine(2, config());
    let cfg = config();
    let status_at = cfg.session_start + 1_000 + 25 * 2_000;
    run_until(&mut e, status_at);
    for dev in [1, 2] {
        e.handle_uplink(status_at + 1_000, dev, 201, &status(0));
    }
    assert_eq!(e.device(1).unwrap().phase, Phase::Complete);
    // After the reboot wait: DevVersionReq on port 203.
    let outs = run_until(&mut e, status_at + 1_000 + cfg.reboot_wait_ms);
    assert_eq!(unicasts_to(&outs, 1), [(203, vec![0x01])]);
    let version = |fw| {
        up(|b| {
            fmp::Uplink::DevVersionAns(fmp::DevVersionAns {
                fw_version: fw,
                hw_version: 0,
            })
            .build_into(b)
        })
    };
    e.handle_uplink(status_at + 40_000, 1, 203, &version(cfg.target_fw_version));
    assert_eq!(e.device(1).unwrap().phase, Phase::Updated);
    // Device 2 keeps running the old one: asked until the tries run out.
    let mut asked = 0;
    while !e.device(2).unwrap().phase.is_final() && asked < 10 {
        e.handle_uplink(status_at + 40_000, 2, 203, &version(0x0001_0000));
        let next = e.poll_timeout().unwrap();
        asked += unicasts_to(&run_until(&mut e, next), 2).len();
    }
    assert_eq!(
        asked,
        cfg.max_attempts as usize - 1,
        "retries after the first"
    );
    assert_eq!(
        e.device(2).unwrap().phase,
        Phase::Failed(Failure::NotUpdated {
            running: 0x0001_0000
        })
    );
    assert!(e.is_finished());
}

#[test]
fn bad_configurations_are_refused() {
    let mut c = config();
    c.freq_hz = 869_525_050;
    assert!(matches!(
        Engine::new(c, devices(1), T0),
        Err(ConfigError::Frequency(_))
    ));
    let mut c = config();
    c.data.clear();
    assert!(matches!(
        Engine::new(c, devices(1), T0),
        Err(ConfigError::Fragments(_))
    ));
    let mut c = config();
    c.mc_group_id = 4;
    assert!(Engine::new(c, devices(1), T0).is_err());
}

/// The answer to a FragSessionSetupReq got lost; the retry meets the session the device
/// already took: SessionCnt replay, which means the setup is in place.
#[test]
fn a_replay_answer_to_a_retried_setup_is_a_success() {
    let cfg = config();
    let mut e = Engine::new(cfg.clone(), devices(1), T0).unwrap();
    let answers = setup_answers();
    e.handle_uplink(T0 + 1000, 1, answers[0].0, &answers[0].1);
    // The FragSessionSetupAns never comes; the frame goes out again.
    run_until(&mut e, T0 + 1000 + cfg.retry_ms);
    let replay = setup_ans(false, true);
    e.handle_uplink(T0 + 2000 + cfg.retry_ms, 1, 201, &replay);
    assert_eq!(e.device(1).unwrap().phase, Phase::Setup(Request::McSetup));
    // A first-time replay is a real refusal.
    let mut e = Engine::new(cfg, devices(1), T0).unwrap();
    e.handle_uplink(T0 + 1000, 1, answers[0].0, &answers[0].1);
    e.handle_uplink(T0 + 2000, 1, 201, &replay);
    assert!(matches!(
        e.device(1).unwrap().phase,
        Phase::Failed(Failure::FragSessionSetup {
            session_cnt_replay: true,
            ..
        })
    ));
}

/// A device whose AppTimeAns never arrived counts TimeToStart on its own clock: the engine
/// sees it in the McClassCSessionAns, forces a resync, and sets the session up again.
#[test]
fn a_session_answer_from_a_wrong_clock_brings_a_resync() {
    let mut e = Engine::new(config(), devices(1), T0).unwrap();
    let answers = setup_answers();
    for (port, bytes) in &answers[..3] {
        e.handle_uplink(T0 + 1000, 1, *port, bytes);
    }
    drain(&mut e);
    // The session is 597 s away at T0 + 3 s; this device thinks it is 3 hours away.
    e.handle_uplink(T0 + 3_000, 1, 200, &session_ans(597 + 3 * 3600));
    let outs = unicasts_to(&drain(&mut e), 1);
    // ForceDeviceResync, 2 transmissions.
    assert_eq!(outs, [(202, vec![0x03, 0x02])]);
    assert_eq!(e.device(1).unwrap().phase, Phase::Setup(Request::McSetup));
    // Its AppTimeReq is answered and the TS005 frame goes again; a right answer this time.
    e.handle_uplink(T0 + 20_000, 1, answers[2].0, &answers[2].1);
    let outs = unicasts_to(&drain(&mut e), 1);
    assert_eq!((outs[0].0, outs[1].0), (202, 200));
    // Answered 30 s after it was taken (held back by the duty cycle): still plausible.
    e.handle_uplink(T0 + 60_000, 1, 200, &session_ans(600 - 30));
    assert_eq!(e.device(1).unwrap().phase, Phase::Ready);
}

fn multicast_frames(outs: &[Output]) -> Vec<MulticastFrame> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Multicast(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refused_frame_goes_again_with_a_new_fcnt_in_the_next_slot() {
    let cfg = config();
    let mut e = ready_engine(2, cfg.clone());
    let first = cfg.session_start + 1_000;
    // The first three fragments are out; the gateway refused the second.
    let outs = multicast_frames(&run_until(&mut e, first + 2 * 2_000));
    assert_eq!(outs.len(), 3);
    assert!(e.handle_tx_refused(first + 2 * 2_000, &outs[1]));
    let again = multicast_frames(&drain(&mut e));
    // Same payload, the next FCnt, in the slot the fourth fragment would have had.
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, outs[1].payload);
    assert_eq!(again[0].kind, FrameKind::DataFragment);
    assert_eq!(again[0].fcnt, 3);
    assert_eq!(again[0].at, first + 3 * 2_000);
    // The schedule moved by one slot: the fourth fragment follows it.
    let rest = multicast_frames(&run_until(&mut e, first + 4 * 2_000));
    assert_eq!(rest[0].fcnt, 4);
    assert_eq!(rest[0].at, first + 4 * 2_000);
    let n = crate::fragmentation::parse_data_fragment(&rest[0].payload)
        .unwrap()
        .n;
    assert_eq!(n, 4);
    assert_eq!(e.counters().refused_frames, 1);
    // Every FCnt handed out so far is distinct.
    let mut fcnts: Vec<u32> = outs
        .iter()
        .chain(&again)
        .chain(&rest)
        .map(|f| f.fcnt)
        .collect();
    fcnts.sort_unstable();
    fcnts.dedup();
    assert_eq!(fcnts.len(), outs.len() + again.len() + rest.len());
    // After the class C session, nothing goes again.
    let end = cfg.session_start + (1000 << cfg.timeout_exp);
    assert!(!e.handle_tx_refused(end, &outs[0]));
}

#[test]
fn a_late_timeout_moves_the_schedule_instead_of_sending_in_the_past() {
    let cfg = config();
    let mut e = ready_engine(2, cfg.clone());
    let first = cfg.session_start + 1_000;
    multicast_frames(&run_until(&mut e, first));
    // The driver was down for a minute.
    let late = first + 60_000;
    e.handle_timeout(late);
    let outs = multicast_frames(&drain(&mut e));
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert_eq!(outs[0].at, late);
    assert_eq!(e.poll_timeout(), Some(late + 2_000));
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    // What the service's write-ahead log relies on: an engine rebuilt from the recorded
    // inputs hands out the same frames with the same FCnts.
    let run = || {
        let mut e = ready_engine(3, config());
        let mut outs = run_until(&mut e, config().session_start + 20_000);
        let frames = multicast_frames(&outs);
        e.handle_tx_refused(config().session_start + 20_000, &frames[2]);
        outs.extend(run_until(&mut e, config().session_start + 200_000));
        outs
    };
    assert_eq!(run(), run());
}

#[test]
fn device_reports_name_the_failure_and_a_deferral_buys_time() {
    use fuota_codec::agent_report::{Outcome, Refusal, UpdateReport, PORT as REPORT_PORT};
    let mut e = ready_engine(3, config());
    let cfg = config();
    let status_at = cfg.session_start + 1_000 + 25 * 2_000;
    run_until(&mut e, status_at);
    for dev in [1, 2, 3] {
        e.handle_uplink(status_at + 1_000, dev, 201, &status(0));
    }
    let report = |outcome| {
        UpdateReport {
            outcome,
            fw_version: cfg.target_fw_version,
        }
        .to_bytes()
    };
    // 1: its self-test failed; 2: it puts the install off again and again; 3: garbage.
    let t = status_at + 2_000;
    e.handle_uplink(t, 1, REPORT_PORT, &report(Outcome::SelfTestFailed));
    assert_eq!(
        e.device(1).unwrap().phase,
        Phase::Failed(Failure::SelfTestFailed)
    );
    assert_eq!(
        e.device(1).unwrap().report.as_deref(),
        Some("self-test failed, reverting")
    );
    e.handle_uplink(t, 3, REPORT_PORT, &[0x01, 9, 9]);
    assert_eq!(e.device(3).unwrap().report, None);
    let mut at = t;
    while at + cfg.reboot_wait_ms / 2 < cfg.window_end {
        e.handle_uplink(
            at,
            2,
            REPORT_PORT,
            &report(Outcome::Deferred(Refusal::LowBattery)),
        );
        // Never asked its version while it keeps deferring.
        let outs = run_until(&mut e, at + cfg.reboot_wait_ms / 2);
        assert!(unicasts_to(&outs, 2).is_empty(), "at {at}");
        assert_eq!(e.device(2).unwrap().phase, Phase::Complete);
        at += cfg.reboot_wait_ms / 2;
    }
    run_until(&mut e, cfg.window_end);
    assert_eq!(
        e.device(2).unwrap().phase,
        Phase::Failed(Failure::Deferred {
            reason: "low battery".into()
        })
    );
    assert_eq!(
        e.device(2).unwrap().report.as_deref(),
        Some("install put off: low battery")
    );
}
