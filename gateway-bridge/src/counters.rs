//! What the bridge counted: every datagram and MQTT message lands in exactly one of these
//! (a PUSH_DATA also adds its uplinks and stats).

use crate::mqtt::{DownlinkError, TxAckStatus};
use crate::semtech::Malformed;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    malformed: [u64; Malformed::ALL.len()],
    bad_downlinks: [u64; DownlinkError::ALL.len()],
    tx_ack_status: [u64; TxAckStatus::ALL.len()],
    /// Valid PUSH_DATA datagrams (each one acknowledged).
    pub push_data: u64,
    /// Valid PULL_DATA datagrams (each one acknowledged).
    pub pull_data: u64,
    /// Valid TX_ACK datagrams.
    pub tx_acks: u64,
    /// `event/up` published.
    pub uplinks: u64,
    /// Received packets left out for a bad or missing CRC.
    pub uplinks_crc_dropped: u64,
    /// `event/stats` published.
    pub stats: u64,
    /// Valid `command/down` frames.
    pub downlinks: u64,
    /// PULL_RESP datagrams sent (one per item tried).
    pub pull_resps: u64,
    /// Valid `command/down` frames for a gateway that has not pulled (no address to send to).
    pub downlinks_unroutable: u64,
    /// Pending downlinks replaced by a new one with the same token before their TX_ACK.
    pub downlinks_superseded: u64,
    /// TX_ACKs whose `error` is outside the protocol (also counted as `INTERNAL_ERROR`).
    pub tx_acks_unrecognized: u64,
    /// TX_ACKs matching no pending downlink (late, duplicated, or never sent by this bridge).
    pub tx_acks_unknown_token: u64,
    /// Pending downlinks forgotten without a TX_ACK.
    pub tx_ack_timeouts: u64,
    /// `event/ack` published.
    pub acks_published: u64,
    /// MQTT messages on a topic that is no gateway's command topic.
    pub mqtt_unknown_topics: u64,
    /// Commands other than `down` (`config`, `exec`, `raw`), which the forwarder has no use for.
    pub commands_ignored: u64,
    /// Gateway sessions opened (ONLINE).
    pub sessions_opened: u64,
    /// Sessions closed because the gateway stopped pulling (OFFLINE).
    pub gateways_timed_out: u64,
    /// Datagrams from a new gateway while `max_gateways` sessions were open.
    pub gateways_refused: u64,
}

impl Counters {
    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.malformed[reason.index()]
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    pub fn bad_downlinks(&self, reason: DownlinkError) -> u64 {
        self.bad_downlinks[reason.index()]
    }

    pub fn bad_downlinks_total(&self) -> u64 {
        self.bad_downlinks.iter().sum()
    }

    /// TX_ACK verdicts with this status.
    pub fn tx_ack_status(&self, status: TxAckStatus) -> u64 {
        self.tx_ack_status[status.index()]
    }

    pub(crate) fn count_malformed(&mut self, reason: Malformed) {
        self.malformed[reason.index()] += 1;
    }

    pub(crate) fn count_bad_downlink(&mut self, reason: DownlinkError) {
        self.bad_downlinks[reason.index()] += 1;
    }

    pub(crate) fn count_tx_ack_status(&mut self, status: TxAckStatus) {
        self.tx_ack_status[status.index()] += 1;
    }
}
