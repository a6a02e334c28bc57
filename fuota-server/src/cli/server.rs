//! `fuota server`: the service, with an in-process MQTT broker on request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fuota_server::service::{self, config::Config};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Configuration file (TOML); FUOTA_SERVER_* environment variables override it.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Start an MQTT broker in this process and connect to it (to try the service without
    /// installing one).
    #[arg(long)]
    embedded_broker: bool,
    /// Where the embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker_listen: SocketAddr,
}

pub fn run(a: ServerArgs) -> Result<ExitCode> {
    let mut cfg = Config::load(a.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        if a.embedded_broker {
            service::broker::start(a.broker_listen)
                .with_context(|| format!("embedded broker on {}", a.broker_listen))?;
            cfg.mqtt.url = format!("mqtt://{}", a.broker_listen);
            eprintln!("fuota server: embedded MQTT broker on {}", a.broker_listen);
        }
        if cfg.chirpstack.applications.is_empty() {
            eprintln!(
                "fuota server: no ChirpStack application configured \
                 (chirpstack.applications or FUOTA_SERVER_APPLICATIONS): no uplink will be read"
            );
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        service::run(cfg, rx, |addr| {
            eprintln!("fuota server: HTTP API and status page on http://{addr}/");
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
