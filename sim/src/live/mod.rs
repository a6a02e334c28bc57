//! `fuota-sim live`: the world in scaled real time against real services. Simulated time
//! runs `K` times faster than the wall clock ([`clock`]); events are handled when their time
//! comes, and between them the driver waits on its sockets. Each simulated gateway speaks
//! Semtech's UDP protocol to a bridge (`fuota-gateway-bridge`, or ChirpStack's) through a
//! [`forwarder::Forwarder`]: keepalives, the frames it decodes, its status, and the frames
//! the server gives it (PULL_RESP, judged by the world as a gateway's queue judges them, and
//! answered with TX_ACK). The simulated network server plays ChirpStack's MQTT application
//! integration ([`backend::LiveBackend`], [`integration`]), so `fuota server` runs against
//! the world unchanged: its unicast through the integration, its multicast through the
//! gateways.
//!
//! The driver is a thin loop over the world and the forwarders: reader threads (one per
//! socket, one for MQTT) feed one channel, which the loop waits on until the next event.

pub mod backend;
pub mod clock;
pub mod forwarder;
pub mod integration;
pub mod report;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fuota_gateway_bridge::Eui64;
use fuota_server::engine::DevEui;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use self::backend::{LiveBackend, NetworkServer};
use self::clock::ScaledClock;
use self::forwarder::{tx_modulation, tx_time, Datagram, Forwarder, Socket};
use self::report::LiveReport;
use crate::radio::Micros;
use crate::scenario::{build_with, Built, Scenario};
use crate::world::{Band, World};

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://host:port` (TLS is not built in).
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Everything a live run needs besides its scenario.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The broker, for the simulated network server's integration (none with an external
    /// network server).
    pub mqtt: Option<MqttSettings>,
    /// The bridge's UDP address (packet-forwarder side).
    pub bridge: SocketAddr,
    /// Simulated seconds per wall second.
    pub scale: f64,
    /// Unix ms where the simulated and the wall clock agree (the service's
    /// `clock.origin_unix_ms`).
    pub origin_unix_ms: i64,
    /// The ChirpStack application whose integration is played.
    pub application_id: String,
    /// Gateway `i` has EUI `gateway_eui_base + i`.
    pub gateway_eui_base: u64,
    pub network_server: NetworkServer,
    /// Where the devices, the campaign request, the firmware and the report are written.
    pub out_dir: Option<PathBuf>,
    /// Stop once every device has confirmed the new image and this much simulated time has
    /// passed since (so that the service hears their versions).
    pub until_updated: Option<Micros>,
    /// Stop after this much simulated time at the latest.
    pub duration: Micros,
}

/// What the run tells its caller once it is up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ready {
    pub origin_unix_ms: i64,
    pub time_scale: f64,
    /// Simulated GPS ms at the start.
    pub start_gps_ms: u64,
    pub gateways: Vec<String>,
    pub devices: usize,
}

/// Ends a live run from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle(Sender<Input>);

impl StopHandle {
    pub fn stop(&self, why: &str) {
        let _ = self.0.send(Input::Stop(why.to_string()));
    }
}

/// What the reader threads hand the loop.
#[derive(Debug)]
pub enum Input {
    Datagram {
        gw: usize,
        socket: Socket,
        bytes: Vec<u8>,
    },
    Mqtt {
        topic: String,
        payload: Vec<u8>,
    },
    MqttConnected,
    MqttError(String),
    Stop(String),
}

/// Tells the reader threads to end when the run does, however it ends.
struct StopThreads(Arc<AtomicBool>);

