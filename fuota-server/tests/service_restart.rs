// A driver of real processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

//! The service killed (SIGKILL) in the middle of a campaign and started again: it resumes
//! from its write-ahead log and completes, with no multicast FCnt used twice and no device
//! broken by a setup sent twice. And the broker restarted mid-campaign.

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{assert_all_updated, free_port, scratch, serial, service, PgDb, Server, ServerSetup};
use standin::{device_keys, small_update, Options, StandIn};

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn killed_twice(db_url: Option<String>, tag: &str) {
    let Some(mqtt) = service("FUOTA_MQTT_URL", 1883) else {
        return;
    };
    let _one = serial();
    let dir = scratch(tag);
    let db_url = db_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("fuota.db").display()));
    let mut setup = ServerSetup::new(dir, &mqtt, &db_url, tag);
    // Room in the setup for the first outage on a loaded machine.
    setup.setup_s = 150;
    let mut server = Server::start(setup.clone());
    let update = small_update();
    let n = 12;
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        n,
        setup.scale,
        setup.origin_unix_ms,
    );
    opts.seed = 3;
    opts.refuse_first = 1;
    let standin = StandIn::start(&mqtt, opts, &update);
    let id = server.create_campaign("killed twice", &update.patch, &device_keys(n, 3));
    let t0 = Instant::now();
    // During the unicast setup.
    wait_for("setup under way", Duration::from_secs(30), || {
        standin.stats().unicast >= n
    });
    server.kill();
    let at_first_kill = standin.stats();
    std::thread::sleep(Duration::from_millis(700));
    server.restart();
    // During the multicast.
    wait_for("multicast under way", Duration::from_secs(60), || {
        standin.stats().multicast.len() >= 2
    });
    server.kill();
    let at_second_kill = standin.stats();
    std::thread::sleep(Duration::from_millis(700));
    server.restart();
    let (status, _) = server.wait_finished(id, Duration::from_secs(120));
    let stats = standin.stats();
    eprintln!(
        "{tag}: killed after {} unicast, then after {} multicast frames; {n} devices updated in \
         {:?}; {} multicast frames in all",
        at_first_kill.unicast,
        at_second_kill.multicast.len(),
        t0.elapsed(),
        stats.multicast.len()
    );
    let log = server.log_text();
    assert!(log.matches("resumed from").count() >= 2, "{log}");
    assert!(!log.contains("differ from the log"), "{log}");
    assert!(
        !log.contains("below"),
        "an FCnt was about to be reused\n{log}"
    );
    // Killed in the middle indeed.
    assert!(at_second_kill.updated.len() < n);
    assert_all_updated(&status, n, &stats, &log);
}

#[test]
fn killed_during_setup_and_multicast_then_completes_with_sqlite() {
    killed_twice(None, "kill-sqlite");
}

#[test]
fn killed_during_setup_and_multicast_then_completes_with_postgresql() {
    let Some(admin) = service("FUOTA_PG_URL", 5432) else {
        return;
    };
    if service("FUOTA_MQTT_URL", 1883).is_none() {
        return;
    }
    let db = PgDb::create(&admin, "kill");
    killed_twice(Some(db.url.clone()), "kill-pg");
}

struct Mosquitto {
    bin: String,
    conf: std::path::PathBuf,
    child: Option<Child>,
    port: u16,
}

impl Mosquitto {
    fn start(bin: &str, dir: &std::path::Path) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut m = Self {
            bin: bin.into(),
            conf,
            child: None,
            port,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_broker_restarts_mid_campaign() {
    let Some(bin) = std::env::var("FUOTA_MOSQUITTO")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!("skipped: FUOTA_MOSQUITTO is not set (scripts/services sets it)");
        return;
    };
    assert!(
        std::path::Path::new(&bin).exists(),
        "FUOTA_MOSQUITTO={bin} does not exist"
    );
    let _one = serial();
    let dir = scratch("broker-restart");
    let mut broker = Mosquitto::start(&bin, &dir);
    let mqtt = format!("mqtt://127.0.0.1:{}", broker.port);
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let mut setup = ServerSetup::new(dir, &mqtt, &db_url, "broker");
    // Room in the setup for the outage and the retries after it.
    setup.setup_s = 150;
    let mut server = Server::start(setup.clone());
    let update = small_update();
    let n = 6;
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        n,
        setup.scale,
        setup.origin_unix_ms,
    );
    opts.seed = 4;
    let standin = StandIn::start(&mqtt, opts, &update);
    let id = server.create_campaign("broker restart", &update.patch, &device_keys(n, 4));
    wait_for("setup under way", Duration::from_secs(30), || {
        standin.stats().unicast >= 2 * n
    });
    broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    broker.spawn();
    let (status, took) = server.wait_finished(id, Duration::from_secs(120));
    let stats = standin.stats();
    eprintln!("broker restart: {n} devices updated in {took:?} after the restart");
    let log = server.log_text();
    assert!(
        log.contains("connection to") && log.matches("MQTT connected").count() >= 2,
        "{log}"
    );
    assert_all_updated(&status, n, &stats, &log);
}
