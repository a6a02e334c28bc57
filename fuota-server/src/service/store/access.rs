//! Who may do what, and what they did: API tokens (hashed), the append-only audit log, and
//! the settings table.

use sqlx::Row;

use super::{DbResult, Store, Tx};

/// An API token as stored: its SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub token_hash: String,
    pub created_unix_ms: i64,
    pub created_by: String,
    pub revoked_unix_ms: Option<i64>,
}

/// An audit log row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at_unix_ms: i64,
    /// A token's name, or `system` for the service itself.
    pub actor: String,
    /// The actor's role (`None` for the service).
    pub role: Option<String>,
    /// What happened: `rollout.pause`, `wave.passed`, `token.create`...
    pub action: String,
    /// What it happened to: `rollout/3`, `campaign/7`, `token/2`, `firmware/1`, `keys`.
    pub subject: String,
    /// JSON.
    pub details: String,
}

/// An audit log row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub entry: NewAudit,
}

/// Which audit rows to read; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// `rollout.pause`, or a prefix ending in a dot: `rollout.`.
    pub action: Option<String>,
    /// `rollout/3`, or a prefix ending in a slash: `rollout/`.
    pub subject: Option<String>,
    pub since_unix_ms: Option<i64>,
    pub until_unix_ms: Option<i64>,
    /// Rows after this id (paging).
    pub after_id: Option<i64>,
    pub limit: i64,
}

const TOKEN_COLUMNS: &str =
    "id, name, role, token_hash, created_unix_ms, created_by, revoked_unix_ms";

fn token_row(r: &sqlx::any::AnyRow) -> DbResult<TokenRow> {
    Ok(TokenRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: r.try_get(2)?,
        token_hash: r.try_get(3)?,
        created_unix_ms: r.try_get(4)?,
        created_by: r.try_get(5)?,
        revoked_unix_ms: r.try_get(6)?,
    })
}

/// Appends one audit row (the only statement of the service that touches `audit`).
pub(super) async fn insert_audit_in(tx: &mut Tx<'_>, a: &NewAudit) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO audit (at_unix_ms, actor, role, action, subject, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.at_unix_ms)
    .bind(&a.actor)
    .bind(a.role.clone())
    .bind(&a.action)
    .bind(&a.subject)
    .bind(&a.details)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// `LIKE` pattern for a prefix (the prefix's own `%`, `_` and `\` escaped).
fn like_prefix(p: &str) -> String {
    let mut s = String::with_capacity(p.len() + 1);
    for c in p.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

impl Store {
    /// Appends audit rows on their own (actions that change nothing else).
    pub async fn audit(&self, rows: &[NewAudit]) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        for a in rows {
            insert_audit_in(&mut tx, a).await?;
        }
        tx.commit().await
    }

    /// Audit rows, oldest first.
    pub async fn audit_log(&self, f: &AuditFilter) -> DbResult<Vec<AuditRow>> {
        let mut sql = String::from(
            "SELECT id, at_unix_ms, actor, role, action, subject, details FROM audit WHERE 1 = 1",
        );
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        // Text parameters first ($1..), then numbers: the query names them in that order.
        let mut clauses: Vec<String> = Vec::new();
        if let Some(a) = &f.actor {
            texts.push(a.clone());
            clauses.push(format!("actor = ${}", texts.len()));
        }
        for (value, column, sep) in [(&f.action, "action", '.'), (&f.subject, "subject", '/')] {
            if let Some(v) = value {
                if v.ends_with(sep) {
                    texts.push(like_prefix(v));
                    clauses.push(format!("{column} LIKE ${} ESCAPE '\\'", texts.len()));
                } else {
                    texts.push(v.clone());
                    clauses.push(format!("{column} = ${}", texts.len()));
                }
            }
        }
        let base = texts.len();
        for (value, cmp) in [
            (f.since_unix_ms, "at_unix_ms >="),
            (f.until_unix_ms, "at_unix_ms <"),
            (f.after_id, "id >"),
        ] {
            if let Some(v) = value {
                numbers.push(v);
                clauses.push(format!("{cmp} ${}", base + numbers.len()));
            }
        }
        for c in clauses {
            sql.push_str(" AND ");
            sql.push_str(&c);
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.clamp(1, 10_000)));
        let mut q = sqlx::query(&sql);
        for t in texts {
            q = q.bind(t);
        }
        for n in numbers {
            q = q.bind(n);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get(0)?,
                    entry: NewAudit {
                        at_unix_ms: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        role: r.try_get(3)?,
                        action: r.try_get(4)?,
                        subject: r.try_get(5)?,
                        details: r.try_get(6)?,
                    },
                })
            })
            .collect()
    }

    /// Inserts a token (its hash) with its audit row; `None` when the name is taken.
    pub async fn insert_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &str,
        created_unix_ms: i64,
        created_by: &str,
        audit: impl FnOnce(i64) -> NewAudit,
    ) -> DbResult<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT id FROM api_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Ok(None);
        }
        let row = sqlx::query(
            "INSERT INTO api_tokens (name, role, token_hash, created_unix_ms, created_by) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(name)
        .bind(role)
        .bind(token_hash)
        .bind(created_unix_ms)
        .bind(created_by)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        insert_audit_in(&mut tx, &audit(id)).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    pub async fn tokens(&self) -> DbResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// The token (not revoked) with this hash.
    pub async fn active_token(&self, token_hash: &str) -> DbResult<Option<TokenRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 \
             AND revoked_unix_ms IS NULL"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_row).transpose()
    }

    /// How many tokens were ever made (revoked ones included).
    pub async fn tokens_made(&self) -> DbResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(&self.pool)
            .await?;
        row.try_get(0)
    }

    /// Revokes a token with its audit row; the row as it was, `None` if there is no such
    /// token.
    pub async fn revoke_token(
        &self,
        id: i64,
        at_unix_ms: i64,
        audit: &NewAudit,
    ) -> DbResult<Option<TokenRow>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row.as_ref().map(token_row).transpose()? else {
            return Ok(None);
        };
        if row.revoked_unix_ms.is_none() {
            sqlx::query("UPDATE api_tokens SET revoked_unix_ms = $2 WHERE id = $1")
                .bind(id)
                .bind(at_unix_ms)
                .execute(&mut *tx)
                .await?;
            insert_audit_in(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(Some(row))
    }

    pub async fn setting(&self, name: &str) -> DbResult<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    pub async fn set_setting(&self, name: &str, value: &[u8]) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        set_setting_in(&mut tx, name, value).await?;
        tx.commit().await
    }
}

