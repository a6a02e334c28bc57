#![allow(dead_code)]
//! A ChirpStack stand-in: N devices running the real `fuota-device-agent` on simulated
//! flash, behind ChirpStack's application-integration topics (uplink events out, downlink
//! commands in, delivered one per uplink as class A does) and the Gateway Bridge topics
//! (DownlinkFrame in, DownlinkTxAck out, multicast delivered at its GPS time to the devices
//! whose class C session is open). Time is the service's clock (scaled), so the devices and
//! the service agree on GPS time.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use embedded_storage::nor_flash::NorFlash;
use fuota_codec::keys::{data_block_int_key, mc_ke_key, mc_root_key_lorawan_1_0, Key128};
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentConfig, Event, Layout};
use fuota_device_agent::frag_session::{FragAreas, Via};
use fuota_device_agent::multicast::{McEvent, RadioLimits};
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;
use fuota_server::plan::airtime::Modulation;
use fuota_server::service::clock::{
    gps_of_unix_ms, parse_duration_string, rfc3339_of_unix_ms, unix_ms_of_gps, Clock,
};
use lorawan::keys::AES128;
use lorawan::parser::{parse, DataHeader, DataPayload, FRMPayload, PhyPayload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const SECTOR: usize = 1024;
type Flash = SimFlash<8, SECTOR>;
const SECTORS: usize = 112;
const KB: u32 = 1024;
const LAYOUT: Layout = Layout {
    primary: Region {
        offset: 0,
        len: 32 * KB,
    },
    secondary: Region {
        offset: 32 * KB,
        len: 32 * KB,
    },
    fragments: [FragAreas {
        log: Region {
            offset: 64 * KB,
            len: 16 * KB,
        },
        block: Region {
            offset: 80 * KB,
            len: 8 * KB,
        },
        // 64 spare slots of a DR5 fragment (239 B).
        spare: Region {
            offset: 88 * KB,
            len: 16 * KB,
        },
    }],
    journal: Region {
        offset: 104 * KB,
        len: 4 * KB,
    },
};

/// Two MCUboot images and the signed patch between them (the service's own patch maker).
#[derive(Debug, Clone)]
pub struct Update {
    pub old: Vec<u8>,
    pub new: Vec<u8>,
    pub patch: Vec<u8>,
    pub key: p256::ecdsa::SigningKey,
}

/// A minimal MCUboot image: header, body, protected TLV (security counter), SHA-256 TLV.
fn mcuboot_image(body: &[u8], v: ImageVersion, security_counter: u32) -> Vec<u8> {
    use sha2::Digest;
    let mut img = vec![0u8; 0x200];
    img[..4].copy_from_slice(&0x96f3_b83du32.to_le_bytes());
    img[8..10].copy_from_slice(&0x200u16.to_le_bytes());
    img[10..12].copy_from_slice(&12u16.to_le_bytes());
    img[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
    img[20] = v.major;
    img[21] = v.minor;
    img[22..24].copy_from_slice(&v.revision.to_le_bytes());
    img[24..28].copy_from_slice(&v.build.to_le_bytes());
    img.extend_from_slice(body);
    for field in [0x6908u16, 12, 0x50, 4] {
        img.extend_from_slice(&field.to_le_bytes());
    }
    img.extend_from_slice(&security_counter.to_le_bytes());
    let hash = sha2::Sha256::digest(&img);
    for field in [0x6907u16, 40, 0x10, 32] {
        img.extend_from_slice(&field.to_le_bytes());
    }
    img.extend_from_slice(&hash);
    img
}

fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(8) * 8, 0xff);
    v
}

