//! `event/stats`: the forwarder's `stat` object as `GatewayStats`.

use super::uplink_frame::Location;
use crate::eui::Eui64;
use crate::semtech::Stat;
use serde::Serialize;
use std::collections::BTreeMap;

/// `gw.GatewayStats`, as published.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStats {
    pub gateway_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// `rxnb`.
    #[serde(skip_serializing_if = "is_zero")]
    pub rx_packets_received: u32,
    /// `rxok`.
    #[serde(skip_serializing_if = "is_zero")]
    pub rx_packets_received_ok: u32,
    /// `dwnb`.
    #[serde(skip_serializing_if = "is_zero")]
    pub tx_packets_received: u32,
    /// `txnb`.
    #[serde(skip_serializing_if = "is_zero")]
    pub tx_packets_emitted: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tx_packets_per_frequency: BTreeMap<u32, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rx_packets_per_frequency: BTreeMap<u32, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tx_packets_per_status: BTreeMap<String, u32>,
}

/// What the bridge itself counted for a gateway since its last `stat`: uplinks forwarded per
/// frequency, downlinks emitted per frequency and TX_ACK verdicts per status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsCounts {
    pub rx_per_frequency: BTreeMap<u32, u32>,
    pub tx_per_frequency: BTreeMap<u32, u32>,
    pub tx_per_status: BTreeMap<&'static str, u32>,
}

impl StatsCounts {
    pub(crate) fn bump<K: Ord>(map: &mut BTreeMap<K, u32>, key: K) {
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl GatewayStats {
    pub fn from_stat(gateway: Eui64, stat: &Stat, counts: StatsCounts) -> Self {
        Self {
            gateway_id: gateway.to_string(),
            time: stat.time.map(|t| t.rfc3339().to_string()),
            location: stat.location.and_then(Location::from_stat),
            rx_packets_received: stat.rx_received,
            rx_packets_received_ok: stat.rx_ok,
            tx_packets_received: stat.downlinks_received,
            tx_packets_emitted: stat.tx_emitted,
            metadata: stat.meta.clone(),
            tx_packets_per_frequency: counts.tx_per_frequency,
            rx_packets_per_frequency: counts.rx_per_frequency,
            tx_packets_per_status: counts
                .tx_per_status
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("GatewayStats serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semtech::PushData;
    use serde_json::{json, Value};

    fn stat(json: &str) -> Stat {
        let mut v = vec![2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        v.extend_from_slice(json.as_bytes());
        PushData::parse(&v).unwrap().stat.unwrap()
    }

    #[test]
    fn protocol_example_stat_to_gateway_stats() {
        let s = stat(
            r#"{"stat":{"time":"2014-01-12 08:59:28 GMT","lati":46.24000,"long":3.25230,"alti":145,
            "rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2,"meta":{"model":"x"}}}"#,
        );
        let mut counts = StatsCounts::default();
        StatsCounts::bump(&mut counts.rx_per_frequency, 868_100_000);
        StatsCounts::bump(&mut counts.rx_per_frequency, 868_100_000);
        StatsCounts::bump(&mut counts.tx_per_frequency, 869_525_000);
        StatsCounts::bump(&mut counts.tx_per_status, "OK");
        StatsCounts::bump(&mut counts.tx_per_status, "TOO_LATE");
        let g = GatewayStats::from_stat(Eui64([1, 2, 3, 4, 5, 6, 7, 8]), &s, counts);
        let v: Value = serde_json::from_slice(&g.to_json()).unwrap();
        assert_eq!(
            v,
            json!({
                "gatewayId": "0102030405060708",
                "time": "2014-01-12T08:59:28Z",
                "location": {"latitude": 46.24, "longitude": 3.2523, "altitude": 145.0, "source": "GPS"},
                "rxPacketsReceived": 2,
                "rxPacketsReceivedOk": 2,
                "txPacketsReceived": 2,
                "txPacketsEmitted": 2,
                "metadata": {"model": "x"},
                "txPacketsPerFrequency": {"869525000": 1},
                "rxPacketsPerFrequency": {"868100000": 2},
                "txPacketsPerStatus": {"OK": 1, "TOO_LATE": 1}
            })
        );
    }

    #[test]
    fn empty_stat() {
        let g = GatewayStats::from_stat(
            Eui64([0; 8]),
            &stat(r#"{"stat":{}}"#),
            StatsCounts::default(),
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&g.to_json()).unwrap(),
            json!({"gatewayId": "0000000000000000"})
        );
    }
}
