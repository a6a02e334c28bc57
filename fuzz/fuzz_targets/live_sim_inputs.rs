//! What the live simulator takes from the network: datagrams from the bridge to its
//! simulated packet forwarders (raw, or PULL_RESPs around arbitrary txpk JSON, whose frames
//! the world then judges and schedules) and `command/down` messages to its network server
//! (raw, or with a valid topic around arbitrary JSON), in any order, with the world running
//! between them. Never a panic; every TX_ACK the forwarder answers with parses as one.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use arbitrary::Arbitrary;
use fuota_gateway_bridge::semtech::FromGateway;
use fuota_gateway_bridge::Eui64;
use fuota_sim::live::backend::{LiveBackend, NetworkServer};
use fuota_sim::live::clock::ScaledClock;
use fuota_sim::live::forwarder::{tx_modulation, tx_time, Forwarder, Socket};
use fuota_sim::scenario::{build_with, Scenario};
use fuota_sim::world::{Band, World};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    Datagram { down: bool, bytes: Vec<u8> },
    PullResp { token: u16, txpk: Vec<u8> },
    TxpkFields {
        token: u16,
        imme: bool,
        tmst: Option<u32>,
        tmms: Option<u64>,
        freq: f64,
        powe: i16,
        modu: bool,
        datr: String,
        size: u16,
        data: Vec<u8>,
    },
    Command { topic: String, payload: Vec<u8> },
    CommandJson { dev: u8, json: Vec<u8> },
    Run { ms: u16 },
}

const SCENARIO: &str = r#"
name = "fuzz"
devices = 2
radius_m = 50
gateways = 1
[firmware]
synthetic_size = 4096
[campaign]
dr = 3
setup = "10m"
window = "1h"
"#;

const APP: &str = "fuzz-app";

struct Live {
    world: World<LiveBackend>,
    forwarder: Forwarder,
    clock: ScaledClock,
    devices: Vec<u64>,
}

fn live() -> Live {
    let s = Scenario::from_toml(SCENARIO).expect("the scenario parses");
    let clock = ScaledClock::new(100.0, 1_700_000_000_000);
    let band = Band(s.region().expect("a region"));
    let start_ms = clock.now() / 1000;
    let (world, built) = build_with(&s, start_ms, |b| {
        Ok(LiveBackend::new(
            APP,
            NetworkServer::Simulated,
            clock,
            band,
            (b.campaign.freq_hz, b.campaign.dr),
            vec![Eui64::from_u64(0x0016_c001_ff10_0001)],
            1,
        ))
    })
    .expect("the world builds");
    let mut world = world;
    world.track_gateway_queues(100_000);
    Live {
        world,
        forwarder: Forwarder::new(Eui64::from_u64(0x0016_c001_ff10_0001), Instant::now(), 7),
        clock,
        devices: built.devices.iter().map(|d| d.dev_eui).collect(),
    }
}

thread_local! {
    // Building the world makes a firmware pair and its signed patch: once per process; each
    // input then runs on the same world, as a live run's inputs do.
    static LIVE: RefCell<Option<Live>> = const { RefCell::new(None) };
}

fn datagram(l: &mut Live, socket: Socket, bytes: &[u8]) {
    let Some(req) = l.forwarder.handle_datagram(socket, bytes) else {
        return;
    };
    let t = req.txpk;
    let at = tx_time(t.timing, l.world.now, &l.clock);
    let result = l.world.gateway_transmit(
        0,
        at,
        t.frequency,
        tx_modulation(t.modulation),
        f64::from(t.power),
        t.data,
    );
    let ack = l.forwarder.tx_ack(req.token, result);
    assert!(matches!(
        FromGateway::parse(&ack.bytes),
        Ok(FromGateway::TxAck(a)) if a.token == req.token
    ));
}

fn pull_resp(token: u16, body: &[u8]) -> Vec<u8> {
    let mut out = vec![2, token as u8, (token >> 8) as u8, 3];
    out.extend_from_slice(body);
    out
}

fuzz_target!(|steps: Vec<Step>| {
    LIVE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let l = cell.get_or_insert_with(live);
        for step in steps.into_iter().take(64) {
            match step {
                Step::Datagram { down, bytes } => {
                    let socket = if down { Socket::Down } else { Socket::Up };
                    datagram(l, socket, &bytes);
                }
                Step::PullResp { token, txpk } => {
                    datagram(l, Socket::Down, &pull_resp(token, &txpk));
                }
                Step::TxpkFields {
                    token,
                    imme,
                    tmst,
                    tmms,
                    freq,
                    powe,
                    modu,
                    datr,
                    size,
                    data,
                } => {
                    let mut txpk = serde_json::Map::new();
                    txpk.insert("imme".into(), imme.into());
                    if let Some(t) = tmst {
                        txpk.insert("tmst".into(), t.into());
                    }
                    if let Some(t) = tmms {
                        txpk.insert("tmms".into(), t.into());
                    }
                    if let Some(f) = serde_json::Number::from_f64(freq) {
                        txpk.insert("freq".into(), f.into());
                    }
                    txpk.insert("rfch".into(), 0.into());
                    txpk.insert("powe".into(), powe.into());
                    txpk.insert("modu".into(), if modu { "LORA" } else { "FSK" }.into());
                    if modu {
                        txpk.insert("datr".into(), datr.into());
                        txpk.insert("codr".into(), "4/5".into());
                    } else {
                        txpk.insert("datr".into(), size.into());
                        txpk.insert("fdev".into(), 25000.into());
                    }
                    txpk.insert("ipol".into(), true.into());
                    txpk.insert("size".into(), size.into());
                    txpk.insert(
                        "data".into(),
                        fuota_gateway_bridge::base64_field::encode(&data).into(),
                    );
                    let body = serde_json::json!({ "txpk": txpk }).to_string();
                    datagram(l, Socket::Down, &pull_resp(token, body.as_bytes()));
                }
                Step::Command { topic, payload } => {
                    let known = l.devices.clone();
                    let _ = l
                        .world
                        .with_backend(|b| b.handle_command(&topic, &payload, |d| known.contains(&d)));
                }
                Step::CommandJson { dev, json } => {
                    let eui = l.devices[usize::from(dev) % l.devices.len()];
                    let topic = format!("application/{APP}/device/{eui:016x}/command/down");
                    let known = l.devices.clone();
                    let _ = l
                        .world
                        .with_backend(|b| b.handle_command(&topic, &json, |d| known.contains(&d)));
                }
                Step::Run { ms } => {
                    let until = l.world.now + u64::from(ms) * 1000;
                    l.world.run_until(until);
                    let _: Vec<_> = l.world.backend.take_publishes().collect();
                    let _: Vec<_> = l.world.backend.take_heard().collect();
                }
            }
        }
    });
});
