//! `/api/rollouts`: create a rollout, read it with its waves and devices, pause, resume,
//! cancel, retry the failed; and the rollout's page.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};

use super::{ask, campaign_id, device_json, parse_body, time_json, ApiError, ApiResult, AppState};
use crate::service::auth::{AsOperator, AsViewer};
use crate::service::clock::{rfc3339_of_unix_ms, Clock};
use crate::service::page::{self, RolloutView};
use crate::service::rollout::{RolloutRequest, StoredRollout};
use crate::service::runner::{Command, RolloutAction};
use crate::service::store::RolloutRow;

/// A rollout's summary: its state, thresholds, windows and waves (with their campaigns).
pub fn summary(clock: &Clock, r: &RolloutRow, wave_ids: &BTreeMap<usize, i64>) -> Value {
    let cfg: Option<StoredRollout> = serde_json::from_str(&r.config).ok();
    let stored: Vec<Value> = serde_json::from_str(&r.waves).unwrap_or_default();
    let mut updated = 0;
    let waves: Vec<Value> = stored
        .iter()
        .map(|w| {
            let index = w["index"].as_u64().unwrap_or(0) as usize;
            let n = w["devices"].as_u64().unwrap_or(0);
            let up = w["updated"].as_u64().unwrap_or(0);
            let done = up + w["failed"].as_u64().unwrap_or(0) + w["reverted"].as_u64().unwrap_or(0);
            updated += up;
            let window = |i: usize| time_json(clock, w["window"][i].as_i64());
            json!({
                "wave": index + 1,
                "name": w["name"],
                "status": w["status"],
                "campaign_id": wave_ids.get(&index),
                "devices": n,
                "updated": up,
                "failed": w["failed"],
                "reverted": w["reverted"],
                "progress": if n > 0 { done as f64 / n as f64 } else { 0.0 },
                "window_start": window(0),
                "window_end": window(1),
            })
        })
        .collect();
    let total = r.devices_total.max(0);
    json!({
        "id": r.id,
        "name": r.name,
        "state": r.state,
        "reason": r.reason,
        "firmware_id": r.firmware_id,
        "created": rfc3339_of_unix_ms(r.created_unix_ms),
        "created_by": r.created_by,
        "finished": time_json(clock, r.finished_gps),
        "thresholds": cfg.as_ref().map(|c| json!({
            "success": c.success_threshold, "failure": c.failure_threshold,
        })),
        "windows": cfg.as_ref().map(|c| json!({
            "first": time_json(clock, Some(c.first_window as i64)),
            "duration_s": c.window_len_ms / 1000,
            "every_s": c.window_every_ms / 1000,
            "setup_s": c.setup_lead_ms / 1000,
        })),
        "region": cfg.as_ref().map(|c| c.template.region.clone()),
        "dr": cfg.as_ref().map(|c| c.template.dr),
        "devices": { "total": total, "updated": updated },
        "progress": if total > 0 { updated as f64 / total as f64 } else { 0.0 },
        "waves": waves,
    })
}

fn rollout_id(id: &str) -> ApiResult<i64> {
    id.parse()
        .map_err(|_| ApiError::new(400, format!("rollout id {id:?} is not a number")))
}

async fn row(s: &AppState, id: i64) -> ApiResult<(RolloutRow, BTreeMap<usize, i64>)> {
    let r = s
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| ApiError::new(404, format!("no rollout {id}")))?;
    let waves = s.store.rollout_waves(id).await?;
    Ok((r, waves))
}

pub async fn create(
    AsOperator(by): AsOperator,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: RolloutRequest = parse_body(&headers, &body)?;
    let req = Box::new(req);
    let id = ask(&s, |reply| Command::CreateRollout { req, by, reply }).await?;
    let (r, waves) = row(&s, id).await?;
    Ok((StatusCode::CREATED, Json(summary(&s.clock, &r, &waves))))
}

pub async fn list(_: AsViewer, State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for r in s.store.rollouts().await? {
        let waves = s.store.rollout_waves(r.id).await?;
        out.push(summary(&s.clock, &r, &waves));
    }
    Ok(Json(Value::Array(out)))
}

pub async fn status(
    _: AsViewer,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (r, waves) = row(&s, rollout_id(&id)?).await?;
    Ok(Json(summary(&s.clock, &r, &waves)))
}

/// Every device of the rollout: its group and wave, and its progress in the wave's campaign
/// once that started (`waiting` before).
pub async fn devices(
    _: AsViewer,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (r, waves) = row(&s, rollout_id(&id)?).await?;
    let names: Vec<Value> = serde_json::from_str::<Vec<Value>>(&r.waves)
        .unwrap_or_default()
        .into_iter()
        .map(|w| w["name"].clone())
        .collect();
    let mut progress = HashMap::new();
    for &cid in waves.values() {
        for d in s.store.devices(cid).await? {
            progress.insert((cid, d.dev_eui.clone()), d);
        }
    }
    let mut out = Vec::new();
    for d in s.store.rollout_devices(r.id).await? {
        let (eui, group) = (d.dev_eui, d.group);
        let k = usize::try_from(d.wave).unwrap_or(0);
        let cid = waves.get(&k).copied();
        let mut v = match cid.and_then(|c| progress.get(&(c, eui.clone()))) {
            Some(d) => device_json(&s.clock, d),
            None => json!({ "dev_eui": eui, "phase": "waiting", "reason": null }),
        };
        v["group"] = json!(group);
        v["wave"] = json!(k + 1);
        v["wave_name"] = names.get(k).cloned().unwrap_or(Value::Null);
        v["campaign_id"] = json!(cid);
        out.push(v);
    }
    Ok(Json(Value::Array(out)))
}

/// `POST /api/rollouts/{id}/pause|resume|cancel|retry`.
pub async fn act(
    AsOperator(by): AsOperator,
    State(s): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let action = match action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "cancel" => RolloutAction::Cancel,
        "retry" => RolloutAction::Retry,
        _ => return Err(ApiError::new(404, "no such endpoint")),
    };
    let id = rollout_id(&id)?;
    ask(&s, |reply| Command::Rollout {
        id,
        action,
        by,
        reply,
    })
    .await?;
    let (r, waves) = row(&s, id).await?;
    Ok(Json(summary(&s.clock, &r, &waves)))
}

/// Every rollout for the status page, newest first.
pub async fn page_rows(s: &AppState) -> ApiResult<Vec<RolloutView>> {
    let mut out = Vec::new();
    for r in s.store.rollouts().await?.into_iter().rev() {
        let waves = s.store.rollout_waves(r.id).await?;
        out.push(RolloutView { row: r, waves });
    }
    Ok(out)
}

/// `GET /rollouts/{id}`: the rollout with its waves, then each wave's campaign.
pub async fn page(
    _: AsViewer,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Html<String>> {
    let id = campaign_id(&id).map_err(|_| ApiError::new(400, "a rollout id is a number"))?;
    let (r, waves) = row(&s, id).await?;
    let mut campaigns = Vec::new();
    for &cid in waves.values().rev() {
        if let Some(c) = s.store.campaign(cid).await? {
            let devices = s.store.devices(cid).await?;
            campaigns.push((c, devices));
        }
    }
    Ok(Html(page::render(
        &s.clock,
        &[RolloutView { row: r, waves }],
        &campaigns,
        q.get("token").map(String::as_str),
    )))
}
