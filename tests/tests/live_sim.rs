//! The whole stack live: Mosquitto, `fuota-gateway-bridge`, `fuota server` (SQLite) and
//! `fuota-sim live` with `sim/examples/live.toml` (20 devices running the real agent, two
//! gateways speaking the packet forwarder's UDP protocol to the bridge, the simulator's
//! network server playing ChirpStack's MQTT integration) at 40 times real time. The
//! campaign is created over the HTTP API with the devices and the signed patch (two MCUboot
//! images) that the simulator wrote; every device must end with the new image in its
//! primary slot, and the run must take under three minutes of wall time.
//!
//! Needs FUOTA_MQTT_URL (`eval "$(scripts/services)"`; .ci/run sets it): unset, the test
//! says so and passes; set but unreachable, it fails. It builds the three binaries first
//! (with cargo, as the stack-depth test builds its probe); the build is not timed.

// A driver of real processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const TIME_SCALE: f64 = 40.0;
/// The whole run, bridge start to the simulator's report.
const LIMIT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The broker from FUOTA_MQTT_URL; `None` (skip) when unset, a failure when it does not
/// answer.
fn broker() -> Option<String> {
    let url = match std::env::var("FUOTA_MQTT_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            eprintln!("skipped: FUOTA_MQTT_URL is not set (scripts/services starts Mosquitto)");
            return None;
        }
    };
    let host_port = url
        .strip_prefix("mqtt://")
        .unwrap_or_else(|| panic!("FUOTA_MQTT_URL={url}: mqtt://host:port"));
    let host_port = host_port
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1");
    let addr: SocketAddr = host_port
        .parse()
        .unwrap_or_else(|_| panic!("FUOTA_MQTT_URL={url}: host:port"));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "FUOTA_MQTT_URL={url} is set but nothing answers there (start it with scripts/services)"
    );
    Some(url)
}

