//! The bridge driven in virtual time: gateways are played by building their datagrams, the
//! network server by building `command/down` payloads.

use super::*;
use crate::mqtt::DownlinkError;
use crate::semtech::{FromServer, Malformed, TxTiming};
use proptest::prelude::*;
use serde_json::{json, Value};

const GW: Eui64 = Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, 0x01]);
const PREFIX: &str = "eu868";

fn up_addr() -> SocketAddr {
    "192.0.2.1:40001".parse().unwrap()
}

/// The forwarder pulls and pushes from two sockets: PULL_RESP must go to this one.
fn down_addr() -> SocketAddr {
    "192.0.2.1:40002".parse().unwrap()
}

struct Harness {
    bridge: Bridge,
    t0: Instant,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with(Config {
            topic_prefix: PREFIX.into(),
            ..Config::default()
        })
    }

    fn with(config: Config) -> Self {
        // The one clock reading of the tests: a base for virtual time.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        Self {
            bridge: Bridge::new(config).unwrap(),
            t0,
            now: t0,
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.bridge.poll_output()).collect()
    }

    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Output> {
        self.bridge.handle_datagram(self.now, from, bytes);
        self.drain()
    }

    fn mqtt(&mut self, topic: &str, payload: &Value) -> Vec<Output> {
        self.bridge
            .handle_mqtt(self.now, topic, &serde_json::to_vec(payload).unwrap());
        self.drain()
    }

    fn down(&mut self, gw: Eui64, frame: &Value) -> Vec<Output> {
        let topic = self.bridge.topics().command(gw, "down");
        self.mqtt(&topic, frame)
    }

    /// Advances virtual time to `secs` after the start, running every timeout on the way.
    fn at(&mut self, secs: f64) -> Vec<Output> {
        let until = self.t0 + Duration::from_secs_f64(secs);
        let mut out = Vec::new();
        while let Some(t) = self.bridge.poll_timeout().filter(|&t| t <= until) {
            self.now = self.now.max(t);
            self.bridge.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = self.now.max(until);
        out
    }

    fn pull(&mut self, gw: Eui64) -> Vec<Output> {
        self.datagram(
            down_addr(),
            &PullData {
                token: 0x0101,
                gateway: gw,
            }
            .build(),
        )
    }
}

fn push_bytes(gw: Eui64, token: u16, json: &str) -> Vec<u8> {
    let mut v = vec![2, token.to_le_bytes()[0], token.to_le_bytes()[1], 0];
    v.extend_from_slice(&gw.0);
    v.extend_from_slice(json.as_bytes());
    v
}

fn tx_ack(gw: Eui64, token: u16, error: Option<&str>) -> Vec<u8> {
    TxAck {
        token,
        gateway: gw,
        error: error.map(str::to_owned),
        warning: None,
    }
    .build()
}

fn datagrams(out: &[Output]) -> Vec<(SocketAddr, FromServer)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Datagram { to, bytes } => Some((*to, FromServer::parse(bytes).unwrap())),
            _ => None,
        })
        .collect()
}

fn pull_resps(out: &[Output]) -> Vec<(SocketAddr, PullResp)> {
    datagrams(out)
        .into_iter()
        .filter_map(|(to, d)| match d {
            FromServer::PullResp(p) => Some((to, p)),
            _ => None,
        })
        .collect()
}

/// The JSON published on topics ending in `/{suffix}`, with the message's retain flag.
fn published(out: &[Output], suffix: &str) -> Vec<(Value, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Publish { message, .. } if message.topic.ends_with(&format!("/{suffix}")) => {
                Some((
                    serde_json::from_slice(&message.payload).unwrap(),
                    message.retain,
                ))
            }
            _ => None,
        })
        .collect()
}

fn events(out: &[Output], kind: &str) -> Vec<Value> {
    published(out, kind)
        .into_iter()
        .map(|(v, retain)| {
            assert!(!retain, "events are not retained");
            v
        })
        .collect()
}

fn lora_item(timing: Value, context: &str) -> Value {
    json!({
        "phyPayload": "YAQDAgGAAQAB",
        "txInfo": {
            "frequency": 868100000,
            "power": 14,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5", "polarizationInversion": true}},
            "timing": timing,
            "context": context
        }
    })
}

