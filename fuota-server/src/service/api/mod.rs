//! The HTTP API (axum, JSON; `docs/api.md`) and the status page. Reads come straight from the
//! database; creating, cancelling, pausing and resuming go through the runner, which owns the
//! campaigns and rollouts. Every endpoint but health names the role it needs in its
//! arguments ([`AsViewer`], [`AsOperator`], [`AsAdmin`]); [`ENDPOINTS`] lists them.

mod access;
mod rollouts;

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

use super::audit::Actor;
use super::auth::{AsOperator, AsViewer, Authenticator, Denied, Role};
use super::campaign::{CampaignRequest, StoredConfig};
use super::chirpstack::parse_eui;
use super::clock::{now_unix_ms, rfc3339_of_unix_ms, unix_ms_of_gps, Clock};
use super::page;
use super::runner::{sha256_hex, Command, Refusal};
use super::store::{CampaignRow, DeviceRow, Store, NEW_ID};

pub use super::auth::AsAdmin;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub commands: mpsc::Sender<Command>,
    pub auth: Authenticator,
    pub clock: Clock,
}

/// Every endpoint, with the role it needs (`None`: no token needed). The documentation's
/// table and the roles test follow this list.
pub const ENDPOINTS: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/api/health", None),
    ("GET", "/api/firmware", Some(Role::Viewer)),
    ("POST", "/api/firmware", Some(Role::Operator)),
    ("GET", "/api/campaigns", Some(Role::Viewer)),
    ("POST", "/api/campaigns", Some(Role::Operator)),
    ("GET", "/api/campaigns/{id}", Some(Role::Viewer)),
    ("POST", "/api/campaigns/{id}/cancel", Some(Role::Operator)),
    ("GET", "/api/campaigns/{id}/devices", Some(Role::Viewer)),
    (
        "GET",
        "/api/campaigns/{id}/devices/{dev_eui}/log",
        Some(Role::Viewer),
    ),
    ("GET", "/api/campaigns/{id}/timeline", Some(Role::Viewer)),
    ("GET", "/api/rollouts", Some(Role::Viewer)),
    ("POST", "/api/rollouts", Some(Role::Operator)),
    ("GET", "/api/rollouts/{id}", Some(Role::Viewer)),
    ("GET", "/api/rollouts/{id}/devices", Some(Role::Viewer)),
    ("POST", "/api/rollouts/{id}/pause", Some(Role::Operator)),
    ("POST", "/api/rollouts/{id}/resume", Some(Role::Operator)),
    ("POST", "/api/rollouts/{id}/cancel", Some(Role::Operator)),
    ("POST", "/api/rollouts/{id}/retry", Some(Role::Operator)),
    ("GET", "/api/audit", Some(Role::Viewer)),
    ("GET", "/api/tokens", Some(Role::Admin)),
    ("POST", "/api/tokens", Some(Role::Admin)),
    ("POST", "/api/tokens/{id}/revoke", Some(Role::Admin)),
    ("POST", "/api/keys/rotate", Some(Role::Admin)),
    ("GET", "/", Some(Role::Viewer)),
    ("GET", "/campaigns/{id}", Some(Role::Viewer)),
    ("GET", "/rollouts/{id}", Some(Role::Viewer)),
];

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

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        Self::new(d.status, d.message)
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
        .route("/api/rollouts", post(rollouts::create).get(rollouts::list))
        .route("/api/rollouts/{id}", get(rollouts::status))
        .route("/api/rollouts/{id}/devices", get(rollouts::devices))
        .route("/api/rollouts/{id}/{action}", post(rollouts::act))
        .route("/api/audit", get(access::audit))
        .route(
            "/api/tokens",
            post(access::create_token).get(access::tokens),
        )
        .route("/api/tokens/{id}/revoke", post(access::revoke_token))
        .route("/api/keys/rotate", post(access::rotate_key))
        .route("/", get(status_page))
        .route("/campaigns/{id}", get(campaign_page))
        .route("/rollouts/{id}", get(rollouts::page))
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

