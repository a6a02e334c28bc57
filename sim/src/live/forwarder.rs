//! A simulated gateway's packet forwarder: Semtech's UDP protocol (version 2) from the
//! gateway's side, without I/O. Like `lora_pkt_fwd` it has two sockets: upstream for
//! PUSH_DATA (received packets, status), downstream for PULL_DATA keepalives, the server's
//! PULL_RESP and the gateway's TX_ACK.
//!
//! Inputs: [`Forwarder::handle_timeout`] (keepalive and status, on the wall clock: the
//! server side counts them in real seconds), [`Forwarder::uplink`] for each frame the
//! gateway decoded, [`Forwarder::handle_datagram`] for what the server sends, and
//! [`Forwarder::tx_ack`] once the world has judged a PULL_RESP's frame. Packets carry
//! simulated time as [`super::clock`] explains.

use std::time::{Duration, Instant};

use fuota_gateway_bridge::datarate::{CodeRate, LoraDataRate};
use fuota_gateway_bridge::semtech::{
    Crc, FromServer, PullData, PushData, RxModulation, Rxpk, Stat, TxAck, TxAckWarning,
    TxModulation, TxTiming, Txpk,
};
use fuota_gateway_bridge::timestamp::Timestamp;
use fuota_gateway_bridge::Eui64;
use fuota_server::plan::airtime::Modulation;

use super::clock::ScaledClock;
use crate::backend::HeardFrame;
use crate::radio::Micros;
use crate::world::{TxAccepted, TxRefusal, TX_MIN_LEAD};

/// `lora_pkt_fwd`'s defaults: a PULL_DATA every 10 s, a status every 30 s.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
pub const STAT_INTERVAL: Duration = Duration::from_secs(30);

/// The two sockets of a forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Up,
    Down,
}

/// A datagram to send to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub socket: Socket,
    pub bytes: Vec<u8>,
}

/// A PULL_RESP: a frame the server wants sent, answered by [`Forwarder::tx_ack`].
#[derive(Debug, Clone, PartialEq)]
pub struct TxRequest {
    pub token: u16,
    pub txpk: Txpk,
}

/// What a forwarder counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForwarderStats {
    pub push_data: u64,
    pub push_acks: u64,
    pub pull_data: u64,
    pub pull_acks: u64,
    /// PULL_RESP received.
    pub pull_resps: u64,
    /// Frames accepted for transmission (TX_ACK without error).
    pub tx_accepted: u64,
    /// TX_ACK errors sent, by name.
    pub tx_refused: std::collections::BTreeMap<String, u64>,
    /// Datagrams from the server that did not parse, or that a gateway never receives.
    pub malformed: u64,
    pub uplinks: u64,
}

/// One gateway's forwarder.
#[derive(Debug, Clone)]
pub struct Forwarder {
    eui: Eui64,
    token: u16,
    next_pull: Instant,
    next_stat: Instant,
    /// PUSH_DATA tokens sent and not acknowledged yet (the status's `ackr`).
    unacked: std::collections::VecDeque<u16>,
    stats: ForwarderStats,
    /// Counters of the current status period.
    period: Period,
}

#[derive(Debug, Clone, Copy, Default)]
struct Period {
    rx: u32,
    push: u32,
    push_acked: u32,
    downlinks: u32,
    emitted: u32,
}

/// Noise floor of a 125 kHz channel (-174 dBm/Hz, 6 dB noise figure) and the SNR at which
/// the concentrator's estimate levels off.
const NOISE_FLOOR_125_DBM: f64 = -117.0;
const MAX_SNR_DB: f64 = 13.5;

impl Forwarder {
    /// A forwarder that starts pulling at `now` (wall clock).
    pub fn new(eui: Eui64, now: Instant, token_seed: u16) -> Self {
        Self {
            eui,
            token: token_seed,
            next_pull: now,
            next_stat: now + STAT_INTERVAL,
            unacked: std::collections::VecDeque::new(),
            stats: ForwarderStats::default(),
            period: Period::default(),
        }
    }

    pub fn eui(&self) -> Eui64 {
        self.eui
    }

    pub fn stats(&self) -> &ForwarderStats {
        &self.stats
    }

    fn next_token(&mut self) -> u16 {
        self.token = self.token.wrapping_add(1);
        self.token
    }