fn immediately() -> Value {
    json!({"downlinkId": 0x0001_0203, "gatewayId": GW.to_string(), "items": [lora_item(json!({"immediately": {}}), "")]})
}

const RXPK: &str = r#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,
    "freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-35,"lsnr":5.1,"size":3,"data":"QAEC"}]}"#;

#[test]
fn pull_data_opens_a_session_with_an_offline_will_and_is_acked() {
    let mut h = Harness::new();
    let out = h.pull(GW);
    let Output::Open(s) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(s.gateway, GW);
    assert_eq!(s.commands, "eu868/gateway/aa555a0000000001/command/#");
    for (p, state) in [(&s.will, "OFFLINE"), (&s.online, "ONLINE")] {
        assert_eq!(p.topic, "eu868/gateway/aa555a0000000001/state/conn");
        assert!(p.retain);
        assert_eq!(
            serde_json::from_slice::<Value>(&p.payload).unwrap(),
            json!({"gatewayId": "aa555a0000000001", "state": state})
        );
    }
    assert_eq!(
        datagrams(&out),
        [(down_addr(), FromServer::PullAck(PullAck { token: 0x0101 }))]
    );
    // A second PULL_DATA is only acked.
    let out = h.pull(GW);
    assert_eq!(out.len(), 1);
    assert_eq!(h.bridge.counters().pull_data, 2);
    assert_eq!(h.bridge.counters().sessions_opened, 1);
    assert_eq!(h.bridge.gateways().collect::<Vec<_>>(), [GW]);
}

#[test]
fn push_data_is_acked_and_each_rxpk_becomes_an_event_up() {
    let mut h = Harness::new();
    h.pull(GW);
    let json = r#"{"rxpk":[
        {"tmst":1,"freq":868.1,"stat":1,"datr":"SF7BW125","codr":"4/5","rssi":-40,"lsnr":7,"data":"AA=="},
        {"tmst":2,"freq":868.3,"stat":-1,"datr":"SF7BW125","codr":"4/5","data":"AA=="},
        {"tmst":3,"freq":868.5,"stat":1,"modu":"FSK","datr":50000,"data":"AQ=="}]}"#;
    let out = h.datagram(up_addr(), &push_bytes(GW, 0xabcd, json));
    assert_eq!(
        datagrams(&out),
        [(up_addr(), FromServer::PushAck(PushAck { token: 0xabcd }))]
    );
    let ups = events(&out, "up");
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0]["txInfo"]["frequency"], 868_100_000);
    assert_eq!(ups[0]["rxInfo"]["uplinkId"], 0xabcd);
    assert_eq!(ups[0]["rxInfo"]["context"], "AAAAAQ==");
    assert_eq!(
        ups[1]["txInfo"]["modulation"],
        json!({"fsk": {"datarate": 50000}})
    );
    let topics: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Publish { gateway, message } => {
                Some((*gateway, message.topic.clone(), message.qos))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        topics,
        vec![
            (
                GW,
                "eu868/gateway/aa555a0000000001/event/up".to_owned(),
                Qos::AtMostOnce
            );
            2
        ]
    );
    let c = h.bridge.counters();
    assert_eq!((c.push_data, c.uplinks, c.uplinks_crc_dropped), (1, 2, 1));
}

#[test]
fn push_data_before_any_pull_opens_the_session_first() {
    let mut h = Harness::new();
    let out = h.datagram(up_addr(), &push_bytes(GW, 1, RXPK));
    assert!(matches!(out[0], Output::Open(_)), "{out:?}");
    assert_eq!(events(&out, "up").len(), 1);
}

