//! Rollouts in SQL: the rollout row (its state and wave summaries, kept for the API), its
//! devices with their sealed root keys and current wave, and its write-ahead log of inputs.
//! A wave is a campaign row (`rollout_id`, `wave`) made in the step that starts it; its
//! outputs, devices and log lines are a campaign's.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{
    access::insert_audit_in, insert_campaign_in, set_campaign_state_in, write_step_in, DbResult,
    NewAudit, NewCampaign, StepWrite, Store,
};

/// One rollout input as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutInputRow {
    pub seq: i64,
    /// `uplink`, `timeout`, `refused`, `pause`, `resume`, `cancel`, `retry`.
    pub kind: String,
    pub at_gps: i64,
    pub dev_eui: Option<String>,
    pub port: Option<i64>,
    pub fcnt: Option<i64>,
    /// The wave of a refused frame.
    pub wave: Option<i64>,
    pub ref_seq: Option<i64>,
    pub data: Option<Vec<u8>>,
    /// Who: a token's name, or `system`.
    pub actor: String,
}

/// What a rollout row says.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub id: i64,
    pub name: String,
    pub firmware_id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub request: String,
    pub config: String,
    pub mc_key: Vec<u8>,
    pub created_gps: i64,
    pub created_unix_ms: i64,
    pub created_by: String,
    pub finished_gps: Option<i64>,
    /// JSON: the wave summaries after the last step.
    pub waves: String,
    pub devices_total: i64,
}

/// A device of a rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutDeviceRow {
    pub dev_eui: String,
    /// `gen_app_key` or `app_key`.
    pub key_kind: String,
    /// Sealed under the server key.
    pub root_key: Vec<u8>,
    pub group: Option<String>,
    /// The wave it is in now (planned, running or ended).
    pub wave: i64,
}

/// A new rollout's rows.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub name: String,
    pub firmware_id: i64,
    pub request: String,
    pub config: String,
    pub mc_key: Vec<u8>,
    pub created_gps: i64,
    pub created_unix_ms: i64,
    pub created_by: String,
    pub devices: Vec<RolloutDeviceRow>,
}

/// Everything one rollout step changes, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct RolloutWrite {
    pub rollout_id: i64,
    pub input: Option<RolloutInputRow>,
    /// Waves that started in this step: their campaign rows (by wave index).
    pub new_waves: Vec<(usize, NewCampaign)>,
    /// Campaign ids of the waves that started before.
    pub wave_ids: BTreeMap<usize, i64>,
    /// Each wave's part of the step: its outputs, devices, log lines, counters, FCnt.
    pub wave_steps: Vec<(usize, StepWrite)>,
    /// Waves whose campaign was stopped by a cancel: (wave, state, reason, when).
    pub wave_states: Vec<(usize, String, Option<String>, Option<i64>)>,
    /// Devices that changed wave: (DevEUI, wave).
    pub device_waves: Vec<(String, i64)>,
    /// The rollout's state, reason, wave summaries (JSON), when it ended.
    pub state: Option<(String, Option<String>, String, Option<i64>)>,
    pub audit: Vec<NewAudit>,
}

const ROLLOUT_COLUMNS: &str = "id, name, firmware_id, state, reason, request, config, mc_key, \
    created_gps, created_unix_ms, created_by, finished_gps, waves, devices_total";

fn rollout_row(r: &sqlx::any::AnyRow) -> DbResult<RolloutRow> {
    Ok(RolloutRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        firmware_id: r.try_get(2)?,
        state: r.try_get(3)?,
        reason: r.try_get(4)?,
        request: r.try_get(5)?,
        config: r.try_get(6)?,
        mc_key: r.try_get(7)?,
        created_gps: r.try_get(8)?,
        created_unix_ms: r.try_get(9)?,
        created_by: r.try_get(10)?,
        finished_gps: r.try_get(11)?,
        waves: r.try_get(12)?,
        devices_total: r.try_get(13)?,
    })
}

