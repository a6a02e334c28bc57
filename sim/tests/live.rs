//! The live simulator's world without sockets: frames given to a gateway from outside are
//! judged as a gateway's queue judges them, go out at their time, and reach the devices;
//! the network server's uplinks become ChirpStack events and its commands class A
//! downlinks.

use fuota_gateway_bridge::Eui64;
use fuota_server::plan::airtime::Modulation;
use fuota_server::plan::Region;
use fuota_sim::backend::Backend;
use fuota_sim::live::backend::{LiveBackend, NetworkServer};
use fuota_sim::live::clock::ScaledClock;
use fuota_sim::scenario::{build_with, Built, Scenario, START_GPS_S};
use fuota_sim::world::{Band, TxRefusal, World, TX_MAX_LEAD, TX_MIN_LEAD, TX_QUEUE_LEN};

fn world(region: &str) -> (World<LiveBackend>, Built) {
    let s = Scenario::from_toml(&format!(
        r#"
        name = "live-test"
        seed = 3
        region = "{region}"
        devices = 3
        radius_m = 50
        gateways = 1
        [traffic]
        uplink_period = "1m"
        [firmware]
        synthetic_size = 8192
        [campaign]
        dr = {dr}
        setup = "5m"
        window = "20m"
        "#,
        dr = if region == "eu868" { 5 } else { 10 }
    ))
    .unwrap();
    let band = Band(s.region().unwrap());
    let (mut w, built) = build_with(&s, START_GPS_S * 1000, |b| {
        Ok(LiveBackend::new(
            "app",
            NetworkServer::Simulated,
            ScaledClock::new(10.0, 1_767_225_600_000),
            band,
            (b.campaign.freq_hz, b.campaign.dr),
            vec![Eui64::from_u64(0x5e5e)],
            1,
        ))
    })
    .unwrap();
    w.track_gateway_queues(0);
    (w, built)
}

const SF9: Modulation = Modulation::Lora { sf: 9, bw_khz: 125 };
const SF7: Modulation = Modulation::Lora { sf: 7, bw_khz: 125 };

#[test]
fn a_gateway_refuses_what_its_queue_cannot_take() {
    let (mut w, _) = world("eu868");
    let now = w.now;
    let frame = || vec![0x60, 1, 0, 0xff, 1, 0, 0, 0, 200, 1, 2, 3, 4, 5, 6, 7];
    let mc = 869_525_000;
    assert_eq!(
        w.gateway_transmit(0, now + TX_MIN_LEAD - 1, mc, SF9, 27.0, frame()),
        Err(TxRefusal::TooLate)
    );
    assert_eq!(
        w.gateway_transmit(0, now + TX_MAX_LEAD + 1, mc, SF9, 27.0, frame()),
        Err(TxRefusal::TooEarly)
    );
    assert_eq!(
        w.gateway_transmit(0, now + 1_000_000, 915_000_000, SF9, 27.0, frame()),
        Err(TxRefusal::TxFreq)
    );
    assert_eq!(
        w.gateway_transmit(1, now + 1_000_000, mc, SF9, 27.0, frame()),
        Err(TxRefusal::TxFreq),
        "no such gateway"
    );
    // Accepted, at the sub-band's 27 dBm rather than the 30 asked.
    let a = w
        .gateway_transmit(0, now + 1_000_000, mc, SF9, 30.0, frame())
        .unwrap();
    assert!(a.power_clamped && a.power_dbm == 27.0);
    // Overlapping it: a collision; after it, the 10 % duty cycle of 869.4-869.65 MHz.
    assert_eq!(
        w.gateway_transmit(0, now + 1_050_000, 869_500_000, SF9, 27.0, frame()),
        Err(TxRefusal::CollisionPacket)
    );
    assert_eq!(
        w.gateway_transmit(0, now + 1_400_000, mc, SF9, 27.0, frame()),
        Err(TxRefusal::DutyCycleOverflow)
    );
    let a = w
        .gateway_transmit(0, now + 4_000_000, mc, SF9, 14.0, frame())
        .unwrap();
    assert!(!a.power_clamped && a.power_dbm == 14.0);
    assert_eq!(w.gateways[0].stats.refused, 1);
    // Both go out at their time.
    w.run_until(now + 5_000_000);
    assert_eq!(w.gateways[0].stats.multicast_frames, 2);
    assert!(w.gateways[0].stats.tx_us > 0);
}

#[test]
fn a_gateway_queue_holds_a_bounded_number_of_frames() {
    // US915 has no duty cycle: only the queue's length stops it.
    let (mut w, _) = world("us915");
    let now = w.now;
    let m = Band(Region::Us915)
        .0
        .data_rate(13)
        .map(|d| d.modulation)
        .unwrap();
    for k in 0..TX_QUEUE_LEN as u64 {
        w.gateway_transmit(
            0,
            now + 1_000_000 + k * 100_000,
            923_300_000,
            m,
            20.0,
            vec![0x60; 20],
        )
        .unwrap();
    }
    assert_eq!(
        w.gateway_transmit(0, now + 60_000_000, 923_300_000, m, 20.0, vec![0x60; 20]),
        Err(TxRefusal::QueueFull)
    );
    // Once some have gone out there is room again.
    w.run_until(now + 2_000_000);
    assert!(w
        .gateway_transmit(0, now + 60_000_000, 923_300_000, m, 20.0, vec![0x60; 20])
        .is_ok());
}

