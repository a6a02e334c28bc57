//! The HTTP API (axum, JSON; `docs/api.md`) and the status page. Reads come straight from the
//! database; creating and cancelling go through the runner, which owns the campaigns.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::campaign::{CampaignRequest, StoredConfig};
use super::chirpstack::parse_eui;
use super::clock::{rfc3339_of_unix_ms, unix_ms_of_gps, Clock};
use super::page;
use super::runner::{sha256_hex, Command, Refusal};
use super::store::{CampaignRow, DeviceRow, Store};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub commands: mpsc::Sender<Command>,
    pub token: Option<String>,
    pub clock: Clock,
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: u16, m: impl Into<String>) -> Self {
        Self(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            m.into(),
        )
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self::new(r.status, r.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("database: {e}");
        Self::new(500, format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Largest firmware upload.
pub const MAX_UPLOAD: usize = 16 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/firmware", post(upload_firmware).get(list_firmware))
        .route("/api/campaigns", post(create_campaign).get(list_campaigns))
        .route("/api/campaigns/{id}", get(campaign_status))
        .route("/api/campaigns/{id}/cancel", post(cancel_campaign))
        .route("/api/campaigns/{id}/devices", get(campaign_devices))
        .route("/api/campaigns/{id}/devices/{dev_eui}/log", get(device_log))
        .route("/api/campaigns/{id}/timeline", get(timeline))
        .route("/", get(status_page))
        .route("/campaigns/{id}", get(campaign_page))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/api/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(404, "no such endpoint")
}

/// Bearer token on every endpoint but health; the pages also take `?token=`.
async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(String::from)
    });
    let ok = bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes()))
        || (!req.uri().path().starts_with("/api/")
            && query.is_some_and(|q| constant_time_eq(q.as_bytes(), token.as_bytes())));
    if ok {
        next.run(req).await
    } else {
        let mut r = ApiError::new(401, "missing or wrong bearer token").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    s.store.ping().await?;
    Ok(Json(json!({ "ok": true })))
}

fn time_json(clock: &Clock, t: Option<i64>) -> Value {
    match t {
        Some(t) if t >= 0 => Value::String(rfc3339_of_unix_ms(unix_ms_of_gps(
            clock.gps_of_campaign(t as u64),
        ))),
        _ => Value::Null,
    }
}

async fn upload_firmware(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if body.is_empty() {
        return Err(ApiError::new(
            400,
            "empty body: send the firmware or patch bytes",
        ));
    }
    let name = q.get("name").cloned().unwrap_or_else(|| "firmware".into());
    if name.len() > 200 {
        return Err(ApiError::new(400, "name longer than 200 characters"));
    }
    // A signed patch says which version it makes.
    let target = fuota_codec::patch::container::Container::parse(&body)
        .ok()
        .map(|c| {
            let v = c.manifest.version;
            fuota_codec::firmware_management::fw_version(v.major, v.minor, v.revision)
        });
    let sha = sha256_hex(&body);
    let id = s
        .store
        .insert_firmware(
            &name,
            &body,
            &sha,
            target.map(i64::from),
            super::clock::now_unix_ms(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": name,
            "size": body.len(),
            "sha256": sha,
            "target_version": target.map(version_string),
        })),
    ))
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v >> 24, (v >> 16) & 0xff, v & 0xffff)
}

async fn list_firmware(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = s.store.list_firmware().await?;
    Ok(Json(Value::Array(
        rows.into_iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "name": f.name,
                    "size": f.size,
                    "sha256": f.sha256,
                    "target_version": f.target_fw_version
                        .and_then(|v| u32::try_from(v).ok())
                        .map(version_string),
                    "created": rfc3339_of_unix_ms(f.created_unix_ms),
                })
            })
            .collect(),
    )))
}

/// The summary of a campaign (`GET /api/campaigns`).
pub fn summary(clock: &Clock, c: &CampaignRow) -> Value {
    let cfg: Option<StoredConfig> = serde_json::from_str(&c.config).ok();
    let counters: Value = serde_json::from_str(&c.counters).unwrap_or(Value::Null);
    let total = c.devices_total.max(0);
    let done = c.devices_updated + c.devices_failed;
    json!({
        "id": c.id,
        "name": c.name,
        "state": c.state,
        "reason": c.reason,
        "firmware_id": c.firmware_id,
        "created": rfc3339_of_unix_ms(c.created_unix_ms),
        "session_start": time_json(clock, cfg.as_ref().map(|x| x.session_start as i64)),
        "window_end": time_json(clock, cfg.as_ref().map(|x| x.window_end as i64)),
        "finished": time_json(clock, c.finished_gps),
        "region": cfg.as_ref().map(|x| x.region.clone()),
        "dr": cfg.as_ref().map(|x| x.dr),
        "frequency": cfg.as_ref().map(|x| x.freq_hz),
        "mc_addr": cfg.as_ref().map(|x| format!("{:08x}", x.mc_addr)),
        "fragments": cfg.as_ref().map(|x| json!({
            "size": x.frag_size, "redundancy": x.redundancy, "spacing_ms": x.spacing_ms,
        })),
        "devices": {
            "total": total,
            "updated": c.devices_updated,
            "failed": c.devices_failed,
            "in_progress": total - done,
        },
        "progress": if total > 0 { done as f64 / total as f64 } else { 0.0 },
        "frames": { "sent": c.frames_sent, "refused": c.frames_refused },
        "counters": counters,
    })
}

