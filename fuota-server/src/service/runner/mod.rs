//! The runner: one task that owns every running campaign and rollout. A select loop over
//! MQTT messages, API commands, the earliest engine or rollout timeout and shutdown
//! (mini-redis style); each step is written to the database before its outputs are
//! published. Rollouts have their own module ([`rollouts`]).

mod rollouts;

use std::collections::{BTreeMap, HashMap};

use rand_core::{OsRng, RngCore};
use rumqttc::{AsyncClient, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use super::audit::Actor;
use super::auth::Principal;
use super::campaign::{
    self, counters_json, device_specs, phase_label, phase_text, tally, CampaignRequest, Derivation,
    Input, Numbered, Running, StoredConfig,
};
use super::chirpstack::{self, eui_string, parse_eui, Topic, TxAck, TxParams, Uplink};
use super::clock::{now_unix_ms, unix_ms_of_gps, Clock};
use super::config::Config;
use super::frames::multicast_phy_payload;
use super::keystore::{self, KeySource, KeyStore};
use super::mqtt::Message;
use super::rollout::{RolloutInput, RolloutRequest, RolloutRun, ROLLOUT_GROUPS};
use super::store::{DeviceRow, NewCampaign, StepWrite, Store};
use crate::engine::{DevEui, DeviceSpec, GpsMillis, Output, Phase, RootKey};
use fuota_codec::keys::Key128;

/// An API error: HTTP status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Cancel,
    /// A new wave of the devices that failed or reverted.
    Retry,
}

impl RolloutAction {
    pub fn name(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Cancel => "cancel",
            RolloutAction::Retry => "retry",
        }
    }
}

/// What the API asks of the runner, with who asks.
#[derive(Debug)]
pub enum Command {
    Create {
        req: Box<CampaignRequest>,
        by: Principal,
        reply: oneshot::Sender<Result<i64, Refusal>>,
    },
    Cancel {
        id: i64,
        by: Principal,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// A new server key (random if `None`): every sealed value sealed again under it.
    RotateKey {
        key: Option<[u8; 32]>,
        by: Principal,
        reply: oneshot::Sender<Result<serde_json::Value, Refusal>>,
    },
    CreateRollout {
        req: Box<RolloutRequest>,
        by: Principal,
        reply: oneshot::Sender<Result<i64, Refusal>>,
    },
    Rollout {
        id: i64,
        action: RolloutAction,
        by: Principal,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// Who runs a device now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Campaign(i64),
    Rollout(i64),
}

/// A multicast output waiting for its gateways' answers.
#[derive(Debug, Default)]
struct AckWait {
    pending: usize,
    /// Some gateway sent it.
    sent: bool,
    /// Gateways that refused it: the frame goes again through these.
    refused: Vec<String>,
}

/// A FUOTA port (TS003, TS004, TS005, TS006): what the engine is fed.
fn is_fuota_port(p: u8) -> bool {
    (200..=203).contains(&p)
}

fn port_name(p: u8) -> &'static str {
    match p {
        200 => "multicast setup",
        201 => "fragmentation",
        202 => "clock sync",
        203 => "firmware management",
        _ => "other",
    }
}

/// An uplink's receive time further than this from the server's clock is not believed (a
/// gateway without GPS, a wrong clock).
const RX_TIME_TOLERANCE_MS: u64 = 10 * 60_000;

pub struct Runner {
    cfg: Config,
    store: Store,
    keys: KeyStore,
    key_source: KeySource,
    clock: Clock,
    mqtt: AsyncClient,
    campaigns: BTreeMap<i64, Running>,
    /// Rollouts not over (running, paused or halted).
    rollouts: BTreeMap<i64, RolloutRun>,
    /// The rollout and wave of each wave's campaign id.
    wave_campaigns: HashMap<i64, (i64, usize)>,
    /// The campaign or rollout of each device.
    by_device: HashMap<DevEui, Owner>,
    /// Gateways and whether they are online.
    gateways: BTreeMap<String, bool>,
    /// Multicast transmissions waiting for their DownlinkTxAck.
    transmissions: HashMap<u32, (i64, i64, String)>,
    acks: HashMap<(i64, i64), AckWait>,
    /// The lowest multicast FCnt each running campaign may still publish: one above the
    /// highest recorded (a check against the engine, not the engine's own counter).
    fcnt_floor: HashMap<i64, u32>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("campaigns", &self.campaigns.len())
            .field("gateways", &self.gateways)
            .finish()
    }
}

