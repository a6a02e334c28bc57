//! `fuota`: the FUOTA server's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// FUOTA for LoRaWAN: fragments, patches and campaigns.
#[derive(Debug, Parser)]
#[command(name = "fuota", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fragment a file into TS004 DataFragments, or rebuild it from them.
    #[command(subcommand)]
    Frag(cli::frag::FragCommand),
    /// Signing keys for patches.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// Signed delta patches: create, inspect, apply, bench.
    #[command(subcommand)]
    Patch(cli::patch::PatchCommand),
    /// Plan a campaign: fragments, redundancy, airtime, session timeout, window (offline).
    Plan(cli::plan::PlanArgs),
    /// Run the FUOTA service: ChirpStack over MQTT, campaigns in SQL, HTTP API, status page.
    #[cfg(feature = "service")]
    Server(cli::server::ServerArgs),
    /// Campaigns through the service's HTTP API.
    #[cfg(feature = "service")]
    Campaign(Box<cli::campaign::CampaignArgs>),
    /// Staged rollouts (waves of campaigns) through the service's HTTP API.
    #[cfg(feature = "service")]
    Rollout(Box<cli::rollout::RolloutArgs>),
    /// The service's API tokens (admin).
    #[cfg(feature = "service")]
    Token(Box<cli::access::TokenArgs>),
    /// The service's audit log: who did what, and when.
    #[cfg(feature = "service")]
    Audit(Box<cli::access::AuditArgs>),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Frag(cmd) => cli::frag::run(cmd),
        Command::Keys(cmd) => cli::keys::run(cmd),
        Command::Patch(cmd) => cli::patch::run(cmd),
        Command::Plan(args) => cli::plan::run(args),
        #[cfg(feature = "service")]
        Command::Server(args) => cli::server::run(args),
        #[cfg(feature = "service")]
        Command::Campaign(args) => cli::campaign::run(*args),
        #[cfg(feature = "service")]
        Command::Rollout(args) => cli::rollout::run(*args),
        #[cfg(feature = "service")]
        Command::Token(args) => cli::access::run_token(*args),
        #[cfg(feature = "service")]
        Command::Audit(args) => cli::access::run_audit(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
