//! The runner's rollouts: creating one, stepping it (feed, write the step, then publish),
//! the operators' actions, and rebuilding them from their logs at start.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use super::{
    log_output, mc_key_aad, port_name, Actor, Owner, Principal, Refusal, RolloutAction, Runner,
};
use crate::engine::{DeviceSpec, GpsMillis, Output, Phase, RootKey};
use crate::rollout::{RolloutDevice, RolloutState, WaveStatus};
use crate::service::campaign::{phase_label, phase_text, Numbered};
use crate::service::chirpstack::{eui_string, parse_eui};
use crate::service::clock::now_unix_ms;
use crate::service::rollout::{
    self, state_label, waves_json, RolloutInput, RolloutRequest, RolloutRun, RolloutStepped,
    StoredRollout, ROLLOUT_GROUPS,
};
use crate::service::store::{
    DeviceRow, NewCampaign, NewRollout, RolloutDeviceRow, RolloutWrite, StepWrite, NEW_ID,
};
use fuota_codec::keys::Key128;

fn db(e: sqlx::Error) -> Refusal {
    Refusal::new(500, format!("database: {e}"))
}

/// The audit subject of a rollout (its id filled in by the store).
fn subject() -> String {
    format!("rollout/{NEW_ID}")
}

impl Runner {
    /// Rebuilds every rollout that is not over.
    pub(super) async fn resume_rollouts(&mut self) -> Result<(), String> {
        let rows = self.store.rollouts().await.map_err(|e| e.to_string())?;
        for r in rows
            .into_iter()
            .filter(|r| matches!(r.state.as_str(), "running" | "paused" | "halted"))
        {
            match self.load_rollout(r.id).await {
                Ok((inputs, mismatches)) => tracing::info!(
                    "rollout {}: resumed from {inputs} inputs{}",
                    r.id,
                    if mismatches > 0 {
                        format!(" ({mismatches} outputs differ from the log: the engine changed)")
                    } else {
                        String::new()
                    }
                ),
                Err(e) => {
                    tracing::error!("rollout {}: cannot resume: {e}", r.id);
                    let audit = Actor::System.entry(
                        now_unix_ms(),
                        "rollout.failed",
                        &format!("rollout/{}", r.id),
                        json!({ "reason": e }),
                    );
                    let _ = self
                        .store
                        .fail_rollout(r.id, &e, self.clock.now() as i64, &audit)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Rebuilds rollout `id` from its log: (inputs replayed, outputs that differ).
    async fn load_rollout(&mut self, id: i64) -> Result<(usize, usize), String> {
        let s = &self.store;
        let e = |e: sqlx::Error| e.to_string();
        let row = s.rollout(id).await.map_err(e)?.ok_or("no such rollout")?;
        let cfg: StoredRollout = serde_json::from_str(&row.config).map_err(|e| e.to_string())?;
        let (_, data) = s
            .firmware(row.firmware_id)
            .await
            .map_err(e)?
            .ok_or("its firmware is gone")?;
        let mc_key = self
            .keys
            .open(
                &row.mc_key,
                &mc_key_aad(cfg.template.mc_addr, row.created_gps),
            )
            .map_err(|e| e.to_string())?;
        let mc_key = Key128::from_bytes(mc_key.try_into().map_err(|_| "McKey length")?);
        let mut devices = Vec::new();
        let mut sealed = BTreeMap::new();
        for d in s.rollout_devices(id).await.map_err(e)? {
            let dev_eui = parse_eui(&d.dev_eui).ok_or("a stored DevEUI")?;
            let k = self
                .keys
                .open(&d.root_key, d.dev_eui.as_bytes())
                .map_err(|e| e.to_string())?;
            let k = Key128::from_bytes(k.try_into().map_err(|_| "root key length")?);
            let root_key = if d.key_kind == "app_key" {
                RootKey::AppKey(k)
            } else {
                RootKey::GenAppKey(k)
            };
            devices.push(RolloutDevice {
                spec: DeviceSpec { dev_eui, root_key },
                group: d.group,
            });
            sealed.insert(dev_eui, (d.key_kind, d.root_key));
        }
        let inputs = s.rollout_inputs(id).await.map_err(e)?;
        let wave_ids = s.rollout_waves(id).await.map_err(e)?;
        let mut outputs = BTreeMap::new();
        for (&w, &cid) in &wave_ids {
            outputs.insert(w, s.outputs(cid).await.map_err(e)?);
        }
        let (mut run, mismatches) = RolloutRun::replay(
            id,
            cfg,
            data,
            mc_key,
            devices,
            sealed,
            row.created_gps as u64,
            &inputs,
            &outputs,
        )
        .map_err(|e| e.to_string())?;
        run.name = row.name;
        run.firmware_id = row.firmware_id;
        for w in run.rollout.waves() {
            if w.status != WaveStatus::Pending && !wave_ids.contains_key(&w.index) {
                return Err(format!("wave {} ran but has no campaign", w.index + 1));
            }
        }
        for (&w, &cid) in &wave_ids {
            let addr = run.rollout.wave_config(w).map_or(0, |c| c.mc_addr);
            let group_next = s.mc_next_fcnt(i64::from(addr)).await.map_err(e)?;
            let floor = outputs[&w]
                .iter()
                .filter_map(|o| o.fcnt)
                .map(|f| f + 1)
                .chain([group_next])
                .max()
                .unwrap_or(0);
            self.fcnt_floor
                .insert(cid, u32::try_from(floor).unwrap_or(u32::MAX));
            self.wave_campaigns.insert(cid, (id, w));
        }
        run.wave_ids = wave_ids;
        if !run.is_over() {
            for d in run.placement().keys() {
                self.by_device.insert(*d, Owner::Rollout(id));
            }
            self.rollouts.insert(id, run);
        }
        Ok((inputs.len(), mismatches))
    }

    /// The first of [`ROLLOUT_GROUPS`] McAddrs that no campaign or rollout has.
    fn free_rollout_block(&self) -> u32 {
        // Blocks above the campaigns' first addresses.
        let base = self.cfg.campaign.mc_addr_base;
        (1..u32::MAX / ROLLOUT_GROUPS)
            .map(|j| base.saturating_add(j.saturating_mul(ROLLOUT_GROUPS)))
            .take_while(|b| b.checked_add(ROLLOUT_GROUPS).is_some())
            .find(|&b| (b..b + ROLLOUT_GROUPS).all(|a| self.mc_addr_free(a)))
            .unwrap_or(base)
    }

    pub(super) async fn create_rollout(
        &mut self,
        req: &RolloutRequest,
        by: &Principal,
    ) -> Result<i64, Refusal> {
        let devices = req.devices().map_err(|e| Refusal::new(422, e.0))?;
        for d in &devices {
            self.device_taken(d.spec.dev_eui)?;
        }
        let Some((fw, data)) = self.store.firmware(req.firmware_id).await.map_err(db)? else {
            return Err(Refusal::new(
                404,
                format!("no firmware {}", req.firmware_id),
            ));
        };
        let app = self.application(&req.application_id)?;
        let base = self.free_rollout_block();
        let first_fcnt = self
            .store
            .mc_next_fcnt_in(i64::from(base), i64::from(base) + i64::from(ROLLOUT_GROUPS))
            .await
            .map_err(db)?;
        let now = self.clock.now();
        let der = self.derivation(now, base, first_fcnt, app);
        let target = fw.target_fw_version.and_then(|v| u32::try_from(v).ok());
        let seed = req.seed.unwrap_or_else(|| OsRng.next_u64());
        let (cfg, plan) = rollout::derive(req, data.len(), target, &der, seed)
            .map_err(|e| Refusal::new(422, e.0))?;
        let mut mc_key = [0u8; 16];
        OsRng.fill_bytes(&mut mc_key);
        let mut sealed = BTreeMap::new();
        let mut groups = BTreeMap::new();
        for d in &devices {
            let eui = eui_string(d.spec.dev_eui);
            let (kind, key) = match &d.spec.root_key {
                RootKey::GenAppKey(k) => ("gen_app_key", k),
                RootKey::AppKey(k) => ("app_key", k),
            };
            let key = self.keys.seal(key.as_bytes(), eui.as_bytes());
            sealed.insert(d.spec.dev_eui, (kind.to_string(), key));
            groups.insert(d.spec.dev_eui, d.group.clone());
        }
        let (mut run, first) = RolloutRun::start(
            0,
            cfg.clone(),
            data,
            Key128::from_bytes(mc_key),
            devices,
            sealed.clone(),
            now,
        )
        .map_err(|e| Refusal::new(422, e.0))?;
        run.name = req.name.clone();
        run.firmware_id = fw.id;
        let actor = Actor::Caller(by.clone());
        let waves: Vec<Value> = run
            .rollout
            .waves()
            .iter()
            .map(|w| json!({ "name": w.name, "devices": w.devices }))
            .collect();
        let created = actor.entry(
            now_unix_ms(),
            "rollout.create",
            &subject(),
            json!({
                "name": req.name,
                "firmware_id": fw.id,
                "devices": sealed.len(),
                "waves": waves,
                "plan": {
                    "fragments": plan.nb_frag, "frag_size": plan.frag_size,
                    "redundancy": cfg.template.redundancy,
                },
                "state": state_label(run.state()).0,
            }),
        );
        let mut first_write = self.rollout_write(&run, &first, None, now, &actor);
        first_write.audit.insert(0, created);
        let new = NewRollout {
            name: req.name.clone(),
            firmware_id: fw.id,
            request: serde_json::to_string(&req.redacted()).unwrap_or_default(),
            config: serde_json::to_string(&cfg).unwrap_or_default(),
            mc_key: self
                .keys
                .seal(&mc_key, &mc_key_aad(cfg.template.mc_addr, now as i64)),
            created_gps: now as i64,
            created_unix_ms: now_unix_ms(),
            created_by: by.name.clone(),
            devices: sealed
                .iter()
                .map(|(d, (kind, key))| RolloutDeviceRow {
                    dev_eui: eui_string(*d),
                    key_kind: kind.clone(),
                    root_key: key.clone(),
                    group: groups.get(d).cloned().flatten(),
                    wave: run.placement().get(d).map_or(0, |&w| w as i64),
                })
                .collect(),
        };
        let (id, ids) = self
            .store
            .insert_rollout(&new, &first_write)
            .await
            .map_err(db)?;
        run.id = id;
        self.took_waves(&mut run, ids);
        for d in sealed.keys() {
            self.by_device.insert(*d, Owner::Rollout(id));
        }
        tracing::info!(
            "rollout {id} ({}) created: {} devices in {} waves",
            req.name,
            sealed.len(),
            run.rollout.waves().len()
        );
        self.publish_rollout(&run, &first.outputs, None).await;
        self.rollouts.insert(id, run);
        Ok(id)
    }

    /// Registers the campaigns of waves that just started.
    fn took_waves(&mut self, run: &mut RolloutRun, ids: BTreeMap<usize, i64>) {
        for (w, cid) in ids {
            run.wave_ids.insert(w, cid);
            self.wave_campaigns.insert(cid, (run.id, w));
            self.fcnt_floor.insert(cid, run.cfg.template.first_mc_fcnt);
        }
    }

    pub(super) async fn rollout_action(
        &mut self,
        id: i64,
        action: RolloutAction,
        by: &Principal,
    ) -> Result<(), Refusal> {
        let Some(run) = self.rollouts.get(&id) else {
            return match self.store.rollout(id).await.map_err(db)? {
                Some(r) => Err(Refusal::new(409, format!("rollout {id} is {}", r.state))),
                None => Err(Refusal::new(404, format!("no rollout {id}"))),
            };
        };
        let (state, _) = state_label(run.state());
        let at = self.clock.now();
        let input = match action {
            RolloutAction::Pause if *run.state() != RolloutState::Running => {
                return Err(Refusal::new(
                    409,
                    format!("rollout {id} is {state}: only a running rollout pauses"),
                ))
            }
            RolloutAction::Resume if *run.state() != RolloutState::Paused => {
                return Err(Refusal::new(
                    409,
                    format!("rollout {id} is {state}: only a paused rollout resumes"),
                ))
            }
            RolloutAction::Pause => RolloutInput::Pause { at },
            RolloutAction::Resume => RolloutInput::Resume { at },
            RolloutAction::Cancel => RolloutInput::Cancel { at },
            RolloutAction::Retry => {
                if run.rollout.running().is_some() {
                    return Err(Refusal::new(
                        409,
                        format!("rollout {id}: a wave is running; retry once it has ended"),
                    ));
                }
                if run.rollout.retry_candidates().is_empty() {
                    return Err(Refusal::new(
                        409,
                        format!("rollout {id}: no device failed or reverted"),
                    ));
                }
                if run.rollout.waves().len() >= ROLLOUT_GROUPS as usize {
                    return Err(Refusal::new(
                        409,
                        format!(
                            "rollout {id} used its {ROLLOUT_GROUPS} multicast groups: no wave more"
                        ),
                    ));
                }
                RolloutInput::Retry { at }
            }
        };
        let retried = match action {
            RolloutAction::Retry => run.rollout.retry_candidates().len(),
            _ => 0,
        };
        let details = match action {
            RolloutAction::Retry => json!({ "devices": retried }),
            _ => json!({}),
        };
        self.step_rollout_as(
            id,
            input,
            &Actor::Caller(by.clone()),
            None,
            Some((format!("rollout.{}", action.name()), details)),
        )
        .await
    }

    /// One step of the service itself (an uplink, a timeout, a refused frame).
    pub(super) async fn step_rollout(
        &mut self,
        id: i64,
        input: RolloutInput,
        actor: &Actor,
        route: Option<Vec<String>>,
    ) -> Result<(), Refusal> {
        self.step_rollout_as(id, input, actor, route, None).await
    }

    /// Feeds the input, writes the step (the input with who made it, the outputs, the waves
    /// it started, the audit rows) in one transaction, then publishes. `action`: the audit
    /// row of an operator's action (its details get the state it led to).
    async fn step_rollout_as(
        &mut self,
        id: i64,
        input: RolloutInput,
        actor: &Actor,
        route: Option<Vec<String>>,
        action: Option<(String, Value)>,
    ) -> Result<(), Refusal> {
        let Some(mut run) = self.rollouts.remove(&id) else {
            return Err(Refusal::new(404, format!("no rollout {id} runs")));
        };
        let seq = run.next_input;
        let at = input.at();
        let stepped = run.feed(&input);
        let mut w = self.rollout_write(&run, &stepped, Some(&input), at, actor);
        w.input = Some(input.row(seq, actor.name()));
        if let Some((name, mut details)) = action {
            let (state, reason) = state_label(run.state());
            details["state"] = json!(state);
            if let Some(r) = reason {
                details["reason"] = json!(r);
            }
            w.audit
                .insert(0, actor.entry(now_unix_ms(), &name, &subject(), details));
        }
        let ids = match self.store.write_rollout_step(&w).await {
            Ok(ids) => ids,
            Err(e) => {
                // The rollout moved on without its log: rebuild it from what was committed.
                tracing::error!("rollout {id}: step not stored ({e}); rebuilding from the log");
                if let Err(e) = self.load_rollout(id).await {
                    tracing::error!("rollout {id}: cannot rebuild: {e}");
                }
                return Err(db(e));
            }
        };
        self.took_waves(&mut run, ids);
        let route = match (&input, route) {
            (RolloutInput::Refused { wave, .. }, Some(gws)) => Some((*wave, gws)),
            _ => None,
        };
        self.publish_rollout(&run, &stepped.outputs, route).await;
        if let Some(was) = &stepped.state_was {
            let (now_state, reason) = state_label(run.state());
            tracing::info!(
                "rollout {id}: {} -> {now_state}{}",
                state_label(was).0,
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        if run.is_over() {
            // Its devices are free; late acks of its frames find no rollout.
            for d in run.placement().keys() {
                if self.by_device.get(d) == Some(&Owner::Rollout(id)) {
                    self.by_device.remove(d);
                }
            }
        } else {
            self.rollouts.insert(id, run);
        }
        Ok(())
    }

    /// Everything a rollout step changes, as rows (`input`: what the step was fed; none for
    /// the first, at creation).
    fn rollout_write(
        &self,
        run: &RolloutRun,
        st: &RolloutStepped,
        input: Option<&RolloutInput>,
        at: GpsMillis,
        actor: &Actor,
    ) -> RolloutWrite {
        let r = &run.rollout;
        let waves = r.waves();
        let mut w = RolloutWrite {
            rollout_id: run.id,
            wave_ids: run.wave_ids.clone(),
            ..RolloutWrite::default()
        };
        for &k in &st.started {
            let Some(c) = r.wave_config(k) else { continue };
            let cfg = run.cfg.wave_config(&c);
            let engine = r.campaign(k);
            let devices = r
                .wave_devices(k)
                .unwrap_or(&[])
                .iter()
                .filter_map(|d| {
                    let (kind, key) = run.sealed.get(d)?;
                    let p = engine.and_then(|e| e.device(*d)).cloned();
                    let phase = p.as_ref().map_or("setup", |p| phase_label(&p.phase));
                    Some((
                        eui_string(*d),
                        kind.clone(),
                        key.clone(),
                        serde_json::to_string(&p).unwrap_or_default(),
                        phase.to_string(),
                    ))
                })
                .collect();
            w.new_waves.push((
                k,
                NewCampaign {
                    name: format!("{}: wave {} ({})", run.name, k + 1, waves[k].name),
                    firmware_id: run.firmware_id,
                    request: json!({ "rollout": run.name, "wave": k }).to_string(),
                    config: serde_json::to_string(&cfg).unwrap_or_default(),
                    mc_key: self
                        .keys
                        .seal(c.mc_key.as_bytes(), &mc_key_aad(c.mc_addr, at as i64)),
                    created_gps: at as i64,
                    created_unix_ms: now_unix_ms(),
                    counters: engine
                        .map(|e| serde_json::to_string(&e.counters()).unwrap_or_default())
                        .unwrap_or_else(|| "{}".into()),
                    devices,
                    rollout: None,
                },
            ));
        }
        // Each wave the step touched: its outputs, devices, log lines and counts.
        let mut touched: BTreeSet<usize> = st.outputs.iter().map(|(k, _)| *k).collect();
        touched.extend(st.changed.iter().map(|(k, ..)| *k));
        touched.extend(st.wave_changes.iter().map(|(k, ..)| *k));
        let uplink_wave = match input {
            Some(RolloutInput::Uplink { dev, .. }) => r.device(*dev).map(|(k, _)| k),
            _ => None,
        };
        touched.extend(uplink_wave);
        for k in touched {
            let status = waves.get(k).map_or(WaveStatus::Pending, |s| s.status);
            if status == WaveStatus::Pending {
                continue;
            }
            let mut step = StepWrite::default();
            let outs: Vec<&Numbered> = st
                .outputs
                .iter()
                .filter(|(wk, _)| *wk == k)
                .map(|(_, o)| o)
                .collect();
            step.outputs = outs.iter().map(|o| o.row()).collect();
            if let (
                Some(k2),
                Some(RolloutInput::Uplink {
                    dev,
                    port,
                    fcnt,
                    data,
                    ..
                }),
            ) = (uplink_wave, input)
            {
                if k2 == k {
                    let fcnt = fcnt.map_or(String::from("?"), |f| f.to_string());
                    step.log.push((
                        eui_string(*dev),
                        at as i64,
                        format!(
                            "uplink FCnt {fcnt} on port {port} ({}): {}",
                            port_name(*port),
                            hex::encode(data)
                        ),
                    ));
                }
            }
            for o in &outs {
                log_output(&mut step, o, at);
            }
            for (_, dev, old, new) in st.changed.iter().filter(|(wk, ..)| *wk == k) {
                let eui = eui_string(*dev);
                if old.phase != new.phase {
                    step.log
                        .push((eui.clone(), at as i64, phase_text(&new.phase)));
                }
                step.devices.push(DeviceRow {
                    dev_eui: eui,
                    phase: phase_label(&new.phase).into(),
                    reason: match &new.phase {
                        Phase::Failed(f) => Some(f.to_string()),
                        Phase::Setup(q) => Some(format!("waiting for the answer to {q}")),
                        _ => None,
                    },
                    progress: serde_json::to_string(new).unwrap_or_default(),
                    changed_gps: at as i64,
                    updated_gps: new.updated_at.map(|t| t as i64),
                });
            }
            let (updated, failed) = run.tally(k);
            let state = match status {
                WaveStatus::Running => "running",
                WaveStatus::Cancelled => "cancelled",
                _ => "finished",
            };
            let counters = r
                .campaign(k)
                .map(|e| serde_json::to_string(&e.counters()).unwrap_or_default())
                .unwrap_or_else(|| "{}".into());
            step.campaign = Some((
                state.into(),
                counters,
                updated,
                failed,
                (status != WaveStatus::Running).then_some(at as i64),
            ));
            step.mc_fcnt = outs
                .iter()
                .filter_map(|o| match &o.output {
                    Output::Multicast(f) => Some((i64::from(f.mc_addr), i64::from(f.fcnt) + 1)),
                    Output::Unicast { .. } => None,
                })
                .max_by_key(|(_, next)| *next);
            if status == WaveStatus::Cancelled {
                w.wave_states.push((
                    k,
                    "cancelled".into(),
                    Some(format!("the rollout was cancelled by {}", actor.name())),
                    Some(at as i64),
                ));
            }
            w.wave_steps.push((k, step));
        }
        w.device_waves = st
            .moved
            .iter()
            .map(|(d, k)| (eui_string(*d), *k as i64))
            .collect();
        let (state, reason) = state_label(r.state());
        w.state = Some((
            state.into(),
            reason.clone(),
            waves_json(&waves),
            run.is_over().then_some(at as i64),
        ));
        let now_ms = now_unix_ms();
        for (k, _, after) in &st.wave_changes {
            let action = match after {
                WaveStatus::Pending => continue,
                WaveStatus::Running => "wave.started",
                WaveStatus::Passed => "wave.passed",
                WaveStatus::Missed => "wave.missed",
                WaveStatus::Cancelled => "wave.cancelled",
            };
            let s = &waves[*k];
            w.audit.push(actor.entry(
                now_ms,
                action,
                &subject(),
                json!({
                    "wave": k + 1, "name": s.name, "devices": s.devices,
                    "updated": s.updated, "failed": s.failed, "reverted": s.reverted,
                }),
            ));
        }
        // An operator's action row says the state it led to; the service's own changes get
        // a row of their own.
        if let (Some(_), Actor::System) = (&st.state_was, actor) {
            w.audit.push(actor.entry(
                now_ms,
                &format!("rollout.{state}"),
                &subject(),
                json!({ "state": state, "reason": reason }),
            ));
        }
        w
    }

    /// Publishes a step's outputs, each wave's through its own group (a refused frame's
    /// wave through the gateways that refused it).
    async fn publish_rollout(
        &mut self,
        run: &RolloutRun,
        outs: &[(usize, Numbered)],
        route: Option<(usize, Vec<String>)>,
    ) {
        let app = run.cfg.template.application_id.clone();
        let tx = run.cfg.template.tx_params();
        let by_wave: BTreeSet<usize> = outs.iter().map(|(k, _)| *k).collect();
        for k in by_wave {
            let (Some(&cid), Some(engine)) = (run.wave_ids.get(&k), run.rollout.campaign(k)) else {
                tracing::error!("rollout {}: wave {} has no campaign", run.id, k + 1);
                continue;
            };
            let keys = engine.multicast_keys();
            let mine: Vec<Numbered> = outs
                .iter()
                .filter(|(wk, _)| *wk == k)
                .map(|(_, o)| o.clone())
                .collect();
            let r = route
                .as_ref()
                .filter(|(rk, _)| *rk == k)
                .map(|(_, g)| g.clone());
            self.publish_to(cid, &app, &tx, &keys, &mine, r).await;
        }
    }
}