impl Runner {
    pub fn new(cfg: Config, store: Store, keys: KeyStore, clock: Clock, mqtt: AsyncClient) -> Self {
        let gateways = cfg
            .chirpstack
            .gateways
            .iter()
            .map(|g| (g.clone(), true))
            .collect();
        Self {
            cfg,
            store,
            keys,
            key_source: KeySource::Config,
            clock,
            mqtt,
            campaigns: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            wave_campaigns: HashMap::new(),
            by_device: HashMap::new(),
            gateways,
            transmissions: HashMap::new(),
            acks: HashMap::new(),
            fcnt_floor: HashMap::new(),
        }
    }

    /// Where the server key comes from (a key file's can be rotated).
    pub fn set_key_source(&mut self, source: KeySource) {
        self.key_source = source;
    }

    /// Seals every stored secret again under a new server key (see [`keystore`]): the new
    /// key beside the key file, the values and the check in one transaction, then the file.
    async fn rotate_key(
        &mut self,
        key: Option<[u8; 32]>,
        by: &Principal,
    ) -> Result<serde_json::Value, Refusal> {
        let KeySource::File(path) = self.key_source.clone() else {
            return Err(Refusal::new(
                409,
                "the server key is set in the configuration (keys.server_key or \
                 FUOTA_SERVER_KEY): change it there, or use a key file to rotate it here",
            ));
        };
        let db = |e: sqlx::Error| Refusal::new(500, format!("database: {e}"));
        let bytes = key.unwrap_or_else(|| {
            let mut k = [0u8; 32];
            OsRng.fill_bytes(&mut k);
            k
        });
        let new = KeyStore::new(&bytes);
        let mut values = Vec::new();
        let mut skipped = 0;
        for r in self.store.sealed_rows().await.map_err(db)? {
            use super::store::SealedAt;
            let aad = match &r.at {
                SealedAt::Device { dev_eui, .. } | SealedAt::RolloutDevice { dev_eui, .. } => {
                    dev_eui.as_bytes().to_vec()
                }
                SealedAt::Campaign { .. } => {
                    let cfg: Option<StoredConfig> = serde_json::from_str(&r.config).ok();
                    mc_key_aad(cfg.map_or(0, |c| c.mc_addr), r.created_gps)
                }
                SealedAt::Rollout { .. } => {
                    let cfg: Option<super::rollout::StoredRollout> =
                        serde_json::from_str(&r.config).ok();
                    mc_key_aad(cfg.map_or(0, |c| c.template.mc_addr), r.created_gps)
                }
            };
            match self.keys.open(&r.sealed, &aad) {
                Ok(plain) => values.push((r.at, new.seal(&plain, &aad))),
                // Sealed under some other key already: of no use to anyone, left as it is.
                Err(_) => skipped += 1,
            }
        }
        let details = serde_json::json!({ "resealed": values.len(), "skipped": skipped });
        let audit = Actor::Caller(by.clone()).entry(
            now_unix_ms(),
            "key.rotate",
            "keys/server",
            details.clone(),
        );
        keystore::write_next(&path, &bytes).map_err(|e| Refusal::new(500, e.0))?;
        if let Err(e) = self.store.reseal(&values, &new.check_value(), &audit).await {
            let _ = std::fs::remove_file(keystore::next_path(&path));
            return Err(db(e));
        }
        self.keys = new;
        if let Err(e) = keystore::commit_next(&path) {
            // The database is sealed under the new key: the next start finishes the rename.
            tracing::error!("server key rotated, but {e}: the next start completes it");
        }
        tracing::info!("server key rotated: {details}");
        Ok(details)
    }

    /// Rebuilds every running campaign and every rollout not over from its log.
    pub async fn resume(&mut self) -> Result<(), String> {
        for (g, online) in self.store.gateways().await.map_err(|e| e.to_string())? {
            self.gateways.entry(g).or_insert(online);
        }
        let rows = self.store.campaigns().await.map_err(|e| e.to_string())?;
        // A wave's campaign is rebuilt with its rollout.
        for c in rows
            .into_iter()
            .filter(|c| c.state == "running" && c.rollout_id.is_none())
        {
            match self.load(c.id).await {
                Ok((inputs, outputs, mismatches)) => tracing::info!(
                    "campaign {}: resumed from {inputs} inputs, {outputs} outputs already sent{}",
                    c.id,
                    if mismatches > 0 {
                        format!(" ({mismatches} outputs differ from the log: the engine changed)")
                    } else {
                        String::new()
                    }
                ),
                Err(e) => {
                    tracing::error!("campaign {}: cannot resume: {e}", c.id);
                    let audit = Actor::System.entry(
                        now_unix_ms(),
                        "campaign.failed",
                        &format!("campaign/{}", c.id),
                        serde_json::json!({ "reason": e }),
                    );
                    let _ = self
                        .store
                        .set_campaign_state(
                            c.id,
                            "failed",
                            Some(&e),
                            Some(self.clock.now() as i64),
                            &audit,
                        )
                        .await;
                }
            }
        }
        self.resume_rollouts().await
    }