impl Store {
    /// Inserts a rollout, its devices and its first step; returns its id and the campaign
    /// ids of the waves that started at once.
    pub async fn insert_rollout(
        &self,
        r: &NewRollout,
        first: &RolloutWrite,
    ) -> DbResult<(i64, BTreeMap<usize, i64>)> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO rollouts (name, firmware_id, state, request, config, mc_key, \
             created_gps, created_unix_ms, created_by, waves, devices_total) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, '[]', $9) RETURNING id",
        )
        .bind(&r.name)
        .bind(r.firmware_id)
        .bind(&r.request)
        .bind(&r.config)
        .bind(r.mc_key.clone())
        .bind(r.created_gps)
        .bind(r.created_unix_ms)
        .bind(&r.created_by)
        .bind(r.devices.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        for d in &r.devices {
            sqlx::query(
                "INSERT INTO rollout_devices (rollout_id, dev_eui, key_kind, root_key, \
                 device_group, wave) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(&d.dev_eui)
            .bind(&d.key_kind)
            .bind(d.root_key.clone())
            .bind(d.group.clone())
            .bind(d.wave)
            .execute(&mut *tx)
            .await?;
        }
        let first = RolloutWrite {
            rollout_id: id,
            ..first.clone()
        };
        let ids = write_rollout_step_in(&mut tx, &first).await?;
        tx.commit().await?;
        Ok((id, ids))
    }

    /// Writes one rollout step, all or nothing; returns the campaign ids of the waves that
    /// started in it.
    pub async fn write_rollout_step(&self, w: &RolloutWrite) -> DbResult<BTreeMap<usize, i64>> {
        let mut tx = self.pool.begin().await?;
        let ids = write_rollout_step_in(&mut tx, w).await?;
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn rollouts(&self) -> DbResult<Vec<RolloutRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout_row).collect()
    }

    pub async fn rollout(&self, id: i64) -> DbResult<Option<RolloutRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rollout_row).transpose()
    }

    /// Every device of a rollout, by DevEUI.
    pub async fn rollout_devices(&self, id: i64) -> DbResult<Vec<RolloutDeviceRow>> {
        let rows = sqlx::query(
            "SELECT dev_eui, key_kind, root_key, device_group, wave FROM rollout_devices \
             WHERE rollout_id = $1 ORDER BY dev_eui",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutDeviceRow {
                    dev_eui: r.try_get(0)?,
                    key_kind: r.try_get(1)?,
                    root_key: r.try_get(2)?,
                    group: r.try_get(3)?,
                    wave: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn rollout_inputs(&self, id: i64) -> DbResult<Vec<RolloutInputRow>> {
        let rows = sqlx::query(
            "SELECT seq, kind, at_gps, dev_eui, port, fcnt, wave, ref_seq, data, actor \
             FROM rollout_inputs WHERE rollout_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutInputRow {
                    seq: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    at_gps: r.try_get(2)?,
                    dev_eui: r.try_get(3)?,
                    port: r.try_get(4)?,
                    fcnt: r.try_get(5)?,
                    wave: r.try_get(6)?,
                    ref_seq: r.try_get(7)?,
                    data: r.try_get(8)?,
                    actor: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// The campaign id of each wave that started: wave index to id.
    pub async fn rollout_waves(&self, id: i64) -> DbResult<BTreeMap<usize, i64>> {
        let rows = sqlx::query("SELECT wave, id FROM campaigns WHERE rollout_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let wave: i64 = r.try_get(0)?;
                Ok((usize::try_from(wave).unwrap_or(usize::MAX), r.try_get(1)?))
            })
            .collect()
    }

    /// Marks a rollout (and its running waves) failed: it could not be rebuilt.
    pub async fn fail_rollout(
        &self,
        id: i64,
        reason: &str,
        at: i64,
        audit: &NewAudit,
    ) -> DbResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE rollouts SET state = 'failed', reason = $2, finished_gps = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE campaigns SET state = 'failed', reason = $2, finished_gps = $3 \
             WHERE rollout_id = $1 AND state = 'running'",
        )
        .bind(id)
        .bind(reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        insert_audit_in(&mut tx, audit).await?;
        tx.commit().await
    }
}

async fn write_rollout_step_in(
    tx: &mut super::Tx<'_>,
    w: &RolloutWrite,
) -> DbResult<BTreeMap<usize, i64>> {
    let id = w.rollout_id;
    if let Some(i) = &w.input {
        sqlx::query(
            "INSERT INTO rollout_inputs (rollout_id, seq, kind, at_gps, dev_eui, port, fcnt, \
             wave, ref_seq, data, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(i.seq)
        .bind(&i.kind)
        .bind(i.at_gps)
        .bind(i.dev_eui.clone())
        .bind(i.port)
        .bind(i.fcnt)
        .bind(i.wave)
        .bind(i.ref_seq)
        .bind(i.data.clone())
        .bind(&i.actor)
        .execute(&mut **tx)
        .await?;
    }
    let mut ids = w.wave_ids.clone();
    let mut new_ids = BTreeMap::new();
    for (wave, c) in &w.new_waves {
        let c = NewCampaign {
            rollout: Some((id, *wave as i64)),
            ..c.clone()
        };
        let cid = insert_campaign_in(tx, &c).await?;
        ids.insert(*wave, cid);
        new_ids.insert(*wave, cid);
    }
    for (wave, step) in &w.wave_steps {
        let Some(&cid) = ids.get(wave) else {
            // A wave's step before its campaign row: a bug of the caller, refused whole.
            return Err(sqlx::Error::Protocol(format!(
                "rollout {id}: wave {wave} has no campaign"
            )));
        };
        let step = StepWrite {
            campaign_id: cid,
            ..step.clone()
        };
        write_step_in(tx, &step).await?;
    }
    for (wave, state, reason, at) in &w.wave_states {
        if let Some(&cid) = ids.get(wave) {
            set_campaign_state_in(tx, cid, state, reason.as_deref(), *at).await?;
        }
    }
    for (eui, wave) in &w.device_waves {
        sqlx::query("UPDATE rollout_devices SET wave = $3 WHERE rollout_id = $1 AND dev_eui = $2")
            .bind(id)
            .bind(eui)
            .bind(*wave)
            .execute(&mut **tx)
            .await?;
    }
    if let Some((state, reason, waves, finished)) = &w.state {
        sqlx::query(
            "UPDATE rollouts SET state = $2, reason = $3, waves = $4, finished_gps = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(reason.clone())
        .bind(waves)
        .bind(*finished)
        .execute(&mut **tx)
        .await?;
    }
    for a in &w.audit {
        insert_audit_in(tx, &a.with_id(id)).await?;
    }
    Ok(new_ids)
}
