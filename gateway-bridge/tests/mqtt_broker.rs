//! The driver against a real MQTT broker, named by FUOTA_MQTT_URL (skipped when unset, failing
//! when set but unreachable). The test plays a gateway over UDP and the network server over
//! MQTT:
//!
//! ```sh
//! mosquitto -p 18830 -d
//! FUOTA_MQTT_URL=mqtt://127.0.0.1:18830 cargo test -p fuota-gateway-bridge --test mqtt_broker
//! ```

use fuota_gateway_bridge::driver::{Driver, DriverConfig, MqttConfig};
use fuota_gateway_bridge::semtech::{FromServer, PullData, PullResp, TxAck, TxTiming};
use fuota_gateway_bridge::{Config, Eui64};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn broker() -> Option<MqttConfig> {
    let url = std::env::var("FUOTA_MQTT_URL").ok()?;
    Some(MqttConfig::from_url(&url).unwrap_or_else(|e| panic!("FUOTA_MQTT_URL: {e}")))
}

/// A prefix of this run's own, so that retained states of other runs do not interfere.
fn unique_prefix(name: &str) -> String {
    #[allow(clippy::disallowed_methods)]
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fuota-test/{name}-{}-{nanos}", std::process::id())
}

/// A network server's view of the broker: everything under the prefix.
struct Observer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Value, bool)>,
}

impl Observer {
    async fn connect(mqtt: &MqttConfig, id: &str, filter: &str) -> Self {
        let mut opts = MqttOptions::new(id, &mqtt.host, mqtt.port);
        if let Some(u) = &mqtt.username {
            opts.set_credentials(u, mqtt.password.clone().unwrap_or_default());
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        // Connected and subscribed before anything else happens, or the test fails here.
        let ready = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return,
                    Ok(_) => {}
                    Err(e) => panic!("FUOTA_MQTT_URL is set but the broker is unreachable: {e}"),
                }
            }
        };
        timeout(WAIT, ready)
            .await
            .expect("FUOTA_MQTT_URL is set but the broker does not answer");
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send((p.topic, v, p.retain)).is_err() {
                        return;
                    }
                }
            }
        });
        Self { client, rx }
    }

    /// The next message on a topic ending in `suffix`, skipping others.
    async fn next(&mut self, suffix: &str) -> (String, Value, bool) {
        let find = async {
            loop {
                let m = self.rx.recv().await.expect("observer stopped");
                if m.0.ends_with(suffix) {
                    return m;
                }
            }
        };
        timeout(WAIT, find)
            .await
            .unwrap_or_else(|_| panic!("nothing on …{suffix}"))
    }

    /// Removes the broker's retained message on `topic` (which this observer subscribes to),
    /// waiting until the broker has done it.
    async fn clear_retained(&mut self, topic: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await
            .unwrap();
        loop {
            let (t, v, _) = self.next(topic).await;
            if t == topic && v.is_null() {
                return;
            }
        }
    }
}

struct Gateway {
    eui: Eui64,
    up: UdpSocket,
    down: UdpSocket,
}

impl Gateway {
    async fn new(eui: Eui64, bridge: SocketAddr) -> Self {
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let down = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        up.connect(bridge).await.unwrap();
        down.connect(bridge).await.unwrap();
        Self { eui, up, down }
    }

    async fn recv(sock: &UdpSocket) -> FromServer {
        let mut buf = [0u8; 4096];
        let n = timeout(WAIT, sock.recv(&mut buf))
            .await
            .expect("no datagram from the bridge")
            .unwrap();
        FromServer::parse(&buf[..n]).unwrap()
    }

    async fn pull(&self) {
        self.down
            .send(
                &PullData {
                    token: 0x0101,
                    gateway: self.eui,
                }
                .build(),
            )
            .await
            .unwrap();
        assert!(matches!(
            Self::recv(&self.down).await,
            FromServer::PullAck(_)
        ));
    }

    async fn push(&self, token: u16, json: &str) {
        let mut v = vec![2, token.to_le_bytes()[0], token.to_le_bytes()[1], 0];
        v.extend_from_slice(&self.eui.0);
        v.extend_from_slice(json.as_bytes());
        self.up.send(&v).await.unwrap();
        assert!(matches!(Self::recv(&self.up).await, FromServer::PushAck(a) if a.token == token));
    }

    async fn pull_resp(&self) -> PullResp {
        match Self::recv(&self.down).await {
            FromServer::PullResp(p) => p,
            other => panic!("{other:?}"),
        }
    }