impl Drop for StopThreads {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Longest the loop sleeps without looking at the clock.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// One gateway's two sockets.
struct Sockets {
    up: UdpSocket,
    down: UdpSocket,
}

impl Sockets {
    fn send(&self, d: &Datagram) {
        let s = match d.socket {
            Socket::Up => &self.up,
            Socket::Down => &self.down,
        };
        // UDP: a datagram the bridge does not take is lost, as on a real backhaul. (A
        // bridge not yet listening refuses the connected socket's sends for a moment.)
        let _ = s.send(&d.bytes);
    }
}

fn mqtt_options(m: &MqttSettings) -> Result<MqttOptions> {
    let Some(rest) = m.url.strip_prefix("mqtt://") else {
        bail!(
            "--mqtt {}: give mqtt://host:port (TLS is not built in)",
            m.url
        );
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().with_context(|| format!("port in {}", m.url))?),
        None => (rest, 1883),
    };
    let mut o = MqttOptions::new(&m.client_id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_clean_session(true);
    if let Some(u) = &m.username {
        o.set_credentials(u, m.password.clone().unwrap_or_default());
    }
    Ok(o)
}

fn spawn_socket_reader(
    gw: usize,
    socket: Socket,
    s: UdpSocket,
    tx: Sender<Input>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            match s.recv(&mut buf) {
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if tx.send(Input::Datagram { gw, socket, bytes }).is_err() {
                        break;
                    }
                }
                // A read timeout (to look at `stop`), or the ICMP refusal of a bridge that
                // is not listening yet: go on.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

fn spawn_mqtt(
    mut connection: rumqttc::Connection,
    client: Client,
    filter: String,
    tx: Sender<Input>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let ev = match connection.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => ev,
                Err(rumqttc::RecvTimeoutError::Timeout) => continue,
                Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            };
            let input = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                    Input::MqttConnected
                }
                Ok(Event::Incoming(Packet::Publish(p))) => Input::Mqtt {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                },
                Ok(_) => continue,
                Err(e) => {
                    let _ = tx.send(Input::MqttError(e.to_string()));
                    // The next poll reconnects: not in a tight loop.
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if tx.send(input).is_err() {
                break;
            }
        }
    });
}

