//! Who is asking: API tokens with a role, and the check every endpoint makes.
//!
//! A token is `fuota_` and 64 hex digits (32 random bytes); the database keeps only its
//! SHA-256, and a presented token is found by its hash and compared in constant time. The
//! bootstrap token of the configuration (`http.token`, `FUOTA_SERVER_TOKEN`) is an admin.
//! With no bootstrap token configured and no token ever made, the API is open (every caller
//! is the admin `anonymous`): the behaviour of a service without a token, meant for a
//! listener on localhost. The first token made closes it for good.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{DbResult, Store};

/// What a token may do; each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but the tokens.
    Viewer,
    /// Uploads firmware, runs campaigns and rollouts.
    Operator,
    /// Manages tokens and the server key.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a request: a token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The actor of what the service does by itself, in the audit log.
pub const SYSTEM: &str = "system";
/// The name of the configured token.
pub const BOOTSTRAP: &str = "bootstrap";
/// The caller when the API is open.
pub const ANONYMOUS: &str = "anonymous";

/// A new random token.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    format!("fuota_{}", hex::encode(b))
}

/// The SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A name a token may have: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, not one the service uses.
pub fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        && ![SYSTEM, BOOTSTRAP, ANONYMOUS].contains(&name)
}

/// How the API tells callers apart.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// SHA-256 of the configured bootstrap token.
    bootstrap: Option<[u8; 32]>,
}

impl Authenticator {
    pub fn new(bootstrap: Option<&str>) -> Self {
        Self {
            bootstrap: bootstrap.map(token_hash),
        }
    }

    /// Whether the API is open (no bootstrap token, no token ever made).
    pub async fn is_open(&self, store: &Store) -> DbResult<bool> {
        Ok(self.bootstrap.is_none() && store.tokens_made().await? == 0)
    }

    /// The caller presenting `token` (`None`: unknown or revoked).
    pub async fn resolve(&self, store: &Store, token: Option<&str>) -> DbResult<Option<Principal>> {
        if self.is_open(store).await? {
            return Ok(Some(Principal {
                name: ANONYMOUS.into(),
                role: Role::Admin,
            }));
        }
        let Some(token) = token else {
            return Ok(None);
        };
        let hash = token_hash(token);
        if self.bootstrap.is_some_and(|b| constant_time_eq(&b, &hash)) {
            return Ok(Some(Principal {
                name: BOOTSTRAP.into(),
                role: Role::Admin,
            }));
        }
        let hex_hash = hex::encode(hash);
        let Some(row) = store.active_token(&hex_hash).await? else {
            return Ok(None);
        };
        // The lookup found it by hash; the comparison itself takes the same time for any
        // token.
        if !constant_time_eq(row.token_hash.as_bytes(), hex_hash.as_bytes()) {
            return Ok(None);
        }
        Ok(Role::parse(&row.role).map(|role| Principal {
            name: row.name,
            role,
        }))
    }
}

/// Why a request was turned away: 401 (who?) or 403 (not allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub message: String,
}

fn allowed(parts: &Parts, need: Role) -> Result<Principal, Denied> {
    let Some(p) = parts.extensions.get::<Principal>() else {
        return Err(Denied {
            status: 401,
            message: "missing or wrong bearer token".into(),
        });
    };
    if p.role < need {
        return Err(Denied {
            status: 403,
            message: format!(
                "this needs the {need} role; token {} is a{} {}",
                p.name,
                if p.role == Role::Admin { "n" } else { "" },
                p.role
            ),
        });
    }
    Ok(p.clone())
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = Denied;

            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Denied> {
                allowed(parts, $role).map($name)
            }
        }
    };
}

role_extractor!(
    AsViewer,
    Role::Viewer,
    "A handler argument: the caller has at least the viewer role."
);
role_extractor!(
    AsOperator,
    Role::Operator,
    "A handler argument: the caller has at least the operator role."
);
role_extractor!(
    AsAdmin,
    Role::Admin,
    "A handler argument: the caller is an admin."
);

impl axum::response::IntoResponse for Denied {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::FORBIDDEN);
        let mut r = (
            status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hashed_and_roles_ordered() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("fuota_") && a.len() == 6 + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"abc", b"ab"));
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(valid_token_name("ci-deploy@plant.2"));
        for bad in ["", "system", "bootstrap", "a b", &"x".repeat(65)] {
            assert!(!valid_token_name(bad), "{bad}");
        }
    }
}
