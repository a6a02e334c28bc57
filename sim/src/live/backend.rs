//! The world's backend in a live run: the simulated network server's application side is
//! ChirpStack's MQTT integration (uplink events out, downlink commands in), and every frame
//! a gateway decodes goes to its packet forwarder. The backend only queues: the driver
//! publishes and sends what it holds after each step of the world.

use std::collections::{BTreeMap, HashMap, VecDeque};

use fuota_gateway_bridge::Eui64;
use fuota_server::engine::DevEui;
use fuota_server::plan::airtime::Modulation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clock::ScaledClock;
use super::forwarder::counter;
use super::integration::{self, DownlinkCommand, RxGateway, UplinkEvent};
use crate::backend::{AppOutput, Backend, HeardFrame, NsUplink};
use crate::radio::Micros;
use crate::world::Band;

/// Who plays the network server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkServer {
    /// The simulator's own, as ChirpStack's application integration on MQTT.
    Simulated,
    /// Another one (a real ChirpStack) behind the gateways: the simulator publishes no
    /// application events and its class A downlinks come through the gateways.
    External,
}

/// A frame a gateway decoded, for its forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub gw: usize,
    pub dev: usize,
    pub end: Micros,
    pub freq_hz: u32,
    pub modulation: Modulation,
    pub rssi_dbm: f64,
    pub phy: Vec<u8>,
}

impl Heard {
    pub fn frame(&self) -> HeardFrame<'_> {
        HeardFrame {
            dev: self.dev,
            end: self.end,
            freq_hz: self.freq_hz,
            modulation: self.modulation,
            rssi_dbm: self.rssi_dbm,
            phy: &self.phy,
        }
    }
}

/// What the backend counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackendStats {
    pub uplink_events: u64,
    pub downlink_commands: u64,
    /// Commands refused, by reason.
    pub bad_commands: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct LiveBackend {
    application_id: String,
    network_server: NetworkServer,
    clock: ScaledClock,
    band: Band,
    class_c: (u32, u8),
    gateway_ids: Vec<Eui64>,
    /// The latest reception of each device by each gateway: RSSI.
    receptions: HashMap<(usize, usize), f64>,
    publishes: VecDeque<(String, Vec<u8>)>,
    heard: VecDeque<Heard>,
    commands: VecDeque<AppOutput>,
    rng: ChaCha8Rng,
    stats: BackendStats,
}

impl LiveBackend {
    pub fn new(
        application_id: &str,
        network_server: NetworkServer,
        clock: ScaledClock,
        band: Band,
        class_c: (u32, u8),
        gateway_ids: Vec<Eui64>,
        seed: u64,
    ) -> Self {
        Self {
            application_id: application_id.into(),
            network_server,
            clock,
            band,
            class_c,
            gateway_ids,
            receptions: HashMap::new(),
            publishes: VecDeque::new(),
            heard: VecDeque::new(),
            commands: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: BackendStats::default(),
        }
    }

    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    pub fn gateway_ids(&self) -> &[Eui64] {
        &self.gateway_ids
    }

    /// A `command/down` message: into the device's class A queue, or counted as refused.
    pub fn handle_command(
        &mut self,
        topic: &str,
        payload: &[u8],
        known: impl Fn(DevEui) -> bool,
    ) -> Result<DownlinkCommand, integration::BadCommand> {
        let c = integration::parse_command(&self.application_id, topic, payload).and_then(|c| {
            if known(c.dev) {
                Ok(c)
            } else {
                Err(integration::BadCommand::DevEui)
            }
        });
        match &c {
            Ok(c) => {
                self.stats.downlink_commands += 1;
                self.commands.push_back(AppOutput::Unicast {
                    dev: c.dev,
                    port: c.port,
                    payload: c.data.clone(),
                });
            }
            Err(e) => {
                *self
                    .stats
                    .bad_commands
                    .entry(e.name().to_string())
                    .or_insert(0) += 1
            }
        }
        c
    }

    /// MQTT messages to publish (topic, payload), oldest first.
    pub fn take_publishes(&mut self) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
        self.publishes.drain(..)
    }

    /// Frames the gateways decoded since the last call, for their forwarders.
    pub fn take_heard(&mut self) -> impl Iterator<Item = Heard> + '_ {
        self.heard.drain(..)
    }
}

impl Backend for LiveBackend {
    fn handle_uplink(&mut self, now: Micros, u: &NsUplink<'_>) {
        if self.network_server == NetworkServer::External {
            return;
        }
        let channel = self
            .band
            .uplink_channels()
            .iter()
            .position(|&f| f == u.freq_hz)
            .unwrap_or(0) as u32;
        let gateways: Vec<RxGateway> = u
            .gateways
            .iter()
            .filter_map(|&g| {
                let rssi = *self.receptions.get(&(u.device, g))?;
                Some(RxGateway {
                    gateway_id: *self.gateway_ids.get(g)?,
                    uplink_id: self.rng.gen(),
                    rssi: rssi.round() as i32,
                    snr: super::forwarder::snr_db(rssi) as f32,
                    channel,
                    tmst: counter(u.end),
                })
            })
            .collect();
        let (sf, bw_khz) = match self.band.uplink_modulation(u.dr) {
            Modulation::Lora { sf, bw_khz } => (sf, bw_khz),
            Modulation::Fsk { .. } => (0, 0),
        };
        let name = format!("sim-{}", u.device);
        let event = UplinkEvent {
            deduplication_id: integration::uuid(self.rng.gen()),
            application_id: &self.application_id,
            device_name: &name,
            dev: u.dev,
            dev_addr: u.dev_addr,
            dr: u.dr,
            fcnt: u.fcnt,
            port: u.port,
            data: u.payload,
            frequency: u.freq_hz,
            spreading_factor: sf,
            bandwidth_hz: bw_khz * 1000,
            gw_time_unix_us: self.clock.unix_us_of_sim(u.end),
            ns_time_unix_us: self.clock.unix_us_of_sim(now),
            gateways: &gateways,
        };
        self.stats.uplink_events += 1;
        self.publishes.push_back((
            integration::uplink_topic(&self.application_id, u.dev),
            event.to_json(),
        ));
    }

