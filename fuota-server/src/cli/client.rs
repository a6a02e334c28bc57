//! The HTTP API's client, shared by `fuota campaign`, `rollout`, `token` and `audit`.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// Where the service is and how to talk to it.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The service's address.
    #[arg(long, env = "FUOTA_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Bearer token of the API.
    #[arg(long, env = "FUOTA_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(a: &ApiArgs) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base: a.api.trim_end_matches('/').to_string(),
            token: a.token.clone(),
            agent,
        }
    }

    fn answer(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut r = r.with_context(|| format!("cannot reach the service at {}", self.base))?;
        let status = r.status();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), String::from);
            bail!("{} ({})", msg, status.as_u16());
        }
        Ok(v)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.answer(req.call())
    }

    pub fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<Value> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.answer(req.send(&body[..]))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.post(path, "application/json", body.to_string().into_bytes())
    }
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Uploads a file as firmware; its id.
pub fn upload(api: &Api, path: &std::path::Path) -> Result<i64> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map_or("firmware".into(), |n| n.to_string_lossy().to_string());
    let name: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ".-_".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let fw = api.post(
        &format!("/api/firmware?name={name}"),
        "application/octet-stream",
        data,
    )?;
    fw["id"].as_i64().context("the upload answer has no id")
}

/// Percent-encoding for a query value.
pub fn query_value(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}
