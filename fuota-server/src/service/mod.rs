//! The FUOTA service (`fuota server`): ChirpStack over MQTT, durable campaigns in SQL, an HTTP
//! API and a status page. A thin driver around the sans-IO campaign engine: the runner feeds
//! it real time and real messages, logging every step before acting on it.
//!
//! - [`config`]: the TOML file and its environment overrides.
//! - [`clock`]: GPS time from the system clock (optionally faster, for tests).
//! - [`chirpstack`]: the MQTT topics and JSON messages.
//! - [`frames`]: multicast LoRaWAN frames.
//! - [`keystore`]: root keys and McKeys encrypted at rest.
//! - [`store`]: the database (SQLite or PostgreSQL), migrations included.
//! - [`campaign`]: requests into engine configurations; the write-ahead log and replay.
//! - [`rollout`]: rollout requests into rollout plans; a rollout's log and replay.
//! - [`runner`]: the select loop that owns the campaigns and rollouts.
//! - [`auth`], [`audit`]: API tokens and roles; the audit log's entries.
//! - [`mqtt`], [`api`], [`page`], [`broker`]: the connections, the HTTP side, the
//!   embedded broker.

pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod campaign;
pub mod chirpstack;
pub mod clock;
pub mod config;
pub mod frames;
pub mod keystore;
pub mod mqtt;
pub mod page;
pub mod rollout;
pub mod runner;
pub mod store;

use std::net::SocketAddr;

use tokio::sync::{mpsc, watch};

use self::clock::Clock;
use self::config::Config;
use self::store::Store;

/// Why the service could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn err(what: &str) -> impl Fn(String) -> StartError + '_ {
    move |e| StartError(format!("{what}: {e}"))
}

/// Runs the service until `shutdown` turns true. `on_listen` is told the HTTP address once
/// it is bound.
pub async fn run(
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let store = Store::connect(&cfg.database.url, cfg.database.max_connections)
        .await
        .map_err(|e| err("database")(e.to_string()))?;
    let (keys, key_source) = keystore::load(&cfg.keys, &store)
        .await
        .map_err(|e| err("server key")(e.0))?;
    let clock = Clock::new(cfg.clock.scale, cfg.clock.origin_unix_ms);
    let subs =
        chirpstack::subscriptions(&cfg.chirpstack.applications, &cfg.chirpstack.region_prefix);
    let (client, messages) = mqtt::start(&cfg.mqtt, subs).map_err(|e| err("mqtt")(e.0))?;
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .map_err(|e| err(&cfg.http.listen)(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err("listen")(e.to_string()))?;
    let (commands_tx, commands) = mpsc::channel(64);
    let state = api::AppState {
        store: store.clone(),
        commands: commands_tx,
        auth: auth::Authenticator::new(cfg.http.token.as_deref()),
        clock,
    };
    if state
        .auth
        .is_open(&store)
        .await
        .map_err(|e| err("database")(e.to_string()))?
    {
        tracing::warn!(
            "no API token is configured and none was made: the API is open to anyone who \
             reaches {addr} (set http.token or make a token)"
        );
    }
    let mut runner = runner::Runner::new(cfg, store.clone(), keys, clock, client.clone());
    runner.set_key_source(key_source);
    runner.resume().await.map_err(err("resume"))?;
    let runner = tokio::spawn(runner.run(messages, commands, shutdown.clone()));
    on_listen(addr);
    let app = api::router(state);
    let mut http_shutdown = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*http_shutdown.borrow() {
                if http_shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(|e| err("http")(e.to_string()))?;
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    let _ = runner.await;
    let _ = client.try_disconnect();
    store.close().await;
    Ok(())
}