    async fn load(&mut self, id: i64) -> Result<(usize, usize, usize), String> {
        let s = &self.store;
        let c = s
            .campaign(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such campaign")?;
        let cfg: StoredConfig = serde_json::from_str(&c.config).map_err(|e| e.to_string())?;
        let (_, data) = s
            .firmware(c.firmware_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("its firmware is gone")?;
        let mc_key = self
            .keys
            .open(&c.mc_key, &mc_key_aad(cfg.mc_addr, c.created_gps))
            .map_err(|e| e.to_string())?;
        let mc_key = Key128::from_bytes(mc_key.try_into().map_err(|_| "McKey length")?);
        let mut specs = Vec::new();
        for (eui, kind, sealed) in s.device_keys(id).await.map_err(|e| e.to_string())? {
            let dev_eui = parse_eui(&eui).ok_or("a stored DevEUI")?;
            let k = self
                .keys
                .open(&sealed, eui.as_bytes())
                .map_err(|e| e.to_string())?;
            let k = Key128::from_bytes(k.try_into().map_err(|_| "root key length")?);
            let root_key = if kind == "app_key" {
                RootKey::AppKey(k)
            } else {
                RootKey::GenAppKey(k)
            };
            specs.push(DeviceSpec { dev_eui, root_key });
        }
        let inputs = s.inputs(id).await.map_err(|e| e.to_string())?;
        let outputs = s.outputs(id).await.map_err(|e| e.to_string())?;
        let group_next = s
            .mc_next_fcnt(i64::from(cfg.mc_addr))
            .await
            .map_err(|e| e.to_string())?;
        let (run, mismatches) = Running::replay(
            id,
            cfg,
            data,
            mc_key,
            specs,
            c.created_gps as u64,
            &inputs,
            &outputs,
        )
        .map_err(|e| e.to_string())?;
        let floor = outputs
            .iter()
            .filter_map(|o| o.fcnt)
            .map(|f| f + 1)
            .chain([group_next])
            .max()
            .unwrap_or(0);
        self.fcnt_floor
            .insert(id, u32::try_from(floor).unwrap_or(u32::MAX));
        for (dev, _) in run.engine.devices() {
            self.by_device.insert(dev, Owner::Campaign(id));
        }
        let n = (inputs.len(), outputs.len(), mismatches);
        self.campaigns.insert(id, run);
        Ok(n)
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        mut self,
        mut messages: mpsc::Receiver<Message>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let next = self
                .campaigns
                .values_mut()
                .filter_map(|r| r.engine.poll_timeout())
                .chain(
                    self.rollouts
                        .values_mut()
                        .filter_map(|r| r.rollout.poll_timeout()),
                )
                .min();
            let sleep = match next {
                Some(t) => self.clock.until(t),
                None => std::time::Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                m = messages.recv() => match m {
                    Some(m) => self.on_message(m).await,
                    None => break,
                },
                c = commands.recv() => match c {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tokio::time::sleep(sleep) => self.on_timeouts().await,
            }
        }
        tracing::info!("runner stopped");
    }

    async fn on_timeouts(&mut self) {
        let now = self.clock.now();
        let due: Vec<i64> = self
            .campaigns
            .iter_mut()
            .filter_map(|(id, r)| {
                r.engine
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                    .then_some(*id)
            })
            .collect();
        for id in due {
            self.step(id, Input::Timeout { at: now }).await;
        }
        let due: Vec<i64> = self
            .rollouts
            .iter_mut()
            .filter_map(|(id, r)| {
                r.rollout
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                    .then_some(*id)
            })
            .collect();
        for id in due {
            let _ = self
                .step_rollout(id, RolloutInput::Timeout { at: now }, &Actor::System, None)
                .await;
        }
    }

    async fn on_message(&mut self, m: Message) {
        let prefix = self.cfg.chirpstack.region_prefix.clone();
        match Topic::parse(&m.topic, &prefix) {
            Some(Topic::Uplink { app, dev_eui }) => {
                if !self.cfg.chirpstack.applications.iter().any(|a| a == app) {
                    tracing::debug!("{}: not one of our applications", m.topic);
                    return;
                }
                let topic_eui = parse_eui(dev_eui);
                match Uplink::parse(&m.payload) {
                    Ok(u) if topic_eui != Some(u.dev_eui) => tracing::warn!(
                        "{}: event for DevEUI {} on another device's topic, ignored",
                        m.topic,
                        eui_string(u.dev_eui)
                    ),
                    Ok(u) => self.on_uplink(&m.topic, u).await,
                    Err(e) => tracing::warn!("{}: malformed uplink event ignored: {e}", m.topic),
                }
            }
            Some(Topic::TxAck { gateway }) => match TxAck::parse(&m.payload) {
                Ok(a) => self.on_tx_ack(gateway, a).await,
                Err(e) => tracing::warn!("{}: malformed tx ack ignored: {e}", m.topic),
            },
            Some(Topic::ConnState { gateway }) => match chirpstack::parse_conn_state(&m.payload) {
                Ok(online) => {
                    if valid_gateway_id(gateway) {
                        tracing::info!(
                            "gateway {gateway} {}",
                            if online { "online" } else { "offline" }
                        );
                        self.learn_gateway(gateway, online).await;
                    }
                }
                Err(e) => tracing::warn!("{}: malformed conn state ignored: {e}", m.topic),
            },
            None => tracing::debug!("{}: unexpected topic ignored", m.topic),
        }
    }

    async fn on_uplink(&mut self, topic: &str, u: Uplink) {
        for g in &u.gateways {
            if valid_gateway_id(g) && !self.gateways.contains_key(g) {
                tracing::info!("gateway {g} learned from an uplink");
                self.learn_gateway(g, true).await;
            }
        }
        let Some(port) = u.port.filter(|p| is_fuota_port(*p)) else {
            tracing::debug!("{topic}: port {:?} is not a FUOTA port, ignored", u.port);
            return;
        };
        let owner = match self.by_device.get(&u.dev_eui) {
            Some(&Owner::Campaign(id)) => match self.campaigns.get(&id) {
                Some(run) if run.is_duplicate(u.dev_eui, u.fcnt) => {
                    tracing::info!("{topic}: duplicate uplink (FCnt {:?}) ignored", u.fcnt);
                    return;
                }
                Some(_) => Owner::Campaign(id),
                None => return,
            },
            Some(&Owner::Rollout(id)) => match self.rollouts.get(&id) {
                // Neither a redelivery nor an uplink of a device whose wave does not run
                // changes anything: not logged.
                Some(run) if run.wants_uplink(u.dev_eui, u.fcnt) => Owner::Rollout(id),
                _ => {
                    tracing::debug!("{topic}: not for the rollout's running wave, ignored");
                    return;
                }
            },
            None => {
                tracing::debug!("{topic}: device in no running campaign or rollout");
                return;
            }
        };
        let now = self.clock.now();
        let at = match u.rx_gps_ms.map(|g| self.clock.campaign_of_gps(g)) {
            Some(t) if t.abs_diff(now) <= RX_TIME_TOLERANCE_MS => t,
            Some(t) => {
                tracing::warn!(
                    "{topic}: receive time {} ms from the server's clock; the server's is used",
                    t as i64 - now as i64
                );
                now
            }
            None => now,
        };
        match owner {
            Owner::Campaign(id) => {
                self.step(
                    id,
                    Input::Uplink {
                        at,
                        dev: u.dev_eui,
                        port,
                        fcnt: u.fcnt,
                        data: u.data,
                    },
                )
                .await
            }
            Owner::Rollout(id) => {
                let input = RolloutInput::Uplink {
                    at,
                    dev: u.dev_eui,
                    port,
                    fcnt: u.fcnt,
                    data: u.data,
                };
                let _ = self.step_rollout(id, input, &Actor::System, None).await;
            }
        }
    }

    async fn learn_gateway(&mut self, g: &str, online: bool) {
        if self.gateways.get(g) != Some(&online) {
            self.gateways.insert(g.to_string(), online);
            if let Err(e) = self.store.save_gateway(g, online, now_unix_ms()).await {
                tracing::error!("database: {e}");
            }
        }
    }

    async fn on_tx_ack(&mut self, gateway: &str, a: TxAck) {
        let status = if a.sent() { "OK" } else { a.reason() };
        let Some((id, seq, gw)) = self.transmissions.remove(&a.downlink_id) else {
            // From before a restart (counted as sent then), or not ours.
            if let Ok(Some(_)) = self.store.ack_transmission(a.downlink_id, status).await {
                tracing::debug!("gateway {gateway}: late ack {}", a.downlink_id);
            }
            return;
        };
        if let Err(e) = self.store.ack_transmission(a.downlink_id, status).await {
            tracing::error!("database: {e}");
        }
        let Some(w) = self.acks.get_mut(&(id, seq)) else {
            return;
        };
        w.pending = w.pending.saturating_sub(1);
        w.sent |= a.sent();
        if !a.sent() {
            w.refused.push(gw);
            tracing::info!("gateway {gateway} refused frame {seq} of campaign {id}: {status}");
        }
        if w.pending > 0 {
            return;
        }
        let Some(w) = self.acks.remove(&(id, seq)) else {
            return;
        };
        for (sent, counted) in [(true, w.sent), (false, !w.refused.is_empty())] {
            if counted {
                if let Err(e) = self.store.count_frame(id, sent).await {
                    tracing::error!("database: {e}");
                }
            }
        }
        // Devices in reach of a gateway that refused did not hear it: again, through those.
        if w.refused.is_empty() {
            return;
        }
        let at = self.clock.now();
        if self.campaigns.contains_key(&id) {
            self.step_routed(id, Input::Refused { at, seq }, Some(w.refused))
                .await;
        } else if let Some(&(rollout, wave)) = self.wave_campaigns.get(&id) {
            let input = RolloutInput::Refused { at, wave, seq };
            let _ = self
                .step_rollout(rollout, input, &Actor::System, Some(w.refused))
                .await;
        }
    }

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Create { req, by, reply } => {
                let r = self.create(&req, &by).await;
                let _ = reply.send(r);
            }
            Command::Cancel { id, by, reply } => {
                let r = self.cancel(id, &by).await;
                let _ = reply.send(r);
            }
            Command::RotateKey { key, by, reply } => {
                let r = self.rotate_key(key, &by).await;
                let _ = reply.send(r);
            }
            Command::CreateRollout { req, by, reply } => {
                let r = self.create_rollout(&req, &by).await;
                let _ = reply.send(r);
            }
            Command::Rollout {
                id,
                action,
                by,
                reply,
            } => {
                let r = self.rollout_action(id, action, &by).await;
                let _ = reply.send(r);
            }
        }
    }

