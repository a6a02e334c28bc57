#![allow(dead_code)]
// A driver of real processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]
//! Running the real `fuota` binary against real services, for the service tests.
//!
//! Services come from the environment (`.ci/run` sets them through `scripts/services`):
//! FUOTA_MQTT_URL (Mosquitto), FUOTA_PG_URL (PostgreSQL, a role that may create databases),
//! FUOTA_CHROMIUM, FUOTA_MOSQUITTO. A test whose variable is unset is skipped with a note; a
//! variable that is set but whose service does not answer fails the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Campaign tests take the machine's two cores: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn reachable(url: &str, default_port: u16) -> Option<SocketAddr> {
    let rest = url.split("://").nth(1)?;
    let host_port = rest.rsplit('@').next()?.split('/').next()?;
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (host_port, default_port),
    };
    let addr: SocketAddr = format!(
        "{}:{port}",
        if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        }
    )
    .parse()
    .ok()?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    Some(addr)
}

/// A service URL from `var`, checked to answer; `None` (skip) when unset.
pub fn service(var: &str, default_port: u16) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            assert!(
                reachable(&url, default_port).is_some(),
                "{var}={url} is set but nothing answers there (start it with scripts/services)"
            );
            Some(url)
        }
        _ => {
            eprintln!("skipped: {var} is not set (scripts/services starts the services)");
            None
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scratch directory under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A fresh PostgreSQL database for one test, dropped at the end.
pub struct PgDb {
    admin: String,
    name: String,
    pub url: String,
}

fn pg_exec(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(url)
            .await
            .expect("PostgreSQL connects");
        sqlx::query(sql).execute(&mut c).await.expect(sql);
        let _ = c.close().await;
    });
}

