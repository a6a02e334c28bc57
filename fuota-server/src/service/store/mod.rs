//! The service's state in SQL (sqlx, SQLite or PostgreSQL through one `Any` pool): firmware,
//! campaigns and their devices, and each campaign's write-ahead log of engine inputs and
//! outputs; rollouts and their logs ([`rollouts`]); API tokens, the audit log and settings
//! ([`access`]). Queries are plain SQL with `$n` parameters, which both databases take.

pub mod access;
pub mod rollouts;

pub use access::{AuditFilter, AuditRow, NewAudit, SealedAt, SealedRow, TokenRow};
pub use rollouts::{NewRollout, RolloutDeviceRow, RolloutInputRow, RolloutRow, RolloutWrite};

use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

pub type DbResult<T> = Result<T, sqlx::Error>;

/// In the audit rows of a step that inserts a campaign or rollout, this stands for its id
/// (not known before the insert).
pub const NEW_ID: &str = "{id}";

impl NewAudit {
    /// The row with [`NEW_ID`] replaced by `id`.
    pub fn with_id(&self, id: i64) -> Self {
        let id = id.to_string();
        Self {
            subject: self.subject.replace(NEW_ID, &id),
            details: self.details.replace(NEW_ID, &id),
            ..self.clone()
        }
    }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    pub backend: Backend,
}

/// One engine input as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRow {
    pub seq: i64,
    pub kind: String,
    pub at_gps: i64,
    pub dev_eui: Option<String>,
    pub port: Option<i64>,
    pub fcnt: Option<i64>,
    pub ref_seq: Option<i64>,
    pub data: Option<Vec<u8>>,
}

/// One engine output as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRow {
    pub seq: i64,
    /// `unicast` or `multicast`.
    pub kind: String,
    pub at_gps: i64,
    pub dev_eui: Option<String>,
    pub port: i64,
    pub fcnt: Option<i64>,
    pub frame_kind: Option<String>,
    pub data: Vec<u8>,
}

/// A device's view for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub dev_eui: String,
    pub phase: String,
    pub reason: Option<String>,
    pub progress: String,
    pub changed_gps: i64,
    pub updated_gps: Option<i64>,
}

/// What a campaign row says.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRow {
    pub id: i64,
    pub name: String,
    pub firmware_id: i64,
    pub state: String,
    pub request: String,
    pub config: String,
    pub mc_key: Vec<u8>,
    pub created_gps: i64,
    pub created_unix_ms: i64,
    pub finished_gps: Option<i64>,
    pub counters: String,
    pub devices_total: i64,
    pub devices_updated: i64,
    pub devices_failed: i64,
    pub frames_sent: i64,
    pub frames_refused: i64,
    pub reason: Option<String>,
    /// The rollout this campaign is a wave of, and the wave's index.
    pub rollout_id: Option<i64>,
    pub wave: Option<i64>,
}

/// A stored firmware file (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareRow {
    pub id: i64,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub target_fw_version: Option<i64>,
    pub created_unix_ms: i64,
}

/// A new campaign's rows.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub name: String,
    pub firmware_id: i64,
    pub request: String,
    pub config: String,
    pub mc_key: Vec<u8>,
    pub created_gps: i64,
    pub created_unix_ms: i64,
    pub counters: String,
    /// (DevEUI, key kind, sealed root key, initial progress JSON, phase).
    pub devices: Vec<(String, String, Vec<u8>, String, String)>,
    /// The rollout and wave it belongs to.
    pub rollout: Option<(i64, i64)>,
}

/// Everything one engine step changes, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct StepWrite {
    pub campaign_id: i64,
    pub input: Option<InputRow>,
    pub outputs: Vec<OutputRow>,
    pub devices: Vec<DeviceRow>,
    pub log: Vec<(String, i64, String)>,
    /// The campaign's new state, counters, devices updated and failed, when finished.
    pub campaign: Option<(String, String, i64, i64, Option<i64>)>,
    /// Raise this McAddr's next FCnt.
    pub mc_fcnt: Option<(i64, i64)>,
    /// Audit log rows of the step (state changes).
    pub audit: Vec<NewAudit>,
}

const CAMPAIGN_COLUMNS: &str = "id, name, firmware_id, state, request, config, mc_key, \
    created_gps, created_unix_ms, finished_gps, counters, devices_total, devices_updated, \
    devices_failed, frames_sent, frames_refused, reason, rollout_id, wave";

