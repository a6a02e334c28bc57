//! `fuota-gateway-bridge`: Semtech UDP packet forwarders on one side, ChirpStack Gateway
//! Bridge MQTT topics on the other.

use anyhow::{bail, Context as _};
use clap::Parser;
use fuota_gateway_bridge::driver::{Driver, DriverConfig, MqttConfig};
use fuota_gateway_bridge::mqtt::Qos;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Bridges Semtech UDP packet forwarders (protocol v2) and ChirpStack Gateway Bridge MQTT
/// topics (`{prefix}/gateway/{gatewayId}/…`, JSON).
#[derive(Parser, Debug, Default)]
#[command(name = "fuota-gateway-bridge", version)]
struct Args {
    /// TOML configuration file; flags given here override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// UDP address the packet forwarders send to [default: 0.0.0.0:1700].
    #[arg(long)]
    udp_bind: Option<SocketAddr>,
    /// Broker: mqtt://[user[:password]@]host[:port] [default: mqtt://localhost:1883].
    #[arg(long)]
    mqtt_url: Option<String>,
    #[arg(long)]
    mqtt_username: Option<String>,
    #[arg(long, env = "FUOTA_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// MQTT QoS of everything published and subscribed (0, 1 or 2) [default: 0].
    #[arg(long)]
    qos: Option<u8>,
    /// Each gateway's MQTT client ID is `{prefix}-{gatewayId}` [default: fuota-gateway-bridge].
    #[arg(long)]
    client_id_prefix: Option<String>,
    /// Topics are `{prefix}/gateway/{gatewayId}/…`, e.g. `eu868` [default: none].
    #[arg(long)]
    topic_prefix: Option<String>,
    /// A gateway without PULL_DATA for this long goes OFFLINE (`90s`, `2m`) [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    offline_timeout: Option<Duration>,
    /// A downlink whose TX_ACK has not come after this long is forgotten [default: 15s].
    #[arg(long, value_parser = parse_duration)]
    ack_timeout: Option<Duration>,
    /// Forward packets received with a bad or no CRC.
    #[arg(long)]
    forward_crc_failed: bool,
    /// At most this many gateways (MQTT sessions) at once [default: 10000].
    #[arg(long)]
    max_gateways: Option<usize>,
}

/// The TOML file: the same settings as the flags.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    udp_bind: Option<SocketAddr>,
    topic_prefix: Option<String>,
    offline_timeout: Option<String>,
    ack_timeout: Option<String>,
    forward_crc_failed: Option<bool>,
    max_gateways: Option<usize>,
    #[serde(default)]
    mqtt: FileMqtt,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileMqtt {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    qos: Option<u8>,
    client_id_prefix: Option<String>,
    keep_alive: Option<String>,
}

/// `500ms`, `90s`, `2m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn duration_setting(
    flag: Option<Duration>,
    file: Option<&str>,
    default: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(s)) => parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}")),
        (None, None) => Ok(default),
    }
}

fn resolve(args: Args, file: FileConfig) -> anyhow::Result<DriverConfig> {
    let url = args
        .mqtt_url
        .or(file.mqtt.url)
        .unwrap_or_else(|| "mqtt://localhost:1883".to_owned());
    let mut mqtt = MqttConfig::from_url(&url)?;
    if let Some(u) = args.mqtt_username.or(file.mqtt.username) {
        mqtt.username = Some(u);
    }
    if let Some(p) = args.mqtt_password.or(file.mqtt.password) {
        mqtt.password = Some(p);
    }
    if mqtt.password.is_some() && mqtt.username.is_none() {
        bail!("an MQTT password needs a username");
    }
    if let Some(p) = args.client_id_prefix.or(file.mqtt.client_id_prefix) {
        mqtt.client_id_prefix = p;
    }
    mqtt.keep_alive = duration_setting(
        None,
        file.mqtt.keep_alive.as_deref(),
        mqtt.keep_alive,
        "mqtt.keep_alive",
    )?;
    let level = args.qos.or(file.mqtt.qos).unwrap_or(0);
    let qos = Qos::from_level(level).with_context(|| format!("QoS {level}: it is 0, 1 or 2"))?;
    let defaults = fuota_gateway_bridge::Config::default();
    let bridge = fuota_gateway_bridge::Config {
        topic_prefix: args.topic_prefix.or(file.topic_prefix).unwrap_or_default(),
        offline_timeout: duration_setting(
            args.offline_timeout,
            file.offline_timeout.as_deref(),
            defaults.offline_timeout,
            "offline_timeout",
        )?,
        ack_timeout: duration_setting(
            args.ack_timeout,
            file.ack_timeout.as_deref(),
            defaults.ack_timeout,
            "ack_timeout",
        )?,
        qos,
        forward_crc_failed: args.forward_crc_failed || file.forward_crc_failed.unwrap_or(false),
        max_gateways: args
            .max_gateways
            .or(file.max_gateways)
            .unwrap_or(defaults.max_gateways),
    };
    if bridge.offline_timeout.is_zero() {
        bail!("offline_timeout must be more than zero");
    }
    Ok(DriverConfig {
        udp_bind: args
            .udp_bind
            .or(file.udp_bind)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1700))),
        mqtt,
        bridge,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            core::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => core::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = core::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = Args::parse();
    let file = match args.config.take() {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
    };
    let config = resolve(args, file)?;
    tracing::info!(?config, "starting");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let driver = Driver::bind(config).await?;
        tracing::info!(udp = %driver.local_addr()?, "listening for packet forwarders");
        driver.run(shutdown_signal()).await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