#[test]
fn forward_crc_failed_keeps_bad_packets() {
    let mut h = Harness::with(Config {
        forward_crc_failed: true,
        ..Config::default()
    });
    let json =
        r#"{"rxpk":[{"tmst":2,"freq":868.3,"stat":-1,"datr":"SF7BW125","codr":"OFF","data":""}]}"#;
    let out = h.datagram(up_addr(), &push_bytes(GW, 1, json));
    let ups = events(&out, "up");
    assert_eq!(ups[0]["rxInfo"]["crcStatus"], "BAD_CRC");
    assert_eq!(h.bridge.counters().uplinks_crc_dropped, 0);
    // The bare prefix: `gateway/…`.
    let Output::Publish { message, .. } = &out[2] else {
        panic!()
    };
    assert_eq!(message.topic, "gateway/aa555a0000000001/event/up");
}

#[test]
fn stat_becomes_event_stats_with_the_bridges_own_counts() {
    let mut h = Harness::new();
    h.pull(GW);
    h.datagram(up_addr(), &push_bytes(GW, 1, RXPK));
    h.datagram(up_addr(), &push_bytes(GW, 2, RXPK));
    h.down(GW, &immediately());
    h.datagram(down_addr(), &tx_ack(GW, 0x0203, None));
    let stat = r#"{"stat":{"time":"2014-01-12 08:59:28 GMT","lati":46.24,"long":3.2523,"alti":145,
        "rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":1,"txnb":1}}"#;
    let out = h.datagram(up_addr(), &push_bytes(GW, 3, stat));
    assert_eq!(
        datagrams(&out),
        [(up_addr(), FromServer::PushAck(PushAck { token: 3 }))]
    );
    let stats = events(&out, "stats");
    assert_eq!(
        stats,
        [json!({
            "gatewayId": "aa555a0000000001",
            "time": "2014-01-12T08:59:28Z",
            "location": {"latitude": 46.24, "longitude": 3.2523, "altitude": 145.0, "source": "GPS"},
            "rxPacketsReceived": 2,
            "rxPacketsReceivedOk": 2,
            "txPacketsReceived": 1,
            "txPacketsEmitted": 1,
            "rxPacketsPerFrequency": {"868100000": 2},
            "txPacketsPerFrequency": {"868100000": 1},
            "txPacketsPerStatus": {"OK": 1}
        })]
    );
    // The counts start again after each stat.
    let out = h.datagram(up_addr(), &push_bytes(GW, 4, r#"{"stat":{}}"#));
    assert_eq!(
        events(&out, "stats"),
        [json!({"gatewayId": "aa555a0000000001"})]
    );
    assert_eq!(h.bridge.counters().stats, 2);
}

#[test]
fn downlink_immediately_goes_to_the_pull_address_as_imme() {
    let mut h = Harness::new();
    h.pull(GW);
    h.datagram(up_addr(), &push_bytes(GW, 1, RXPK));
    let out = h.down(GW, &immediately());
    let resps = pull_resps(&out);
    assert_eq!(resps.len(), 1);
    let (to, resp) = &resps[0];
    assert_eq!(*to, down_addr());
    // The token is the downlink ID's low 16 bits.
    assert_eq!(resp.token, 0x0203);
    assert_eq!(resp.txpk.timing, TxTiming::Immediately);
    assert_eq!((resp.txpk.frequency, resp.txpk.power), (868_100_000, 14));
    assert_eq!(resp.txpk.data, [0x60, 4, 3, 2, 1, 0x80, 1, 0, 1]);
    let c = h.bridge.counters();
    assert_eq!((c.downlinks, c.pull_resps), (1, 1));
}

#[test]
fn downlink_delay_counts_from_the_uplinks_context() {
    let mut h = Harness::new();
    h.pull(GW);
    let up = events(&h.datagram(up_addr(), &push_bytes(GW, 1, RXPK)), "up").remove(0);
    // The network server answers in RX1 with the uplink's context and a 1 s delay.
    let frame = json!({"downlinkId": 77, "items": [lora_item(json!({"delay": {"delay": "1s"}}), up["rxInfo"]["context"].as_str().unwrap())]});
    let resps = pull_resps(&h.down(GW, &frame));
    assert_eq!(
        resps[0].1.txpk.timing,
        TxTiming::Tmst(3_512_348_611 + 1_000_000)
    );
}

#[test]
fn downlink_gps_epoch_becomes_tmms() {
    let mut h = Harness::new();
    h.pull(GW);
    let frame = json!({"downlinkId": 5, "items": [lora_item(json!({"gpsEpoch": {"timeSinceGpsEpoch": "1300000000.250s"}}), "")]});
    let resps = pull_resps(&h.down(GW, &frame));
    assert_eq!(resps[0].1.txpk.timing, TxTiming::Tmms(1_300_000_000_250));
}

#[test]
fn every_tx_ack_error_maps_to_its_status() {
    let table: [(Option<&str>, TxAckStatus); 13] = [
        (None, TxAckStatus::Ok),
        (Some(""), TxAckStatus::Ok),
        (Some("NONE"), TxAckStatus::Ok),
        (Some("TOO_LATE"), TxAckStatus::TooLate),
        (Some("TOO_EARLY"), TxAckStatus::TooEarly),
        (Some("COLLISION_PACKET"), TxAckStatus::CollisionPacket),
        (Some("COLLISION_BEACON"), TxAckStatus::CollisionBeacon),
        (Some("TX_FREQ"), TxAckStatus::TxFreq),
        (Some("TX_POWER"), TxAckStatus::TxPower),
        (Some("GPS_UNLOCKED"), TxAckStatus::GpsUnlocked),
        (Some("QUEUE_FULL"), TxAckStatus::QueueFull),
        (Some("INTERNAL_ERROR"), TxAckStatus::InternalError),
        (Some("DUTY_CYCLE_OVERFLOW"), TxAckStatus::DutyCycleOverflow),
    ];
    let mut h = Harness::new();
    h.pull(GW);
    for (i, (error, status)) in table.iter().enumerate() {
        let id = 1000 + i as u32;
        let frame = json!({"downlinkId": id, "items": [lora_item(json!({"immediately": {}}), "")]});
        let token = pull_resps(&h.down(GW, &frame))[0].1.token;
        let out = h.datagram(down_addr(), &tx_ack(GW, token, *error));
        assert_eq!(
            events(&out, "ack"),
            [
                json!({"gatewayId": "aa555a0000000001", "downlinkId": id, "items": [{"status": status.name()}]})
            ],
            "{error:?}"
        );
        assert_eq!(
            h.bridge.counters().tx_ack_status(*status),
            if *status == TxAckStatus::Ok {
                3.min(i as u64 + 1)
            } else {
                1
            }
        );
    }
    assert_eq!(h.bridge.counters().acks_published, table.len() as u64);
}

#[test]
fn tx_ack_warnings_and_unrecognized_errors() {
    let mut h = Harness::new();
    h.pull(GW);
    h.down(GW, &immediately());
    let warn = TxAck {
        token: 0x0203,
        gateway: GW,
        error: None,
        warning: Some(crate::semtech::TxAckWarning {
            kind: "TX_POWER".into(),
            value: Some(14),
        }),
    };
    let out = h.datagram(down_addr(), &warn.build());
    assert_eq!(events(&out, "ack")[0]["items"], json!([{"status": "OK"}]));
    h.down(GW, &immediately());
    let out = h.datagram(down_addr(), &tx_ack(GW, 0x0203, Some("SOMETHING_NEW")));
    assert_eq!(
        events(&out, "ack")[0]["items"],
        json!([{"status": "INTERNAL_ERROR"}])
    );
    assert_eq!(h.bridge.counters().tx_acks_unrecognized, 1);
}

fn three_items() -> Value {
    let ctx = crate::base64_field::encode(&1_000_000u32.to_be_bytes());
    let rx1 = lora_item(json!({"delay": {"delay": "1s"}}), &ctx);
    let mut rx2 = lora_item(json!({"delay": {"delay": "2s"}}), &ctx);
    rx2["txInfo"]["frequency"] = json!(869525000);
    rx2["txInfo"]["modulation"]["lora"]["spreadingFactor"] = json!(12);
    let late = lora_item(json!({"immediately": {}}), "");
    json!({"downlinkId": 0x00ff_0042, "items": [rx1, rx2, late]})
}

#[test]
fn a_refused_item_is_followed_by_the_next() {
    let mut h = Harness::new();
    h.pull(GW);
    let out = h.down(GW, &three_items());
    let r = pull_resps(&out);
    assert_eq!(
        (r.len(), r[0].1.token, r[0].1.txpk.timing),
        (1, 0x0042, TxTiming::Tmst(2_000_000))
    );
    // RX1 refused: RX2 goes out with the same token, nothing is published yet.
    let out = h.datagram(down_addr(), &tx_ack(GW, 0x0042, Some("TOO_LATE")));
    assert!(events(&out, "ack").is_empty());
    let r = pull_resps(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].0,
            r[0].1.token,
            r[0].1.txpk.timing,
            r[0].1.txpk.frequency
        ),
        (down_addr(), 0x0042, TxTiming::Tmst(3_000_000), 869_525_000)
    );
    // RX2 accepted: the third item is not tried.
    let out = h.datagram(down_addr(), &tx_ack(GW, 0x0042, None));
    assert!(pull_resps(&out).is_empty());
    assert_eq!(
        events(&out, "ack"),
        [
            json!({"gatewayId": "aa555a0000000001", "downlinkId": 0x00ff_0042, "items": [{"status": "TOO_LATE"}, {"status": "OK"}, {"status": "IGNORED"}]})
        ]
    );
    assert_eq!(h.bridge.counters().pull_resps, 2);
}

