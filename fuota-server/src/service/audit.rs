//! Audit log entries: who did what to what, and when. Operator actions are written in the
//! same transaction as their effect; state changes the service makes by itself (a wave
//! passed, a campaign finished) are written with the step that made them, as `system`. A
//! replayed log writes nothing, so a restart adds no row.

use serde_json::{json, Value};

use super::auth::{Principal, SYSTEM};
use super::clock::rfc3339_of_unix_ms;
use super::store::{AuditRow, NewAudit};

/// Who acted: a caller, or the service itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Caller(Principal),
    System,
}

impl Actor {
    pub fn name(&self) -> &str {
        match self {
            Actor::Caller(p) => &p.name,
            Actor::System => SYSTEM,
        }
    }

    /// An audit row of this actor.
    pub fn entry(&self, at_unix_ms: i64, action: &str, subject: &str, details: Value) -> NewAudit {
        NewAudit {
            at_unix_ms,
            actor: self.name().to_string(),
            role: match self {
                Actor::Caller(p) => Some(p.role.as_str().to_string()),
                Actor::System => None,
            },
            action: action.into(),
            subject: subject.into(),
            details: details.to_string(),
        }
    }
}

/// An audit row for the API.
pub fn row_json(r: &AuditRow) -> Value {
    let e = &r.entry;
    json!({
        "id": r.id,
        "at": rfc3339_of_unix_ms(e.at_unix_ms),
        "actor": e.actor,
        "role": e.role,
        "action": e.action,
        "subject": e.subject,
        "details": serde_json::from_str::<Value>(&e.details).unwrap_or(Value::Null),
    })
}
