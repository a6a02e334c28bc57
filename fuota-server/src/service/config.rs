//! The service's configuration: a TOML file, then `FUOTA_SERVER_*` environment variables
//! over it (for secrets and containers).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything `fuota server` reads at start.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub chirpstack: ChirpStackConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub keys: KeysConfig,
    pub clock: ClockConfig,
    pub campaign: CampaignDefaults,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificates (PEM) that sign the broker's certificate (TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that ask for one (TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive_s: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChirpStackConfig {
    /// ChirpStack application ids whose devices take part in campaigns.
    pub applications: Vec<String>,
    /// Gateway topic prefix (ChirpStack's region id, e.g. `eu868`).
    pub region_prefix: String,
    /// Gateways that send multicast frames; empty: those seen online (`state/conn`) or in an
    /// uplink's `rxInfo`.
    pub gateways: Vec<String>,
    /// Gateway transmit power (dBm EIRP); `None`: the region's usual limit.
    pub gateway_power_dbm: Option<i32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (created if missing) or `postgres://user:password@host/db`.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Bearer token the API asks for (`Authorization: Bearer ...`); none: no auth.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// 32 bytes in hex: the AES-256-GCM key the device root keys are stored under.
    pub server_key: Option<String>,
    /// Where the key is read from (and written to, randomly made, if missing) when
    /// `server_key` is not set.
    pub server_key_file: PathBuf,
}

/// The service's clock. `scale` > 1 runs campaign time faster than the wall clock (tests and
/// demos): campaign time = origin + (wall - origin) x scale, on the GPS time scale.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    pub scale: f64,
    /// Unix ms where both clocks agree (fixed, so that a restart keeps the same time).
    pub origin_unix_ms: i64,
}

/// Timers and choices of new campaigns (seconds of campaign time).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignDefaults {
    /// From creation to SessionTime: the unicast setup of every device.
    pub setup_s: u64,
    /// Wait for an answer before asking again (class A: a few uplink periods).
    pub retry_s: u64,
    pub max_attempts: u32,
    /// From a complete block to the first DevVersionReq.
    pub reboot_wait_s: u64,
    /// How long late status answers are waited for.
    pub status_wait_s: u64,
    /// BlockAckDelay of the sessions (0 to 7).
    pub block_ack_delay: u8,
    /// Multicast frames are sent to the gateways this long before their air time.
    pub multicast_lead_ms: u64,
    /// Repair by unicast when at most this many devices need fragments.
    pub unicast_repair_max_devices: usize,
    /// Multicast addresses are taken from here up.
    pub mc_addr_base: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "fuota-server".into(),
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_s: 30,
        }
    }
}

impl Default for ChirpStackConfig {
    fn default() -> Self {
        Self {
            applications: Vec::new(),
            region_prefix: "eu868".into(),
            gateways: Vec::new(),
            gateway_power_dbm: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://fuota.db".into(),
            max_connections: 4,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token: None,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            server_key: None,
            server_key_file: "fuota-server.key".into(),
        }
    }
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            scale: 1.0,
            origin_unix_ms: 0,
        }
    }
}