    async fn cancel(&mut self, id: i64, by: &Principal) -> Result<(), Refusal> {
        let db = |e: sqlx::Error| Refusal::new(500, format!("database: {e}"));
        let Some(c) = self.store.campaign(id).await.map_err(db)? else {
            return Err(Refusal::new(404, format!("no campaign {id}")));
        };
        if let (Some(r), Some(w)) = (c.rollout_id, c.wave) {
            return Err(Refusal::new(
                409,
                format!(
                    "campaign {id} is wave {} of rollout {r}: pause or cancel the rollout",
                    w + 1
                ),
            ));
        }
        if c.state != "running" {
            return Err(Refusal::new(409, format!("campaign {id} is {}", c.state)));
        }
        let now = self.clock.now();
        let reason = format!("cancelled by {}", by.name);
        let audit = Actor::Caller(by.clone()).entry(
            now_unix_ms(),
            "campaign.cancel",
            &format!("campaign/{id}"),
            serde_json::json!({ "state": "cancelled" }),
        );
        self.store
            .set_campaign_state(id, "cancelled", Some(&reason), Some(now as i64), &audit)
            .await
            .map_err(db)?;
        if let Some(run) = self.campaigns.remove(&id) {
            for (dev, _) in run.engine.devices() {
                self.by_device.remove(&dev);
            }
        }
        tracing::info!("campaign {id} cancelled");
        Ok(())
    }

