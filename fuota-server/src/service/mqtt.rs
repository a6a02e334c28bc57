//! The MQTT connection (rumqttc): connects, subscribes again after every (re)connection,
//! and hands incoming messages to the runner. Publishing never waits on the broker: a
//! message is queued in the client (and re-sent after a reconnection by rumqttc).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::config::MqttConfig;

/// A message from the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A configuration that cannot connect.
#[derive(Debug)]
pub struct MqttSetupError(pub String);

impl std::fmt::Display for MqttSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MqttSetupError {}

fn read(path: &std::path::Path) -> Result<Vec<u8>, MqttSetupError> {
    std::fs::read(path).map_err(|e| MqttSetupError(format!("{}: {e}", path.display())))
}

/// The client options for `cfg`.
pub fn options(cfg: &MqttConfig) -> Result<MqttOptions, MqttSetupError> {
    let (tls, rest) = if let Some(r) = cfg.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = cfg.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(MqttSetupError(format!("MQTT URL {}", cfg.url)));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| MqttSetupError(format!("MQTT port in {}", cfg.url)))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let mut o = MqttOptions::new(&cfg.client_id, host, port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)));
    o.set_clean_session(true);
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(user) = &cfg.username {
        o.set_credentials(user, cfg.password.clone().unwrap_or_default());
    }
    if tls {
        let ca = match &cfg.ca_file {
            Some(p) => read(p)?,
            None => {
                return Err(MqttSetupError(
                    "mqtts:// needs mqtt.ca_file (the CA that signs the broker)".into(),
                ))
            }
        };
        let client_auth = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(MqttSetupError(
                    "mqtt.client_cert_file and mqtt.client_key_file go together".into(),
                ))
            }
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// Connects in the background; returns the client and the incoming messages.
pub fn start(
    cfg: &MqttConfig,
    subscriptions: Vec<String>,
) -> Result<(AsyncClient, mpsc::Receiver<Message>), MqttSetupError> {
    let (client, mut eventloop) = AsyncClient::new(options(cfg)?, 4096);
    let (tx, rx) = mpsc::channel(4096);
    let sub = client.clone();
    let url = cfg.url.clone();
    tokio::spawn(async move {
        let mut connected = false;
        let mut failures = 0u32;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!("MQTT connected to {url}");
                    connected = true;
                    failures = 0;
                    for t in &subscriptions {
                        if let Err(e) = sub.try_subscribe(t, QoS::AtLeastOnce) {
                            tracing::error!("MQTT subscribe {t}: {e}");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let m = Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!("MQTT connection to {url} lost: {e}; reconnecting");
                    } else if failures % 20 == 0 {
                        // Said once, then every ten seconds while it lasts.
                        tracing::warn!("MQTT cannot connect to {url}: {e}; retrying");
                    }
                    failures = failures.wrapping_add(1);
                    connected = false;
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok((client, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let mut c = MqttConfig {
            url: "mqtt://127.0.0.1:1884".into(),
            ..MqttConfig::default()
        };
        let o = options(&c).unwrap();
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1884));
        c.url = "mqtt://broker".into();
        assert_eq!(options(&c).unwrap().broker_address().1, 1883);
        c.url = "mqtts://broker".into();
        assert!(options(&c).unwrap_err().0.contains("ca_file"));
        c.url = "mqtt://broker:x".into();
        assert!(options(&c).is_err());
    }
}