/// Builds the workspace's binaries with cargo, in the test's own profile and with the
/// features `scripts/test` builds everything with (so that its build is reused); their paths
/// by name.
fn build_binaries() -> Vec<(String, PathBuf)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--workspace",
        "--all-features",
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.stderr(Stdio::inherit()).output().expect("run cargo");
    assert!(out.status.success(), "building the binaries failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_string();
            let exe = m["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A child process killed when the test ends, its output in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Its stderr (and its stdout, unless the caller takes it) goes to `{dir}/{name}.log`.
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path, stdout_to_log: bool) -> Self {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        cmd.stderr(f.try_clone().expect("log"));
        if stdout_to_log {
            cmd.stdout(f);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Self { name, child, log }
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The end is what tells.
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        )
    }

    fn assert_running(&mut self, others: &[&Proc]) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let logs: Vec<String> = others.iter().map(|p| p.log_text()).collect();
            panic!(
                "{} exited: {status}\n{}\n{}",
                self.name,
                self.log_text(),
                logs.join("\n")
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let mut r = agent()
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let v = r
            .body_mut()
            .read_json::<Value>()
            .map_err(|e| e.to_string())?;
        Ok((status, v))
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut r = agent()
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(body)
            .expect("POST");
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn twenty_simulated_devices_take_a_real_patch_through_the_whole_stack() {
    let Some(mqtt) = broker() else {
        return;
    };
    let bins = build_binaries();
    let bin = |name: &str| {
        bins.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("cargo built no {name}"))
    };
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("live-sim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let sim_dir = dir.join("sim");
    // Names of our own on a broker others may share.
    let tag = format!("live{}", std::process::id());
    let app = format!("app-{tag}");
    let gateway_eui = format!("5e{:014x}", std::process::id() as u64 * 16);
    let udp = free_udp_port();
    let http = free_tcp_port();
    let origin_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64;

    let t0 = Instant::now();
    let mut bridge_cmd = Command::new(bin("fuota-gateway-bridge"));
    bridge_cmd
        .args(["--udp-bind", &format!("127.0.0.1:{udp}")])
        .args(["--mqtt-url", &mqtt])
        .args(["--topic-prefix", &tag])
        .args(["--client-id-prefix", &format!("br-{tag}")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let mut bridge = Proc::spawn("bridge", bridge_cmd, &dir, true);

    let mut sim_cmd = Command::new(bin("fuota-sim"));
    sim_cmd
        .arg("live")
        .arg(workspace_root().join("sim/examples/live.toml"))
        .args(["--mqtt", &mqtt])
        .args(["--time-scale", &TIME_SCALE.to_string()])
        .args(["--origin-unix-ms", &origin_unix_ms.to_string()])
        .args(["--bridge", &format!("127.0.0.1:{udp}")])
        .args(["--application", &app])
        .args(["--gateway-eui", &gateway_eui])
        .arg("--out")
        .arg(&sim_dir)
        .args(["--stdin-stop", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut sim = Proc::spawn("fuota-sim", sim_cmd, &dir, false);
    wait_for("the simulator's files", Duration::from_secs(60), || {
        sim.assert_running(&[&bridge]);
        sim_dir.join("ready.json").exists()
    });
    let gateways: Value =
        serde_json::from_slice(&std::fs::read(sim_dir.join("gateways.json")).unwrap()).unwrap();
    let gw0 = gateways[0]["gateway_id"].as_str().unwrap().to_string();

    // The service: both clocks from the same origin at the same scale; multicast through
    // one gateway (two sending the same frame at once would collide at the devices that
    // hear both alike); timers in campaign seconds for devices that send every minute.
    let config = format!(
        r#"[mqtt]
url = "{mqtt}"
client_id = "fuota-{tag}"
[chirpstack]
applications = ["{app}"]
region_prefix = "{tag}"
gateways = ["{gw0}"]
[database]
url = "sqlite://{db}"
[http]
listen = "127.0.0.1:{http}"
token = "live-token"
[keys]
server_key = "{key}"
[clock]
scale = {TIME_SCALE}
origin_unix_ms = {origin_unix_ms}
[campaign]
retry_s = 150
max_attempts = 8
reboot_wait_s = 30
status_wait_s = 60
block_ack_delay = 1
multicast_lead_ms = 10000
unicast_repair_max_devices = 3
"#,
        db = dir.join("fuota.db").display(),
        key = "22".repeat(32),
    );
    let config_path = dir.join("fuota.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut server_cmd = Command::new(bin("fuota"));
    server_cmd
        .arg("server")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("FUOTA_SERVER_") {
            server_cmd.env_remove(k);
        }
    }
    let mut server = Proc::spawn("server", server_cmd, &dir, true);
    let api = Api {
        base: format!("http://127.0.0.1:{http}"),
        token: "live-token".into(),
    };
    wait_for("the service's health", Duration::from_secs(30), || {
        server.assert_running(&[&bridge, &sim]);
        api.get("/api/health").is_ok_and(|(_, v)| v["ok"] == true)
    });

    // The campaign: the simulator's patch and devices, the request it wrote.
    let patch = std::fs::read(sim_dir.join("patch.bin")).unwrap();
    let (st, fw) = api.post(
        "/api/firmware?name=live.patch",
        "application/octet-stream",
        &patch,
    );
    assert_eq!(st, 201, "{fw}");
    assert_eq!(fw["target_version"], "1.1.0", "{fw}");
    let mut req: Value =
        serde_json::from_slice(&std::fs::read(sim_dir.join("campaign.json")).unwrap()).unwrap();
    assert_eq!(req["devices"].as_array().map(Vec::len), Some(20));
    req["firmware_id"] = fw["id"].clone();
    req["application_id"] = Value::String(app.clone());
    let (st, c) = api.post(
        "/api/campaigns",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(st, 201, "{c}\n{}", server.log_text());
    let id = c["id"].as_i64().unwrap();

    let status = loop {
        let (st, v) = api
            .get(&format!("/api/campaigns/{id}"))
            .expect("campaign status");
        assert_eq!(st, 200, "{v}");
        if v["state"] != "running" {
            break v;
        }
        server.assert_running(&[&bridge, &sim]);
        sim.assert_running(&[&bridge, &server]);
        bridge.assert_running(&[&sim, &server]);
        if t0.elapsed() > LIMIT {
            panic!(
                "campaign {id} not finished after {LIMIT:?}: {}\n{}\n{}\n{}",
                serde_json::to_string_pretty(&v).unwrap(),
                server.log_text(),
                sim.log_text(),
                bridge.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    // The simulator's report: close its input, read what it prints.
    drop(sim.child.stdin.take());
    let mut out = String::new();
    sim.child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("the report");
    let _ = sim.child.wait();
    let took = t0.elapsed();
    let report: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("report: {e}\n{out}\n{}", sim.log_text()));
    eprintln!(
        "live: 20 devices, campaign {} in {took:.1?} of wall time ({} simulated s at x{TIME_SCALE}); \
         frames {}, counters {}",
        status["state"],
        report["simulated_s"],
        status["frames"],
        status["counters"]
    );

    let progress = status["device_progress"].as_array().expect("devices");
    let not: Vec<&Value> = progress
        .iter()
        .filter(|d| d["phase"] != "updated")
        .collect();
    assert!(
        status["state"] == "finished" && not.is_empty(),
        "not updated: {}\n{}",
        serde_json::to_string_pretty(&not).unwrap(),
        server.log_text()
    );
    // Every device holds the new image (its own hash checked) in its primary slot: the
    // image the simulator wrote, hashed here.
    let new_sha: String = Sha256::digest(std::fs::read(sim_dir.join("new.bin")).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let devices = report["per_device"].as_array().expect("per_device");
    assert_eq!(devices.len(), 20);
    for d in devices {
        assert_eq!(d["primary"]["sha256"], new_sha.as_str(), "{d}");
        assert_eq!(d["primary"]["verified"], true, "{d}");
        assert_eq!(d["primary"]["version"], "1.1.0+0", "{d}");
        assert_eq!(d["runs_new_image"], true, "{d}");
    }
    assert_eq!(report["running_new_image"], 20);
    // The multicast went through the bridge: gateway 0's forwarder took the frames.
    let fwd0 = &report["gateways"][0]["forwarder"];
    assert!(fwd0["tx_accepted"].as_u64() > Some(0), "{fwd0}");
    assert!(
        report["gateways"][0]["multicast_frames"].as_u64() > Some(0),
        "{}",
        report["gateways"][0]
    );
    assert!(
        took < LIMIT,
        "the run took {took:?} of wall time (limit {LIMIT:?})"
    );
}