pub(super) async fn set_setting_in(tx: &mut Tx<'_>, name: &str, value: &[u8]) -> DbResult<()> {
    let updated = sqlx::query("UPDATE settings SET value = $2 WHERE name = $1")
        .bind(name)
        .bind(value.to_vec())
        .execute(&mut **tx)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value.to_vec())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Where a sealed value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealedAt {
    /// A campaign device's root key (its DevEUI is the associated data).
    Device { campaign_id: i64, dev_eui: String },
    /// A campaign's McKey.
    Campaign { id: i64 },
    /// A rollout device's root key.
    RolloutDevice { rollout_id: i64, dev_eui: String },
    /// A rollout's McKey.
    Rollout { id: i64 },
}

/// A sealed value, with what its associated data derives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub at: SealedAt,
    pub sealed: Vec<u8>,
    /// For McKeys: the row's configuration (JSON) and creation time.
    pub config: String,
    pub created_gps: i64,
}

impl Store {
    /// Every value sealed under the server key.
    pub async fn sealed_rows(&self) -> DbResult<Vec<SealedRow>> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT campaign_id, dev_eui, root_key FROM devices")
            .fetch_all(&self.pool)
            .await?
        {
            out.push(SealedRow {
                at: SealedAt::Device {
                    campaign_id: r.try_get(0)?,
                    dev_eui: r.try_get(1)?,
                },
                sealed: r.try_get(2)?,
                config: String::new(),
                created_gps: 0,
            });
        }
        for r in sqlx::query("SELECT rollout_id, dev_eui, root_key FROM rollout_devices")
            .fetch_all(&self.pool)
            .await?
        {
            out.push(SealedRow {
                at: SealedAt::RolloutDevice {
                    rollout_id: r.try_get(0)?,
                    dev_eui: r.try_get(1)?,
                },
                sealed: r.try_get(2)?,
                config: String::new(),
                created_gps: 0,
            });
        }
        for (table, campaign) in [("campaigns", true), ("rollouts", false)] {
            let q = format!("SELECT id, mc_key, config, created_gps FROM {table}");
            for r in sqlx::query(&q).fetch_all(&self.pool).await? {
                let id = r.try_get(0)?;
                out.push(SealedRow {
                    at: if campaign {
                        SealedAt::Campaign { id }
                    } else {
                        SealedAt::Rollout { id }
                    },
                    sealed: r.try_get(1)?,
                    config: r.try_get(2)?,
                    created_gps: r.try_get(3)?,
                });
            }
        }
        Ok(out)
    }

    /// Writes values sealed again under a new server key, its check value and the audit row,
    /// all or nothing.
    pub async fn reseal(
        &self,
        values: &[(SealedAt, Vec<u8>)],
        check: &[u8],
        audit: &NewAudit,
    ) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        for (at, v) in values {
            let q = match at {
                SealedAt::Device {
                    campaign_id,
                    dev_eui,
                } => sqlx::query(
                    "UPDATE devices SET root_key = $1 WHERE campaign_id = $2 AND dev_eui = $3",
                )
                .bind(v.clone())
                .bind(*campaign_id)
                .bind(dev_eui),
                SealedAt::RolloutDevice {
                    rollout_id,
                    dev_eui,
                } => sqlx::query(
                    "UPDATE rollout_devices SET root_key = $1 WHERE rollout_id = $2 \
                     AND dev_eui = $3",
                )
                .bind(v.clone())
                .bind(*rollout_id)
                .bind(dev_eui),
                SealedAt::Campaign { id } => {
                    sqlx::query("UPDATE campaigns SET mc_key = $1 WHERE id = $2")
                        .bind(v.clone())
                        .bind(*id)
                }
                SealedAt::Rollout { id } => {
                    sqlx::query("UPDATE rollouts SET mc_key = $1 WHERE id = $2")
                        .bind(v.clone())
                        .bind(*id)
                }
            };
            q.execute(&mut *tx).await?;
        }
        set_setting_in(&mut tx, crate::service::keystore::CHECK_NAME, check).await?;
        insert_audit_in(&mut tx, audit).await?;
        tx.commit().await
    }
}