/// A small update: an 8 KB image where a few hundred bytes change (a patch of ~1 KB).
pub fn small_update() -> Update {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let body: Vec<u8> = (0..8 * 1024).map(|_| rng.gen::<u8>() & 0x3f).collect();
    let mut body2 = body.clone();
    for i in (1000..1400).step_by(3) {
        body2[i] ^= 0x55;
    }
    body2.extend_from_slice(b"version 0.9.0 of the test firmware");
    let v = |minor| ImageVersion {
        major: 0,
        minor,
        revision: 0,
        build: 0,
    };
    let old = mcuboot_image(&body, v(8), 1);
    let new = mcuboot_image(&body2, v(9), 2);
    let key = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).expect("a valid scalar");
    let patch = fuota_server::patch::create(
        &old,
        &new,
        &key,
        &fuota_server::patch::CreateOptions {
            version: v(9),
            security_counter: 2,
            ..Default::default()
        },
    )
    .expect("patch")
    .bytes;
    Update {
        old,
        new,
        patch,
        key,
    }
}

/// What the stand-in does besides playing its part.
#[derive(Debug, Clone)]
pub struct Options {
    pub app: String,
    pub prefix: String,
    pub devices: usize,
    /// Gateways: the first announces itself on `state/conn`, the others are only seen in
    /// uplinks' `rxInfo`.
    pub gateways: Vec<String>,
    pub scale: f64,
    pub origin_unix_ms: i64,
    /// Uplink period of a device with nothing to say (campaign ms).
    pub uplink_period_ms: u64,
    /// Multicast frames lost at each device (deterministic).
    pub multicast_loss: f64,
    /// Every gateway refuses the first this many multicast frames (COLLISION_PACKET).
    pub refuse_first: usize,
    /// Every uplink is published twice.
    pub duplicate_uplinks: bool,
    /// Every third uplink is held back and published after the next one.
    pub reorder_uplinks: bool,
    pub seed: u64,
}

impl Options {
    pub fn new(app: &str, prefix: &str, devices: usize, scale: f64, origin_unix_ms: i64) -> Self {
        Self {
            app: app.into(),
            prefix: prefix.into(),
            devices,
            gateways: vec!["aa555a0000000001".into(), "aa555a0000000002".into()],
            scale,
            origin_unix_ms,
            uplink_period_ms: 4_000,
            multicast_loss: 0.05,
            refuse_first: 0,
            duplicate_uplinks: false,
            reorder_uplinks: false,
            seed: 1,
        }
    }
}

/// What the stand-in saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Every DownlinkFrame: (gateway, multicast FCnt).
    pub multicast: Vec<(String, u32)>,
    /// (gateway, FCnt) pairs that came twice.
    pub fcnt_reused: Vec<(String, u32)>,
    pub refused: usize,
    pub unicast: usize,
    pub uplinks: usize,
    /// Devices that booted the new image.
    pub updated: HashSet<u64>,
    pub problems: Vec<String>,
}

/// The devices' DevEUIs and GenAppKeys (LoRaWAN 1.0.x).
pub fn device_keys(n: usize, seed: u64) -> Vec<(u64, [u8; 16])> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..n)
        .map(|i| (0x70b3_d57e_d000_0000 | (seed << 16) | i as u64, rng.gen()))
        .collect()
}

struct Group {
    addr: u32,
    app: [u8; 16],
    nwk: [u8; 16],
    min: u32,
    max: u32,
    last: Option<u32>,
}

struct Device {
    eui: u64,
    flash: &'static RefCell<Flash>,
    agent: Agent<'static, Flash, 64>,
    cfg: AgentConfig,
    boot_at: u64,
    fcnt_up: u32,
    queue: VecDeque<(u8, Vec<u8>)>,
    next_uplink: u64,
    deliver_at: Option<u64>,
    group: Option<Group>,
    class_c: Option<(u32, u8)>,
    reboot_at: Option<u64>,
    rng: ChaCha8Rng,
    /// An uplink held back, published after this device's next one.
    held: Option<(String, Vec<u8>)>,
}

struct Pending {
    at: u64,
    gateway: String,
    phy: Vec<u8>,
    freq: u32,
    sf: u32,
}