/// One device (`GET /api/campaigns/{id}/devices`).
pub fn device_json(clock: &Clock, d: &DeviceRow) -> Value {
    let progress: Value = serde_json::from_str(&d.progress).unwrap_or(Value::Null);
    json!({
        "dev_eui": d.dev_eui,
        "phase": d.phase,
        "reason": d.reason,
        "missing": progress.get("missing"),
        "received": progress.get("received"),
        "clock_synced": progress.get("clock_synced"),
        "unicast_downlinks": progress.get("unicast_downlinks"),
        "fw_version": progress.get("fw_version").and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok()).map(version_string),
        "last_uplink": time_json(clock, progress.get("last_uplink").and_then(Value::as_i64)),
        "changed": time_json(clock, Some(d.changed_gps)),
        "updated": time_json(clock, d.updated_gps),
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> ApiResult<T> {
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(415, "send application/json"));
        }
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("invalid request: {e}")))
}

async fn create_campaign(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CampaignRequest = parse_body(&headers, &body)?;
    let (tx, rx) = oneshot::channel();
    s.commands
        .send(Command::Create {
            req: Box::new(req),
            reply: tx,
        })
        .await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))?;
    let id = rx
        .await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))??;
    let c = s
        .store
        .campaign(id)
        .await?
        .ok_or_else(|| ApiError::new(500, "campaign vanished"))?;
    Ok((StatusCode::CREATED, Json(summary(&s.clock, &c))))
}

async fn list_campaigns(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = s.store.campaigns().await?;
    Ok(Json(Value::Array(
        rows.iter().map(|c| summary(&s.clock, c)).collect(),
    )))
}

fn campaign_id(id: &str) -> ApiResult<i64> {
    id.parse()
        .map_err(|_| ApiError::new(400, format!("campaign id {id:?} is not a number")))
}

async fn campaign_row(s: &AppState, id: &str) -> ApiResult<CampaignRow> {
    let id = campaign_id(id)?;
    s.store
        .campaign(id)
        .await?
        .ok_or_else(|| ApiError::new(404, format!("no campaign {id}")))
}

async fn campaign_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = campaign_row(&s, &id).await?;
    let devices = s.store.devices(c.id).await?;
    let mut v = summary(&s.clock, &c);
    v["device_progress"] = Value::Array(devices.iter().map(|d| device_json(&s.clock, d)).collect());
    Ok(Json(v))
}

async fn cancel_campaign(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = campaign_id(&id)?;
    let (tx, rx) = oneshot::channel();
    s.commands
        .send(Command::Cancel { id, reply: tx })
        .await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))??;
    let c = campaign_row(&s, &id.to_string()).await?;
    Ok(Json(summary(&s.clock, &c)))
}

async fn campaign_devices(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = campaign_row(&s, &id).await?;
    let devices = s.store.devices(c.id).await?;
    Ok(Json(Value::Array(
        devices.iter().map(|d| device_json(&s.clock, d)).collect(),
    )))
}

async fn device_log(
    State(s): State<AppState>,
    Path((id, eui)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let c = campaign_row(&s, &id).await?;
    let Some(dev) = parse_eui(&eui) else {
        return Err(ApiError::new(400, format!("DevEUI {eui:?}: 16 hex digits")));
    };
    let eui = super::chirpstack::eui_string(dev);
    let devices = s.store.devices(c.id).await?;
    if !devices.iter().any(|d| d.dev_eui == eui) {
        return Err(ApiError::new(
            404,
            format!("device {eui} is not in campaign {}", c.id),
        ));
    }
    let log = s.store.device_log(c.id, &eui).await?;
    Ok(Json(Value::Array(
        log.into_iter()
            .map(|(at, text)| json!({ "at": time_json(&s.clock, Some(at)), "text": text }))
            .collect(),
    )))
}

/// Devices updated over time: one point per device that got there.
pub fn timeline_points(devices: &[DeviceRow]) -> Vec<i64> {
    let mut t: Vec<i64> = devices.iter().filter_map(|d| d.updated_gps).collect();
    t.sort_unstable();
    t
}

async fn timeline(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let c = campaign_row(&s, &id).await?;
    let devices = s.store.devices(c.id).await?;
    let points = timeline_points(&devices);
    Ok(Json(Value::Array(
        points
            .iter()
            .enumerate()
            .map(|(i, t)| json!({ "at": time_json(&s.clock, Some(*t)), "updated": i + 1 }))
            .collect(),
    )))
}

async fn status_page(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Html<String>> {
    let rows = s.store.campaigns().await?;
    let mut sections = Vec::new();
    for c in rows.iter().rev() {
        let devices = s.store.devices(c.id).await?;
        sections.push((c.clone(), devices));
    }
    Ok(Html(page::render(
        &s.clock,
        &sections,
        q.get("token").map(String::as_str),
    )))
}

async fn campaign_page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Html<String>> {
    let c = campaign_row(&s, &id).await?;
    let devices = s.store.devices(c.id).await?;
    Ok(Html(page::render(
        &s.clock,
        &[(c, devices)],
        q.get("token").map(String::as_str),
    )))
}
