//! Campaign time for the service: GPS milliseconds from the system clock (UTC plus the leap
//! seconds since 1980-01-06), optionally running faster than the wall clock for tests and
//! demos. The engine never reads a clock: the driver passes this time in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::GpsMillis;

/// 1980-01-06T00:00:00Z in Unix milliseconds.
const GPS_EPOCH_UNIX_MS: i64 = 315_964_800_000;
/// GPS - UTC since 2017-01-01 (no leap second was announced since).
pub const LEAP_SECONDS: i64 = 18;

/// GPS milliseconds of a UTC instant in Unix milliseconds.
pub fn gps_of_unix_ms(unix_ms: i64) -> i64 {
    unix_ms - GPS_EPOCH_UNIX_MS + LEAP_SECONDS * 1000
}

/// Unix milliseconds of a GPS instant.
pub fn unix_ms_of_gps(gps_ms: i64) -> i64 {
    gps_ms + GPS_EPOCH_UNIX_MS - LEAP_SECONDS * 1000
}

/// Wall clock to campaign time: `gps(origin) + (gps(wall) - gps(origin)) x scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    scale: f64,
    origin_gps_ms: i64,
}

impl Clock {
    pub fn new(scale: f64, origin_unix_ms: i64) -> Self {
        Self {
            scale,
            origin_gps_ms: gps_of_unix_ms(origin_unix_ms),
        }
    }

    pub fn real_time() -> Self {
        Self::new(1.0, 0)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Campaign time of a wall-clock GPS instant (a gateway's timestamp, say).
    pub fn campaign_of_gps(&self, wall_gps_ms: i64) -> GpsMillis {
        let t = self.origin_gps_ms as f64 + (wall_gps_ms - self.origin_gps_ms) as f64 * self.scale;
        t.max(0.0).round() as GpsMillis
    }

    /// Wall-clock GPS instant of a campaign time (what a gateway is told to transmit at).
    pub fn gps_of_campaign(&self, t: GpsMillis) -> i64 {
        let d = (t as f64 - self.origin_gps_ms as f64) / self.scale;
        (self.origin_gps_ms as f64 + d).round() as i64
    }

    /// Campaign time of a UTC instant in Unix ms.
    pub fn campaign_of_unix_ms(&self, unix_ms: i64) -> GpsMillis {
        self.campaign_of_gps(gps_of_unix_ms(unix_ms))
    }

    /// Campaign time now.
    pub fn now(&self) -> GpsMillis {
        self.campaign_of_unix_ms(now_unix_ms())
    }

    /// Wall-clock time until campaign time `t` (zero if past).
    pub fn until(&self, t: GpsMillis) -> Duration {
        let now = self.now();
        let ms = t.saturating_sub(now) as f64 / self.scale;
        Duration::from_micros((ms * 1000.0) as u64)
    }
}

/// The system clock in Unix milliseconds: the one place the service reads it.
#[allow(clippy::disallowed_methods)]
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A protobuf Duration in JSON (`"1234.500s"`) from milliseconds.
pub fn duration_string(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}s", ms / 1000, ms % 1000)
}

/// Milliseconds of a protobuf Duration in JSON (`"1234.5s"`, `"12s"`, `"-0.25s"`).
pub fn parse_duration_string(s: &str) -> Option<i64> {
    let body = s.strip_suffix('s')?;
    let (neg, body) = match body.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut f = frac.to_string();
    f.truncate(3);
    while f.len() < 3 {
        f.push('0');
    }
    let ms = secs
        .checked_mul(1000)?
        .checked_add(f.parse::<i64>().ok()?)?;
    Some(if neg { -ms } else { ms })
}

/// Unix ms of an RFC 3339 timestamp (`"2026-01-01T00:00:00.123456Z"`).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// RFC 3339 (UTC, milliseconds) of Unix ms.
pub fn rfc3339_of_unix_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gps_time_of_utc() {
        // 2017-01-01T00:00:00Z: GPS week 1930, 18 leap seconds.
        assert_eq!(gps_of_unix_ms(1_483_228_800_000), 1_167_264_018_000);
        assert_eq!(unix_ms_of_gps(1_167_264_018_000), 1_483_228_800_000);
        assert_eq!(
            parse_rfc3339_ms("2017-01-01T00:00:00.250+00:00"),
            Some(1_483_228_800_250)
        );
        assert_eq!(
            rfc3339_of_unix_ms(1_483_228_800_250),
            "2017-01-01T00:00:00.250Z"
        );
    }

    #[test]
    fn a_scaled_clock_maps_both_ways() {
        let c = Clock::new(10.0, 1_700_000_000_000);
        let o = gps_of_unix_ms(1_700_000_000_000);
        assert_eq!(c.campaign_of_gps(o), o as u64);
        assert_eq!(c.campaign_of_gps(o + 1_000), o as u64 + 10_000);
        assert_eq!(c.gps_of_campaign(o as u64 + 10_000), o + 1_000);
        let real = Clock::real_time();
        assert_eq!(real.campaign_of_gps(123_456), 123_456);
    }

    #[test]
    fn protobuf_durations() {
        assert_eq!(duration_string(1_234_500), "1234.500s");
        assert_eq!(parse_duration_string("1234.500s"), Some(1_234_500));
        assert_eq!(parse_duration_string("1234.5s"), Some(1_234_500));
        assert_eq!(parse_duration_string("12s"), Some(12_000));
        assert_eq!(parse_duration_string("0.000001s"), Some(0));
        assert_eq!(parse_duration_string("-0.25s"), Some(-250));
        for bad in [
            "",
            "s",
            "12",
            "1.2.3s",
            "x1s",
            ".5s",
            "99999999999999999999s",
        ] {
            assert_eq!(parse_duration_string(bad), None, "{bad}");
        }
    }
}