    /// Whether McAddr `a` is free: no running campaign has it, no rollout holds it.
    fn mc_addr_free(&self, a: u32) -> bool {
        !self.campaigns.values().any(|r| r.cfg.mc_addr == a)
            && !self.rollouts.values().any(|r| {
                let base = r.cfg.template.mc_addr;
                (base..base.saturating_add(ROLLOUT_GROUPS)).contains(&a)
            })
    }

    fn free_mc_addr(&self) -> u32 {
        let base = self.cfg.campaign.mc_addr_base;
        (0..u32::MAX - base)
            .map(|i| base + i)
            .find(|a| self.mc_addr_free(*a))
            .unwrap_or(base)
    }

    /// The device's owner, as a refusal (409) if it has one.
    fn device_taken(&self, dev: DevEui) -> Result<(), Refusal> {
        let eui = eui_string(dev);
        match self.by_device.get(&dev) {
            None => Ok(()),
            Some(Owner::Campaign(id)) => Err(Refusal::new(
                409,
                format!("device {eui} is in campaign {id}, which is still running"),
            )),
            Some(Owner::Rollout(id)) => {
                let state = self
                    .rollouts
                    .get(id)
                    .map_or("running", |r| super::rollout::state_label(r.state()).0);
                Err(Refusal::new(
                    409,
                    format!(
                        "device {eui} is in rollout {id}, which is {state} (cancel it to free \
                         its devices)"
                    ),
                ))
            }
        }
    }

    /// The ChirpStack application of a request: the one asked for, if the server listens to
    /// it, else the server's first.
    fn application(&self, asked: &Option<String>) -> Result<String, Refusal> {
        let apps = &self.cfg.chirpstack.applications;
        match (asked, apps.first()) {
            (Some(a), _) if apps.contains(a) => Ok(a.clone()),
            (Some(a), _) => Err(Refusal::new(
                422,
                format!("application {a} is not one the server listens to"),
            )),
            (None, Some(a)) => Ok(a.clone()),
            (None, None) => Err(Refusal::new(
                422,
                "the server has no ChirpStack application",
            )),
        }
    }

