//! `/api/tokens` (admin) and `/api/audit` (viewer).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ask, parse_body, ApiError, ApiResult, AppState};
use crate::service::audit::{row_json, Actor};
use crate::service::auth::{self, AsAdmin, AsViewer, Role};
use crate::service::clock::{now_unix_ms, parse_rfc3339_ms, rfc3339_of_unix_ms};
use crate::service::runner::Command;
use crate::service::store::{AuditFilter, TokenRow};

/// `POST /api/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
}

fn token_json(t: &TokenRow) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created": rfc3339_of_unix_ms(t.created_unix_ms),
        "created_by": t.created_by,
        "revoked": t.revoked_unix_ms.map(rfc3339_of_unix_ms),
    })
}

/// Makes a token: the answer holds it, the only time it is shown.
pub async fn create_token(
    AsAdmin(by): AsAdmin,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: TokenRequest = parse_body(&headers, &body)?;
    if !auth::valid_token_name(&req.name) {
        return Err(ApiError::new(
            422,
            format!(
                "token name {:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -, and not system, bootstrap or \
                 anonymous",
                req.name
            ),
        ));
    }
    let token = auth::new_token();
    let hash = hex::encode(auth::token_hash(&token));
    let now = now_unix_ms();
    let actor = Actor::Caller(by.clone());
    let id = s
        .store
        .insert_token(&req.name, req.role.as_str(), &hash, now, &by.name, |id| {
            actor.entry(
                now,
                "token.create",
                &format!("token/{id}"),
                json!({ "name": req.name, "role": req.role }),
            )
        })
        .await?
        .ok_or_else(|| ApiError::new(409, format!("a token named {} exists", req.name)))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": req.name,
            "role": req.role,
            "token": token,
            "created": rfc3339_of_unix_ms(now),
            "created_by": by.name,
        })),
    ))
}

pub async fn tokens(_: AsAdmin, State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let rows = s.store.tokens().await?;
    Ok(Json(Value::Array(rows.iter().map(token_json).collect())))
}

pub async fn revoke_token(
    AsAdmin(by): AsAdmin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::new(400, format!("token id {id:?} is not a number")))?;
    let now = now_unix_ms();
    let mut row = s
        .store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::new(404, format!("no token {id}")))?;
    if row.revoked_unix_ms.is_some() {
        return Err(ApiError::new(409, format!("token {id} is revoked already")));
    }
    let audit = Actor::Caller(by).entry(
        now,
        "token.revoke",
        &format!("token/{id}"),
        json!({ "name": row.name, "role": row.role }),
    );
    s.store
        .revoke_token(id, now, &audit)
        .await?
        .ok_or_else(|| ApiError::new(404, format!("no token {id}")))?;
    row.revoked_unix_ms = Some(now);
    Ok(Json(token_json(&row)))
}

fn time_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<i64>> {
    q.get(name)
        .map(|t| {
            parse_rfc3339_ms(t)
                .ok_or_else(|| ApiError::new(400, format!("{name} {t:?} is not RFC 3339")))
        })
        .transpose()
}

/// `GET /api/audit?actor=&action=&subject=&since=&until=&after=&limit=`.
pub async fn audit(
    _: AsViewer,
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    for k in q.keys() {
        if ![
            "actor", "action", "subject", "since", "until", "after", "limit",
        ]
        .contains(&k.as_str())
        {
            return Err(ApiError::new(400, format!("unknown parameter {k:?}")));
        }
    }
    let number = |name: &str| {
        q.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::new(400, format!("{name} {v:?} is not a number")))
            })
            .transpose()
    };
    let f = AuditFilter {
        actor: q.get("actor").cloned(),
        action: q.get("action").cloned(),
        subject: q.get("subject").cloned(),
        since_unix_ms: time_param(&q, "since")?,
        until_unix_ms: time_param(&q, "until")?,
        after_id: number("after")?,
        limit: number("limit")?.unwrap_or(1000),
    };
    let rows = s.store.audit_log(&f).await?;
    Ok(Json(Value::Array(rows.iter().map(row_json).collect())))
}

/// `POST /api/keys/rotate`: `{}` for a random new server key, or `{"key": "<64 hex>"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default)]
    pub key: Option<String>,
}

pub async fn rotate_key(
    AsAdmin(by): AsAdmin,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        parse_body(&headers, &body)?
    };
    let key = match &req.key {
        None => None,
        Some(k) => Some(
            hex::decode(k.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| ApiError::new(422, "key: 64 hex digits"))?,
        ),
    };
    let done = ask(&s, |reply| Command::RotateKey { key, by, reply }).await?;
    Ok(Json(done))
}
