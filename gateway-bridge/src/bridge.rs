//! The bridge itself, without I/O: datagrams and MQTT messages in, datagrams and MQTT
//! operations out, and the time of the next thing it will do on its own.

use crate::counters::Counters;
use crate::eui::Eui64;
use crate::mqtt::{
    uplink_frames, BadPrefix, ConnState, DownlinkFrame, DownlinkTxAck, Event, GatewayStats,
    Publish, Qos, State, StatsCounts, Topics, TxAckStatus,
};
use crate::semtech::{
    Crc, FromGateway, PullAck, PullData, PullResp, PushAck, PushData, TxAck, Txpk,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the bridge behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Topics are `{topic_prefix}/gateway/{gatewayId}/…` (`gateway/…` when empty).
    pub topic_prefix: String,
    /// A gateway that has not sent PULL_DATA for this long goes OFFLINE.
    pub offline_timeout: Duration,
    /// A downlink whose TX_ACK has not come after this long is forgotten.
    pub ack_timeout: Duration,
    pub qos: Qos,
    /// Forward packets received with a bad or no CRC (ChirpStack Gateway Bridge's
    /// `skip_crc_check`).
    pub forward_crc_failed: bool,
    /// At most this many gateways at once: each one is an MQTT session, and the protocol
    /// has no authentication, so anyone who can reach the UDP port can claim new EUIs.
    pub max_gateways: usize,
}

impl Default for Config {
    /// ChirpStack Gateway Bridge's defaults: one minute to go OFFLINE, 15 s for a TX_ACK.
    fn default() -> Self {
        Self {
            topic_prefix: String::new(),
            offline_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(15),
            qos: Qos::AtMostOnce,
            forward_crc_failed: false,
            max_gateways: 10_000,
        }
    }
}

/// What the bridge asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram.
    Datagram { to: SocketAddr, bytes: Vec<u8> },
    /// Open the gateway's MQTT session.
    Open(Session),
    /// Publish on the gateway's session.
    Publish { gateway: Eui64, message: Publish },
    /// Publish `offline` on the gateway's session, then end it cleanly.
    Close { gateway: Eui64, offline: Publish },
}

/// A gateway's MQTT session: the driver connects with `will` as its last will, subscribes
/// to `commands`, and publishes `online` on every (re)connection. So the broker holds a
/// retained OFFLINE for the gateway whenever the session ends without a clean close (the
/// bridge died, the network broke), and the bridge publishes it itself when it closes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub gateway: Eui64,
    pub will: Publish,
    pub online: Publish,
    pub commands: String,
    pub qos: Qos,
}

struct Gateway {
    /// Where PULL_DATA came from: the forwarder's downstream socket, where PULL_RESP goes.
    pull_addr: Option<SocketAddr>,
    offline_at: Instant,
    counts: StatsCounts,
}

/// A downlink sent to a gateway and waiting for its TX_ACK.
struct Pending {
    downlink_id: u32,
    items: Vec<Txpk>,
    statuses: Vec<TxAckStatus>,
    /// The item sent last.
    index: usize,
    expires: Instant,
}

/// What a deadline in [`Bridge::timers`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Offline(Eui64),
    Ack(Eui64, u16),
}

/// The bridge: many gateways on one UDP side, one MQTT session per gateway on the other.
///
/// - Inputs: [`handle_datagram`](Self::handle_datagram) for every datagram received,
///   [`handle_mqtt`](Self::handle_mqtt) for every message on a session's subscription,
///   [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)'s
///   instant has come, [`handle_shutdown`](Self::handle_shutdown) to close every session.
/// - Outputs: after each input, drain [`poll_output`](Self::poll_output) in order (a
///   session's `Open` comes before anything published on it), then sleep until
///   [`poll_timeout`](Self::poll_timeout).
/// - Getters: [`counters`](Self::counters), [`gateways`](Self::gateways).
///
/// Every call takes `now`; the bridge never reads a clock.
pub struct Bridge {
    config: Config,
    topics: Topics,
    gateways: BTreeMap<Eui64, Gateway>,
    pending: BTreeMap<(Eui64, u16), Pending>,
    /// Every gateway's `offline_at` and every pending downlink's `expires`, soonest first.
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    counters: Counters,
}