#[test]
fn when_every_item_is_refused_the_ack_lists_each_refusal() {
    let mut h = Harness::new();
    h.pull(GW);
    h.down(GW, &three_items());
    let mut acks = Vec::new();
    for error in ["TOO_LATE", "COLLISION_PACKET", "GPS_UNLOCKED"] {
        let out = h.datagram(down_addr(), &tx_ack(GW, 0x0042, Some(error)));
        acks.extend(events(&out, "ack"));
    }
    assert_eq!(acks.len(), 1);
    assert_eq!(
        acks[0]["items"],
        json!([{"status": "TOO_LATE"}, {"status": "COLLISION_PACKET"}, {"status": "GPS_UNLOCKED"}])
    );
    assert_eq!(h.bridge.counters().pull_resps, 3);
    // Nothing is pending any more.
    h.datagram(down_addr(), &tx_ack(GW, 0x0042, None));
    assert_eq!(h.bridge.counters().tx_acks_unknown_token, 1);
}

#[test]
fn a_gateway_that_stops_pulling_goes_offline_retained() {
    let mut h = Harness::new();
    h.pull(GW);
    assert_eq!(
        h.bridge.poll_timeout(),
        Some(h.t0 + Duration::from_secs(60))
    );
    // Pulling every 10 s keeps it online, pushing alone does not.
    for t in 1..=6 {
        assert!(h.at(f64::from(t) * 10.0).is_empty());
        h.pull(GW);
    }
    h.datagram(up_addr(), &push_bytes(GW, 1, RXPK));
    assert!(h.at(119.9).is_empty());
    let out = h.at(120.0);
    let [Output::Close { gateway, offline }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(*gateway, GW);
    assert_eq!(offline.topic, "eu868/gateway/aa555a0000000001/state/conn");
    assert!(offline.retain);
    assert_eq!(
        serde_json::from_slice::<Value>(&offline.payload).unwrap(),
        json!({"gatewayId": "aa555a0000000001", "state": "OFFLINE"})
    );
    assert_eq!(h.bridge.counters().gateways_timed_out, 1);
    assert_eq!(h.bridge.gateways().count(), 0);
    assert_eq!(h.bridge.poll_timeout(), None);
    // Downlinks have nowhere to go now; a new PULL_DATA brings the gateway back.
    h.down(GW, &immediately());
    assert_eq!(h.bridge.counters().downlinks_unroutable, 1);
    assert!(matches!(h.pull(GW)[0], Output::Open(_)));
}

#[test]
fn pending_downlinks_are_forgotten_after_the_ack_timeout() {
    let mut h = Harness::new();
    h.pull(GW);
    h.at(50.0);
    h.pull(GW);
    h.down(GW, &immediately());
    assert_eq!(
        h.bridge.poll_timeout(),
        Some(h.t0 + Duration::from_secs(65))
    );
    assert!(h.at(65.0).is_empty());
    assert_eq!(h.bridge.counters().tx_ack_timeouts, 1);
    assert_eq!(
        h.bridge.poll_timeout(),
        Some(h.t0 + Duration::from_secs(110))
    );
    let out = h.datagram(down_addr(), &tx_ack(GW, 0x0203, None));
    assert!(out.is_empty());
    assert_eq!(h.bridge.counters().tx_acks_unknown_token, 1);
}

#[test]
fn pending_downlinks_go_with_their_gateway() {
    let mut h = Harness::with(Config {
        ack_timeout: Duration::from_secs(300),
        ..Config::default()
    });
    h.pull(GW);
    h.down(GW, &immediately());
    h.at(60.0);
    h.pull(GW);
    assert!(h
        .datagram(down_addr(), &tx_ack(GW, 0x0203, None))
        .is_empty());
    assert_eq!(h.bridge.counters().tx_acks_unknown_token, 1);
    assert_eq!(h.bridge.counters().tx_ack_timeouts, 0);
}

#[test]
fn a_new_downlink_with_the_same_token_replaces_the_pending_one() {
    let mut h = Harness::new();
    h.pull(GW);
    h.down(GW, &three_items());
    let mut other = three_items();
    other["downlinkId"] = json!(0x0042);
    h.down(GW, &other);
    assert_eq!(h.bridge.counters().downlinks_superseded, 1);
    let out = h.datagram(down_addr(), &tx_ack(GW, 0x0042, None));
    assert_eq!(events(&out, "ack")[0]["downlinkId"], 0x0042);
}

#[test]
fn many_gateways_at_once() {
    let mut h = Harness::new();
    let gws: Vec<Eui64> = (0..50u64)
        .map(|i| Eui64::from_u64(0x0016_c001_ff10_0000 + i))
        .collect();
    let addr = |i: usize, port: u16| -> SocketAddr {
        format!("198.51.100.{}:{port}", i + 1).parse().unwrap()
    };
    for (i, &gw) in gws.iter().enumerate() {
        h.datagram(
            addr(i, 2000),
            &PullData {
                token: i as u16,
                gateway: gw,
            }
            .build(),
        );
        let out = h.datagram(addr(i, 1000), &push_bytes(gw, i as u16, RXPK));
        let Output::Publish { gateway, message } = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*gateway, message.topic.clone()),
            (gw, format!("eu868/gateway/{gw}/event/up"))
        );
    }
    assert_eq!(h.bridge.gateways().count(), 50);
    assert_eq!(h.bridge.counters().sessions_opened, 50);
    // A downlink for gateway 17 goes to gateway 17's pull address, and its ack on its topic.
    let mut frame = immediately();
    frame["gatewayId"] = json!(gws[17].to_string());
    let r = pull_resps(&h.down(gws[17], &frame));
    assert_eq!(r[0].0, addr(17, 2000));
    let out = h.datagram(addr(17, 2000), &tx_ack(gws[17], r[0].1.token, None));
    let Output::Publish { gateway, message } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (*gateway, message.topic.clone()),
        (gws[17], format!("eu868/gateway/{}/event/ack", gws[17]))
    );
    // An ack from another gateway with the same token matches nothing.
    h.down(gws[17], &frame);
    h.datagram(addr(3, 2000), &tx_ack(gws[3], r[0].1.token, None));
    assert_eq!(h.bridge.counters().tx_acks_unknown_token, 1);
    // Only the silent ones go offline.
    h.at(30.0);
    for (i, &gw) in gws.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        h.datagram(
            addr(i, 2000),
            &PullData {
                token: 0,
                gateway: gw,
            }
            .build(),
        );
    }
    let out = h.at(60.0);
    let closed: Vec<Eui64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Close { gateway, .. } => Some(*gateway),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed,
        gws.iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, g)| g)
            .collect::<Vec<_>>()
    );
    assert_eq!(h.bridge.gateways().count(), 25);
}