#[test]
fn uplinks_become_events_and_commands_class_a_downlinks() {
    let (mut w, built) = world("eu868");
    let start = w.now;
    // A minute and a half: every device has sent its reading, heard by the gateway.
    w.run_until(start + 90_000_000);
    let events: Vec<(String, Vec<u8>)> = w.backend.take_publishes().collect();
    let heard = w.backend.take_heard().count();
    assert!(heard >= 3, "{heard}");
    assert!(events.len() >= 3, "{}", events.len());
    let dev = built.devices[1].dev_eui;
    let topic = format!("application/app/device/{dev:016x}/event/up");
    let ev = events
        .iter()
        .find(|(t, _)| *t == topic)
        .expect("an event for device 1");
    let v: serde_json::Value = serde_json::from_slice(&ev.1).unwrap();
    assert_eq!(v["rxInfo"][0]["gatewayId"], "0000000000005e5e");
    assert_eq!(v["deviceInfo"]["devEui"], format!("{dev:016x}"));
    // A DevVersionReq (TS006, port 203) for device 1: it goes in the device's next RX
    // window, and the agent answers on port 203.
    let cmd = format!(r#"{{"devEui":"{dev:016x}","confirmed":false,"fPort":203,"data":"AQ=="}}"#);
    let down = format!("application/app/device/{dev:016x}/command/down");
    let received = w.stats.unicast_downlinks_received;
    w.with_backend(|b| b.handle_command(&down, cmd.as_bytes(), |_| true))
        .unwrap();
    assert!(w.backend.poll_output().is_none(), "taken into the queue");
    w.run_until(start + 240_000_000);
    assert!(w.stats.unicast_downlinks_received > received);
    let answered = w.backend.take_publishes().any(|(t, body)| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        t == topic && v["fPort"] == 203
    });
    assert!(answered, "no DevVersionAns");
}

#[test]
fn with_another_network_server_class_a_downlinks_come_through_the_gateway() {
    use fuota_gateway_bridge::semtech::TxTiming;
    use fuota_sim::live::forwarder::{counter, tx_time};
    let s = Scenario::from_toml(
        r#"
        name = "external-ns"
        seed = 5
        devices = 2
        radius_m = 40
        gateways = 1
        [traffic]
        uplink_period = "1m"
        [firmware]
        synthetic_size = 8192
        [campaign]
        dr = 5
        setup = "5m"
        window = "20m"
        "#,
    )
    .unwrap();
    let clock = ScaledClock::new(1.0, 1_767_225_600_000);
    let (mut w, _) = build_with(&s, START_GPS_S * 1000, |b| {
        Ok(LiveBackend::new(
            "app",
            NetworkServer::External,
            clock,
            Band(Region::Eu868),
            (b.campaign.freq_hz, b.campaign.dr),
            vec![Eui64::from_u64(9)],
            1,
        ))
    })
    .unwrap();
    w.track_gateway_queues(0);
    // Step until the gateway hears device 0 (as the driver would, a little at a time).
    let start = w.now;
    let heard = loop {
        w.run_until(w.now + 10_000);
        assert!(w.now < start + 180_000_000, "device 0 never heard");
        if let Some(h) = w.backend.take_heard().find(|h| h.dev == 0) {
            break h;
        }
    };
    assert_eq!(
        w.backend.take_publishes().count(),
        0,
        "no integration events"
    );
    // The network server answers in RX1: `delay` 1 s from the uplink's tmst, on the
    // uplink's channel and data rate, with a DevVersionReq (TS006, port 203).
    let d = &w.devices[0];
    let phy = fuota_sim::mac::build(false, d.addr, 0, 203, &[0x01], false, &d.keys).unwrap();
    let at = tx_time(
        TxTiming::Tmst(counter(heard.end).wrapping_add(1_000_000)),
        w.now,
        &clock,
    );
    assert_eq!(at, heard.end + 1_000_000);
    w.gateway_transmit(0, at, heard.freq_hz, heard.modulation, 14.0, phy)
        .unwrap();
    w.run_until(at + 60_000_000);
    assert_eq!(w.stats.unicast_downlinks_received, 1);
    assert_eq!(w.gateways[0].stats.downlinks, 1);
    // The agent's DevVersionAns goes up through the gateway.
    let keys = w.devices[0].keys;
    let answered = w
        .backend
        .take_heard()
        .filter(|h| h.dev == 0)
        .any(|h| fuota_sim::mac::open(&h.phy, &keys, 0).is_some_and(|f| f.port == Some(203)));
    assert!(answered, "no DevVersionAns");
    // A frame for the device outside its receive windows is not received.
    let d = &w.devices[0];
    let late = fuota_sim::mac::build(false, d.addr, 1, 203, &[0x01], false, &d.keys).unwrap();
    let when = w.now + 500_000;
    w.gateway_transmit(0, when, 869_525_000, SF7, 14.0, late)
        .unwrap();
    w.run_until(when + 2_000_000);
    assert_eq!(w.stats.unicast_downlinks_received, 1);
}