/// Runs until dropped.
pub struct StandIn {
    pub stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl StandIn {
    pub fn start(mqtt_url: &str, opts: Options, update: &Update) -> Self {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2, url, u) = (
            stats.clone(),
            stop.clone(),
            mqtt_url.to_string(),
            update.clone(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(run(url, opts, u, s2, st2));
        });
        Self {
            stats,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }
}

fn agent_config(update: &Update, gen_app_key: [u8; 16], seed: u64) -> AgentConfig {
    let k = Key128::from_bytes(gen_app_key);
    AgentConfig {
        version: Version::V2,
        mc_ke_key: mc_ke_key(&mc_root_key_lorawan_1_0(&k)),
        data_block_int_key: data_block_int_key(&k),
        limits: RadioLimits::EU868,
        patch_key: fuota_server::patch::keys::device_key(update.key.verifying_key())
            .expect("a P-256 key converts"),
        layout: LAYOUT,
        boot_max_align: 8,
        permanent: false,
        // The patch is a handful of DR5 fragments: the decoder never recovers more.
        max_lost: 16,
        seed,
        hw_version: 1,
    }
}

fn boot(flash: &'static RefCell<Flash>, cfg: &AgentConfig) -> Agent<'static, Flash, 64> {
    let ws: &'static mut [u8] = Box::leak(vec![0u8; 16 * 1024].into_boxed_slice());
    Agent::new(flash, cfg.clone(), ws, 0).expect("agent starts")
}

fn options(url: &str, id: &str) -> MqttOptions {
    let rest = url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').expect("host:port");
    let mut o = MqttOptions::new(id, host, port.parse().expect("port"));
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o
}

fn sf_of(dr: u8) -> u32 {
    match fuota_server::plan::Region::Eu868
        .data_rate(dr)
        .map(|d| d.modulation)
    {
        Some(Modulation::Lora { sf, .. }) => u32::from(sf),
        _ => 0,
    }
}

async fn run(
    url: String,
    opts: Options,
    update: Update,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
) {
    let clock = Clock::new(opts.scale, opts.origin_unix_ms);
    let id = format!("standin-{}-{}", opts.app, std::process::id());
    let (client, mut eventloop) = AsyncClient::new(options(&url, &id), 10_000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let subs = vec![
        format!("application/{}/device/+/command/down", opts.app),
        format!("{}/gateway/+/command/down", opts.prefix),
    ];
    let announce = (
        format!("{}/gateway/{}/state/conn", opts.prefix, opts.gateways[0]),
        json!({"gatewayId": opts.gateways[0], "state": "ONLINE"}).to_string(),
    );
    let c2 = client.clone();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        while !stop2.load(Ordering::SeqCst) {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    for s in &subs {
                        let _ = c2.try_subscribe(s, QoS::AtLeastOnce);
                    }
                    let _ = c2.try_publish(&announce.0, QoS::AtLeastOnce, true, announce.1.clone());
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let mut devices: Vec<Device> = device_keys(opts.devices, opts.seed)
        .into_iter()
        .enumerate()
        .map(|(i, (eui, key))| {
            let mut f = Flash::new(SECTORS);
            f.write(0, &padded(&update.old)).expect("factory image");
            let flash: &'static RefCell<Flash> = Box::leak(Box::new(RefCell::new(f)));
            let cfg = agent_config(&update, key, opts.seed * 1000 + i as u64);
            let agent = boot(flash, &cfg);
            Device {
                eui,
                flash,
                agent,
                cfg,
                boot_at: 0,
                fcnt_up: 0,
                queue: VecDeque::new(),
                // Spread the first uplinks.
                next_uplink: 0,
                deliver_at: None,
                group: None,
                class_c: None,
                reboot_at: None,
                rng: ChaCha8Rng::seed_from_u64(opts.seed * 7919 + i as u64),
                held: None,
            }
        })
        .collect();
    let start = clock.now();
    for (i, d) in devices.iter_mut().enumerate() {
        d.boot_at = start;
        d.next_uplink = start + 500 + (i as u64 * 997) % opts.uplink_period_ms;
    }
    let by_eui: HashMap<u64, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.eui, i))
        .collect();
    let mut pending: Vec<Pending> = Vec::new();

    let mut uplink_no = 0usize;
    let mut seen_fcnt: HashSet<(String, u32)> = HashSet::new();
    let mut refused_fcnts: HashSet<u32> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::SeqCst) {
        tokio::select! {
            m = rx.recv() => {
                let Some((topic, payload)) = m else { break };
                let parts: Vec<&str> = topic.split('/').collect();
                if parts.len() == 6 && parts[0] == "application" && parts[5] == "down" {
                    let v: Value = match serde_json::from_slice(&payload) {
                        Ok(v) => v,
                        Err(e) => { stats.lock().unwrap().problems.push(format!("{topic}: {e}")); continue; }
                    };
                    let eui = u64::from_str_radix(parts[3], 16).ok();
                    let same = v["devEui"].as_str().and_then(|s| u64::from_str_radix(s, 16).ok()) == eui;
                    let port = v["fPort"].as_u64().and_then(|p| u8::try_from(p).ok());
                    let data = v["data"].as_str().and_then(|d| B64.decode(d).ok());
                    match (eui.and_then(|e| by_eui.get(&e)), same, port, data, v["confirmed"].as_bool()) {
                        (Some(&i), true, Some(p), Some(d), Some(false)) => {
                            devices[i].queue.push_back((p, d));
                            stats.lock().unwrap().unicast += 1;
                        }
                        _ => stats.lock().unwrap().problems.push(format!("{topic}: bad downlink command {v}")),
                    }
                } else if parts.len() == 5 && parts[1] == "gateway" && parts[4] == "down" {
                    let gw = parts[2].to_string();
                    let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                    let item = &v["items"][0];
                    let txi = &item["txInfo"];
                    let lora = &txi["modulation"]["lora"];
                    let t = txi["timing"]["gpsEpoch"]["timeSinceGpsEpoch"].as_str().and_then(parse_duration_string);
                    let phy = item["phyPayload"].as_str().and_then(|p| B64.decode(p).ok());
                    let id = v["downlinkId"].as_u64();
                    let ok_shape = v["gatewayId"].as_str() == Some(gw.as_str())
                        && lora["bandwidth"].as_u64() == Some(125_000)
                        && lora["polarizationInversion"].as_bool() == Some(true)
                        && txi["power"].as_i64().is_some();
                    let (Some(t), Some(phy), Some(id), true) = (t, phy, id, ok_shape) else {
                        stats.lock().unwrap().problems.push(format!("{topic}: bad DownlinkFrame {v}"));
                        continue;
                    };
                    let fcnt_low = u32::from(u16::from_le_bytes([phy[6], phy[7]]));
                    // Every gateway refuses the same first frames: they did not go out.
                    let refuse = refused_fcnts.contains(&fcnt_low)
                        || (refused_fcnts.len() < opts.refuse_first && refused_fcnts.insert(fcnt_low));
                    let status = if refuse { "COLLISION_PACKET" } else { "OK" };
                    let ack = json!({"gatewayId": gw, "downlinkId": id, "items": [{"status": status}]});
                    let _ = client.try_publish(format!("{}/gateway/{gw}/event/ack", opts.prefix), QoS::AtLeastOnce, false, ack.to_string());
                    {
                        let mut s = stats.lock().unwrap();
                        s.multicast.push((gw.clone(), fcnt_low));
                        if !seen_fcnt.insert((gw.clone(), fcnt_low)) {
                            s.fcnt_reused.push((gw.clone(), fcnt_low));
                        }
                        if refuse { s.refused += 1; }
                    }
                    if !refuse {
                        pending.push(Pending {
                            at: clock.campaign_of_gps(t),
                            gateway: gw,
                            phy,
                            freq: txi["frequency"].as_u64().unwrap_or(0) as u32,
                            sf: lora["spreadingFactor"].as_u64().unwrap_or(0) as u32,
                        });
                    }
                }
            }
            _ = tick.tick() => {
                let now = clock.now();
                // Multicast frames whose time has come, to the devices listening.
                let (due, rest): (Vec<Pending>, Vec<Pending>) = pending.drain(..).partition(|p| p.at <= now);
                pending = rest;
                for p in due {
                    for d in devices.iter_mut() {
                        let (Some((freq, dr)), Some(g)) = (d.class_c, d.group.as_mut()) else { continue };
                        if freq != p.freq || sf_of(dr) != p.sf || d.rng.gen::<f64>() < opts.multicast_loss {
                            continue;
                        }
                        let Some((fcnt, port, payload)) = open_multicast(&p.phy, g) else { continue };
                        g.last = Some(fcnt);
                        let _ = &p.gateway;
                        d.agent.handle_downlink(now - d.boot_at, Via::Multicast(0), port, &payload);
                    }
                }
                for d in devices.iter_mut() {
                    step_device(d, now, &clock, &opts, &update, &stats, &client, &mut uplink_no).await;
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

fn open_multicast(phy: &[u8], g: &Group) -> Option<(u32, u8, Vec<u8>)> {
    let PhyPayload::Data(DataPayload::Encrypted(d)) = parse(phy.to_vec()).ok()? else {
        return None;
    };
    let addr = u32::from_le_bytes(d.fhdr().dev_addr().as_ref().try_into().ok()?);
    if addr != g.addr {
        return None;
    }
    let hint = g.last.map_or(g.min, |l| l + 1);
    let low = u32::from(d.fhdr().fcnt());
    let mut fcnt = (hint & 0xffff_0000) | low;
    if fcnt < hint {
        fcnt = fcnt.wrapping_add(0x1_0000);
    }
    if fcnt < g.min || fcnt > g.max || g.last.is_some_and(|l| fcnt <= l) {
        return None;
    }
    let dec = d
        .decrypt_if_mic_ok(&AES128(g.nwk), &AES128(g.app), fcnt)
        .ok()?;
    let port = dec.f_port()?;
    let FRMPayload::Data(p) = dec.frm_payload() else {
        return None;
    };
    Some((fcnt, port, p.to_vec()))
}

#[allow(clippy::too_many_arguments)]
async fn step_device(
    d: &mut Device,
    now: u64,
    clock: &Clock,
    opts: &Options,
    update: &Update,
    stats: &Arc<Mutex<Stats>>,
    client: &AsyncClient,
    uplink_no: &mut usize,
) {
    // The bootloader: the new image into the primary slot, then the firmware starts again.
    if d.reboot_at.is_some_and(|r| now >= r) {
        d.reboot_at = None;
        {
            let mut f = d.flash.borrow_mut();
            f.erase(
                LAYOUT.primary.offset,
                LAYOUT.primary.offset + LAYOUT.primary.len,
            )
            .expect("erase");
            f.write(LAYOUT.primary.offset, &padded(&update.new))
                .expect("swap");
        }
        d.agent = boot(d.flash, &d.cfg);
        d.boot_at = now;
        d.class_c = None;
        d.group = None;
    }
    let t = now - d.boot_at;
    if d.agent.poll_timeout(t) <= t {
        d.agent.handle_timeout(t);
    }
    while let Some(e) = d.agent.poll_event() {
        match e {
            Event::Multicast(McEvent::GroupKeys { id }) => {
                if let Some(g) = d.agent.multicast_group(id) {
                    d.group = Some(Group {
                        addr: g.addr,
                        app: g.app_s_key.to_bytes(),
                        nwk: g.nwk_s_key.to_bytes(),
                        min: g.min_fcount,
                        max: g.max_fcount,
                        last: None,
                    });
                }
            }
            Event::Multicast(McEvent::ClassCStart { freq_hz, dr, .. }) => {
                d.class_c = Some((freq_hz, dr))
            }
            Event::Multicast(McEvent::ClassCEnd { .. }) => d.class_c = None,
            Event::Multicast(McEvent::GroupDeleted { .. }) => d.group = None,
            Event::RebootWanted { .. } | Event::RevertWanted { .. } => {
                d.reboot_at = Some(now + 1_000)
            }
            // The agent's self-test (its default hooks) confirms the new image.
            Event::Confirmed { .. } => {
                stats.lock().unwrap().updated.insert(d.eui);
            }
            Event::Booted { .. } | Event::InstallDeferred(_) => {}
            Event::UpdateFailed(f) => stats
                .lock()
                .unwrap()
                .problems
                .push(format!("{:016x}: update failed {f:?}", d.eui)),
            Event::Reverted { .. } => stats
                .lock()
                .unwrap()
                .problems
                .push(format!("{:016x}: reverted", d.eui)),
            Event::BlockComplete { .. } => {}
        }
    }
    // Class A: a downlink is delivered in the receive window after an uplink.
    if d.deliver_at.is_some_and(|at| now >= at) {
        d.deliver_at = None;
        if let Some((port, data)) = d.queue.pop_front() {
            d.agent.handle_downlink(t, Via::Unicast, port, &data);
        }
    }
    if now < d.next_uplink || d.reboot_at.is_some() {
        return;
    }
    let mut buf = [0u8; 64];
    let (port, data) = match d.agent.poll_uplink(t, &mut buf) {
        Some((p, n)) => (p, buf[..n].to_vec()),
        // Nothing from the agent: the application's own traffic, on a port the service ignores.
        None => (2, vec![0x01, 0x02]),
    };
    d.fcnt_up += 1;
    let wall_ms = unix_ms_of_gps(clock.gps_of_campaign(now));
    let ev = json!({
        "deduplicationId": format!("{:016x}-{}", d.eui, d.fcnt_up),
        "time": rfc3339_of_unix_ms(wall_ms + 20),
        "deviceInfo": {"tenantId": "t", "applicationId": opts.app, "devEui": format!("{:016x}", d.eui)},
        "devAddr": format!("{:08x}", d.eui as u32),
        "dr": 5,
        "fCnt": d.fcnt_up,
        "fPort": port,
        "confirmed": false,
        "data": B64.encode(&data),
        "rxInfo": [{
            "gatewayId": opts.gateways[d.eui as usize % opts.gateways.len()],
            "uplinkId": d.fcnt_up,
            "gwTime": rfc3339_of_unix_ms(wall_ms),
            "nsTime": rfc3339_of_unix_ms(wall_ms + 15),
            "timeSinceGpsEpoch": fuota_server::service::clock::duration_string(gps_of_unix_ms(wall_ms)),
            "rssi": -80, "snr": 7.0,
        }],
        "txInfo": {"frequency": 868_100_000},
    })
    .to_string();
    let topic = format!("application/{}/device/{:016x}/event/up", opts.app, d.eui);
    *uplink_no += 1;
    let mut out = vec![(topic.clone(), ev.clone().into_bytes())];
    if opts.duplicate_uplinks {
        out.push((topic, ev.into_bytes()));
    }
    // Every third answer to the service comes after the device's next uplink.
    if opts.reorder_uplinks && port != 2 && *uplink_no % 3 == 0 && d.held.is_none() {
        d.held = out.pop();
        if opts.duplicate_uplinks {
            out.clear();
        }
    } else if let Some(h) = d.held.take() {
        out.push(h);
    }
    for (topic, body) in out {
        let _ = client.try_publish(topic, QoS::AtLeastOnce, false, body);
    }
    stats.lock().unwrap().uplinks += 1;
    d.deliver_at = Some(now + 1_000);
    // FPending: more to say or to hear, come back soon.
    let busy = !d.queue.is_empty() || port != 2;
    d.next_uplink = now + if busy { 1_500 } else { opts.uplink_period_ms };
}
