// A driver of real processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

//! Rollouts through the service and the ChirpStack stand-in: waves that run to completion
//! (status page in headless Chromium), reverts in wave 2 that halt the rollout before wave 3,
//! and a pause and resume across SIGKILLed restarts with each action in the audit log once.

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{
    count_action, rollout_request, scratch, serial, service, wave_statuses, Server, ServerSetup,
};
use serde_json::{json, Value};
use standin::{device_keys, small_update, Options, StandIn};

/// Campaign seconds: each wave's window, the windows' period and the setup before each
/// (room for a clock resync: devices of later waves synced their clocks long before).
const WINDOWS: (u64, u64, u64) = (75, 105, 60);

fn is(v: &Value, state: &str) -> bool {
    v["state"] == state
}

/// The DevEUIs of a wave (1-based), from the rollout's devices.
fn wave_devices(server: &Server, id: i64, wave: u64) -> Vec<u64> {
    let (st, devices) = server.get(&format!("/api/rollouts/{id}/devices"));
    assert_eq!(st, 200, "{devices}");
    devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["wave"] == wave)
        .map(|d| u64::from_str_radix(d["dev_eui"].as_str().unwrap(), 16).unwrap())
        .collect()
}

/// A server, the stand-in's devices, their keys and the uploaded patch's id.
type Bench = (Server, StandIn, Vec<(u64, [u8; 16])>, i64);

fn start(tag: &str, n: usize, seed: u64) -> Option<Bench> {
    let mqtt = service("FUOTA_MQTT_URL", 1883)?;
    let dir = scratch(tag);
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let setup = ServerSetup::new(dir, &mqtt, &db_url, tag);
    let server = Server::start(setup.clone());
    let update = small_update();
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        n,
        setup.scale,
        setup.origin_unix_ms,
    );
    opts.seed = seed;
    let standin = StandIn::start(&mqtt, opts, &update);
    let fw = server.upload(&update.patch);
    Some((server, standin, device_keys(n, seed), fw))
}

