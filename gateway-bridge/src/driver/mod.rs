//! The tokio driver: one UDP socket for every gateway, one MQTT session per gateway, and a
//! loop that feeds the [`Bridge`] and carries out what it asks.
//!
//! Why a session per gateway: an MQTT connection has one last will, and ChirpStack Gateway
//! Bridge's `state/conn` is per gateway. With one connection per gateway, each carrying its
//! gateway's retained OFFLINE as its will, every gateway's state turns OFFLINE by itself if
//! the bridge dies or loses the broker; when a gateway goes silent the bridge publishes its
//! OFFLINE and closes that one connection cleanly. A shared connection could only do the
//! latter. The price is a TCP connection per gateway, which brokers handle in the thousands;
//! [`Config::max_gateways`](crate::Config::max_gateways) bounds it.

mod session;

use crate::bridge::{Bridge, Output};
use crate::counters::Counters;
use crate::eui::Eui64;
use crate::mqtt::BadPrefix;
use core::fmt;
use core::future::Future;
use session::SessionHandle;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where to listen and which broker to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    pub udp_bind: SocketAddr,
    pub mqtt: MqttConfig,
    pub bridge: crate::Config,
}

#[derive(Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Each gateway's session is the client `{client_id_prefix}-{gatewayId}`.
    pub client_id_prefix: String,
    pub keep_alive: Duration,
    /// Wait between attempts to reach the broker.
    pub reconnect_delay: Duration,
    /// How long a closing session may take to publish its OFFLINE and disconnect before it
    /// is dropped (and the broker publishes its will instead).
    pub close_grace: Duration,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("client_id_prefix", &self.client_id_prefix)
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("close_grace", &self.close_grace)
            .finish()
    }
}

/// An MQTT URL this driver cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadUrl(pub String);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadUrl {}

impl MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (or `tcp://`); port 1883 by default. TLS
    /// (`mqtts://`) is not built in.
    pub fn from_url(url: &str) -> Result<Self, BadUrl> {
        let bad = |why: &str| BadUrl(format!("MQTT URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (mqtt://host:port)"))?;
        match scheme {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" | "tls" => return Err(bad("TLS is not built into this bridge")),
            _ => return Err(bad("scheme must be mqtt:// or tcp://")),
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(bad("no path or query is expected"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(n.to_owned()), Some(p.to_owned())),
                None => (Some(u.to_owned()), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 1883,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            username,
            password,
            client_id_prefix: "fuota-gateway-bridge".to_owned(),
            keep_alive: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(2),
            close_grace: Duration::from_secs(5),
        })
    }
}

/// Why the driver could not start.
#[derive(Debug)]
pub enum StartError {
    Udp(io::Error),
    Config(BadPrefix),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp(e) => write!(f, "UDP socket: {e}"),
            Self::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

/// A bound UDP socket and a bridge, ready to [`run`](Driver::run).
#[derive(Debug)]
pub struct Driver {
    socket: UdpSocket,
    bridge: Bridge,
    mqtt: MqttConfig,
}

/// Incoming MQTT messages from every session, for the bridge.
pub(crate) type Inbox = mpsc::Sender<(String, Vec<u8>)>;

impl Driver {
    pub async fn bind(config: DriverConfig) -> Result<Self, StartError> {
        let bridge = Bridge::new(config.bridge).map_err(StartError::Config)?;
        let socket = UdpSocket::bind(config.udp_bind)
            .await
            .map_err(StartError::Udp)?;
        Ok(Self {
            socket,
            bridge,
            mqtt: config.mqtt,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Runs until `shutdown` completes, then closes every session (each publishes its
    /// gateway's OFFLINE) and returns what the bridge counted.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Counters {
        let (inbox, mut incoming) = mpsc::channel(1024);
        let mut sessions = Sessions {
            open: HashMap::new(),
            closing: HashMap::new(),
            mqtt: self.mqtt.clone(),
            inbox,
        };
        let mut buf = vec![0u8; 65_536];
        tokio::pin!(shutdown);
        loop {
            self.flush(&mut sessions).await;
            let deadline = self.bridge.poll_timeout().map(Instant::from_std);
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => core::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.bridge.handle_datagram(now(), from, &buf[..n]),
                    Err(e) => tracing::warn!(error = %e, "UDP receive failed"),
                },
                Some((topic, payload)) = incoming.recv() => self.bridge.handle_mqtt(now(), &topic, &payload),
                () = timer => self.bridge.handle_timeout(now()),
            }
        }
        tracing::info!("shutting down: every gateway goes OFFLINE");
        self.bridge.handle_shutdown();
        self.flush(&mut sessions).await;
        sessions.wait_closed().await;
        let counters = self.bridge.counters().clone();
        tracing::info!(?counters, "stopped");
        counters
    }

    async fn flush(&mut self, sessions: &mut Sessions) {
        while let Some(out) = self.bridge.poll_output() {
            match out {
                Output::Datagram { to, bytes } => {
                    if let Err(e) = self.socket.send_to(&bytes, to).await {
                        tracing::warn!(%to, error = %e, "UDP send failed");
                    }
                }
                Output::Open(session) => sessions.open(session),
                Output::Publish { gateway, message } => sessions.publish(gateway, message),
                Output::Close { gateway, offline } => sessions.close(gateway, offline),
            }
        }
    }
}

/// The clock is read here and nowhere else in the crate.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

struct Sessions {
    open: HashMap<Eui64, SessionHandle>,
    /// Sessions publishing their OFFLINE and disconnecting.
    closing: HashMap<Eui64, tokio::task::JoinHandle<()>>,
    mqtt: MqttConfig,
    inbox: Inbox,
}

impl Sessions {
    fn open(&mut self, session: crate::Session) {
        // A gateway back before its old session finished closing: that one must not publish
        // OFFLINE after this one's ONLINE.
        if let Some(old) = self.closing.remove(&session.gateway) {
            old.abort();
        }
        self.closing.retain(|_, t| !t.is_finished());
        let gateway = session.gateway;
        self.open.insert(
            gateway,
            SessionHandle::start(session, &self.mqtt, self.inbox.clone()),
        );
    }

    fn publish(&mut self, gateway: Eui64, message: crate::mqtt::Publish) {
        match self.open.get(&gateway) {
            Some(s) => s.publish(&message),
            None => {
                tracing::warn!(%gateway, topic = message.topic, "publish for a gateway without a session")
            }
        }
    }

    fn close(&mut self, gateway: Eui64, offline: crate::mqtt::Publish) {
        if let Some(s) = self.open.remove(&gateway) {
            let task = s.close(&offline, self.mqtt.close_grace);
            self.closing.insert(gateway, task);
        }
    }

    async fn wait_closed(&mut self) {
        for (_, task) in self.closing.drain() {
            // Each task ends itself within its grace period.
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        let c = MqttConfig::from_url("mqtt://localhost").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.username, c.password),
            ("localhost", 1883, None, None)
        );
        let c = MqttConfig::from_url("tcp://user:p@ss:w@broker.example:18830/").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker.example", 18830));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("p@ss:w"))
        );
        let c = MqttConfig::from_url("mqtt://bridge@[::1]:1884").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.username.as_deref()),
            ("::1", 1884, Some("bridge"))
        );
        assert!(
            !format!("{:?}", MqttConfig::from_url("mqtt://u:secret@h").unwrap()).contains("secret")
        );
        for bad in [
            "localhost:1883",
            "mqtts://h",
            "http://h",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://h:70000",
            "mqtt://h/topic",
            "mqtt://[::1",
        ] {
            assert!(MqttConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