fn campaign_row(r: &sqlx::any::AnyRow) -> DbResult<CampaignRow> {
    Ok(CampaignRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        firmware_id: r.try_get(2)?,
        state: r.try_get(3)?,
        request: r.try_get(4)?,
        config: r.try_get(5)?,
        mc_key: r.try_get(6)?,
        created_gps: r.try_get(7)?,
        created_unix_ms: r.try_get(8)?,
        finished_gps: r.try_get(9)?,
        counters: r.try_get(10)?,
        devices_total: r.try_get(11)?,
        devices_updated: r.try_get(12)?,
        devices_failed: r.try_get(13)?,
        frames_sent: r.try_get(14)?,
        frames_refused: r.try_get(15)?,
        reason: r.try_get(16)?,
        rollout_id: r.try_get(17)?,
        wave: r.try_get(18)?,
    })
}

/// `sqlite:` URLs create the file if it is missing.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

impl Store {
    /// Connects and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url))
        } else {
            (Backend::Postgres, url.to_string())
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: the API reads while the runner writes; a commit is durable
                        // once it returns (synchronous FULL).
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn insert_firmware(
        &self,
        name: &str,
        data: &[u8],
        sha256: &str,
        target_fw_version: Option<i64>,
        created_unix_ms: i64,
        audit: &NewAudit,
    ) -> DbResult<i64> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO firmware (name, size, sha256, target_fw_version, data, created_unix_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(data.len() as i64)
        .bind(sha256)
        .bind(target_fw_version)
        .bind(data.to_vec())
        .bind(created_unix_ms)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        access::insert_audit_in(&mut tx, &audit.with_id(id)).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn list_firmware(&self) -> DbResult<Vec<FirmwareRow>> {
        let rows = sqlx::query(
            "SELECT id, name, size, sha256, target_fw_version, created_unix_ms FROM firmware \
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FirmwareRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    size: r.try_get(2)?,
                    sha256: r.try_get(3)?,
                    target_fw_version: r.try_get(4)?,
                    created_unix_ms: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// A firmware file and its bytes.
    pub async fn firmware(&self, id: i64) -> DbResult<Option<(FirmwareRow, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT id, name, size, sha256, target_fw_version, created_unix_ms, data \
             FROM firmware WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                FirmwareRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    size: r.try_get(2)?,
                    sha256: r.try_get(3)?,
                    target_fw_version: r.try_get(4)?,
                    created_unix_ms: r.try_get(5)?,
                },
                r.try_get(6)?,
            ))
        })
        .transpose()
    }

    /// The next multicast FCnt of `mc_addr` (0 for a new group).
    pub async fn mc_next_fcnt(&self, mc_addr: i64) -> DbResult<i64> {
        let row = sqlx::query("SELECT next_fcnt FROM mc_groups WHERE mc_addr = $1")
            .bind(mc_addr)
            .fetch_optional(&self.pool)
            .await?;
        row.map_or(Ok(0), |r| r.try_get(0))
    }

    /// The highest next multicast FCnt of the McAddrs in `lo..hi` (0 if none was used).
    pub async fn mc_next_fcnt_in(&self, lo: i64, hi: i64) -> DbResult<i64> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(next_fcnt), 0) FROM mc_groups WHERE mc_addr >= $1 AND mc_addr < $2",
        )
        .bind(lo)
        .bind(hi)
        .fetch_one(&self.pool)
        .await?;
        row.try_get(0)
    }

    /// McAddrs of campaigns that are not over.
    pub async fn busy_mc_addrs(&self) -> DbResult<Vec<String>> {
        let rows = sqlx::query("SELECT config FROM campaigns WHERE state = 'running'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// Inserts a campaign, its devices and its first step (the engine's first outputs), in
    /// one transaction.
    pub async fn insert_campaign(&self, c: &NewCampaign, first: &StepWrite) -> DbResult<i64> {
        let mut tx = self.pool.begin().await?;
        let id = insert_campaign_in(&mut tx, c).await?;
        let first = StepWrite {
            campaign_id: id,
            audit: first.audit.iter().map(|a| a.with_id(id)).collect(),
            ..first.clone()
        };
        write_step_in(&mut tx, &first).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Writes one engine step: its input, its outputs, the McAddr's next FCnt, the device
    /// views and log lines, the campaign's counters. All or nothing.
    pub async fn write_step(&self, w: &StepWrite) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        write_step_in(&mut tx, w).await?;
        tx.commit().await
    }

    /// Sets a campaign's state, with its audit row, in one transaction.
    pub async fn set_campaign_state(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        finished_gps: Option<i64>,
        audit: &NewAudit,
    ) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        set_campaign_state_in(&mut tx, id, state, reason, finished_gps).await?;
        access::insert_audit_in(&mut tx, audit).await?;
        tx.commit().await
    }

    pub async fn campaigns(&self) -> DbResult<Vec<CampaignRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(campaign_row).collect()
    }

    pub async fn campaign(&self, id: i64) -> DbResult<Option<CampaignRow>> {
        let row = sqlx::query(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(campaign_row).transpose()
    }

    /// DevEUI, key kind and sealed root key of every device of a campaign.
    pub async fn device_keys(&self, id: i64) -> DbResult<Vec<(String, String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT dev_eui, key_kind, root_key FROM devices WHERE campaign_id = $1 \
             ORDER BY dev_eui",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn devices(&self, id: i64) -> DbResult<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT dev_eui, phase, reason, progress, changed_gps, updated_gps FROM devices \
             WHERE campaign_id = $1 ORDER BY dev_eui",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceRow {
                    dev_eui: r.try_get(0)?,
                    phase: r.try_get(1)?,
                    reason: r.try_get(2)?,
                    progress: r.try_get(3)?,
                    changed_gps: r.try_get(4)?,
                    updated_gps: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn device_log(&self, id: i64, eui: &str) -> DbResult<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT at_gps, text FROM device_log WHERE campaign_id = $1 AND dev_eui = $2 \
             ORDER BY id",
        )
        .bind(id)
        .bind(eui)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn inputs(&self, id: i64) -> DbResult<Vec<InputRow>> {
        let rows = sqlx::query(
            "SELECT seq, kind, at_gps, dev_eui, port, fcnt, ref_seq, data FROM inputs \
             WHERE campaign_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InputRow {
                    seq: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    at_gps: r.try_get(2)?,
                    dev_eui: r.try_get(3)?,
                    port: r.try_get(4)?,
                    fcnt: r.try_get(5)?,
                    ref_seq: r.try_get(6)?,
                    data: r.try_get(7)?,
                })
            })
            .collect()
    }

    pub async fn outputs(&self, id: i64) -> DbResult<Vec<OutputRow>> {
        let rows = sqlx::query(
            "SELECT seq, kind, at_gps, dev_eui, port, fcnt, frame_kind, data FROM outputs \
             WHERE campaign_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutputRow {
                    seq: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    at_gps: r.try_get(2)?,
                    dev_eui: r.try_get(3)?,
                    port: r.try_get(4)?,
                    fcnt: r.try_get(5)?,
                    frame_kind: r.try_get(6)?,
                    data: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Marks outputs published (after the MQTT client took them).
    pub async fn mark_outputs(&self, id: i64, seqs: &[i64], status: &str) -> DbResult<()> {
        for s in seqs {
            sqlx::query("UPDATE outputs SET status = $3 WHERE campaign_id = $1 AND seq = $2")
                .bind(id)
                .bind(*s)
                .bind(status)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn insert_transmission(
        &self,
        downlink_id: u32,
        campaign_id: i64,
        output_seq: i64,
        gateway: &str,
    ) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO transmissions (downlink_id, campaign_id, output_seq, gateway_id, \
             status) VALUES ($1, $2, $3, $4, 'published')",
        )
        .bind(i64::from(downlink_id))
        .bind(campaign_id)
        .bind(output_seq)
        .bind(gateway)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Records a gateway's answer; returns the transmission's campaign and output.
    pub async fn ack_transmission(
        &self,
        downlink_id: u32,
        status: &str,
    ) -> DbResult<Option<(i64, i64, String)>> {
        let row = sqlx::query(
            "SELECT campaign_id, output_seq, gateway_id FROM transmissions \
             WHERE downlink_id = $1",
        )
        .bind(i64::from(downlink_id))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        sqlx::query("UPDATE transmissions SET status = $2 WHERE downlink_id = $1")
            .bind(i64::from(downlink_id))
            .bind(status)
            .execute(&self.pool)
            .await?;
        Ok(Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
    }

    /// Statuses of every transmission of an output.
    pub async fn transmissions_of(&self, id: i64, seq: i64) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT status FROM transmissions WHERE campaign_id = $1 AND output_seq = $2",
        )
        .bind(id)
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get(0)).collect()
    }

    /// Remembers a gateway and whether it is online.
    pub async fn save_gateway(&self, id: &str, online: bool, seen_unix_ms: i64) -> DbResult<()> {
        let updated =
            sqlx::query("UPDATE gateways SET online = $2, seen_unix_ms = $3 WHERE gateway_id = $1")
                .bind(id)
                .bind(i64::from(online))
                .bind(seen_unix_ms)
                .execute(&self.pool)
                .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO gateways (gateway_id, online, seen_unix_ms) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(i64::from(online))
            .bind(seen_unix_ms)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Every gateway remembered: (id, online).
    pub async fn gateways(&self) -> DbResult<Vec<(String, bool)>> {
        let rows = sqlx::query("SELECT gateway_id, online FROM gateways ORDER BY gateway_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? != 0)))
            .collect()
    }

    /// Counts a frame that went out or that every gateway refused.
    pub async fn count_frame(&self, id: i64, sent: bool) -> DbResult<()> {
        let q = if sent {
            "UPDATE campaigns SET frames_sent = frames_sent + 1 WHERE id = $1"
        } else {
            "UPDATE campaigns SET frames_refused = frames_refused + 1 WHERE id = $1"
        };
        sqlx::query(q)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn set_campaign_state_in(
    tx: &mut Tx<'_>,
    id: i64,
    state: &str,
    reason: Option<&str>,
    finished_gps: Option<i64>,
) -> DbResult<()> {
    sqlx::query("UPDATE campaigns SET state = $2, reason = $3, finished_gps = $4 WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(reason.map(String::from))
        .bind(finished_gps)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

async fn insert_campaign_in(tx: &mut Tx<'_>, c: &NewCampaign) -> DbResult<i64> {
    let row = sqlx::query(
        "INSERT INTO campaigns (name, firmware_id, state, request, config, mc_key, \
         created_gps, created_unix_ms, counters, devices_total, devices_updated, \
         devices_failed, rollout_id, wave) VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, \
         $9, 0, 0, $10, $11) RETURNING id",
    )
    .bind(&c.name)
    .bind(c.firmware_id)
    .bind(&c.request)
    .bind(&c.config)
    .bind(c.mc_key.clone())
    .bind(c.created_gps)
    .bind(c.created_unix_ms)
    .bind(&c.counters)
    .bind(c.devices.len() as i64)
    .bind(c.rollout.map(|r| r.0))
    .bind(c.rollout.map(|r| r.1))
    .fetch_one(&mut **tx)
    .await?;
    let id: i64 = row.try_get(0)?;
    for (eui, kind, key, progress, phase) in &c.devices {
        sqlx::query(
            "INSERT INTO devices (campaign_id, dev_eui, key_kind, root_key, phase, \
             progress, changed_gps) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(eui)
        .bind(kind)
        .bind(key.clone())
        .bind(phase)
        .bind(progress)
        .bind(c.created_gps)
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}

async fn write_step_in(tx: &mut Tx<'_>, w: &StepWrite) -> DbResult<()> {
    let id = w.campaign_id;

    if let Some(i) = &w.input {
        sqlx::query(
            "INSERT INTO inputs (campaign_id, seq, kind, at_gps, dev_eui, port, fcnt, \
                 ref_seq, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(i.seq)
        .bind(&i.kind)
        .bind(i.at_gps)
        .bind(i.dev_eui.clone())
        .bind(i.port)
        .bind(i.fcnt)
        .bind(i.ref_seq)
        .bind(i.data.clone())
        .execute(&mut **tx)
        .await?;
    }
    for o in &w.outputs {
        sqlx::query(
            "INSERT INTO outputs (campaign_id, seq, kind, at_gps, dev_eui, port, fcnt, \
                 frame_kind, data, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 'recorded')",
        )
        .bind(id)
        .bind(o.seq)
        .bind(&o.kind)
        .bind(o.at_gps)
        .bind(o.dev_eui.clone())
        .bind(o.port)
        .bind(o.fcnt)
        .bind(o.frame_kind.clone())
        .bind(o.data.clone())
        .execute(&mut **tx)
        .await?;
    }
    if let Some((addr, next)) = w.mc_fcnt {
        let updated = sqlx::query(
            "UPDATE mc_groups SET next_fcnt = $2 WHERE mc_addr = $1 AND next_fcnt < $2",
        )
        .bind(addr)
        .bind(next)
        .execute(&mut **tx)
        .await?;
        if updated.rows_affected() == 0 {
            let exists = sqlx::query("SELECT next_fcnt FROM mc_groups WHERE mc_addr = $1")
                .bind(addr)
                .fetch_optional(&mut **tx)
                .await?;
            if exists.is_none() {
                sqlx::query("INSERT INTO mc_groups (mc_addr, next_fcnt) VALUES ($1, $2)")
                    .bind(addr)
                    .bind(next)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    for d in &w.devices {
        sqlx::query(
            "UPDATE devices SET phase = $3, reason = $4, progress = $5, changed_gps = $6, \
                 updated_gps = $7 WHERE campaign_id = $1 AND dev_eui = $2",
        )
        .bind(id)
        .bind(&d.dev_eui)
        .bind(&d.phase)
        .bind(d.reason.clone())
        .bind(&d.progress)
        .bind(d.changed_gps)
        .bind(d.updated_gps)
        .execute(&mut **tx)
        .await?;
    }
    for (eui, at, text) in &w.log {
        sqlx::query(
            "INSERT INTO device_log (campaign_id, dev_eui, at_gps, text) \
                 VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(eui)
        .bind(*at)
        .bind(text)
        .execute(&mut **tx)
        .await?;
    }
    if let Some((state, counters, updated, failed, finished)) = &w.campaign {
        sqlx::query(
            "UPDATE campaigns SET state = $2, counters = $3, devices_updated = $4, \
                 devices_failed = $5, finished_gps = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(counters)
        .bind(*updated)
        .bind(*failed)
        .bind(*finished)
        .execute(&mut **tx)
        .await?;
    }
    for a in &w.audit {
        access::insert_audit_in(tx, a).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(seq: i64, fcnt: Option<i64>) -> OutputRow {
        OutputRow {
            seq,
            kind: if fcnt.is_some() {
                "multicast"
            } else {
                "unicast"
            }
            .into(),
            at_gps: 0,
            dev_eui: fcnt.is_none().then(|| "0000000000000001".into()),
            port: 201,
            fcnt,
            frame_kind: None,
            data: vec![seq as u8],
        }
    }

    #[tokio::test]
    async fn a_step_is_all_or_nothing_and_the_group_counter_only_rises() {
        let dir = std::env::temp_dir().join(format!("fuota-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::connect(&format!("sqlite://{}", dir.join("t.db").display()), 2)
            .await
            .unwrap();
        let upload = NewAudit {
            at_unix_ms: 1,
            actor: "alice".into(),
            role: Some("operator".into()),
            action: "firmware.upload".into(),
            subject: format!("firmware/{NEW_ID}"),
            details: "{}".into(),
        };
        let fw = s
            .insert_firmware("p", &[1, 2, 3], "00", Some(7), 0, &upload)
            .await
            .unwrap();
        let log = s
            .audit_log(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].entry.subject, format!("firmware/{fw}"));
        let c = NewCampaign {
            name: "c".into(),
            firmware_id: fw,
            request: "{}".into(),
            config: "{}".into(),
            mc_key: vec![9],
            created_gps: 10,
            created_unix_ms: 0,
            counters: "{}".into(),
            devices: vec![(
                "0000000000000001".into(),
                "gen_app_key".into(),
                vec![1],
                "{}".into(),
                "setup".into(),
            )],
            rollout: None,
        };
        let first = StepWrite {
            outputs: vec![out(0, None)],
            ..StepWrite::default()
        };
        let id = s.insert_campaign(&c, &first).await.unwrap();
        let step = |seq: i64, outs: Vec<OutputRow>, next: i64| StepWrite {
            campaign_id: id,
            input: Some(InputRow {
                seq,
                kind: "timeout".into(),
                at_gps: 20 + seq,
                dev_eui: None,
                port: None,
                fcnt: None,
                ref_seq: None,
                data: None,
            }),
            outputs: outs,
            mc_fcnt: Some((0x01ff_0000, next)),
            ..StepWrite::default()
        };
        s.write_step(&step(0, vec![out(1, Some(5))], 6))
            .await
            .unwrap();
        assert_eq!(s.mc_next_fcnt(0x01ff_0000).await.unwrap(), 6);
        // The same input again: refused, and nothing of it stays.
        assert!(s
            .write_step(&step(0, vec![out(2, Some(6))], 7))
            .await
            .is_err());
        assert_eq!(s.outputs(id).await.unwrap().len(), 2);
        assert_eq!(s.mc_next_fcnt(0x01ff_0000).await.unwrap(), 6);
        // A lower counter never lowers it.
        s.write_step(&step(1, vec![], 3)).await.unwrap();
        assert_eq!(s.mc_next_fcnt(0x01ff_0000).await.unwrap(), 6);
        assert_eq!(s.inputs(id).await.unwrap().len(), 2);
        let row = s.campaign(id).await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.devices_total), ("running", 1));
        s.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