/// The files a live run leaves for the operator (or a test): the devices as the service's
/// API takes them, a campaign request that matches the devices' flash layout, the
/// gateways, the devices' ABP sessions (for a network server of one's own), the firmware
/// pair and its signed patch.
fn write_files(
    dir: &Path,
    s: &Scenario,
    world: &World<LiveBackend>,
    built: &Built,
    ready: &Ready,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        // Whole or not at all: a reader polls for these files.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    };
    let devices: Vec<serde_json::Value> = built
        .devices
        .iter()
        .map(|d| {
            let key = match &d.root_key {
                fuota_server::engine::RootKey::AppKey(k)
                | fuota_server::engine::RootKey::GenAppKey(k) => k,
            };
            json!({"dev_eui": format!("{:016x}", d.dev_eui), "app_key": hex(key.as_bytes())})
        })
        .collect();
    let c = &s.campaign;
    let redundancy = match c.redundancy {
        Some(n) => json!({ "fixed": n }),
        None => json!({ "loss": c.planned_loss, "success": c.success }),
    };
    let request = json!({
        "name": format!("{} (fuota-sim live)", s.name),
        "lorawan_version": "1.1",
        "package_version": 2,
        "region": s.region.to_lowercase(),
        "dr": c.dr,
        "frequency": built.plan.freq_hz,
        "window": { "duration": format!("{}s", c.setup.0 + c.window.0) },
        "setup": format!("{}s", c.setup.0),
        "redundancy": redundancy,
        "devices": devices,
    });
    let gateways: Vec<serde_json::Value> = ready
        .gateways
        .iter()
        .zip(&built.gateways)
        .map(|(id, p)| json!({"gateway_id": id, "x": p.x, "y": p.y}))
        .collect();
    let sessions: Vec<serde_json::Value> = world
        .devices
        .iter()
        .map(|d| {
            json!({
                "dev_eui": format!("{:016x}", d.eui),
                "dev_addr": format!("{:08x}", d.addr),
                "nwk_s_key": hex(&d.keys.nwk_s_key),
                "app_s_key": hex(&d.keys.app_s_key),
            })
        })
        .collect();
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write("devices.json", &pretty(&json!(devices)))?;
    write("campaign.json", &pretty(&request))?;
    write("gateways.json", &pretty(&json!(gateways)))?;
    write("sessions.json", &pretty(&json!(sessions)))?;
    write("old.bin", &built.update.old)?;
    write("new.bin", &built.update.new)?;
    write("patch.bin", &built.update.patch)?;
    // Last: its presence says the rest is there and the gateways are up.
    write("ready.json", &pretty(&json!(ready)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs scenario `s` live until `until_updated`, `duration` or a stop; `ready` is called once
/// the gateways and the MQTT client are started (and the files written), with a handle that
/// stops the run.
// The driver: it reads the wall clock (the forwarders' timers) and the scaled one.
#[allow(clippy::disallowed_methods)]
pub fn run(
    s: &Scenario,
    o: &LiveOptions,
    ready: impl FnOnce(&Ready, StopHandle),
) -> Result<LiveReport> {
    if !(o.scale.is_finite() && o.scale > 0.0) {
        bail!("the time scale must be positive");
    }
    let clock = ScaledClock::new(o.scale, o.origin_unix_ms);
    let region = s.region()?;
    let band = Band(region);
    let start_gps_ms = clock.now() / 1000;
    let (mut world, built) = build_with(s, start_gps_ms, |b| {
        let ids = (0..b.gateways.len() as u64)
            .map(|i| Eui64::from_u64(o.gateway_eui_base.wrapping_add(i)))
            .collect();
        Ok(LiveBackend::new(
            &o.application_id,
            o.network_server,
            clock,
            band,
            (b.campaign.freq_hz, b.campaign.dr),
            ids,
            s.seed,
        ))
    })?;
    // Times on the wire are wall-clock milliseconds: K ms of simulated time.
    world.track_gateway_queues((o.scale.max(1.0) * 1000.0).ceil() as Micros);
    let ids: Vec<Eui64> = world.backend.gateway_ids().to_vec();
    let known: HashSet<DevEui> = built.devices.iter().map(|d| d.dev_eui).collect();

    let (tx, rx) = mpsc::channel::<Input>();
    let stop_threads = Arc::new(AtomicBool::new(false));
    let _stop_threads_on_return = StopThreads(stop_threads.clone());
    let wall_start = Instant::now();
    let local: SocketAddr = if o.bridge.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let mut sockets = Vec::with_capacity(ids.len());
    let mut forwarders = Vec::with_capacity(ids.len());
    for (gw, id) in ids.iter().enumerate() {
        let open = || -> Result<UdpSocket> {
            let u = UdpSocket::bind(local)?;
            u.connect(o.bridge)
                .with_context(|| format!("UDP to the bridge at {}", o.bridge))?;
            u.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(u)
        };
        let (up, down) = (open()?, open()?);
        spawn_socket_reader(
            gw,
            Socket::Up,
            up.try_clone()?,
            tx.clone(),
            stop_threads.clone(),
        );
        spawn_socket_reader(
            gw,
            Socket::Down,
            down.try_clone()?,
            tx.clone(),
            stop_threads.clone(),
        );
        sockets.push(Sockets { up, down });
        forwarders.push(Forwarder::new(
            *id,
            wall_start,
            (s.seed as u16) ^ (gw as u16) << 8,
        ));
    }
    let client = match (&o.mqtt, o.network_server) {
        (Some(m), NetworkServer::Simulated) => {
            let (client, connection) = Client::new(mqtt_options(m)?, 10_000);
            let filter = integration::command_filter(&o.application_id);
            spawn_mqtt(
                connection,
                client.clone(),
                filter,
                tx.clone(),
                stop_threads.clone(),
            );
            Some(client)
        }
        (None, NetworkServer::Simulated) => {
            bail!("the simulated network server needs a broker (--mqtt)")
        }
        (_, NetworkServer::External) => None,
    };

    let info = Ready {
        origin_unix_ms: o.origin_unix_ms,
        time_scale: o.scale,
        start_gps_ms,
        gateways: ids.iter().map(|g| g.to_string()).collect(),
        devices: world.devices.len(),
    };
    if let Some(dir) = &o.out_dir {
        write_files(dir, s, &world, &built, &info)?;
    }
    ready(&info, StopHandle(tx.clone()));
    drop(tx);

    let end_at = world.now + o.duration;
    let mut all_updated_at: Option<Micros> = None;
    let mut mqtt_errors = 0u64;
    let stopped_by = loop {
        world.run_until(clock.now());
        flush(
            &mut world,
            &mut forwarders,
            &sockets,
            client.as_ref(),
            &clock,
            band,
        );
        let wall = Instant::now();
        for (f, sock) in forwarders.iter_mut().zip(&sockets) {
            if f.poll_timeout() <= wall {
                for d in f.handle_timeout(wall, clock.unix_us_of_sim(world.now)) {
                    sock.send(&d);
                }
            }
        }
        if world.now >= end_at {
            break "duration".to_string();
        }
        if let Some(linger) = o.until_updated {
            let done = world.devices.iter().all(|d| d.stats.confirmed_at.is_some());
            match (done, all_updated_at) {
                (true, None) => all_updated_at = Some(world.now),
                (true, Some(t)) if world.now >= t + linger => break "updated".to_string(),
                _ => {}
            }
        }
        let now_sim = clock.now();
        let until_event = world
            .next_event_at()
            .map_or(MAX_WAIT, |t| clock.wall_span(t.saturating_sub(now_sim)));
        let until_timer = forwarders
            .iter()
            .map(|f| f.poll_timeout().saturating_duration_since(wall))
            .min()
            .unwrap_or(MAX_WAIT);
        let wait = until_event.min(until_timer).min(MAX_WAIT);
        let mut input = match rx.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break "inputs closed".to_string(),
        };
        let mut stop = None;
        while let Some(i) = input.take() {
            // Everything due before the input happens first.
            world.run_until(clock.now());
            match i {
                Input::Datagram { gw, socket, bytes } => {
                    // A PULL_RESP: the world judges its frame, the forwarder answers.
                    if let Some(req) = forwarders[gw].handle_datagram(socket, &bytes) {
                        let t = req.txpk;
                        let result = world.gateway_transmit(
                            gw,
                            tx_time(t.timing, world.now, &clock),
                            t.frequency,
                            tx_modulation(t.modulation),
                            f64::from(t.power),
                            t.data,
                        );
                        sockets[gw].send(&forwarders[gw].tx_ack(req.token, result));
                    }
                }
                Input::Mqtt { topic, payload } => {
                    let taken = world.with_backend(|b| {
                        b.handle_command(&topic, &payload, |d| known.contains(&d))
                    });
                    if let Err(e) = taken {
                        eprintln!("fuota-sim live: {topic}: command refused ({})", e.name());
                    }
                }
                Input::MqttConnected => eprintln!("fuota-sim live: connected to the broker"),
                Input::MqttError(e) => {
                    mqtt_errors += 1;
                    if mqtt_errors == 1 || mqtt_errors % 30 == 0 {
                        eprintln!("fuota-sim live: MQTT: {e} ({mqtt_errors} errors)");
                    }
                }
                Input::Stop(why) => stop = Some(why),
            }
            input = rx.try_recv().ok();
        }
        if let Some(why) = stop {
            break why;
        }
    };
    if let Some(c) = &client {
        let _ = c.disconnect();
    }
    let report = LiveReport::new(
        s,
        &world,
        &built,
        &forwarders,
        &info,
        &stopped_by,
        wall_start.elapsed().as_secs_f64(),
    );
    if let Some(dir) = &o.out_dir {
        let path = dir.join("report.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// Sends what the world's step produced: uplink events to the broker, the gateways'
/// receptions to the bridge.
fn flush(
    world: &mut World<LiveBackend>,
    forwarders: &mut [Forwarder],
    sockets: &[Sockets],
    client: Option<&Client>,
    clock: &ScaledClock,
    band: Band,
) {
    for (topic, payload) in world.backend.take_publishes() {
        let Some(client) = client else { continue };
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            eprintln!("fuota-sim live: uplink event not queued: {e}");
        }
    }
    for h in world.backend.take_heard() {
        let channel = band
            .uplink_channels()
            .iter()
            .position(|&f| f == h.freq_hz)
            .unwrap_or(0) as u32;
        let d = forwarders[h.gw].uplink(&h.frame(), channel, clock);
        sockets[h.gw].send(&d);
    }
}
