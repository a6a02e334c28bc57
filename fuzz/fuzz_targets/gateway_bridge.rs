//! The gateway bridge fed arbitrary datagrams (raw, or with valid headers around arbitrary
//! JSON), arbitrary MQTT messages (raw, or DownlinkFrames built from arbitrary fields) and
//! timeouts, in any order. Never a panic; every datagram and message is counted once; every
//! datagram the bridge sends parses back, and every payload it publishes is JSON.
#![no_main]

use arbitrary::Arbitrary;
use fuota_gateway_bridge::semtech::{FromServer, PullData, TxAck};
use fuota_gateway_bridge::{base64_field, Bridge, Config, Eui64, Output};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Arbitrary, Debug)]
enum Step {
    Raw(Vec<u8>),
    Push {
        gw: u8,
        token: u16,
        json: Vec<u8>,
    },
    Pull {
        gw: u8,
        token: u16,
        port: u8,
    },
    TxAck {
        gw: u8,
        token: u8,
        error: Option<String>,
    },
    TxAckRaw {
        gw: u8,
        token: u8,
        body: Vec<u8>,
    },
    Down {
        gw: u8,
        payload: Vec<u8>,
    },
    DownFrame {
        gw: u8,
        id: u32,
        items: Vec<Item>,
    },
    Mqtt {
        topic: String,
        payload: Vec<u8>,
    },
    Wait(u16),
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Item {
    timing: u8,
    delay_ms: i64,
    context: Vec<u8>,
    frequency: u32,
    power: i16,
    sf: u8,
    bandwidth: u32,
    code_rate: u8,
    data: Vec<u8>,
}

fn eui(g: u8) -> Eui64 {
    Eui64::from_u64(u64::from(g % 4))
}

fn item_json(i: &Item) -> serde_json::Value {
    let timing = match i.timing % 4 {
        0 => json!({"immediately": {}}),
        1 => {
            json!({"delay": {"delay": format!("{}.{:03}s", i.delay_ms / 1000, (i.delay_ms % 1000).abs())}})
        }
        2 => json!({"gpsEpoch": {"timeSinceGpsEpoch": format!("{}s", i.delay_ms)}}),
        _ => json!({}),
    };
    json!({
        "phyPayload": base64_field::encode(&i.data),
        "txInfo": {
            "frequency": i.frequency,
            "power": i.power,
            "modulation": {"lora": {"bandwidth": i.bandwidth, "spreadingFactor": i.sf, "codeRate": i.code_rate % 14}},
            "timing": timing,
            "context": base64_field::encode(&i.context),
        }
    })
}

fuzz_target!(|steps: Vec<Step>| {
    let config = Config {
        topic_prefix: "eu868".into(),
        max_gateways: 3,
        ..Config::default()
    };
    let Ok(mut bridge) = Bridge::new(config) else {
        return;
    };
    let t0 = Instant::now();
    let mut now = t0;
    let (mut datagrams, mut messages) = (0u64, 0u64);
    let from =
        |port: u8| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(port))) };
    for step in steps {
        match step {
            Step::Raw(bytes) => {
                datagrams += 1;
                bridge.handle_datagram(now, from(0), &bytes);
            }
            Step::Push { gw, token, json } => {
                datagrams += 1;
                let mut v = vec![2, token.to_le_bytes()[0], token.to_le_bytes()[1], 0];
                v.extend_from_slice(&eui(gw).0);
                v.extend_from_slice(&json);
                bridge.handle_datagram(now, from(1), &v);
            }
            Step::Pull { gw, token, port } => {
                datagrams += 1;
                bridge.handle_datagram(
                    now,
                    from(port),
                    &PullData {
                        token,
                        gateway: eui(gw),
                    }
                    .build(),
                );
            }
            Step::TxAck { gw, token, error } => {
                datagrams += 1;
                let ack = TxAck {
                    token: u16::from(token),
                    gateway: eui(gw),
                    error,
                    warning: None,
                };
                bridge.handle_datagram(now, from(2), &ack.build());
            }
            Step::TxAckRaw { gw, token, body } => {
                datagrams += 1;
                let mut v = TxAck {
                    token: u16::from(token),
                    gateway: eui(gw),
                    error: None,
                    warning: None,
                }
                .build();
                v.extend_from_slice(&body);
                bridge.handle_datagram(now, from(2), &v);
            }
            Step::Down { gw, payload } => {
                messages += 1;
                let topic = bridge.topics().command(eui(gw), "down");
                bridge.handle_mqtt(now, &topic, &payload);
            }
            Step::DownFrame { gw, id, items } => {
                messages += 1;
                let frame = json!({"downlinkId": id % 8, "items": items.iter().map(item_json).collect::<Vec<_>>()});
                let topic = bridge.topics().command(eui(gw), "down");
                bridge.handle_mqtt(now, &topic, frame.to_string().as_bytes());
            }
            Step::Mqtt { topic, payload } => {
                messages += 1;
                bridge.handle_mqtt(now, &topic, &payload);
            }
            Step::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms) * 10);
                if bridge.poll_timeout().is_some_and(|t| t <= now) {
                    bridge.handle_timeout(now);
                }
            }
            Step::Shutdown => bridge.handle_shutdown(),
        }
        while let Some(out) = bridge.poll_output() {
            match out {
                Output::Datagram { bytes, .. } => {
                    assert!(
                        FromServer::parse(&bytes).is_ok(),
                        "the bridge sent a datagram it cannot parse"
                    );
                }
                Output::Publish { message, .. } => {
                    assert!(serde_json::from_slice::<serde_json::Value>(&message.payload).is_ok());
                }
                Output::Open(_) | Output::Close { .. } => {}
            }
        }
    }
    let c = bridge.counters();
    assert_eq!(
        c.malformed_total() + c.push_data + c.pull_data + c.tx_acks + c.gateways_refused,
        datagrams
    );
    assert_eq!(
        c.mqtt_unknown_topics + c.commands_ignored + c.bad_downlinks_total() + c.downlinks,
        messages
    );
});