#[test]
fn gateways_beyond_the_limit_are_refused() {
    let mut h = Harness::with(Config {
        max_gateways: 2,
        ..Config::default()
    });
    for i in 0..3 {
        h.pull(Eui64::from_u64(i));
    }
    assert_eq!(h.bridge.gateways().count(), 2);
    assert!(h.pull(Eui64::from_u64(7)).is_empty());
    assert_eq!(h.bridge.counters().gateways_refused, 2);
    assert!(!h.pull(Eui64::from_u64(1)).is_empty());
}

#[test]
fn shutdown_closes_every_session() {
    let mut h = Harness::new();
    h.pull(GW);
    h.pull(Eui64::from_u64(2));
    h.down(GW, &immediately());
    h.bridge.handle_shutdown();
    let out = h.drain();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Close { .. }))
            .count(),
        2
    );
    assert_eq!(h.bridge.poll_timeout(), None);
}

#[test]
fn malformed_datagrams_are_counted_by_reason_and_dropped() {
    let mut h = Harness::new();
    let cases: Vec<(Vec<u8>, Malformed)> = vec![
        (vec![], Malformed::TooShort),
        (vec![2, 0, 0], Malformed::TooShort),
        (vec![2, 0, 0, 2, 1, 2], Malformed::TooShort),
        (
            vec![1, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8],
            Malformed::BadVersion,
        ),
        (
            vec![2, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8],
            Malformed::UnknownIdentifier,
        ),
        (
            PushAck { token: 1 }.build(),
            Malformed::UnexpectedIdentifier,
        ),
        (
            PullAck { token: 1 }.build(),
            Malformed::UnexpectedIdentifier,
        ),
        (
            [
                PullData {
                    token: 1,
                    gateway: GW,
                }
                .build(),
                vec![0],
            ]
            .concat(),
            Malformed::TrailingBytes,
        ),
        (push_bytes(GW, 1, "{\"rxpk\":["), Malformed::BadJson),
        (push_bytes(GW, 1, "rxpk"), Malformed::BadJson),
        (
            push_bytes(GW, 1, r#"{"rxpk":[{"tmst":"now"}]}"#),
            Malformed::WrongFieldType,
        ),
        (
            push_bytes(
                GW,
                1,
                r#"{"rxpk":[{"tmst":1,"freq":868.1,"datr":"SF99BW1","data":""}]}"#,
            ),
            Malformed::BadValue,
        ),
        (
            [tx_ack(GW, 1, None), b"{\"txpk_ack\":1}".to_vec()].concat(),
            Malformed::WrongFieldType,
        ),
    ];
    for (bytes, reason) in &cases {
        let before = h.bridge.counters().malformed(*reason);
        let out = h.datagram(up_addr(), bytes);
        assert!(out.is_empty(), "{reason:?}: {out:?}");
        assert_eq!(
            h.bridge.counters().malformed(*reason),
            before + 1,
            "{reason:?}"
        );
    }
    assert_eq!(h.bridge.counters().malformed_total(), cases.len() as u64);
    assert_eq!(h.bridge.gateways().count(), 0);
}

#[test]
fn mqtt_messages_that_are_not_downlinks() {
    let mut h = Harness::new();
    h.pull(GW);
    assert!(h
        .mqtt("eu868/gateway/aa555a0000000001/event/up", &json!({}))
        .is_empty());
    assert!(h
        .mqtt(
            "us915/gateway/aa555a0000000001/command/down",
            &immediately()
        )
        .is_empty());
    assert!(h
        .mqtt(
            "eu868/gateway/aa555a0000000001/command/config",
            &json!({"version": "1"})
        )
        .is_empty());
    let c = h.bridge.counters();
    assert_eq!((c.mqtt_unknown_topics, c.commands_ignored), (2, 1));
    let mut wrong = immediately();
    wrong["gatewayId"] = json!("0000000000000002");
    assert!(h.down(GW, &wrong).is_empty());
    assert!(h
        .down(GW, &json!({"downlinkId": 1, "items": []}))
        .is_empty());
    h.bridge.handle_mqtt(
        h.now,
        "eu868/gateway/aa555a0000000001/command/down",
        b"not json",
    );
    let c = h.bridge.counters();
    assert_eq!(c.bad_downlinks(DownlinkError::GatewayMismatch), 1);
    assert_eq!(c.bad_downlinks(DownlinkError::NoItems), 1);
    assert_eq!(c.bad_downlinks(DownlinkError::BadJson), 1);
    assert_eq!(c.downlinks, 0);
    // A gateway that only pushed has no pull address.
    let other = Eui64::from_u64(9);
    h.datagram(up_addr(), &push_bytes(other, 1, RXPK));
    let mut frame = immediately();
    frame["gatewayId"] = json!(other.to_string());
    assert!(h.down(other, &frame).is_empty());
    assert_eq!(h.bridge.counters().downlinks_unroutable, 1);
}

/// Datagrams a gateway might send, valid or nearly so, for the generated tests below.
fn gateway_datagram() -> impl Strategy<Value = Vec<u8>> {
    let gw = (0u64..3).prop_map(Eui64::from_u64);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (gw.clone(), any::<u16>()).prop_map(|(gateway, token)| PullData { token, gateway }.build()),
        (
            gw.clone(),
            any::<u16>(),
            proptest::sample::select(vec![RXPK, r#"{"stat":{}}"#, "{}", "{\"rxpk\":[{}]}"])
        )
            .prop_map(|(g, t, j)| push_bytes(g, t, j)),
        (
            gw.clone(),
            0u16..4,
            proptest::option::of(proptest::sample::select(vec!["TOO_LATE", "NONE", "X"]))
        )
            .prop_map(|(g, t, e)| tx_ack(g, t, e)),
        (
            gw,
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(g, t, tail)| {
                let mut v = push_bytes(g, t, "");
                v.extend(tail);
                v
            }),
    ]
}

fn mqtt_message() -> impl Strategy<Value = (String, Vec<u8>)> {
    let topic = prop_oneof![
        (0u64..3).prop_map(|g| format!("eu868/gateway/{}/command/down", Eui64::from_u64(g))),
        Just("eu868/gateway/0000000000000000/command/config".to_owned()),
        ".{0,20}",
    ];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..60),
        (0u32..4).prop_map(|id| {
            let mut f = three_items();
            f["downlinkId"] = json!(id);
            serde_json::to_vec(&f).unwrap()
        }),
        Just(serde_json::to_vec(&immediately()).unwrap()),
        r#"\{"(items|downlinkId|gatewayId)":[\[\]\{\}"a-z0-9:,.\-]{0,40}\}"#
            .prop_map(String::into_bytes),
    ];
    (topic, payload)
}