fn create(server: &Server, req: &Value) -> i64 {
    let (st, r) = server.post(
        "/api/rollouts",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(st, 201, "{r}\n{}", server.log_text());
    r["id"].as_i64().unwrap()
}

#[test]
fn a_rollout_runs_its_waves_to_completion() {
    let _one = serial();
    let Some((mut server, standin, devices, fw)) = start("rollout-ok", 10, 21) else {
        return;
    };
    let id = create(
        &server,
        &rollout_request("ten meters", fw, &devices, &[10.0, 50.0, 100.0], WINDOWS),
    );
    let (status, took) = server.wait_rollout(id, Duration::from_secs(150), "completed", |v| {
        !is(v, "running")
    });
    let stats = standin.stats();
    eprintln!(
        "rollout of 10 devices in 3 waves: {} in {took:?} (wall), {} multicast frames in {} groups",
        status["state"],
        stats.multicast.len(),
        stats.groups.len()
    );
    assert!(is(&status, "completed"), "{status}\n{}", server.log_text());
    assert_eq!(wave_statuses(&status), ["passed", "passed", "passed"]);
    let sizes: Vec<u64> = status["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 4, 5]);
    assert_eq!(status["devices"]["updated"], 10);
    assert_eq!(stats.updated.len(), 10, "{:?}", stats.problems);
    assert!(stats.problems.is_empty(), "{:?}", stats.problems);
    assert!(stats.fcnt_reused.is_empty(), "{:?}", stats.fcnt_reused);
    // Each wave its own campaign and multicast group, one after the other.
    let mut addrs = HashSet::new();
    let mut last_end = String::new();
    for w in status["waves"].as_array().unwrap() {
        let cid = w["campaign_id"].as_i64().expect("a wave's campaign");
        let (st, c) = server.get(&format!("/api/campaigns/{cid}"));
        assert_eq!(st, 200);
        assert_eq!(
            (c["rollout_id"].as_i64(), &c["wave"]),
            (Some(id), &w["wave"])
        );
        assert_eq!(c["state"], "finished");
        assert!(c["device_progress"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["phase"] == "updated"));
        addrs.insert(c["mc_addr"].as_str().unwrap().to_string());
        let start = w["window_start"].as_str().unwrap().to_string();
        assert!(start > last_end, "wave windows overlap");
        last_end = w["window_end"].as_str().unwrap().to_string();
    }
    assert_eq!(addrs.len(), 3);
    assert_eq!(stats.groups.len(), 3);
    // The audit log tells the story once.
    let rows = server.audit(&format!("subject=rollout/{id}"));
    for (action, n) in [
        ("rollout.create", 1),
        ("wave.started", 3),
        ("wave.passed", 3),
        ("rollout.completed", 1),
    ] {
        assert_eq!(count_action(&rows, action), n, "{action}: {rows:#?}");
    }
    assert_eq!(rows[0]["actor"], "bootstrap");
    assert_eq!(rows[0]["role"], "admin");
    assert!(rows
        .iter()
        .filter(|r| r["action"] == "wave.passed")
        .all(|r| r["actor"] == "system" && r["role"].is_null()));
    // The CLI reads the same.
    let text = server.cli(&["rollout", "status", &id.to_string()]);
    assert!(
        text.contains("completed") && text.matches("passed").count() == 3,
        "{text}"
    );
    let audit: Value =
        serde_json::from_str(&server.cli(&["audit", "--action", "wave.", "--json"])).unwrap();
    assert_eq!(audit.as_array().unwrap().len(), 6);
    rollout_page(&server, id);
}

/// The rollout's page in headless Chromium: a row per wave; a screenshot under the target
/// directory.
fn rollout_page(server: &Server, id: i64) {
    let Some(chromium) = std::env::var("FUOTA_CHROMIUM")
        .ok()
        .filter(|c| !c.is_empty())
    else {
        eprintln!("skipped the rollout page: FUOTA_CHROMIUM is not set");
        return;
    };
    let url = format!(
        "{}/rollouts/{id}?token={}",
        server.base(),
        server.setup.token
    );
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rollout-page.png");
    let _ = std::fs::remove_file(&out);
    let chrome = |extra: &str| {
        let profile = server.setup.dir.join(format!("chromium-{}", extra.len()));
        let o = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(
            o.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let dom = chrome("--dump-dom");
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(&format!("Rollout #{id} ten meters")),
        "{html}"
    );
    assert!(html.contains("s-completed"), "{html}");
    for wave in 1..=3 {
        assert!(
            html.contains(&format!("rollout-{id}-wave-{wave}")),
            "wave {wave}: {html}"
        );
    }
    assert_eq!(html.matches("class=\"s-passed\"").count(), 3, "{html}");
    // The waves' campaigns follow, with their devices.
    assert_eq!(html.matches("class=\"p-updated\"").count(), 10);
    chrome(&format!("--screenshot={}", out.display()));
    let png = std::fs::read(&out).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("rollout page screenshot: {}", out.display());
}

#[test]
fn reverts_in_wave_two_halt_the_rollout_before_wave_three() {
    let _one = serial();
    let Some((mut server, standin, devices, fw)) = start("rollout-halt", 10, 22) else {
        return;
    };
    let id = create(
        &server,
        &rollout_request("halts", fw, &devices, &[10.0, 50.0, 100.0], WINDOWS),
    );
    // One of the four devices of wave 2 boots the new image, fails its self-test and goes
    // back: 25 % reverted, above the 1 % allowed.
    let second = wave_devices(&server, id, 2);
    let third = wave_devices(&server, id, 3);
    assert_eq!((second.len(), third.len()), (4, 5));
    standin.revert(&second[..1]);
    let (status, took) = server.wait_rollout(id, Duration::from_secs(120), "halted", |v| {
        !is(v, "running")
    });
    eprintln!("halted after {took:?} (wall): {}", status["reason"]);
    assert!(is(&status, "halted"), "{status}\n{}", server.log_text());
    let why = status["reason"].as_str().unwrap();
    assert!(
        why.contains("wave 2") && why.contains("1 of 4") && why.contains("reverted"),
        "{why}"
    );
    // Wave 2 runs to its end; wave 3 never starts.
    let (status, _) = server.wait_rollout(id, Duration::from_secs(60), "wave 2 over", |v| {
        wave_statuses(v)[1] != "running"
    });
    assert_eq!(wave_statuses(&status), ["passed", "missed", "pending"]);
    let w2 = &status["waves"][1];
    assert_eq!(
        (w2["updated"].as_u64(), w2["reverted"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(status["waves"][2]["campaign_id"].is_null());
    std::thread::sleep(Duration::from_secs(10));
    let (_, status) = server.get(&format!("/api/rollouts/{id}"));
    assert_eq!(wave_statuses(&status), ["passed", "missed", "pending"]);
    let stats = standin.stats();
    assert_eq!(stats.reverted, second[..1].iter().copied().collect());
    assert!(third.iter().all(|d| !stats.updated.contains(d)));
    // The reverted device shows why, per device.
    let (_, devs) = server.get(&format!("/api/rollouts/{id}/devices"));
    let d = devs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dev_eui"] == format!("{:016x}", second[0]))
        .unwrap()
        .clone();
    assert_eq!(d["phase"], "failed");
    assert!(d["reason"].as_str().unwrap().contains("still runs"), "{d}");
    assert!(devs
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["wave"] == 3)
        .all(|d| d["phase"] == "waiting"));
    // A halted rollout keeps its devices: no campaign may take them.
    let req = harness::campaign_request("grab", fw, &devices[..1]);
    let (st, e) = server.post(
        "/api/campaigns",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(st, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("halted"), "{e}");
    let rows = server.audit(&format!("subject=rollout/{id}"));
    assert_eq!(count_action(&rows, "rollout.halted"), 1, "{rows:#?}");
    assert_eq!(count_action(&rows, "wave.missed"), 1);
    assert_eq!(count_action(&rows, "wave.started"), 2);
    // Retrying the failed device: a wave of it next in line; then the operator cancels.
    let (st, r) = server.post(
        &format!("/api/rollouts/{id}/retry"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 200, "{r}");
    assert!(is(&r, "running"), "{r}");
    assert_eq!(r["waves"][2]["name"], "retry of 1 failed");
    assert_eq!(r["waves"].as_array().unwrap().len(), 4);
    let (st, r) = server.post(
        &format!("/api/rollouts/{id}/cancel"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 200, "{r}");
    assert!(is(&r, "cancelled"));
    let (st, _) = server.post(
        &format!("/api/rollouts/{id}/resume"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 409);
    // Its devices are free again.
    let (st, c) = server.post(
        "/api/campaigns",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(st, 201, "{c}");
    let cid = c["id"].as_i64().unwrap();
    let (st, _) = server.post(
        &format!("/api/campaigns/{cid}/cancel"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 200);
    let rows = server.audit(&format!("subject=rollout/{id}"));
    assert_eq!(count_action(&rows, "rollout.retry"), 1);
    assert_eq!(count_action(&rows, "rollout.cancel"), 1);
}

#[test]
fn pause_and_resume_hold_across_restarts() {
    let _one = serial();
    let Some((mut server, standin, devices, fw)) = start("rollout-pause", 8, 23) else {
        return;
    };
    let t0 = Instant::now();
    let id = create(
        &server,
        &rollout_request("paused", fw, &devices, &[25.0, 100.0], WINDOWS),
    );
    server.wait_rollout(id, Duration::from_secs(10), "wave 1 running", |v| {
        wave_statuses(v)[0] == "running"
    });
    let (st, r) = server.post(
        &format!("/api/rollouts/{id}/pause"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 200, "{r}");
    assert!(is(&r, "paused"));
    // Killed while paused with wave 1 running: it comes back paused, wave 1 goes on.
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let (_, v) = server.get(&format!("/api/rollouts/{id}"));
    assert!(is(&v, "paused"), "{v}");
    let (v, _) = server.wait_rollout(id, Duration::from_secs(60), "wave 1 over", |v| {
        wave_statuses(v)[0] != "running"
    });
    assert_eq!(wave_statuses(&v), ["passed", "pending"]);
    assert!(is(&v, "paused"));
    // A window goes by: wave 2 does not start.
    std::thread::sleep(Duration::from_secs(WINDOWS.1 / 10 + 2));
    let (_, v) = server.get(&format!("/api/rollouts/{id}"));
    assert_eq!(wave_statuses(&v), ["passed", "pending"], "{v}");
    let paused_updates = standin.stats().updated.len();
    assert_eq!(paused_updates, 2);
    let (st, _) = server.post(
        &format!("/api/rollouts/{id}/pause"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 409, "paused twice");
    let (st, r) = server.post(
        &format!("/api/rollouts/{id}/resume"),
        "application/json",
        b"{}",
    );
    assert_eq!(st, 200, "{r}");
    assert!(is(&r, "running"));
    // Killed again during wave 2's setup.
    server.wait_rollout(id, Duration::from_secs(30), "wave 2 running", |v| {
        wave_statuses(v)[1] == "running"
    });
    std::thread::sleep(Duration::from_secs(1));
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let (v, _) = server.wait_rollout(id, Duration::from_secs(90), "completed", |v| {
        !is(v, "running")
    });
    eprintln!(
        "paused, resumed and restarted twice: {} after {:?} (wall)",
        v["state"],
        t0.elapsed()
    );
    assert!(is(&v, "completed"), "{v}\n{}", server.log_text());
    let stats = standin.stats();
    assert_eq!(stats.updated.len(), 8, "{:?}", stats.problems);
    assert!(stats.fcnt_reused.is_empty(), "{:?}", stats.fcnt_reused);
    let log = server.log_text();
    assert_eq!(
        log.matches(&format!("rollout {id}: resumed from")).count(),
        2,
        "{log}"
    );
    assert!(!log.contains("differ from the log"), "{log}");
    // Each action once, whatever the restarts.
    let rows = server.audit(&format!("subject=rollout/{id}"));
    for (action, n) in [
        ("rollout.create", 1),
        ("rollout.pause", 1),
        ("rollout.resume", 1),
        ("wave.started", 2),
        ("wave.passed", 2),
        ("rollout.completed", 1),
    ] {
        assert_eq!(count_action(&rows, action), n, "{action}: {rows:#?}");
    }
    assert_eq!(rows.len(), 8, "{rows:#?}");
    let pause = rows
        .iter()
        .find(|r| r["action"] == "rollout.pause")
        .unwrap();
    assert_eq!(pause["details"], json!({ "state": "paused" }));
    // The operator's own rollout actions, by filter.
    assert_eq!(
        count_action(
            &server.audit("action=rollout.&actor=bootstrap"),
            "rollout.resume"
        ),
        1
    );
}
