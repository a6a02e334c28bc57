//! `fuota server --embedded-broker`, driven by the `fuota campaign` CLI: a campaign to the
//! stand-in's devices through the in-process broker, then the API's answers to bad input.
//! Needs no outside service.

#![allow(clippy::disallowed_methods)]

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{free_port, scratch, serial, Server, ServerSetup};
use serde_json::Value;
use standin::{device_keys, small_update, Options, StandIn};

fn cli(server: &Server, args: &[&str]) -> (bool, Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_fuota"))
        .arg("campaign")
        .arg("--api")
        .arg(server.base())
        .arg("--token")
        .arg(&server.setup.token)
        .args(args)
        .output()
        .expect("fuota campaign runs");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (
        o.status.success(),
        serde_json::from_str(&out).unwrap_or(Value::String(out)),
        err,
    )
}

#[test]
fn embedded_broker_campaign_through_the_cli() {
    let _one = serial();
    let dir = scratch("embedded");
    let port = free_port();
    let mqtt = format!("mqtt://127.0.0.1:{port}");
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let mut setup = ServerSetup::new(dir.clone(), "mqtt://127.0.0.1:1", &db_url, "embedded");
    setup.embedded_broker = Some(port);
    let server = Server::start(setup.clone());
    let update = small_update();
    let n = 4;
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        n,
        setup.scale,
        setup.origin_unix_ms,
    );
    opts.seed = 8;
    let keys = device_keys(n, 8);
    let standin = StandIn::start(&mqtt, opts, &update);
    let patch = dir.join("update.patch");
    std::fs::write(&patch, &update.patch).unwrap();
    let devices = dir.join("devices.csv");
    let csv: String = keys
        .iter()
        .map(|(e, k)| format!("{e:016x},{}\n", hex::encode(k)))
        .collect();
    std::fs::write(&devices, format!("dev_eui,gen_app_key\n{csv}")).unwrap();
    let (ok, created, err) = cli(
        &server,
        &[
            "--json",
            "create",
            "--name",
            "cli campaign",
            "--firmware",
            patch.to_str().unwrap(),
            "--devices",
            devices.to_str().unwrap(),
            "--region",
            "eu868",
            "--dr",
            "5",
            "--window",
            "20m",
        ],
    );
    assert!(ok, "{err}\n{}", server.log_text());
    let id = created["id"].as_i64().expect("an id");
    assert_eq!(created["devices"]["total"], n);
    let t0 = Instant::now();
    let status = loop {
        let (ok, s, err) = cli(&server, &["--json", "status", &id.to_string()]);
        assert!(ok, "{err}");
        if s["state"] != "running" {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{s}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("embedded broker: {n} devices in {:?}", t0.elapsed());
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(
        status["devices"]["updated"],
        n,
        "{status}\n{:?}",
        standin.stats().problems
    );
    // The table forms.
    let (ok, list, _) = cli(&server, &["list"]);
    assert!(
        ok && list.as_str().unwrap().contains("cli campaign"),
        "{list}"
    );
    let (ok, table, _) = cli(&server, &["devices", &id.to_string()]);
    assert!(
        ok && table.as_str().unwrap().matches("updated").count() == n,
        "{table}"
    );
    let eui = format!("{:016x}", keys[0].0);
    let (ok, log, _) = cli(&server, &["devices", &id.to_string(), "--log", &eui]);
    assert!(
        ok && log.as_str().unwrap().contains("downlink on port 200"),
        "{log}"
    );
    // A second campaign to devices nobody plays, cancelled.
    let others = dir.join("others.csv");
    std::fs::write(
        &others,
        "00000000000000aa,000102030405060708090a0b0c0d0e0f\n",
    )
    .unwrap();
    let fw_id = created["firmware_id"].to_string();
    let (ok, second, err) = cli(
        &server,
        &[
            "--json",
            "create",
            "--name",
            "to cancel",
            "--firmware-id",
            &fw_id,
            "--devices",
            others.to_str().unwrap(),
            "--region",
            "eu868",
            "--dr",
            "5",
            "--window",
            "2h",
        ],
    );
    assert!(ok, "{err}");
    let second = second["id"].to_string();
    let (ok, c, err) = cli(&server, &["--json", "cancel", &second]);
    assert!(ok, "{err}");
    assert_eq!(c["state"], "cancelled");
    let (ok, _, err) = cli(&server, &["cancel", &second]);
    assert!(!ok && err.contains("is cancelled (409)"), "{err}");
    let (ok, _, err) = cli(&server, &["status", "999"]);
    assert!(!ok && err.contains("no campaign 999 (404)"), "{err}");
}

#[test]
fn bad_requests_get_4xx_with_a_message() {
    let _one = serial();
    let dir = scratch("bad-requests");
    let port = free_port();
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let mut setup = ServerSetup::new(dir, "mqtt://127.0.0.1:1", &db_url, "bad");
    setup.embedded_broker = Some(port);
    let server = Server::start(setup);
    let update = small_update();
    let (st, fw) = server.post(
        "/api/firmware?name=p",
        "application/octet-stream",
        &update.patch,
    );
    assert_eq!(st, 201);
    let fw = fw["id"].as_i64().unwrap();
    let good = harness::campaign_request("ok", fw, &device_keys(1, 9));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(String, &str, u16, &str)> = vec![
        ("{".into(), "application/json", 400, "invalid request"),
        ("[]".into(), "application/json", 400, "invalid request"),
        (good.to_string(), "text/plain", 415, "application/json"),
        (
            with(&|v| v["firmware_id"] = 999.into()),
            "application/json",
            404,
            "no firmware 999",
        ),
        (
            with(&|v| v["region"] = "mars".into()),
            "application/json",
            422,
            "region",
        ),
        (
            with(&|v| v["dr"] = 42.into()),
            "application/json",
            422,
            "plan",
        ),
        (
            with(&|v| v["devices"] = Value::Array(vec![])),
            "application/json",
            422,
            "no devices",
        ),
        (
            with(&|v| v["devices"][0]["dev_eui"] = "xyz".into()),
            "application/json",
            422,
            "dev_eui",
        ),
        (
            with(&|v| v["devices"][0]["gen_app_key"] = "00".into()),
            "application/json",
            422,
            "32 hex digits",
        ),
        (
            with(&|v| v["lorawan_version"] = "1.1".into()),
            "application/json",
            422,
            "app_key",
        ),
        (
            with(&|v| v["window"]["duration"] = "soon".into()),
            "application/json",
            422,
            "",
        ),
        (
            with(&|v| v["window"]["start"] = "yesterday".into()),
            "application/json",
            422,
            "RFC 3339",
        ),
        (
            with(&|v| v["redundancy"]["loss"] = 1.5.into()),
            "application/json",
            422,
            "redundancy",
        ),
        (
            with(&|v| v["surprise"] = 1.into()),
            "application/json",
            400,
            "unknown field",
        ),
    ];
    for (body, ct, want, msg) in cases {
        let (st, v) = server.post("/api/campaigns", ct, body.as_bytes());
        assert_eq!(st, want, "{body}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(msg), "{body}: {e}");
    }
    for (path, want) in [
        ("/api/campaigns/abc", 400),
        ("/api/campaigns/77", 404),
        ("/api/campaigns/77/devices/0000000000000001/log", 404),
        ("/api/nothing", 404),
    ] {
        let (st, v) = server.get(path);
        assert_eq!(st, want, "{path}: {v}");
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    let (st, _) = server.post("/api/firmware", "application/octet-stream", b"");
    assert_eq!(st, 400);
    // Without the token.
    let r = ureq::get(format!("{}/api/campaigns", server.base())).call();
    match r {
        Err(ureq::Error::StatusCode(401)) => {}
        other => panic!("{other:?}"),
    }
    let r = ureq::get(format!("{}/api/health", server.base())).call();
    assert!(r.is_ok(), "health needs no token");
}

#[test]
fn keys_are_stored_encrypted_and_a_device_is_in_one_campaign_at_a_time() {
    let _one = serial();
    let dir = scratch("keys");
    let db_path = dir.join("fuota.db");
    let db_url = format!("sqlite://{}", db_path.display());
    let mut setup = ServerSetup::new(dir, "mqtt://127.0.0.1:1", &db_url, "keys");
    setup.embedded_broker = Some(free_port());
    let mut server = Server::start(setup.clone());
    let update = small_update();
    let (_, fw) = server.post(
        "/api/firmware?name=p",
        "application/octet-stream",
        &update.patch,
    );
    let fw = fw["id"].as_i64().unwrap();
    let keys = device_keys(2, 10);
    let req = harness::campaign_request("first", fw, &keys);
    let (st, c) = server.post(
        "/api/campaigns",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(st, 201, "{c}");
    let id = c["id"].as_i64().unwrap();
    let again = harness::campaign_request("second", fw, &keys[1..]);
    let (st, v) = server.post(
        "/api/campaigns",
        "application/json",
        again.to_string().as_bytes(),
    );
    assert_eq!(st, 409, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains(&format!("is in campaign {id}")));
    // No root key in the clear anywhere in the database (WAL included).
    server.kill();
    for f in ["fuota.db", "fuota.db-wal"] {
        let bytes = std::fs::read(db_path.with_file_name(f)).unwrap_or_default();
        for (_, k) in &keys {
            assert!(!bytes.windows(16).any(|w| w == k), "{f} holds a root key");
            let hex = hex::encode(k).into_bytes();
            assert!(
                !bytes.windows(32).any(|w| w == hex.as_slice()),
                "{f} holds a root key in hex"
            );
        }
    }
    // Started with another server key, the campaign cannot be resumed: it fails, saying why.
    let mut other = setup.clone();
    other.server_key = "22".repeat(32);
    server.restart_with(other);
    let (_, v) = server.get(&format!("/api/campaigns/{id}"));
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("wrong server key"),
        "{v}"
    );
}