    /// When [`Forwarder::handle_timeout`] has something to send.
    pub fn poll_timeout(&self) -> Instant {
        self.next_pull.min(self.next_stat)
    }

    /// The keepalive and the status, when due; `unix_us` is the status's wall time.
    pub fn handle_timeout(&mut self, now: Instant, unix_us: i64) -> Vec<Datagram> {
        let mut out = Vec::new();
        if now >= self.next_pull {
            self.next_pull = now + KEEPALIVE;
            self.stats.pull_data += 1;
            let token = self.next_token();
            out.push(Datagram {
                socket: Socket::Down,
                bytes: PullData {
                    token,
                    gateway: self.eui,
                }
                .build(),
            });
        }
        if now >= self.next_stat {
            self.next_stat = now + STAT_INTERVAL;
            let p = std::mem::take(&mut self.period);
            let stat = Stat {
                time: Timestamp::new(unix_us.div_euclid(1_000_000), 0),
                location: None,
                rx_received: p.rx,
                rx_ok: p.rx,
                rx_forwarded: p.rx,
                ack_ratio: if p.push == 0 {
                    100.0
                } else {
                    100.0 * f64::from(p.push_acked) / f64::from(p.push)
                },
                downlinks_received: p.downlinks,
                tx_emitted: p.emitted,
                meta: Default::default(),
            };
            out.push(self.push(Vec::new(), Some(stat)));
        }
        out
    }

    fn push(&mut self, rxpk: Vec<Rxpk>, stat: Option<Stat>) -> Datagram {
        let token = self.next_token();
        self.stats.push_data += 1;
        self.period.push += 1;
        if self.unacked.len() >= 64 {
            self.unacked.pop_front();
        }
        self.unacked.push_back(token);
        Datagram {
            socket: Socket::Up,
            bytes: PushData {
                token,
                gateway: self.eui,
                rxpk,
                stat,
            }
            .build(),
        }
    }

    /// PUSH_DATA for a frame the gateway decoded on uplink channel `channel`.
    pub fn uplink(&mut self, f: &HeardFrame<'_>, channel: u32, clock: &ScaledClock) -> Datagram {
        let unix_us = clock.unix_us_of_sim(f.end);
        let modulation = match f.modulation {
            Modulation::Lora { sf, bw_khz } => RxModulation::Lora {
                data_rate: LoraDataRate {
                    spreading_factor: sf,
                    bandwidth_khz: bw_khz,
                },
                code_rate: CodeRate::Cr4_5,
            },
            Modulation::Fsk { kbps } => RxModulation::Fsk {
                bitrate: kbps * 1000,
            },
        };
        let rxpk = Rxpk {
            time: Timestamp::new(
                unix_us.div_euclid(1_000_000),
                (unix_us.rem_euclid(1_000_000) * 1000) as u32,
            ),
            tmms: Some(clock.wall_gps_us_of_sim(f.end).div_euclid(1000)),
            tmst: counter(f.end),
            ftime: None,
            frequency: f.freq_hz,
            channel,
            rf_chain: 0,
            board: 0,
            crc: Crc::Ok,
            modulation,
            rssi: Some(f.rssi_dbm.round() as i32),
            snr: Some(snr_db(f.rssi_dbm) as f32),
            data: f.phy.to_vec(),
            rsig: Vec::new(),
            meta: Default::default(),
        };
        self.stats.uplinks += 1;
        self.period.rx += 1;
        self.push(vec![rxpk], None)
    }

