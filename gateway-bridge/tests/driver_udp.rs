//! The driver's UDP side on loopback, with no broker reachable: gateways are still acked,
//! malformed datagrams are counted, and shutdown ends the run.

use fuota_gateway_bridge::driver::{Driver, DriverConfig, MqttConfig};
use fuota_gateway_bridge::semtech::{FromServer, Malformed, PullAck, PullData, PushAck};
use fuota_gateway_bridge::{Config, Eui64};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

async fn recv(sock: &UdpSocket) -> FromServer {
    let mut buf = [0u8; 2048];
    let n = timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("no answer from the bridge")
        .unwrap();
    FromServer::parse(&buf[..n]).unwrap()
}

#[tokio::test]
async fn gateways_are_acked_without_a_broker() {
    // Port 1 on loopback: nothing listens, every connection attempt is refused at once.
    let mut mqtt = MqttConfig::from_url("mqtt://127.0.0.1:1").unwrap();
    mqtt.reconnect_delay = Duration::from_millis(20);
    mqtt.close_grace = Duration::from_millis(200);
    let config = DriverConfig {
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        mqtt,
        bridge: Config {
            topic_prefix: "eu868".into(),
            ..Config::default()
        },
    };
    let driver = Driver::bind(config).await.unwrap();
    let addr = driver.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));

    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let down = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    up.connect(addr).await.unwrap();
    down.connect(addr).await.unwrap();
    let gw = Eui64::from_u64(0x0016_c001_ff10_a235);

    down.send(
        &PullData {
            token: 0x1234,
            gateway: gw,
        }
        .build(),
    )
    .await
    .unwrap();
    assert_eq!(
        recv(&down).await,
        FromServer::PullAck(PullAck { token: 0x1234 })
    );

    let mut push = vec![2, 0x21, 0x43, 0];
    push.extend_from_slice(&gw.0);
    push.extend_from_slice(br#"{"rxpk":[{"tmst":1,"freq":868.1,"stat":1,"datr":"SF7BW125","codr":"4/5","data":"QAE="}]}"#);
    up.send(&push).await.unwrap();
    assert_eq!(
        recv(&up).await,
        FromServer::PushAck(PushAck { token: 0x4321 })
    );

    up.send(b"\x02\x00\x00\x00not a gateway").await.unwrap();
    // Acked after the garbage, so the garbage was handled first.
    down.send(
        &PullData {
            token: 7,
            gateway: gw,
        }
        .build(),
    )
    .await
    .unwrap();
    assert_eq!(recv(&down).await, FromServer::PullAck(PullAck { token: 7 }));

    stop.send(()).unwrap();
    let counters = timeout(WAIT, run)
        .await
        .expect("shutdown took too long")
        .unwrap();
    assert_eq!(
        (counters.pull_data, counters.push_data, counters.uplinks),
        (2, 1, 1)
    );
    assert_eq!(counters.malformed(Malformed::BadJson), 1);
    assert_eq!(counters.sessions_opened, 1);
}
