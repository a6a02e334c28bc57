//! The live simulator's clock. Simulated GPS time runs `scale` times faster than the wall
//! clock from an origin where both agree: sim = origin + (wall - origin) x scale, the mapping
//! of `fuota server`'s `[clock] scale` and `origin_unix_ms`, so that the world and the
//! service agree on every instant.
//!
//! What goes on the wire is wall-clock time (the rxpk `time` and `tmms`, a txpk's `tmms`,
//! the integration's `gwTime` and `nsTime`), as real gateways and ChirpStack write it; the
//! reader scales it back. The gateways' microsecond counters (`tmst`) count simulated time,
//! so that a class A delay added to one stays a delay in the world.

use std::time::Duration;

use crate::radio::Micros;

/// 1980-01-06T00:00:00Z in Unix microseconds.
const GPS_EPOCH_UNIX_US: i64 = 315_964_800_000_000;
/// GPS - UTC since 2017-01-01 (no leap second was announced since).
pub const LEAP_SECONDS: i64 = 18;

/// GPS microseconds of a UTC instant in Unix microseconds.
pub fn gps_us_of_unix_us(unix_us: i64) -> i64 {
    unix_us - GPS_EPOCH_UNIX_US + LEAP_SECONDS * 1_000_000
}

/// Unix microseconds of a GPS instant.
pub fn unix_us_of_gps_us(gps_us: i64) -> i64 {
    gps_us + GPS_EPOCH_UNIX_US - LEAP_SECONDS * 1_000_000
}

/// The system clock in Unix microseconds: the one place the live simulator reads it.
#[allow(clippy::disallowed_methods)]
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Wall clock to simulated GPS time and back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaledClock {
    scale: f64,
    origin_gps_us: i64,
}

impl ScaledClock {
    /// `scale` must be positive and finite (the caller checks: a time scale from the command
    /// line).
    pub fn new(scale: f64, origin_unix_ms: i64) -> Self {
        Self {
            scale,
            origin_gps_us: gps_us_of_unix_us(origin_unix_ms * 1000),
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated GPS time of a wall-clock GPS instant (µs).
    pub fn sim_of_wall_gps_us(&self, wall_gps_us: i64) -> Micros {
        let t = self.origin_gps_us as f64 + (wall_gps_us - self.origin_gps_us) as f64 * self.scale;
        t.max(0.0).round() as Micros
    }

    /// Wall-clock GPS instant of a simulated time (µs).
    pub fn wall_gps_us_of_sim(&self, sim: Micros) -> i64 {
        let d = (sim as f64 - self.origin_gps_us as f64) / self.scale;
        self.origin_gps_us + d.round() as i64
    }

    /// Simulated time of a UTC instant in Unix µs.
    pub fn sim_of_unix_us(&self, unix_us: i64) -> Micros {
        self.sim_of_wall_gps_us(gps_us_of_unix_us(unix_us))
    }

    /// UTC (Unix µs) of a simulated time.
    pub fn unix_us_of_sim(&self, sim: Micros) -> i64 {
        unix_us_of_gps_us(self.wall_gps_us_of_sim(sim))
    }

    /// Simulated time now.
    pub fn now(&self) -> Micros {
        self.sim_of_unix_us(now_unix_us())
    }

    /// How long the wall clock takes for `span` of simulated time.
    pub fn wall_span(&self, span: Micros) -> Duration {
        Duration::from_secs_f64(span as f64 / 1e6 / self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gps_time_of_utc() {
        // 2017-01-01T00:00:00Z: 18 leap seconds (as fuota-server's clock has it).
        assert_eq!(
            gps_us_of_unix_us(1_483_228_800_000_000),
            1_167_264_018_000_000
        );
        assert_eq!(
            unix_us_of_gps_us(1_167_264_018_000_000),
            1_483_228_800_000_000
        );
    }

    #[test]
    fn the_service_and_the_world_agree() {
        let origin_unix_ms = 1_767_225_600_000; // 2026-01-01
        let c = ScaledClock::new(50.0, origin_unix_ms);
        let o = gps_us_of_unix_us(origin_unix_ms * 1000);
        // At the origin both clocks read the same; a wall second later, 50 simulated ones.
        assert_eq!(c.sim_of_wall_gps_us(o), o as u64);
        assert_eq!(c.sim_of_wall_gps_us(o + 1_000_000), o as u64 + 50_000_000);
        assert_eq!(c.wall_gps_us_of_sim(o as u64 + 50_000_000), o + 1_000_000);
        // What `fuota server` computes from a gateway's GPS time in ms (Clock::campaign_of_gps:
        // origin + (wall - origin) x scale) is this world's time in ms.
        let server = |wall_gps_ms: i64| {
            let origin_ms = o / 1000;
            (origin_ms as f64 + (wall_gps_ms - origin_ms) as f64 * 50.0).round() as u64
        };
        let sim = o as u64 + 3_600_000_000 + 123_000;
        let wall_ms = c.wall_gps_us_of_sim(sim).div_euclid(1000);
        assert!(server(wall_ms).abs_diff(sim / 1000) <= 50);
        // Round trips lose no more than the scale's rounding.
        for sim in [o as u64, o as u64 + 1, o as u64 + 86_400_000_000] {
            let back = c.sim_of_wall_gps_us(c.wall_gps_us_of_sim(sim));
            assert!(back.abs_diff(sim) <= 50, "{sim} {back}");
            assert!(c.sim_of_unix_us(c.unix_us_of_sim(sim)).abs_diff(sim) <= 50);
        }
        assert_eq!(c.wall_span(50_000_000), Duration::from_secs(1));
        // Real time: the identity.
        let real = ScaledClock::new(1.0, origin_unix_ms);
        assert_eq!(real.sim_of_wall_gps_us(12_345_678), 12_345_678);
    }
}