impl core::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.config)
            .field("gateways", &self.gateways.len())
            .field("pending", &self.pending.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Bridge {
    pub fn new(config: Config) -> Result<Self, BadPrefix> {
        Ok(Self {
            topics: Topics::new(&config.topic_prefix)?,
            config,
            gateways: BTreeMap::new(),
            pending: BTreeMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The gateways with an open session.
    pub fn gateways(&self) -> impl Iterator<Item = Eui64> + '_ {
        self.gateways.keys().copied()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do: a gateway to take
    /// OFFLINE or a TX_ACK to stop waiting for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// A datagram from `from`. Malformed ones are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match FromGateway::parse(bytes) {
            Err(reason) => {
                self.counters.count_malformed(reason);
                tracing::debug!(%from, %reason, len = bytes.len(), "dropped malformed datagram");
            }
            Ok(FromGateway::PushData(p)) => self.on_push_data(now, from, p),
            Ok(FromGateway::PullData(p)) => self.on_pull_data(now, from, p),
            Ok(FromGateway::TxAck(a)) => self.on_tx_ack(now, a),
        }
    }

    /// A message received on `topic`.
    pub fn handle_mqtt(&mut self, now: Instant, topic: &str, payload: &[u8]) {
        let Some((gateway, command)) = self.topics.parse_command(topic) else {
            self.counters.mqtt_unknown_topics += 1;
            tracing::debug!(topic, "message on an unknown topic");
            return;
        };
        if command != "down" {
            self.counters.commands_ignored += 1;
            tracing::debug!(%gateway, command, "ignored command");
            return;
        }
        let frame = match DownlinkFrame::parse(payload, gateway) {
            Ok(f) => f,
            Err(reason) => {
                self.counters.count_bad_downlink(reason);
                tracing::debug!(%gateway, %reason, "dropped downlink frame");
                return;
            }
        };
        self.counters.downlinks += 1;
        let Some(to) = self.gateways.get(&gateway).and_then(|g| g.pull_addr) else {
            self.counters.downlinks_unroutable += 1;
            tracing::warn!(%gateway, downlink_id = frame.downlink_id, "downlink for a gateway that has not pulled");
            return;
        };
        // As ChirpStack Gateway Bridge: the token is the downlink ID's low 16 bits.
        let token = frame.downlink_id as u16;
        if self.take_pending(gateway, token).is_some() {
            self.counters.downlinks_superseded += 1;
        }
        let pending = Pending {
            downlink_id: frame.downlink_id,
            statuses: vec![TxAckStatus::Ignored; frame.items.len()],
            items: frame.items,
            index: 0,
            expires: now + self.config.ack_timeout,
        };
        self.send_item(to, token, &pending);
        self.put_pending(gateway, token, pending);
    }

    /// Takes OFFLINE the gateways that stopped pulling and forgets downlinks whose TX_ACK
    /// did not come.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.first().is_some_and(|&(at, _)| at <= now) {
            // Popped first, so the loop ends even if the tables disagreed.
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Offline(gateway) => {
                    self.counters.gateways_timed_out += 1;
                    tracing::info!(%gateway, "gateway stopped pulling: OFFLINE");
                    self.close(gateway);
                }
                Timer::Ack(gateway, token) => {
                    self.take_pending(gateway, token);
                    self.counters.tx_ack_timeouts += 1;
                    tracing::debug!(%gateway, token, "no TX_ACK");
                }
            }
        }
    }

    /// Closes every session (each publishes its OFFLINE) and forgets pending downlinks.
    pub fn handle_shutdown(&mut self) {
        let all: Vec<Eui64> = self.gateways.keys().copied().collect();
        for gateway in all {
            self.close(gateway);
        }
    }

    fn on_push_data(&mut self, now: Instant, from: SocketAddr, p: PushData) {
        let Some(gw) = self.session(now, p.gateway) else {
            return;
        };
        let counts = p.stat.as_ref().map(|_| std::mem::take(&mut gw.counts));
        self.counters.push_data += 1;
        self.outputs.push_back(Output::Datagram {
            to: from,
            bytes: PushAck { token: p.token }.build(),
        });
        if let (Some(stat), Some(counts)) = (&p.stat, counts) {
            let stats = GatewayStats::from_stat(p.gateway, stat, counts);
            self.counters.stats += 1;
            self.publish(p.gateway, Event::Stats, stats.to_json());
        }
        if !self.config.forward_crc_failed {
            self.counters.uplinks_crc_dropped +=
                p.rxpk.iter().filter(|r| r.crc != Crc::Ok).count() as u64;
        }
        for frame in uplink_frames(&p, self.config.forward_crc_failed) {
            if let Some(gw) = self.gateways.get_mut(&p.gateway) {
                StatsCounts::bump(&mut gw.counts.rx_per_frequency, frame.tx_info.frequency);
            }
            self.counters.uplinks += 1;
            self.publish(p.gateway, Event::Up, frame.to_json());
        }
    }

    fn on_pull_data(&mut self, now: Instant, from: SocketAddr, p: PullData) {
        let offline_at = now + self.config.offline_timeout;
        let Some(gw) = self.session(now, p.gateway) else {
            return;
        };
        gw.pull_addr = Some(from);
        let old = core::mem::replace(&mut gw.offline_at, offline_at);
        self.timers.remove(&(old, Timer::Offline(p.gateway)));
        self.timers.insert((offline_at, Timer::Offline(p.gateway)));
        self.counters.pull_data += 1;
        self.outputs.push_back(Output::Datagram {
            to: from,
            bytes: PullAck { token: p.token }.build(),
        });
    }

    fn on_tx_ack(&mut self, now: Instant, ack: TxAck) {
        self.counters.tx_acks += 1;
        let Some(mut pending) = self.take_pending(ack.gateway, ack.token) else {
            self.counters.tx_acks_unknown_token += 1;
            tracing::debug!(gateway = %ack.gateway, token = ack.token, "TX_ACK for no pending downlink");
            return;
        };
        let status = ack.status().unwrap_or_else(|| {
            // Not a verdict the protocol defines: the item did not go out, for a reason
            // that is the gateway's own.
            self.counters.tx_acks_unrecognized += 1;
            tracing::warn!(gateway = %ack.gateway, error = ?ack.error, "TX_ACK error outside the protocol");
            TxAckStatus::InternalError
        });
        self.counters.count_tx_ack_status(status);
        pending.statuses[pending.index] = status;
        let gw = self.gateways.get_mut(&ack.gateway);
        if let Some(gw) = gw {
            StatsCounts::bump(&mut gw.counts.tx_per_status, status.name());
            if status == TxAckStatus::Ok {
                StatsCounts::bump(
                    &mut gw.counts.tx_per_frequency,
                    pending.items[pending.index].frequency,
                );
            }
            // The next item, if this one was refused and there is one.
            if status.is_refusal() && pending.index + 1 < pending.items.len() {
                if let Some(to) = gw.pull_addr {
                    pending.index += 1;
                    pending.expires = now + self.config.ack_timeout;
                    self.send_item(to, ack.token, &pending);
                    self.put_pending(ack.gateway, ack.token, pending);
                    return;
                }
            }
        }
        let message = DownlinkTxAck::new(ack.gateway, pending.downlink_id, &pending.statuses);
        self.counters.acks_published += 1;
        self.publish(ack.gateway, Event::Ack, message.to_json());
    }

    fn send_item(&mut self, to: SocketAddr, token: u16, pending: &Pending) {
        let txpk = pending.items[pending.index].clone();
        self.counters.pull_resps += 1;
        self.outputs.push_back(Output::Datagram {
            to,
            bytes: PullResp { token, txpk }.build(),
        });
    }

    /// The gateway's state, opening its session first if it has none; `None` (and the
    /// datagram dropped) when `max_gateways` are open already.
    fn session(&mut self, now: Instant, gateway: Eui64) -> Option<&mut Gateway> {
        if !self.gateways.contains_key(&gateway) {
            if self.gateways.len() >= self.config.max_gateways {
                self.counters.gateways_refused += 1;
                tracing::warn!(%gateway, "too many gateways: datagram dropped");
                return None;
            }
            let qos = self.config.qos;
            let state = |s| Publish {
                topic: self.topics.conn_state(gateway),
                payload: ConnState::new(gateway, s).to_json(),
                retain: true,
                qos,
            };
            let session = Session {
                gateway,
                will: state(State::Offline),
                online: state(State::Online),
                commands: self.topics.commands(gateway),
                qos,
            };
            self.counters.sessions_opened += 1;
            tracing::info!(%gateway, "new gateway: ONLINE");
            self.outputs.push_back(Output::Open(session));
            let offline_at = now + self.config.offline_timeout;
            self.timers.insert((offline_at, Timer::Offline(gateway)));
            let counts = StatsCounts::default();
            self.gateways.insert(
                gateway,
                Gateway {
                    pull_addr: None,
                    offline_at,
                    counts,
                },
            );
        }
        self.gateways.get_mut(&gateway)
    }

    fn close(&mut self, gateway: Eui64) {
        if let Some(gw) = self.gateways.remove(&gateway) {
            self.timers
                .remove(&(gw.offline_at, Timer::Offline(gateway)));
        }
        let tokens: Vec<u16> = self
            .pending
            .range((gateway, 0)..=(gateway, u16::MAX))
            .map(|(&(_, t), _)| t)
            .collect();
        for token in tokens {
            self.take_pending(gateway, token);
        }
        let offline = Publish {
            topic: self.topics.conn_state(gateway),
            payload: ConnState::new(gateway, State::Offline).to_json(),
            retain: true,
            qos: self.config.qos,
        };
        self.outputs.push_back(Output::Close { gateway, offline });
    }

    /// The timer table holds exactly the gateways' and pending downlinks' deadlines.
    #[cfg(test)]
    fn assert_timers_consistent(&self) {
        let offline = self
            .gateways
            .iter()
            .map(|(&g, gw)| (gw.offline_at, Timer::Offline(g)));
        let acks = self
            .pending
            .iter()
            .map(|(&(g, t), p)| (p.expires, Timer::Ack(g, t)));
        assert_eq!(self.timers, offline.chain(acks).collect::<BTreeSet<_>>());
    }

    fn put_pending(&mut self, gateway: Eui64, token: u16, pending: Pending) {
        self.timers
            .insert((pending.expires, Timer::Ack(gateway, token)));
        self.pending.insert((gateway, token), pending);
    }

    fn take_pending(&mut self, gateway: Eui64, token: u16) -> Option<Pending> {
        let pending = self.pending.remove(&(gateway, token))?;
        self.timers
            .remove(&(pending.expires, Timer::Ack(gateway, token)));
        Some(pending)
    }

    fn publish(&mut self, gateway: Eui64, event: Event, payload: Vec<u8>) {
        let message = Publish {
            topic: self.topics.event(gateway, event),
            payload,
            retain: false,
            qos: self.config.qos,
        };
        self.outputs.push_back(Output::Publish { gateway, message });
    }
}

#[cfg(test)]
mod tests;
