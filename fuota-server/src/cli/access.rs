//! `fuota token create|list|revoke` (admin) and `fuota audit`: the API's tokens and its
//! audit log from the command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{cell as s, query_value, Api, ApiArgs};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, keep it.
    Create {
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (runs campaigns and rollouts), admin (tokens and keys).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// Every token (never the tokens themselves).
    List,
    /// Revoke a token: it stops working at once.
    Revoke { id: i64 },
}

pub fn run_token(a: TokenArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api);
    let out = match &a.command {
        TokenCommand::Create { name, role } => {
            let v = api.post_json("/api/tokens", &json!({ "name": name, "role": role }))?;
            if !a.api.json {
                println!(
                    "token {} ({}) for {}:",
                    s(&v["id"]),
                    s(&v["role"]),
                    s(&v["name"])
                );
                println!("{}", s(&v["token"]));
                eprintln!("(shown once: the service keeps only its hash)");
            }
            v
        }
        TokenCommand::List => {
            let v = api.get("/api/tokens")?;
            if !a.api.json {
                println!(
                    "{:>4}  {:<24} {:<9} {:<25} {:<12} revoked",
                    "id", "name", "role", "created", "by"
                );
                for t in v.as_array().into_iter().flatten() {
                    println!(
                        "{:>4}  {:<24} {:<9} {:<25} {:<12} {}",
                        s(&t["id"]),
                        s(&t["name"]),
                        s(&t["role"]),
                        s(&t["created"]),
                        s(&t["created_by"]),
                        s(&t["revoked"]),
                    );
                }
            }
            v
        }
        TokenCommand::Revoke { id } => {
            let v = api.post_json(&format!("/api/tokens/{id}/revoke"), &json!({}))?;
            if !a.api.json {
                println!("token {} ({}) revoked", s(&v["id"]), s(&v["name"]));
            }
            v
        }
    };
    if a.api.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this actor's rows (a token's name, or `system`).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`rollout.pause`), or a family of them (`rollout.`).
    #[arg(long)]
    action: Option<String>,
    /// Only this subject (`rollout/3`), or a kind of them (`campaign/`).
    #[arg(long)]
    subject: Option<String>,
    /// From this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

pub fn run_audit(a: AuditArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api);
    let mut q = vec![format!("limit={}", a.limit)];
    for (k, v) in [
        ("actor", &a.actor),
        ("action", &a.action),
        ("subject", &a.subject),
        ("since", &a.since),
        ("until", &a.until),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", query_value(v)));
        }
    }
    let v = api.get(&format!("/api/audit?{}", q.join("&")))?;
    if a.api.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in v.as_array().into_iter().flatten() {
        let role = e["role"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        println!(
            "{:>5}  {}  {}{role}  {}  {}  {}",
            s(&e["id"]),
            s(&e["at"]),
            s(&e["actor"]),
            s(&e["action"]),
            s(&e["subject"]),
            e["details"],
        );
    }
    Ok(ExitCode::SUCCESS)
}