/// Who is asking: the bearer token on every endpoint but health (the pages also take
/// `?token=`), resolved to a [`Principal`] the handlers check their role against.
async fn auth(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let query = (!req.uri().path().starts_with("/api/"))
        .then(|| {
            req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token="))
                    .map(String::from)
            })
        })
        .flatten();
    match s.auth.resolve(&s.store, bearer.or(query).as_deref()).await {
        Ok(Some(p)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Ok(None) => Denied {
            status: 401,
            message: "missing or wrong bearer token".into(),
        }
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn health(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    s.store.ping().await?;
    Ok(Json(json!({ "ok": true })))
}

pub(crate) fn time_json(clock: &Clock, t: Option<i64>) -> Value {
    match t {
        Some(t) if t >= 0 => Value::String(rfc3339_of_unix_ms(unix_ms_of_gps(
            clock.gps_of_campaign(t as u64),
        ))),
        _ => Value::Null,
    }
}

async fn upload_firmware(
    AsOperator(by): AsOperator,
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
    let audit = Actor::Caller(by).entry(
        now_unix_ms(),
        "firmware.upload",
        &format!("firmware/{NEW_ID}"),
        json!({
            "name": name, "size": body.len(), "sha256": sha,
            "target_version": target.map(version_string),
        }),
    );
    let id = s
        .store
        .insert_firmware(
            &name,
            &body,
            &sha,
            target.map(i64::from),
            now_unix_ms(),
            &audit,
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

pub(crate) fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v >> 24, (v >> 16) & 0xff, v & 0xffff)
}

async fn list_firmware(_: AsViewer, State(s): State<AppState>) -> ApiResult<Json<Value>> {
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
        "rollout_id": c.rollout_id,
        "wave": c.wave.map(|w| w + 1),
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

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<T> {
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

/// Sends a command to the runner and waits for its answer.
pub(crate) async fn ask<T>(
    s: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> ApiResult<T> {
    let (tx, rx) = oneshot::channel();
    s.commands
        .send(make(tx))
        .await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))?;
    Ok(rx
        .await
        .map_err(|_| ApiError::new(503, "the service is shutting down"))??)
}

async fn create_campaign(
    AsOperator(by): AsOperator,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CampaignRequest = parse_body(&headers, &body)?;
    let req = Box::new(req);
    let id = ask(&s, |reply| Command::Create { req, by, reply }).await?;
    let c = s
        .store
        .campaign(id)
        .await?
        .ok_or_else(|| ApiError::new(500, "campaign vanished"))?;
    Ok((StatusCode::CREATED, Json(summary(&s.clock, &c))))
}

async fn list_campaigns(_: AsViewer, State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = s.store.campaigns().await?;
    Ok(Json(Value::Array(
        rows.iter().map(|c| summary(&s.clock, c)).collect(),
    )))
}

pub(crate) fn campaign_id(id: &str) -> ApiResult<i64> {
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
    _: AsViewer,
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
    AsOperator(by): AsOperator,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = campaign_id(&id)?;
    ask(&s, |reply| Command::Cancel { id, by, reply }).await?;
    let c = campaign_row(&s, &id.to_string()).await?;
    Ok(Json(summary(&s.clock, &c)))
}

async fn campaign_devices(
    _: AsViewer,
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
    _: AsViewer,
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

async fn timeline(
    _: AsViewer,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
    _: AsViewer,
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Html<String>> {
    let rows = s.store.campaigns().await?;
    let mut sections = Vec::new();
    // Waves are shown with their rollout.
    for c in rows.iter().rev().filter(|c| c.rollout_id.is_none()) {
        let devices = s.store.devices(c.id).await?;
        sections.push((c.clone(), devices));
    }
    let rollouts = rollouts::page_rows(&s).await?;
    Ok(Html(page::render(
        &s.clock,
        &rollouts,
        &sections,
        q.get("token").map(String::as_str),
    )))
}

async fn campaign_page(
    _: AsViewer,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Html<String>> {
    let c = campaign_row(&s, &id).await?;
    let devices = s.store.devices(c.id).await?;
    Ok(Html(page::render(
        &s.clock,
        &[],
        &[(c, devices)],
        q.get("token").map(String::as_str),
    )))
}