udp_bind = "0.0.0.0:1700"
topic_prefix = "eu868"
offline_timeout = "90s"
ack_timeout = "10s"

[mqtt]
url = "mqtt://localhost:1883"
username = "bridge"
password = "secret"
qos = 1
client_id_prefix = "site-a"
keep_alive = "20s"
"#;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "s", "1.5s", "-1s", "10 days", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_settings() {
        let file: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let c = resolve(Args::default(), file).unwrap();
        assert_eq!(c.udp_bind, "0.0.0.0:1700".parse().unwrap());
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("localhost", 1883));
        assert_eq!(
            (c.mqtt.username.as_deref(), c.mqtt.password.as_deref()),
            (Some("bridge"), Some("secret"))
        );
        assert_eq!(
            (c.mqtt.client_id_prefix.as_str(), c.mqtt.keep_alive),
            ("site-a", Duration::from_secs(20))
        );
        assert_eq!(c.bridge.topic_prefix, "eu868");
        assert_eq!(
            (c.bridge.offline_timeout, c.bridge.ack_timeout),
            (Duration::from_secs(90), Duration::from_secs(10))
        );
        assert_eq!(c.bridge.qos, Qos::AtLeastOnce);
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let args = Args::parse_from([
            "fuota-gateway-bridge",
            "--udp-bind",
            "127.0.0.1:0",
            "--mqtt-url",
            "mqtt://other:18830",
            "--topic-prefix",
            "us915",
            "--offline-timeout",
            "30s",
            "--qos",
            "0",
            "--forward-crc-failed",
        ]);
        let c = resolve(args, file).unwrap();
        assert_eq!(c.udp_bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            (
                c.mqtt.host.as_str(),
                c.mqtt.port,
                c.mqtt.username.as_deref()
            ),
            ("other", 18830, Some("bridge"))
        );
        assert_eq!(
            (c.bridge.topic_prefix.as_str(), c.bridge.offline_timeout),
            ("us915", Duration::from_secs(30))
        );
        assert_eq!(c.bridge.ack_timeout, Duration::from_secs(10));
        assert_eq!(c.bridge.qos, Qos::AtMostOnce);
        assert!(c.bridge.forward_crc_failed);
    }

    #[test]
    fn defaults_and_refusals() {
        let c = resolve(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.udp_bind, "0.0.0.0:1700".parse().unwrap());
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("localhost", 1883));
        assert_eq!(c.bridge, fuota_gateway_bridge::Config::default());
        assert!(resolve(
            Args {
                qos: Some(3),
                ..Args::default()
            },
            FileConfig::default()
        )
        .is_err());
        assert!(resolve(
            Args {
                offline_timeout: Some(Duration::ZERO),
                ..Args::default()
            },
            FileConfig::default()
        )
        .is_err());
        assert!(resolve(
            Args {
                mqtt_password: Some("x".into()),
                ..Args::default()
            },
            FileConfig::default()
        )
        .is_err());
        assert!(toml::from_str::<FileConfig>("udp_bnd = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[mqtt]\nurl = 1").is_err());
    }
}