    async fn tx_ack(&self, token: u16, error: Option<&str>) {
        let ack = TxAck {
            token,
            gateway: self.eui,
            error: error.map(str::to_owned),
            warning: None,
        };
        self.down.send(&ack.build()).await.unwrap();
    }
}

fn driver_config(mqtt: &MqttConfig, prefix: &str, client_prefix: &str) -> DriverConfig {
    let mut mqtt = mqtt.clone();
    mqtt.client_id_prefix = client_prefix.to_owned();
    mqtt.reconnect_delay = Duration::from_millis(200);
    mqtt.close_grace = Duration::from_secs(2);
    DriverConfig {
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        mqtt,
        bridge: Config {
            topic_prefix: prefix.to_owned(),
            offline_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
            ..Config::default()
        },
    }
}

/// A bridge on its own runtime, so that the test can kill it the way a crash would: every
/// socket dropped at once, no MQTT DISCONNECT.
struct Running {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

async fn start(config: DriverConfig) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (bound, addr) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let driver = Driver::bind(config).await.unwrap();
        let _ = bound.send(driver.local_addr().unwrap());
        driver.run(core::future::pending()).await
    });
    Running {
        addr: addr.await.unwrap(),
        runtime,
    }
}

fn delay_item(context: &Value, delay: &str, frequency: u32) -> Value {
    json!({
        "phyPayload": "YAQDAgGAAQAB",
        "txInfo": {
            "frequency": frequency,
            "power": 14,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5", "polarizationInversion": true}},
            "timing": {"delay": {"delay": delay}},
            "context": context
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_downlink_ack_and_connection_state_through_a_broker() {
    let Some(mqtt) = broker() else {
        eprintln!("FUOTA_MQTT_URL is not set: skipped");
        return;
    };
    let prefix = unique_prefix("flow");
    let mut ns = Observer::connect(
        &mqtt,
        &format!("{prefix}-ns").replace('/', "-"),
        &format!("{prefix}/gateway/+/#"),
    )
    .await;
    let bridge = start(driver_config(&mqtt, &prefix, &prefix.replace('/', "-"))).await;
    let gw = Gateway::new(Eui64::from_u64(0x0016_c001_ff10_a235), bridge.addr).await;
    let state_topic = format!("{prefix}/gateway/{}/state/conn", gw.eui);

    // PULL_DATA: ONLINE.
    gw.pull().await;
    let (topic, state, _) = ns.next("/state/conn").await;
    assert_eq!(topic, state_topic);
    assert_eq!(
        state,
        json!({"gatewayId": gw.eui.to_string(), "state": "ONLINE"})
    );

    // PUSH_DATA: event/up.
    gw.push(
        0x4242,
        r#"{"rxpk":[{"time":"2024-05-01T10:00:00.5Z","tmst":3512348611,"chan":1,"rfch":0,"freq":868.3,
        "stat":1,"modu":"LORA","datr":"SF9BW125","codr":"4/5","rssi":-97,"lsnr":-3.5,"size":3,"data":"QAEC"}]}"#,
    )
    .await;
    let (topic, up, retained) = ns.next("/event/up").await;
    assert_eq!(topic, format!("{prefix}/gateway/{}/event/up", gw.eui));
    assert!(!retained);
    assert_eq!(up["phyPayload"], "QAEC");
    assert_eq!(up["txInfo"]["frequency"], 868_300_000);
    assert_eq!(up["txInfo"]["modulation"]["lora"]["spreadingFactor"], 9);
    assert_eq!(up["rxInfo"]["gatewayId"], gw.eui.to_string());
    assert_eq!(up["rxInfo"]["uplinkId"], 0x4242);
    assert_eq!(up["rxInfo"]["gwTime"], "2024-05-01T10:00:00.500Z");
    assert_eq!(
        (&up["rxInfo"]["rssi"], &up["rxInfo"]["snr"]),
        (&json!(-97), &json!(-3.5))
    );

    // command/down with RX1 and RX2: the gateway refuses RX1, takes RX2, event/ack says so.
    let context = up["rxInfo"]["context"].clone();
    let frame = json!({
        "downlinkId": 0x0abc_d001u32,
        "gatewayId": gw.eui.to_string(),
        "items": [delay_item(&context, "1s", 868_300_000), delay_item(&context, "2s", 869_525_000)]
    });
    let down_topic = format!("{prefix}/gateway/{}/command/down", gw.eui);
    ns.client
        .publish(
            &down_topic,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&frame).unwrap(),
        )
        .await
        .unwrap();
    let rx1 = gw.pull_resp().await;
    assert_eq!(
        (rx1.token, rx1.txpk.timing, rx1.txpk.frequency),
        (0xd001, TxTiming::Tmst(3_513_348_611), 868_300_000)
    );
    gw.tx_ack(rx1.token, Some("TOO_LATE")).await;
    let rx2 = gw.pull_resp().await;
    assert_eq!(
        (rx2.token, rx2.txpk.timing, rx2.txpk.frequency),
        (0xd001, TxTiming::Tmst(3_514_348_611), 869_525_000)
    );
    gw.tx_ack(rx2.token, None).await;
    let (topic, ack, _) = ns.next("/event/ack").await;
    assert_eq!(topic, format!("{prefix}/gateway/{}/event/ack", gw.eui));
    assert_eq!(
        ack,
        json!({"gatewayId": gw.eui.to_string(), "downlinkId": 0x0abc_d001u32, "items": [{"status": "TOO_LATE"}, {"status": "OK"}]})
    );

    // Stats.
    gw.push(1, r#"{"stat":{"time":"2024-05-01 10:00:05 GMT","rxnb":1,"rxok":1,"rxfw":1,"ackr":100.0,"dwnb":1,"txnb":1}}"#).await;
    let (_, stats, _) = ns.next("/event/stats").await;
    assert_eq!(stats["time"], "2024-05-01T10:00:05Z");
    assert_eq!(stats["rxPacketsPerFrequency"], json!({"868300000": 1}));
    assert_eq!(stats["txPacketsPerStatus"], json!({"OK": 1, "TOO_LATE": 1}));

    // The gateway stops pulling: OFFLINE within the 2 s timeout.
    let (_, state, _) = ns.next("/state/conn").await;
    assert_eq!(state["state"], "OFFLINE");

    // It comes back, then the bridge dies: the broker publishes the will.
    gw.pull().await;
    assert_eq!(ns.next("/state/conn").await.1["state"], "ONLINE");
    bridge.runtime.shutdown_background();
    assert_eq!(ns.next("/state/conn").await.1["state"], "OFFLINE");

    // And OFFLINE is what the broker keeps for a newcomer.
    let mut late = Observer::connect(
        &mqtt,
        &format!("{prefix}-late").replace('/', "-"),
        &state_topic,
    )
    .await;
    let (_, state, retained) = late.next("/state/conn").await;
    assert!(retained);
    assert_eq!(
        state,
        json!({"gatewayId": gw.eui.to_string(), "state": "OFFLINE"})
    );
    ns.clear_retained(&state_topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_leaves_every_gateway_offline() {
    let Some(mqtt) = broker() else {
        eprintln!("FUOTA_MQTT_URL is not set: skipped");
        return;
    };
    let prefix = unique_prefix("shutdown");
    let mut ns = Observer::connect(
        &mqtt,
        &format!("{prefix}-ns").replace('/', "-"),
        &format!("{prefix}/gateway/+/state/conn"),
    )
    .await;
    let mut config = driver_config(&mqtt, &prefix, &prefix.replace('/', "-"));
    config.bridge.offline_timeout = Duration::from_secs(60);
    let driver = Driver::bind(config).await.unwrap();
    let addr = driver.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    let euis: Vec<Eui64> = (1..=3)
        .map(|i| Eui64::from_u64(0x00aa_0000_0000_0000 + i))
        .collect();
    let mut gateways = Vec::new();
    for &eui in &euis {
        let gw = Gateway::new(eui, addr).await;
        gw.pull().await;
        gateways.push(gw);
    }
    let mut online = Vec::new();
    for _ in &euis {
        let (topic, state, _) = ns.next("/state/conn").await;
        assert_eq!(state["state"], "ONLINE");
        online.push(topic);
    }
    online.sort();
    stop.send(()).unwrap();
    let counters = timeout(WAIT, run)
        .await
        .expect("shutdown took too long")
        .unwrap();
    assert_eq!(counters.sessions_opened, 3);
    let mut offline = Vec::new();
    for _ in &euis {
        let (topic, state, _) = ns.next("/state/conn").await;
        assert_eq!(state["state"], "OFFLINE");
        offline.push(topic);
    }
    offline.sort();
    assert_eq!(online, offline);
    for t in &offline {
        ns.clear_retained(t).await;
    }
}