    /// The server-side choices of a new campaign or rollout.
    fn derivation(&self, now: GpsMillis, mc_addr: u32, first_fcnt: i64, app: String) -> Derivation {
        let d = &self.cfg.campaign;
        Derivation {
            now,
            setup_s: d.setup_s,
            retry_s: d.retry_s,
            max_attempts: d.max_attempts,
            reboot_wait_s: d.reboot_wait_s,
            status_wait_s: d.status_wait_s,
            block_ack_delay: d.block_ack_delay,
            multicast_lead_ms: d.multicast_lead_ms,
            unicast_repair_max_devices: d.unicast_repair_max_devices,
            mc_addr,
            first_mc_fcnt: u32::try_from(first_fcnt).unwrap_or(u32::MAX),
            tx_power_dbm: self.cfg.chirpstack.gateway_power_dbm,
            application_id: app,
            clock: self.clock,
        }
    }

    async fn create(&mut self, req: &CampaignRequest, by: &Principal) -> Result<i64, Refusal> {
        let db = |e: sqlx::Error| Refusal::new(500, format!("database: {e}"));
        let specs = device_specs(req).map_err(|e| Refusal::new(422, e.0))?;
        for s in &specs {
            self.device_taken(s.dev_eui)?;
        }
        let Some((fw, data)) = self.store.firmware(req.firmware_id).await.map_err(db)? else {
            return Err(Refusal::new(
                404,
                format!("no firmware {}", req.firmware_id),
            ));
        };
        let app = self.application(&req.application_id)?;
        let mc_addr = self.free_mc_addr();
        let first_fcnt = self
            .store
            .mc_next_fcnt(i64::from(mc_addr))
            .await
            .map_err(db)?;
        let now = self.clock.now();
        let der = self.derivation(now, mc_addr, first_fcnt, app);
        let target = fw.target_fw_version.and_then(|v| u32::try_from(v).ok());
        let (cfg, plan) =
            campaign::derive(req, data.len(), target, &der).map_err(|e| Refusal::new(422, e.0))?;
        let mut mc_key = [0u8; 16];
        OsRng.fill_bytes(&mut mc_key);
        let (mut run, first) = Running::start(
            0,
            cfg.clone(),
            data,
            Key128::from_bytes(mc_key),
            specs.clone(),
            now,
        )
        .map_err(|e| Refusal::new(422, e.0))?;
        let devices = specs
            .iter()
            .map(|s| {
                let eui = eui_string(s.dev_eui);
                let (kind, key) = match &s.root_key {
                    RootKey::GenAppKey(k) => ("gen_app_key", k),
                    RootKey::AppKey(k) => ("app_key", k),
                };
                let sealed = self.keys.seal(key.as_bytes(), eui.as_bytes());
                let p = run.engine.device(s.dev_eui).cloned();
                let progress = serde_json::to_string(&p).unwrap_or_default();
                let phase = p.map_or("setup", |p| phase_label(&p.phase)).to_string();
                (eui, kind.to_string(), sealed, progress, phase)
            })
            .collect();
        // The stored request holds no keys.
        let mut redacted = req.clone();
        redacted.devices.iter_mut().for_each(|d| {
            d.gen_app_key = None;
            d.app_key = None;
        });
        let mut new = NewCampaign {
            name: req.name.clone(),
            firmware_id: fw.id,
            request: serde_json::to_string(&redacted).unwrap_or_default(),
            config: serde_json::to_string(&cfg).unwrap_or_default(),
            mc_key: Vec::new(),
            created_gps: now as i64,
            created_unix_ms: now_unix_ms(),
            counters: counters_json(&run),
            devices,
            rollout: None,
        };
        let mut first_write = self.first_write(&run, &first, now);
        first_write.log.push((
            String::new(),
            now as i64,
            format!(
                "plan: {} fragments of {} B + {} coded, DR{} at {} Hz, spacing {} ms",
                plan.nb_frag, plan.frag_size, cfg.redundancy, cfg.dr, cfg.freq_hz, cfg.spacing_ms
            ),
        ));
        first_write.log.retain(|(eui, _, _)| !eui.is_empty());
        first_write.audit.push(Actor::Caller(by.clone()).entry(
            now_unix_ms(),
            "campaign.create",
            &format!("campaign/{}", super::store::NEW_ID),
            serde_json::json!({
                "name": req.name,
                "firmware_id": fw.id,
                "devices": specs.len(),
                "state": "running",
            }),
        ));
        new.mc_key = self
            .keys
            .seal(&mc_key, &mc_key_aad(cfg.mc_addr, now as i64));
        let id = self
            .store
            .insert_campaign(&new, &first_write)
            .await
            .map_err(db)?;
        run.id = id;
        for s in &specs {
            self.by_device.insert(s.dev_eui, Owner::Campaign(id));
        }
        self.fcnt_floor.insert(id, der.first_mc_fcnt);
        self.campaigns.insert(id, run);
        tracing::info!(
            "campaign {id} ({}) created: {} devices, session at {}",
            req.name,
            specs.len(),
            super::clock::rfc3339_of_unix_ms(unix_ms_of_gps(
                self.clock.gps_of_campaign(cfg.session_start)
            ))
        );
        self.publish(id, &first, None).await;
        Ok(id)
    }

