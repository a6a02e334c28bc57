//! What the broker may bring besides well-formed events: malformed and unexpected messages
//! on every subscribed topic (logged with their topic, never a crash), and uplinks delivered
//! twice and out of order (duplicates dropped, each handled once).

#![allow(clippy::disallowed_methods)]

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{assert_all_updated, scratch, serial, service, Server, ServerSetup};
use rumqttc::{Client, MqttOptions, QoS};
use standin::{device_keys, small_update, Options, StandIn};

fn publisher(mqtt: &str, id: &str) -> Client {
    let rest = mqtt.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(id, host, port.parse().unwrap());
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
}

#[test]
fn malformed_and_unexpected_messages_are_logged_and_ignored() {
    let Some(mqtt) = service("FUOTA_MQTT_URL", 1883) else {
        return;
    };
    let _one = serial();
    let dir = scratch("malformed");
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let setup = ServerSetup::new(dir, &mqtt, &db_url, "malformed");
    let mut server = Server::start(setup.clone());
    let update = small_update();
    let n = 5;
    let mut opts = Options::new(
        &setup.app,
        &setup.prefix,
        n,
        setup.scale,
        setup.origin_unix_ms,
    );
    opts.seed = 6;
    let keys = device_keys(n, 6);
    let standin = StandIn::start(&mqtt, opts, &update);
    let id = server.create_campaign("malformed input", &update.patch, &keys);
    let client = publisher(&mqtt, &format!("garbage-{}", std::process::id()));
    let (app, prefix) = (&setup.app, &setup.prefix);
    let dev = format!("{:016x}", keys[0].0);
    let up = format!("application/{app}/device/{dev}/event/up");
    let big = format!(
        "{{\"deviceInfo\":{{\"devEui\":\"{dev}\"}},\"data\":\"{}\"}}",
        "A".repeat(200_000)
    );
    let messages: Vec<(String, Vec<u8>)> = vec![
        (up.clone(), b"not json".to_vec()),
        (up.clone(), b"{".to_vec()),
        (up.clone(), b"{}".to_vec()),
        (up.clone(), vec![0xff, 0x00, 0xfe, 0x81]),
        (up.clone(), b"[1,2,3]".to_vec()),
        (
            up.clone(),
            format!(r#"{{"deviceInfo":{{"devEui":"{dev}"}},"fPort":300}}"#).into_bytes(),
        ),
        (
            up.clone(),
            format!(r#"{{"deviceInfo":{{"devEui":"{dev}"}},"fPort":201,"data":"%%%"}}"#)
                .into_bytes(),
        ),
        // Well-formed, but garbage for the fragmentation package.
        (
            up.clone(),
            format!(
                r#"{{"deviceInfo":{{"devEui":"{dev}"}},"fPort":201,"fCnt":9000,"data":"/////w=="}}"#
            )
            .into_bytes(),
        ),
        // Another device's event on this device's topic.
        (
            up.clone(),
            r#"{"deviceInfo":{"devEui":"0102030405060708"},"fPort":201,"data":"AA=="}"#
                .as_bytes()
                .to_vec(),
        ),
        // A device in no campaign, and an application port.
        (
            "application/".to_string() + app + "/device/0102030405060708/event/up",
            r#"{"deviceInfo":{"devEui":"0102030405060708"},"fPort":201,"data":"AA=="}"#
                .as_bytes()
                .to_vec(),
        ),
        (
            up.clone(),
            format!(r#"{{"deviceInfo":{{"devEui":"{dev}"}},"fPort":7,"fCnt":9001,"data":"AQID"}}"#)
                .into_bytes(),
        ),
        (up.clone(), big.into_bytes()),
        (
            format!("{prefix}/gateway/aa555a0000000001/event/ack"),
            b"garbage".to_vec(),
        ),
        (
            format!("{prefix}/gateway/aa555a0000000001/event/ack"),
            br#"{"downlinkId":12345,"items":[{"status":"OK"}]}"#.to_vec(),
        ),
        (
            format!("{prefix}/gateway/aa555a0000000001/event/ack"),
            br#"{"downlinkId":1,"items":[{"status":"WHAT"}]}"#.to_vec(),
        ),
        (
            format!("{prefix}/gateway/aa555a0000000001/state/conn"),
            b"\x00\x01".to_vec(),
        ),
        (
            format!("{prefix}/gateway/bad.id/state/conn"),
            br#"{"state":"ONLINE"}"#.to_vec(),
        ),
        (
            format!("{prefix}/gateway/aa555a0000000009/event/stats"),
            b"{}".to_vec(),
        ),
    ];
    let publish_all = || {
        for (t, m) in &messages {
            client
                .publish(t.as_str(), QoS::AtLeastOnce, false, m.clone())
                .unwrap();
        }
    };
    publish_all();
    // Once more while the multicast runs.
    let t0 = Instant::now();
    while standin.stats().multicast.is_empty() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    publish_all();
    let (status, took) = server.wait_finished(id, Duration::from_secs(120));
    let stats = standin.stats();
    let log = server.log_text();
    eprintln!("malformed input: {n} devices updated in {took:?}");
    assert!(server.is_running());
    assert_all_updated(&status, n, &stats, &log);
    for want in [
        format!("{up}: malformed uplink event ignored"),
        format!("{up}: event for DevEUI 0102030405060708 on another device's topic"),
        format!("{prefix}/gateway/aa555a0000000001/event/ack: malformed tx ack ignored"),
        format!("{prefix}/gateway/aa555a0000000001/state/conn: malformed conn state ignored"),
    ] {
        assert!(log.contains(&want), "no {want:?} in\n{log}");
    }
    // The made-up gateway id is not used for multicast.
    assert!(!log.contains("gateway bad.id"), "{log}");
}

#[test]
fn duplicate_and_out_of_order_uplinks_are_handled_once() {
    let Some(mqtt) = service("FUOTA_MQTT_URL", 1883) else {
        return;
    };
    let _one = serial();
    let dir = scratch("duplicates");
    let db_url = format!("sqlite://{}", dir.join("fuota.db").display());
    let setup = ServerSetup::new(dir, &mqtt, &db_url, "dups");
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
    opts.seed = 7;
    opts.duplicate_uplinks = true;
    opts.reorder_uplinks = true;
    let keys = device_keys(n, 7);
    let standin = StandIn::start(&mqtt, opts, &update);
    let id = server.create_campaign("duplicates", &update.patch, &keys);
    let (status, took) = server.wait_finished(id, Duration::from_secs(120));
    let stats = standin.stats();
    let log = server.log_text();
    eprintln!("duplicates: {n} devices updated in {took:?}");
    assert_all_updated(&status, n, &stats, &log);
    assert!(log.contains("duplicate uplink (FCnt"), "{log}");
    // Each uplink is in its device's log once, whatever came twice.
    let mut out_of_order = 0;
    for (eui, _) in &keys {
        let (st, v) = server.get(&format!("/api/campaigns/{id}/devices/{eui:016x}/log"));
        assert_eq!(st, 200);
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut last = 0;
        for e in v.as_array().unwrap() {
            let t = e["text"].as_str().unwrap();
            if let Some(rest) = t.strip_prefix("uplink FCnt ") {
                let f: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                *seen.entry(f).or_default() += 1;
                if f < last {
                    out_of_order += 1;
                }
                last = last.max(f);
            }
        }
        assert!(!seen.is_empty());
        assert!(seen.values().all(|&c| c == 1), "{eui:016x}: {seen:?}");
    }
    assert!(out_of_order > 0, "no uplink came out of order");
}