    fn handle_timeout(&mut self, _now: Micros) {}

    fn poll_output(&mut self) -> Option<AppOutput> {
        self.commands.pop_front()
    }

    fn poll_timeout(&mut self) -> Option<Micros> {
        None
    }

    /// A live run ends when its driver says so.
    fn is_finished(&self) -> bool {
        false
    }

    fn class_c_channel(&self) -> (u32, u8) {
        self.class_c
    }

    /// The service's rounds are not known here; the gateways' queues keep the simulated
    /// network server's RX2 off its frames instead.
    fn is_multicasting(&self) -> bool {
        false
    }

    fn gateway_heard(&mut self, gw: usize, f: &HeardFrame<'_>) {
        self.receptions.insert((f.dev, gw), f.rssi_dbm);
        self.heard.push_back(Heard {
            gw,
            dev: f.dev,
            end: f.end,
            freq_hz: f.freq_hz,
            modulation: f.modulation,
            rssi_dbm: f.rssi_dbm,
            phy: f.phy.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuota_server::plan::Region;
    use serde_json::Value;

    fn backend(ns: NetworkServer) -> LiveBackend {
        LiveBackend::new(
            "app",
            ns,
            ScaledClock::new(20.0, 1_767_225_600_000),
            Band(Region::Eu868),
            (869_525_000, 3),
            vec![Eui64::from_u64(1), Eui64::from_u64(2)],
            1,
        )
    }

    #[test]
    fn an_uplink_becomes_an_event_with_the_gateways_that_heard_it() {
        let mut b = backend(NetworkServer::Simulated);
        let end = 1_451_260_818_000_000;
        for (gw, rssi) in [(1, -80.0), (0, -101.0)] {
            b.gateway_heard(
                gw,
                &HeardFrame {
                    dev: 4,
                    end,
                    freq_hz: 868_300_000,
                    modulation: Modulation::Lora { sf: 7, bw_khz: 125 },
                    rssi_dbm: rssi,
                    phy: &[0x40, 9],
                },
            );
        }
        assert_eq!(b.take_heard().map(|h| h.gw).collect::<Vec<_>>(), [1, 0]);
        let up = NsUplink {
            device: 4,
            dev: 0xabc,
            dev_addr: 0x2600_0004,
            fcnt: 3,
            port: 201,
            payload: &[5, 6],
            end,
            freq_hz: 868_300_000,
            dr: 5,
            gateways: &[1, 0],
        };
        b.handle_uplink(end + 200_000, &up);
        let out: Vec<_> = b.take_publishes().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "application/app/device/0000000000000abc/event/up");
        let v: Value = serde_json::from_slice(&out[0].1).unwrap();
        let rx = v["rxInfo"].as_array().unwrap();
        assert_eq!(
            rx.iter()
                .map(|r| r["gatewayId"].clone())
                .collect::<Vec<_>>(),
            ["0000000000000002", "0000000000000001"]
        );
        assert_eq!(rx[0]["rssi"], -80);
        assert_eq!(rx[0]["channel"], 1);
        assert_eq!(v["dr"], 5);
        // nsTime is 200 simulated ms (10 wall ms) after gwTime.
        let t = |s: &Value| {
            fuota_gateway_bridge::timestamp::Timestamp::parse_rfc3339(s.as_str().unwrap())
                .map(|t| t.unix_secs() as i128 * 1_000_000 + i128::from(t.subsec_nanos() / 1000))
                .unwrap()
        };
        assert_eq!(t(&rx[0]["nsTime"]) - t(&rx[0]["gwTime"]), 10_000);
        assert_eq!(b.stats().uplink_events, 1);
        // With another network server, nothing is published.
        let mut ext = backend(NetworkServer::External);
        ext.handle_uplink(end, &up);
        assert_eq!(ext.take_publishes().count(), 0);
    }

    #[test]
    fn commands_for_known_devices_become_class_a_downlinks() {
        let mut b = backend(NetworkServer::Simulated);
        let topic = "application/app/device/0000000000000abc/command/down";
        let body = br#"{"devEui":"0000000000000abc","confirmed":false,"fPort":200,"data":"AQ=="}"#;
        assert!(b.handle_command(topic, body, |d| d == 0xabc).is_ok());
        assert_eq!(
            b.poll_output(),
            Some(AppOutput::Unicast {
                dev: 0xabc,
                port: 200,
                payload: vec![1]
            })
        );
        assert_eq!(b.poll_output(), None);
        // A device the world does not have, and a malformed one, are counted.
        assert!(b.handle_command(topic, body, |_| false).is_err());
        assert!(b.handle_command(topic, b"{}", |_| true).is_err());
        assert_eq!(b.stats().downlink_commands, 1);
        assert_eq!(b.stats().bad_commands["dev_eui"], 1);
        assert_eq!(b.stats().bad_commands["f_port"], 1);
        assert_eq!(b.poll_timeout(), None);
        assert!(!b.is_finished());
    }
}