    fn first_write(&self, run: &Running, outs: &[Numbered], now: GpsMillis) -> StepWrite {
        let mut w = StepWrite {
            outputs: outs.iter().map(Numbered::row).collect(),
            ..StepWrite::default()
        };
        for o in outs {
            log_output(&mut w, o, now);
        }
        w.mc_fcnt = mc_fcnt_update(run, outs);
        w
    }

    async fn step(&mut self, id: i64, input: Input) {
        self.step_routed(id, input, None).await;
    }

    /// Logs the input, feeds it, logs the outputs, commits, then publishes (multicast to
    /// `route`, or to every gateway).
    async fn step_routed(&mut self, id: i64, input: Input, route: Option<Vec<String>>) {
        let Some(run) = self.campaigns.get_mut(&id) else {
            return;
        };
        let seq = run.next_input;
        let at = input.at();
        let stepped = run.feed(&input);
        let mut w = StepWrite {
            campaign_id: id,
            input: Some(input.row(seq)),
            outputs: stepped.outputs.iter().map(Numbered::row).collect(),
            ..StepWrite::default()
        };
        if let Input::Uplink {
            dev,
            port,
            data,
            fcnt,
            ..
        } = &input
        {
            let fcnt = fcnt.map_or(String::from("?"), |f| f.to_string());
            w.log.push((
                eui_string(*dev),
                at as i64,
                format!(
                    "uplink FCnt {fcnt} on port {port} ({}): {}",
                    port_name(*port),
                    hex::encode(data)
                ),
            ));
        }
        for o in &stepped.outputs {
            log_output(&mut w, o, at);
        }
        for (dev, old, new) in &stepped.changed {
            let eui = eui_string(*dev);
            if old.phase != new.phase {
                w.log.push((eui.clone(), at as i64, phase_text(&new.phase)));
            }
            w.devices.push(DeviceRow {
                dev_eui: eui,
                phase: phase_label(&new.phase).into(),
                reason: match &new.phase {
                    Phase::Failed(f) => Some(f.to_string()),
                    Phase::Setup(r) => Some(format!("waiting for the answer to {r}")),
                    _ => None,
                },
                progress: serde_json::to_string(new).unwrap_or_default(),
                changed_gps: at as i64,
                updated_gps: new.updated_at.map(|t| t as i64),
            });
        }
        let finished = run.engine.is_finished();
        let (updated, failed) = tally(run);
        if finished {
            w.audit.push(Actor::System.entry(
                now_unix_ms(),
                "campaign.finished",
                &format!("campaign/{id}"),
                serde_json::json!({ "updated": updated, "failed": failed }),
            ));
        }
        w.campaign = Some((
            if finished { "finished" } else { "running" }.into(),
            counters_json(run),
            updated,
            failed,
            finished.then_some(at as i64),
        ));
        w.mc_fcnt = mc_fcnt_update(run, &stepped.outputs);
        if let Err(e) = self.store.write_step(&w).await {
            // The engine has moved on without its log: rebuild it from what was committed.
            tracing::error!("campaign {id}: step not stored ({e}); rebuilding from the log");
            self.campaigns.remove(&id);
            if let Err(e) = self.load(id).await {
                tracing::error!("campaign {id}: cannot rebuild: {e}");
            }
            return;
        }
        self.publish(id, &stepped.outputs, route).await;
        if finished {
            tracing::info!("campaign {id} finished: {updated} updated, {failed} failed");
            if let Some(run) = self.campaigns.remove(&id) {
                for (dev, _) in run.engine.devices() {
                    self.by_device.remove(&dev);
                }
            }
        }
    }

    fn multicast_gateways(&self) -> Vec<String> {
        if !self.cfg.chirpstack.gateways.is_empty() {
            return self.cfg.chirpstack.gateways.clone();
        }
        self.gateways
            .iter()
            .filter(|(_, online)| **online)
            .map(|(g, _)| g.clone())
            .collect()
    }

    async fn publish(&mut self, id: i64, outs: &[Numbered], route: Option<Vec<String>>) {
        let Some(run) = self.campaigns.get(&id) else {
            return;
        };
        let app = run.cfg.application_id.clone();
        let tx = run.cfg.tx_params();
        let keys = run.mc_keys.clone();
        self.publish_to(id, &app, &tx, &keys, outs, route).await;
    }

