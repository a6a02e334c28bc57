//! The service end to end: a 20-device campaign through Mosquitto, with the state in SQLite
//! and in PostgreSQL; the status page in headless Chromium (screenshot kept under the
//! target directory).

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::process::Command;
use std::time::Duration;

use harness::{assert_all_updated, scratch, serial, service, PgDb, Server, ServerSetup};
use standin::{device_keys, small_update, Options, StandIn};

fn twenty_devices(db_url: Option<String>, tag: &str, screenshot: bool) {
    let Some(mqtt) = service("FUOTA_MQTT_URL", 1883) else {
        return;
    };
    let _one = serial();
    let dir = scratch(tag);
    let db_url = db_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("fuota.db").display()));
    let setup = ServerSetup::new(dir.clone(), &mqtt, &db_url, tag);
    let mut server = Server::start(setup.clone());
    let update = small_update();
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        20,
        setup.scale,
        setup.origin_unix_ms,
    );
    // The gateways refuse the first two frames: they go again with new FCnts.
    opts.refuse_first = 2;
    let standin = StandIn::start(&mqtt, opts, &update);
    let id = server.create_campaign("twenty devices", &update.patch, &device_keys(20, 1));
    let (status, took) = server.wait_finished(id, Duration::from_secs(120));
    let stats = standin.stats();
    eprintln!(
        "{tag}: 20 devices updated in {took:?} (wall), {} multicast frames, {} unicast, {} uplinks",
        stats.multicast.len(),
        stats.unicast,
        stats.uplinks
    );
    assert_all_updated(&status, 20, &stats, &server.log_text());
    // What went out is accounted for: the refused frames, and every other frame acked.
    // Two frames, each refused by both gateways.
    assert_eq!(stats.refused, 4);
    assert_eq!(status["frames"]["refused"], 2, "{status}");
    assert_eq!(status["counters"]["refused_frames"], 2, "{status}");
    // Both gateways were used: one announced itself, the other was learned from rxInfo.
    for gw in ["aa555a0000000001", "aa555a0000000002"] {
        assert!(
            stats.multicast.iter().any(|(g, _)| g == gw),
            "{gw} not used"
        );
    }
    // A device's log tells its story.
    let eui = format!("{:016x}", device_keys(20, 1)[3].0);
    let (st, log) = server.get(&format!("/api/campaigns/{id}/devices/{eui}/log"));
    assert_eq!(st, 200);
    let text: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(
        text.iter().any(|t| t.starts_with("downlink on port 201")),
        "{text:?}"
    );
    assert!(text.contains(&"updated"), "{text:?}");
    if screenshot {
        status_page_screenshot(&server, &dir, id);
    }
}

fn status_page_screenshot(server: &Server, dir: &std::path::Path, id: i64) {
    let Some(chromium) = std::env::var("FUOTA_CHROMIUM")
        .ok()
        .filter(|c| !c.is_empty())
    else {
        eprintln!("skipped the screenshot: FUOTA_CHROMIUM is not set");
        return;
    };
    assert!(
        std::path::Path::new(&chromium).exists(),
        "FUOTA_CHROMIUM={chromium} does not exist"
    );
    let url = format!("{}/?token={}", server.base(), server.setup.token);
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&out);
    let chrome = |extra: &[&str]| {
        let profile = dir.join(format!("chromium-{}", extra.len()));
        let mut c = Command::new(&chromium);
        c.args([
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
        .args(extra)
        .arg(&url);
        let o = c.output().expect("chromium runs");
        assert!(
            o.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let dom = chrome(&["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(html.contains("twenty devices"), "{html}");
    assert!(html.contains("20 / 20 updated"), "{html}");
    assert!(html.contains(&format!("campaign-{id}")));
    assert!(html.contains("devices updated over time"));
    assert_eq!(html.matches("class=\"p-updated\"").count(), 20);
    chrome(&[&format!("--screenshot={}", out.display())]);
    let png = std::fs::read(&out).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1280, 1400));
    eprintln!("status page screenshot: {}", out.display());
}

#[test]
fn twenty_devices_through_mosquitto_with_sqlite() {
    twenty_devices(None, "sqlite", true);
}

#[test]
fn twenty_devices_through_mosquitto_with_postgresql() {
    let Some(admin) = service("FUOTA_PG_URL", 5432) else {
        return;
    };
    if service("FUOTA_MQTT_URL", 1883).is_none() {
        return;
    }
    let db = PgDb::create(&admin, "twenty");
    twenty_devices(Some(db.url.clone()), "pg", false);
}