    /// A datagram from the server: acknowledgements are counted, a PULL_RESP is returned
    /// for the world to judge.
    pub fn handle_datagram(&mut self, socket: Socket, bytes: &[u8]) -> Option<TxRequest> {
        match (socket, FromServer::parse(bytes)) {
            (Socket::Up, Ok(FromServer::PushAck(a))) => {
                if let Some(i) = self.unacked.iter().position(|&t| t == a.token) {
                    self.unacked.remove(i);
                    self.stats.push_acks += 1;
                    self.period.push_acked += 1;
                }
                None
            }
            (Socket::Down, Ok(FromServer::PullAck(_))) => {
                self.stats.pull_acks += 1;
                None
            }
            (Socket::Down, Ok(FromServer::PullResp(r))) => {
                self.stats.pull_resps += 1;
                self.period.downlinks += 1;
                Some(TxRequest {
                    token: r.token,
                    txpk: r.txpk,
                })
            }
            // Server packets on the wrong socket, gateway packets, and what does not parse.
            _ => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    /// TX_ACK for a PULL_RESP: its error, or a TX_POWER warning when the frame goes out at
    /// less power than asked (as SX1302 forwarders report it).
    pub fn tx_ack(&mut self, token: u16, result: Result<TxAccepted, TxRefusal>) -> Datagram {
        let (error, warning) = match result {
            Ok(a) => {
                self.stats.tx_accepted += 1;
                self.period.emitted += 1;
                let warning = a.power_clamped.then(|| TxAckWarning {
                    kind: "TX_POWER".into(),
                    value: Some(a.power_dbm.round() as i64),
                });
                (None, warning)
            }
            Err(r) => {
                *self.stats.tx_refused.entry(r.name().into()).or_insert(0) += 1;
                (Some(r.name().to_string()), None)
            }
        };
        Datagram {
            socket: Socket::Down,
            bytes: TxAck {
                token,
                gateway: self.eui,
                error,
                warning,
            }
            .build(),
        }
    }
}

/// The SNR a concentrator reports for a 125 kHz signal of `rssi_dbm`, to 0.1 dB.
pub fn snr_db(rssi_dbm: f64) -> f64 {
    ((rssi_dbm - NOISE_FLOOR_125_DBM).min(MAX_SNR_DB) * 10.0).round() / 10.0
}

/// The concentrator's microsecond counter at simulated time `t` (it wraps every 71.6 min).
pub fn counter(t: Micros) -> u32 {
    t as u32
}

/// When a txpk's frame is to go out, in simulated time, received at `now`: `imme` as soon
/// as the radio can be programmed, `tmst` against the counter (a value behind it by less
/// than half the wrap is past, as the forwarder compares them), `tmms` from GPS time.
pub fn tx_time(timing: TxTiming, now: Micros, clock: &ScaledClock) -> Micros {
    match timing {
        TxTiming::Immediately => now + TX_MIN_LEAD,
        TxTiming::Tmst(t) => {
            let ahead = t.wrapping_sub(counter(now)) as i32;
            now.saturating_add_signed(i64::from(ahead))
        }
        TxTiming::Tmms(ms) => clock.sim_of_wall_gps_us(ms.saturating_mul(1000)),
    }
}

/// The airtime model's modulation of a txpk's.
pub fn tx_modulation(m: TxModulation) -> Modulation {
    match m {
        TxModulation::Lora { data_rate, .. } => Modulation::Lora {
            sf: data_rate.spreading_factor,
            bw_khz: data_rate.bandwidth_khz,
        },
        TxModulation::Fsk { bitrate, .. } => Modulation::Fsk {
            kbps: bitrate / 1000,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuota_gateway_bridge::semtech::{FromGateway, PullAck, PullResp, PushAck};

    /// Any instant will do: the tests move time on by hand from it.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    const GW: Eui64 = Eui64([0x5e, 0x5e, 0, 0, 0, 0, 0, 1]);

    fn clock() -> ScaledClock {
        ScaledClock::new(50.0, 1_767_225_600_000)
    }

    #[test]
    fn keepalives_and_status_on_the_wall_clock() {
        let t0 = start();
        let mut f = Forwarder::new(GW, t0, 100);
        assert_eq!(f.poll_timeout(), t0);
        let out = f.handle_timeout(t0, 1_767_225_600_000_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].socket, Socket::Down);
        let Ok(FromGateway::PullData(p)) = FromGateway::parse(&out[0].bytes) else {
            panic!("{:?}", out[0]);
        };
        assert_eq!((p.token, p.gateway), (101, GW));
        // Nothing before the next keepalive; the status at 30 s, with the keepalive.
        assert!(f.handle_timeout(t0 + Duration::from_secs(5), 0).is_empty());
        assert_eq!(f.poll_timeout(), t0 + KEEPALIVE);
        f.handle_timeout(t0 + KEEPALIVE, 0);
        f.handle_timeout(t0 + 2 * KEEPALIVE, 0);
        let out = f.handle_timeout(t0 + STAT_INTERVAL, 1_767_225_630_000_000);
        assert_eq!(out.len(), 2);
        let Ok(FromGateway::PushData(p)) = FromGateway::parse(&out[1].bytes) else {
            panic!("{:?}", out[1]);
        };
        assert_eq!(out[1].socket, Socket::Up);
        let stat = p.stat.unwrap();
        assert_eq!(
            stat.time.unwrap().expanded().to_string(),
            "2026-01-01 00:00:30 GMT"
        );
        assert_eq!(stat.ack_ratio, 100.0);
        assert!(p.rxpk.is_empty());
        assert_eq!(f.stats().pull_data, 4);
    }

    #[test]
    fn an_uplink_as_rxpk_in_scaled_time() {
        let c = clock();
        let mut f = Forwarder::new(GW, start(), 7);
        // 100 simulated seconds after the origin: 2 wall seconds.
        let end = c.sim_of_unix_us(1_767_225_600_000_000) + 100_000_000;
        let frame = HeardFrame {
            dev: 3,
            end,
            freq_hz: 868_300_000,
            modulation: Modulation::Lora { sf: 7, bw_khz: 125 },
            rssi_dbm: -97.4,
            phy: &[0x40, 1, 2, 3],
        };
        let d = f.uplink(&frame, 1, &c);
        assert_eq!(d.socket, Socket::Up);
        let Ok(FromGateway::PushData(p)) = FromGateway::parse(&d.bytes) else {
            panic!();
        };
        let r = &p.rxpk[0];
        assert_eq!(
            r.time.unwrap().rfc3339().to_string(),
            "2026-01-01T00:00:02Z"
        );
        // tmms is wall-clock GPS time (18 leap seconds ahead of UTC); tmst counts
        // simulated microseconds.
        assert_eq!(r.tmms, Some((1_767_225_602_000 - 315_964_800_000) + 18_000));
        assert_eq!(r.tmst, end as u32);
        assert_eq!((r.frequency, r.channel, r.crc), (868_300_000, 1, Crc::Ok));
        assert_eq!(r.rssi, Some(-97));
        assert_eq!(r.snr, Some(13.5));
        assert_eq!(r.data, [0x40, 1, 2, 3]);
        let RxModulation::Lora {
            data_rate,
            code_rate,
        } = r.modulation
        else {
            panic!();
        };
        assert_eq!(
            (data_rate.to_string(), code_rate),
            ("SF7BW125".into(), CodeRate::Cr4_5)
        );
        // A weak signal has a negative SNR.
        let weak = HeardFrame {
            rssi_dbm: -125.0,
            ..frame
        };
        let Ok(FromGateway::PushData(p)) = FromGateway::parse(&f.uplink(&weak, 0, &c).bytes) else {
            panic!();
        };
        assert_eq!(p.rxpk[0].snr, Some(-8.0));
    }

    #[test]
    fn acks_count_and_the_status_reports_their_ratio() {
        let c = clock();
        let t0 = start();
        let mut f = Forwarder::new(GW, t0, 0);
        let frame = HeardFrame {
            dev: 0,
            end: 1_000_000_000_000,
            freq_hz: 868_100_000,
            modulation: Modulation::Lora { sf: 9, bw_khz: 125 },
            rssi_dbm: -100.0,
            phy: &[0x40],
        };
        let tokens: Vec<u16> = (0..4)
            .map(
                |_| match FromGateway::parse(&f.uplink(&frame, 0, &c).bytes) {
                    Ok(FromGateway::PushData(p)) => p.token,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        for t in &tokens[..3] {
            assert!(f
                .handle_datagram(Socket::Up, &PushAck { token: *t }.build())
                .is_none());
        }
        // An ack for a token never sent is not an ack; a PULL_ACK on the upstream socket and
        // a truncated datagram are malformed.
        f.handle_datagram(Socket::Up, &PushAck { token: 999 }.build());
        f.handle_datagram(Socket::Up, &PullAck { token: 1 }.build());
        f.handle_datagram(Socket::Down, &PullAck { token: 1 }.build());
        f.handle_datagram(Socket::Down, b"\x02\x00");
        assert_eq!(
            (
                f.stats().push_acks,
                f.stats().pull_acks,
                f.stats().malformed
            ),
            (3, 1, 2)
        );
        let out = f.handle_timeout(t0 + STAT_INTERVAL, 0);
        let Ok(FromGateway::PushData(p)) = FromGateway::parse(&out[1].bytes) else {
            panic!();
        };
        let stat = p.stat.unwrap();
        assert_eq!((stat.rx_received, stat.rx_ok, stat.rx_forwarded), (4, 4, 4));
        assert_eq!(stat.ack_ratio, 75.0);
    }

    fn pull_resp(timing: TxTiming) -> Vec<u8> {
        PullResp {
            token: 0x4242,
            txpk: Txpk {
                timing,
                frequency: 869_525_000,
                rf_chain: 0,
                power: 27,
                antenna: 0,
                board: 0,
                modulation: TxModulation::Lora {
                    data_rate: LoraDataRate {
                        spreading_factor: 9,
                        bandwidth_khz: 125,
                    },
                    code_rate: CodeRate::Cr4_5,
                    polarization_inversion: true,
                },
                preamble: None,
                no_crc: true,
                data: vec![0x60, 1, 2, 3],
            },
        }
        .build()
    }

    #[test]
    fn a_pull_resp_and_its_tx_ack() {
        let mut f = Forwarder::new(GW, start(), 0);
        // PULL_RESP only on the downstream socket.
        assert!(f
            .handle_datagram(Socket::Up, &pull_resp(TxTiming::Immediately))
            .is_none());
        let req = f
            .handle_datagram(Socket::Down, &pull_resp(TxTiming::Tmms(1_300_000_000_000)))
            .unwrap();
        assert_eq!(req.token, 0x4242);
        assert_eq!(req.txpk.data, [0x60, 1, 2, 3]);
        assert_eq!(
            tx_modulation(req.txpk.modulation),
            Modulation::Lora { sf: 9, bw_khz: 125 }
        );
        let ack = |f: &mut Forwarder, r| match FromGateway::parse(&f.tx_ack(0x4242, r).bytes) {
            Ok(FromGateway::TxAck(a)) => a,
            other => panic!("{other:?}"),
        };
        let a = ack(
            &mut f,
            Ok(TxAccepted {
                power_dbm: 27.0,
                power_clamped: false,
            }),
        );
        assert_eq!(
            (a.token, a.gateway, a.error, a.warning),
            (0x4242, GW, None, None)
        );
        let a = ack(
            &mut f,
            Ok(TxAccepted {
                power_dbm: 14.0,
                power_clamped: true,
            }),
        );
        assert_eq!(a.error, None);
        assert_eq!(
            a.warning,
            Some(TxAckWarning {
                kind: "TX_POWER".into(),
                value: Some(14)
            })
        );
        for (r, name) in [
            (TxRefusal::TooLate, "TOO_LATE"),
            (TxRefusal::TooEarly, "TOO_EARLY"),
            (TxRefusal::CollisionPacket, "COLLISION_PACKET"),
            (TxRefusal::TxFreq, "TX_FREQ"),
            (TxRefusal::DutyCycleOverflow, "DUTY_CYCLE_OVERFLOW"),
            (TxRefusal::QueueFull, "QUEUE_FULL"),
        ] {
            let a = ack(&mut f, Err(r));
            assert_eq!(a.error.as_deref(), Some(name));
            // The bridge reads it back as the status of that name.
            assert_eq!(a.status().map(|s| s.name()), Some(name));
        }
        assert_eq!(f.stats().tx_accepted, 2);
        assert_eq!(f.stats().tx_refused.len(), 6);
        assert_eq!(f.stats().pull_resps, 1);
    }

    #[test]
    fn tx_times_in_simulated_time() {
        let c = clock();
        let now: Micros = 1_451_260_818_000_000;
        assert_eq!(tx_time(TxTiming::Immediately, now, &c), now + TX_MIN_LEAD);
        // tmst a second ahead of the counter, across its wrap, and behind it.
        let ctr = counter(now);
        assert_eq!(
            tx_time(TxTiming::Tmst(ctr.wrapping_add(1_000_000)), now, &c),
            now + 1_000_000
        );
        let wrap_now = now - u64::from(ctr) + u64::from(u32::MAX) - 10;
        assert_eq!(
            tx_time(
                TxTiming::Tmst(counter(wrap_now).wrapping_add(20)),
                wrap_now,
                &c
            ),
            wrap_now + 20
        );
        assert_eq!(
            tx_time(TxTiming::Tmst(ctr.wrapping_sub(5_000)), now, &c),
            now - 5_000
        );
        // tmms: a wall-clock GPS time, scaled.
        let sim = now + 10_000_000;
        let wall_ms = c.wall_gps_us_of_sim(sim) / 1000;
        assert!(tx_time(TxTiming::Tmms(wall_ms), now, &c).abs_diff(sim) <= 50_000);
    }
}