    /// Publishes campaign `id`'s outputs (a campaign's, or a wave's): unicast through
    /// ChirpStack, multicast as Gateway Bridge frames to `route`, or to every gateway.
    async fn publish_to(
        &mut self,
        id: i64,
        app: &str,
        tx: &TxParams,
        (app_s_key, nwk_s_key): &(Key128, Key128),
        outs: &[Numbered],
        route: Option<Vec<String>>,
    ) {
        let prefix = self.cfg.chirpstack.region_prefix.clone();
        let gateways = route.unwrap_or_else(|| self.multicast_gateways());
        for o in outs {
            match &o.output {
                Output::Unicast { dev, port, payload } => {
                    let topic = chirpstack::downlink_topic(app, *dev);
                    let body = chirpstack::downlink_command(*dev, *port, payload);
                    if let Err(e) = self.mqtt.try_publish(topic, QoS::AtLeastOnce, false, body) {
                        tracing::error!("campaign {id}: downlink to {dev:016x} not queued: {e}");
                    }
                }
                Output::Multicast(f) => {
                    let floor = self.fcnt_floor.get(&id).copied().unwrap_or(0);
                    if f.fcnt < floor {
                        // Never: the engine hands out increasing FCnts. If it did not, the
                        // frame would reuse a counter the devices have seen.
                        tracing::error!(
                            "campaign {id}: multicast FCnt {} below {floor}, not sent",
                            f.fcnt
                        );
                        continue;
                    }
                    self.fcnt_floor.insert(id, f.fcnt.saturating_add(1));
                    let Some(phy) = multicast_phy_payload(f, app_s_key, nwk_s_key) else {
                        tracing::error!("campaign {id}: frame {} does not fit", o.seq);
                        continue;
                    };
                    if gateways.is_empty() {
                        // Not a refusal: sending it again would find no gateway either.
                        tracing::warn!(
                            "campaign {id}: no gateway known for multicast frame {}: lost",
                            o.seq
                        );
                        continue;
                    }
                    let gps = self.clock.gps_of_campaign(f.at);
                    let mut wait = AckWait::default();
                    for g in &gateways {
                        let downlink_id = loop {
                            let v = OsRng.next_u32();
                            if v != 0 && !self.transmissions.contains_key(&v) {
                                break v;
                            }
                        };
                        if let Err(e) = self
                            .store
                            .insert_transmission(downlink_id, id, o.seq, g)
                            .await
                        {
                            tracing::error!("database: {e}");
                        }
                        let body = chirpstack::downlink_frame(downlink_id, g, &phy, tx, gps);
                        let topic = chirpstack::gateway_downlink_topic(&prefix, g);
                        match self.mqtt.try_publish(topic, QoS::AtLeastOnce, false, body) {
                            Ok(()) => {
                                self.transmissions
                                    .insert(downlink_id, (id, o.seq, g.clone()));
                                wait.pending += 1;
                            }
                            Err(e) => tracing::error!(
                                "campaign {id}: frame {} to gateway {g} not queued: {e}",
                                o.seq
                            ),
                        }
                    }
                    if wait.pending > 0 {
                        self.acks.insert((id, o.seq), wait);
                    }
                }
            }
        }
        let seqs: Vec<i64> = outs.iter().map(|o| o.seq).collect();
        if let Err(e) = self.store.mark_outputs(id, &seqs, "published").await {
            tracing::error!("database: {e}");
        }
    }
}

/// What a campaign's sealed McKey is bound to.
fn mc_key_aad(mc_addr: u32, created_gps: i64) -> Vec<u8> {
    format!("mc_key:{mc_addr:08x}:{created_gps}").into_bytes()
}

fn valid_gateway_id(g: &str) -> bool {
    !g.is_empty() && g.len() <= 64 && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn log_output(w: &mut StepWrite, o: &Numbered, at: GpsMillis) {
    if let Output::Unicast { dev, port, payload } = &o.output {
        w.log.push((
            eui_string(*dev),
            at as i64,
            format!(
                "downlink on port {port} ({}): {}",
                port_name(*port),
                hex::encode(payload)
            ),
        ));
    }
}

fn mc_fcnt_update(run: &Running, outs: &[Numbered]) -> Option<(i64, i64)> {
    outs.iter()
        .filter_map(|o| match &o.output {
            Output::Multicast(f) => Some(i64::from(f.fcnt) + 1),
            Output::Unicast { .. } => None,
        })
        .max()
        .map(|next| (i64::from(run.cfg.mc_addr), next))
}

/// SHA-256 in hex, for firmware listings.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
