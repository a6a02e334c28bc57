//! What the service reads from MQTT: topics, ChirpStack application-integration uplink
//! events, Gateway Bridge tx acks and connection states. Arbitrary topics and payloads must
//! give a value or an error, never a panic; a parsed uplink's fields stay consistent.
#![no_main]

use fuota_server::service::chirpstack::{parse_conn_state, parse_eui, Topic, TxAck, Uplink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8])| {
    let (topic, payload) = input;
    let _ = Topic::parse(topic, "eu868");
    let _ = parse_eui(topic);
    if let Ok(up) = Uplink::parse(payload) {
        // What the service derives from an uplink must not panic either.
        let _ = format!("{up:?}");
    }
    if let Ok(ack) = TxAck::parse(payload) {
        let _ = (ack.sent(), ack.reason());
    }
    let _ = parse_conn_state(payload);
});