#[derive(Debug, Clone)]
enum Input {
    Datagram(Vec<u8>),
    Mqtt(String, Vec<u8>),
    Wait(u16),
}

proptest! {
    /// Whatever arrives, nothing panics and every datagram and message is counted once.
    #[test]
    fn arbitrary_inputs_never_panic_and_are_all_counted(inputs in proptest::collection::vec(prop_oneof![
        gateway_datagram().prop_map(Input::Datagram),
        mqtt_message().prop_map(|(t, p)| Input::Mqtt(t, p)),
        any::<u16>().prop_map(Input::Wait),
    ], 0..40)) {
        let mut h = Harness::new();
        let (mut datagrams, mut messages) = (0u64, 0u64);
        for input in inputs {
            match input {
                Input::Datagram(d) => {
                    datagrams += 1;
                    h.datagram(down_addr(), &d);
                }
                Input::Mqtt(t, p) => {
                    messages += 1;
                    h.bridge.handle_mqtt(h.now, &t, &p);
                    h.drain();
                }
                Input::Wait(ms) => {
                    let t = (h.now - h.t0).as_secs_f64() + f64::from(ms) / 100.0;
                    h.at(t);
                }
            }
            h.bridge.assert_timers_consistent();
        }
        let c = h.bridge.counters();
        prop_assert_eq!(c.malformed_total() + c.push_data + c.pull_data + c.tx_acks + c.gateways_refused, datagrams);
        prop_assert_eq!(c.mqtt_unknown_topics + c.commands_ignored + c.bad_downlinks_total() + c.downlinks, messages);
    }
}