impl PgDb {
    pub fn create(admin: &str, tag: &str) -> Self {
        let name = format!("fuota_test_{tag}_{}", std::process::id());
        pg_exec(admin, &format!("DROP DATABASE IF EXISTS {name}"));
        pg_exec(admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Self {
            admin: admin.into(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        pg_exec(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Settings of one `fuota server`.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    pub dir: PathBuf,
    pub mqtt_url: String,
    pub db_url: String,
    pub app: String,
    pub prefix: String,
    pub port: u16,
    /// The bootstrap admin token (`http.token`); empty: none configured.
    pub token: String,
    pub scale: f64,
    pub origin_unix_ms: i64,
    pub embedded_broker: Option<u16>,
    /// Campaign seconds from creation to the multicast session.
    pub setup_s: u64,
    /// More lines for the `[mqtt]` section (TLS, credentials).
    pub mqtt_extra: String,
    /// The server key (64 hex digits); empty: a key file in `dir` (`server.key`).
    pub server_key: String,
}

impl ServerSetup {
    pub fn new(dir: PathBuf, mqtt_url: &str, db_url: &str, tag: &str) -> Self {
        Self {
            dir,
            mqtt_url: mqtt_url.into(),
            db_url: db_url.into(),
            app: format!("app-{tag}-{}", std::process::id()),
            prefix: format!("{tag}{}", std::process::id()),
            port: free_port(),
            token: "test-token".into(),
            scale: 10.0,
            origin_unix_ms: fuota_server::service::clock::now_unix_ms(),
            embedded_broker: None,
            setup_s: 90,
            mqtt_extra: String::new(),
            server_key: "11".repeat(32),
        }
    }

    /// The config file: campaign timers in campaign seconds (10x the wall clock).
    pub fn write_config(&self) -> PathBuf {
        let text = format!(
            r#"[mqtt]
url = "{mqtt}"
client_id = "fuota-{prefix}"
{mqtt_extra}
[chirpstack]
applications = ["{app}"]
region_prefix = "{prefix}"
[database]
url = "{db}"
[http]
listen = "127.0.0.1:{port}"
{token}
[keys]
{key}
[clock]
scale = {scale}
origin_unix_ms = {origin}
[campaign]
setup_s = {setup_s}
retry_s = 20
max_attempts = 8
reboot_wait_s = 6
status_wait_s = 10
block_ack_delay = 0
multicast_lead_ms = 1500
unicast_repair_max_devices = 3
"#,
            mqtt = self.mqtt_url,
            prefix = self.prefix,
            app = self.app,
            db = self.db_url,
            port = self.port,
            token = if self.token.is_empty() {
                String::new()
            } else {
                format!("token = \"{}\"", self.token)
            },
            key = if self.server_key.is_empty() {
                format!(
                    "server_key_file = \"{}\"",
                    self.dir.join("server.key").display()
                )
            } else {
                format!("server_key = \"{}\"", self.server_key)
            },
            scale = self.scale,
            origin = self.origin_unix_ms,
            setup_s = self.setup_s,
            mqtt_extra = self.mqtt_extra,
        );
        let path = self.dir.join("fuota.toml");
        std::fs::write(&path, text).expect("config");
        path
    }
}

/// A running `fuota server` child process.
pub struct Server {
    pub setup: ServerSetup,
    child: Option<Child>,
    pub log: PathBuf,
    starts: usize,
}

impl Server {
    pub fn start(setup: ServerSetup) -> Self {
        let mut s = Self {
            log: setup.dir.join("server.log"),
            setup,
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let cfg = self.setup.write_config();
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fuota"));
        cmd.arg("server").arg("--config").arg(&cfg);
        if let Some(p) = self.setup.embedded_broker {
            cmd.arg("--embedded-broker")
                .arg("--broker-listen")
                .arg(format!("127.0.0.1:{p}"));
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("FUOTA_SERVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("fuota server starts"));
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("fuota server exited: {status}\n{}", self.log_text());
                }
            }
            if let Ok(v) = self.try_get("/api/health") {
                if v["ok"] == true {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server not up\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            let _ = c.wait();
        }
    }

    /// Starts again with other settings (the same log file).
    pub fn restart_with(&mut self, setup: ServerSetup) {
        self.kill();
        self.setup = setup;
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.setup.port)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into()
    }

    fn try_get(&self, path: &str) -> Result<Value, String> {
        let mut r = Self::agent()
            .get(format!("{}{path}", self.base()))
            .header("Authorization", format!("Bearer {}", self.setup.token))
            .call()
            .map_err(|e| e.to_string())?;
        r.body_mut().read_json::<Value>().map_err(|e| e.to_string())
    }

    /// GET with the token: (status, JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = Self::agent()
            .get(format!("{}{path}", self.base()))
            .header("Authorization", format!("Bearer {}", self.setup.token))
            .call()
            .expect("GET");
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    }

    /// A request with another token (`None`: no token): (status, JSON).
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base());
        let auth = token.map(|t| format!("Bearer {t}"));
        let agent = Self::agent();
        let r = if method == "GET" {
            let mut q = agent.get(&url);
            if let Some(a) = &auth {
                q = q.header("Authorization", a);
            }
            q.call()
        } else {
            let mut q = agent.post(&url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                q = q.header("Authorization", a);
            }
            // No body: an empty one.
            q.send(body.map_or_else(String::new, Value::to_string).as_bytes())
        };
        let mut r = r.expect("HTTP request");
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    }

    /// Runs `fuota` with these arguments against this server (with its token); stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_fuota"))
            .args(args)
            .env("FUOTA_API_URL", self.base())
            .env("FUOTA_API_TOKEN", &self.setup.token)
            .output()
            .expect("fuota runs");
        assert!(
            o.status.success(),
            "fuota {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Uploads a firmware file with this token: the answer.
    pub fn upload_as(&self, token: &str, data: &[u8]) -> (u16, Value) {
        let mut r = Self::agent()
            .post(format!("{}/api/firmware?name=fw", self.base()))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/octet-stream")
            .send(data)
            .expect("POST");
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    }

    /// The audit log rows of this query, read with this token.
    pub fn audit_as(&self, token: &str, query: &str) -> Vec<Value> {
        let (st, v) = self.call_as(Some(token), "GET", &format!("/api/audit?{query}"), None);
        assert_eq!(st, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Uploads a firmware file; its id.
    pub fn upload(&self, patch: &[u8]) -> i64 {
        let (st, fw) = self.post(
            "/api/firmware?name=patch",
            "application/octet-stream",
            patch,
        );
        assert_eq!(st, 201, "{fw}");
        fw["id"].as_i64().unwrap()
    }

    /// Polls a rollout until `done` says so or `limit` has passed (wall time); returns its
    /// status and how long it took.
    pub fn wait_rollout(
        &mut self,
        id: i64,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> (Value, Duration) {
        let t0 = Instant::now();
        loop {
            let (st, v) = self.get(&format!("/api/rollouts/{id}"));
            assert_eq!(st, 200, "{v}");
            if done(&v) {
                return (v, t0.elapsed());
            }
            assert!(self.is_running(), "the server died\n{}", self.log_text());
            if t0.elapsed() > limit {
                panic!(
                    "rollout {id}: {what} not after {limit:?}: {}\n{}",
                    serde_json::to_string_pretty(&v).unwrap(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The audit log rows of this query (`subject=rollout/1`, ...).
    pub fn audit(&self, query: &str) -> Vec<Value> {
        let (st, v) = self.get(&format!("/api/audit?{query}"));
        assert_eq!(st, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// POST with the token: (status, JSON).
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut r = Self::agent()
            .post(format!("{}{path}", self.base()))
            .header("Authorization", format!("Bearer {}", self.setup.token))
            .header("Content-Type", content_type)
            .send(body)
            .expect("POST");
        let status = r.status().as_u16();
        (
            status,
            r.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    }

    /// Uploads the patch and creates a campaign for `devices`; returns its id.
    pub fn create_campaign(&self, name: &str, patch: &[u8], devices: &[(u64, [u8; 16])]) -> i64 {
        let (st, fw) = self.post(
            "/api/firmware?name=patch",
            "application/octet-stream",
            patch,
        );
        assert_eq!(st, 201, "{fw}");
        assert_eq!(fw["target_version"], "0.9.0", "{fw}");
        let req = campaign_request(name, fw["id"].as_i64().unwrap(), devices);
        let (st, c) = self.post(
            "/api/campaigns",
            "application/json",
            req.to_string().as_bytes(),
        );
        assert_eq!(st, 201, "{c}\n{}", self.log_text());
        c["id"].as_i64().unwrap()
    }

    /// Polls until the campaign is over or `limit` has passed (wall time); returns the
    /// status and how long it took.
    pub fn wait_finished(&mut self, id: i64, limit: Duration) -> (Value, Duration) {
        let t0 = Instant::now();
        loop {
            let (st, v) = self.get(&format!("/api/campaigns/{id}"));
            assert_eq!(st, 200, "{v}");
            if v["state"] != "running" {
                return (v, t0.elapsed());
            }
            assert!(self.is_running(), "the server died\n{}", self.log_text());
            if t0.elapsed() > limit {
                panic!(
                    "campaign {id} not finished after {limit:?}: {}\n{}",
                    serde_json::to_string_pretty(&v).unwrap(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API request for a campaign to these LoRaWAN 1.0.x devices: EU868, DR5 at 869.525 MHz.
pub fn campaign_request(name: &str, firmware_id: i64, devices: &[(u64, [u8; 16])]) -> Value {
    json!({
        "name": name,
        "firmware_id": firmware_id,
        "lorawan_version": "1.0.4",
        "region": "eu868",
        "dr": 5,
        "window": { "duration": "20m" },
        "redundancy": { "loss": 0.1, "success": 0.99 },
        "devices": devices.iter().map(|(eui, key)| json!({
            "dev_eui": format!("{eui:016x}"),
            "gen_app_key": hex::encode(key),
        })).collect::<Vec<_>>(),
    })
}

/// The API request for a rollout of these LoRaWAN 1.0.x devices in percentage waves: EU868,
/// DR5; windows of `window_s` every `every_s` campaign seconds, each wave's setup `setup_s`
/// before its window.
pub fn rollout_request(
    name: &str,
    firmware_id: i64,
    devices: &[(u64, [u8; 16])],
    percent: &[f64],
    (window_s, every_s, setup_s): (u64, u64, u64),
) -> Value {
    json!({
        "name": name,
        "firmware_id": firmware_id,
        "region": "eu868",
        "dr": 5,
        "waves": { "percent": percent },
        "window": { "duration": window_s, "every": every_s },
        "setup": setup_s,
        "seed": 11,
        "devices": devices.iter().map(|(eui, key)| json!({
            "dev_eui": format!("{eui:016x}"),
            "gen_app_key": hex::encode(key),
        })).collect::<Vec<_>>(),
    })
}

/// How many audit rows have this action.
pub fn count_action(rows: &[Value], action: &str) -> usize {
    rows.iter().filter(|r| r["action"] == action).count()
}

/// The wave statuses of a rollout's status.
pub fn wave_statuses(v: &Value) -> Vec<String> {
    v["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Every device of a finished campaign is updated, and the stand-in saw them boot the new
/// image.
pub fn assert_all_updated(status: &Value, n: usize, stats: &super::standin::Stats, log: &str) {
    let progress = status["device_progress"].as_array().expect("devices");
    let not: Vec<&Value> = progress
        .iter()
        .filter(|d| d["phase"] != "updated")
        .collect();
    assert!(
        not.is_empty() && status["state"] == "finished",
        "not updated: {}\nproblems: {:?}\n{log}",
        serde_json::to_string_pretty(&not).unwrap(),
        stats.problems
    );
    assert_eq!(status["devices"]["updated"], n);
    assert_eq!(stats.updated.len(), n, "{:?}", stats.problems);
    assert!(
        stats.fcnt_reused.is_empty(),
        "multicast FCnt reused: {:?}",
        stats.fcnt_reused
    );
    assert!(stats.problems.is_empty(), "{:?}", stats.problems);
}