impl Default for CampaignDefaults {
    fn default() -> Self {
        Self {
            setup_s: 1800,
            retry_s: 600,
            max_attempts: 6,
            reboot_wait_s: 120,
            status_wait_s: 240,
            block_ack_delay: 2,
            multicast_lead_ms: 2_000,
            unicast_repair_max_devices: 5,
            mc_addr_base: 0x01ff_0000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables read over the file, and the field each sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("FUOTA_SERVER_MQTT_URL", "mqtt.url"),
    ("FUOTA_SERVER_MQTT_USERNAME", "mqtt.username"),
    ("FUOTA_SERVER_MQTT_PASSWORD", "mqtt.password"),
    (
        "FUOTA_SERVER_APPLICATIONS",
        "chirpstack.applications (comma-separated)",
    ),
    ("FUOTA_SERVER_REGION_PREFIX", "chirpstack.region_prefix"),
    (
        "FUOTA_SERVER_GATEWAYS",
        "chirpstack.gateways (comma-separated)",
    ),
    ("FUOTA_SERVER_DATABASE_URL", "database.url"),
    ("FUOTA_SERVER_LISTEN", "http.listen"),
    ("FUOTA_SERVER_TOKEN", "http.token"),
    ("FUOTA_SERVER_KEY", "keys.server_key"),
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads `path` (or the defaults when `None`), then the environment over it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("{}: {e}", p.display())))?;
                Self::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.check()?;
        Ok(cfg)
    }

    /// Applies the `FUOTA_SERVER_*` variables that `get` finds.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("FUOTA_SERVER_MQTT_URL") {
            self.mqtt.url = v;
        }
        if let Some(v) = get("FUOTA_SERVER_MQTT_USERNAME") {
            self.mqtt.username = Some(v);
        }
        if let Some(v) = get("FUOTA_SERVER_MQTT_PASSWORD") {
            self.mqtt.password = Some(v);
        }
        if let Some(v) = get("FUOTA_SERVER_APPLICATIONS") {
            self.chirpstack.applications = list(&v);
        }
        if let Some(v) = get("FUOTA_SERVER_REGION_PREFIX") {
            self.chirpstack.region_prefix = v;
        }
        if let Some(v) = get("FUOTA_SERVER_GATEWAYS") {
            self.chirpstack.gateways = list(&v);
        }
        if let Some(v) = get("FUOTA_SERVER_DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = get("FUOTA_SERVER_LISTEN") {
            self.http.listen = v;
        }
        if let Some(v) = get("FUOTA_SERVER_TOKEN") {
            self.http.token = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = get("FUOTA_SERVER_KEY") {
            self.keys.server_key = Some(v);
        }
    }

    /// Values that would only fail later.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if !(self.mqtt.url.starts_with("mqtt://") || self.mqtt.url.starts_with("mqtts://")) {
            return bad("mqtt.url must start with mqtt:// or mqtts://");
        }
        if !(self.clock.scale.is_finite() && self.clock.scale > 0.0) {
            return bad("clock.scale must be positive");
        }
        if self.campaign.block_ack_delay > 7 {
            return bad("campaign.block_ack_delay must be 0 to 7");
        }
        if self.campaign.max_attempts == 0 {
            return bad("campaign.max_attempts must be at least 1");
        }
        let db = &self.database.url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return bad("database.url must be sqlite:... or postgres://...");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_env_overrides() {
        let mut cfg = Config::from_toml(
            r#"
            [mqtt]
            url = "mqtts://broker.example:8883"
            username = "fuota"
            [chirpstack]
            applications = ["a1"]
            region_prefix = "us915"
            [database]
            url = "sqlite://x.db"
            [clock]
            scale = 10.0
            origin_unix_ms = 1700000000000
            [campaign]
            setup_s = 20
            "#,
        )
        .unwrap();
        assert_eq!(cfg.mqtt.url, "mqtts://broker.example:8883");
        assert_eq!(cfg.chirpstack.region_prefix, "us915");
        assert_eq!(cfg.campaign.setup_s, 20);
        assert_eq!(cfg.campaign.retry_s, 600);
        assert_eq!(cfg.http.token, None);
        cfg.apply_env(|k| match k {
            "FUOTA_SERVER_APPLICATIONS" => Some("a1, a2,".into()),
            "FUOTA_SERVER_TOKEN" => Some("s3cret".into()),
            "FUOTA_SERVER_DATABASE_URL" => Some("postgres://u:p@h/db".into()),
            _ => None,
        });
        assert_eq!(cfg.chirpstack.applications, ["a1", "a2"]);
        assert_eq!(cfg.http.token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.database.url, "postgres://u:p@h/db");
        cfg.check().unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        for (text, want) in [
            ("[mqtt]\nurl = \"http://x\"", "mqtt.url"),
            ("[clock]\nscale = 0.0", "clock.scale"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[nope]\nx = 1", "unknown field"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
