//! TS003 clock synchronization, device side (sans-IO).
//!
//! The device keeps `GPS time = now + offset`; `now` is the caller's monotonic clock in
//! milliseconds. It sends AppTimeReq at start, then every `128 * 2^period` seconds (with up
//! to 30 s of random jitter, so that a fleet does not answer at once), and `nb_transmissions`
//! times after a ForceDeviceResync. Until a first answer it asks again sooner, after 60 s,
//! then twice as long each time up to the period, so that a device that joined while the
//! server was away syncs soon without flooding the channel. An AppTimeAns counts only with
//! the token of a request sent since the last correction: on class A an answer often comes
//! after the next request went out (it rides that request's receive window), and its
//! correction still holds, since the clock has not been corrected meanwhile.

use fuota_codec::clock_sync::{
    AppTimeReq, DeviceAppTimePeriodicityAns, Downlink, PackageVersionAns, Uplink, PACKAGE_ID,
};
use fuota_codec::Version;

use crate::rng::Rng;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// `floor(ms / 1000)` mod 2^32: GPS seconds as the packages carry them. Done in 16-bit digits
/// with 32-bit divisions, which Cortex-M has in hardware: a 64-bit division would link a
/// library routine of about 2 KB.
pub(crate) fn seconds_of(ms: i64) -> u32 {
    // Only the quotient's low 32 bits are kept: the high word's own quotient shifts out of
    // them, and only its remainder counts. What is left, below 1000 * 2^32, is divided in
    // two 16-bit digits.
    fn div_1000(x: u64) -> u32 {
        let (hi, lo) = ((x >> 32) as u32, x as u32);
        let cur = ((hi % 1000) << 16) | (lo >> 16);
        let cur_low = ((cur % 1000) << 16) | (lo & 0xffff);
        ((cur / 1000) << 16) | (cur_low / 1000)
    }
    // Below zero, floor(ms / 1000) = !(!ms / 1000), where !ms = -ms - 1 is at least 0
    // (i64::MIN included): one division for both signs, the sign's mask applied before and
    // after it.
    let sign = (ms >> 63) as u64;
    div_1000(ms as u64 ^ sign) ^ sign as u32
}

/// Default periodicity exponent: 128 * 2^7 s, about 4.5 hours.
pub const DEFAULT_PERIOD: u8 = 7;
const JITTER_MS: u32 = 30_000;
/// Spacing of the AppTimeReq a ForceDeviceResync asks for.
const RESYNC_SPACING_MS: u64 = 10_000;
/// First wait before asking again while unsynchronized (then doubled each time).
const UNSYNCED_RETRY_MS: u32 = 60_000;

/// `128 s * 2^period` in ms; `period` is at most 15, so it fits 32 bits: a 32-bit shift, not
/// a 64-bit one.
fn period_ms(period: u8) -> u32 {
    128_000 << period
}

/// Device side of TS003.
#[derive(Debug, Clone)]
pub struct ClockSync {
    version: Version,
    /// GPS milliseconds minus `now`; 0 until the first valid AppTimeAns (`synced`), so
    /// that the device time is the local clock until then without a case of its own.
    offset_ms: i64,
    synced: bool,
    /// Token of the next AppTimeReq (4 bits).
    token: u8,
    /// Tokens of the requests sent since the last correction (bit per token).
    outstanding: u16,
    /// The period in ms, `128 s * 2^period` (at most 2^15, which fits 32 bits): worked out
    /// once when set, not at each use.
    period_ms: u32,
    next_request: Millis,
    resync_left: u8,
    /// Unanswered requests since the last answer (for the unsynchronized back-off).
    unanswered: u8,
}

impl ClockSync {
    /// Starts unsynchronized, with a first AppTimeReq due at `now`.
    pub fn new(version: Version, now: Millis) -> Self {
        Self {
            version,
            offset_ms: 0,
            synced: false,
            token: 0,
            outstanding: 0,
            period_ms: period_ms(DEFAULT_PERIOD),
            next_request: now,
            resync_left: 0,
            unanswered: 0,
        }
    }

    /// GPS time in milliseconds, once synchronized.
    pub fn gps_ms(&self, now: Millis) -> Option<i64> {
        self.synced.then(|| now as i64 + self.offset_ms)
    }

    /// GPS time in seconds as the packages carry it (mod 2^32), or the uncorrected local
    /// clock before the first answer.
    pub(crate) fn device_time(&self, now: Millis) -> u32 {
        seconds_of(now as i64 + self.offset_ms)
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Handles one downlink command; returns the answer to send, if any.
    // Out of line: inlined into the agent's downlink handling, its 64-bit time arithmetic
    // is done in that function's crowded registers and frame (-16 B on the size probe).
    #[inline(never)]
    pub fn handle(&mut self, now: Millis, cmd: Downlink, rng: &mut Rng) -> Option<Uplink> {
        // The commands that restart the period fall through to one restart below.
        let answer = match cmd {
            Downlink::PackageVersionReq(_) => {
                return Some(Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier: PACKAGE_ID,
                    package_version: self.version.number(),
                }))
            }
            Downlink::AppTimeAns(ans) => {
                if self.outstanding & (1 << (ans.token_ans & 0x0f)) == 0 {
                    return None;
                }
                self.offset_ms += i64::from(ans.time_correction) * 1000;
                self.synced = true;
                // Answers to the other requests were computed against the old clock.
                self.outstanding = 0;
                self.unanswered = 0;
                // A forced resync keeps its own spacing; otherwise the period restarts.
                if self.resync_left > 0 {
                    return None;
                }
                None
            }
            Downlink::DeviceAppTimePeriodicityReq(req) => {
                self.period_ms = period_ms(req.period & 0x0f);
                Some(Uplink::DeviceAppTimePeriodicityAns(
                    DeviceAppTimePeriodicityAns {
                        not_supported: false,
                        time: self.device_time(now),
                    },
                ))
            }
            Downlink::ForceDeviceResync(cmd) => {
                self.resync_left = cmd.nb_transmissions & 0x07;
                if self.resync_left > 0 {
                    self.next_request = now;
                }
                return None;
            }
        };
        // As in poll_request: the jittered period fits 32 bits.
        self.next_request = now + u64::from(self.period_ms + rng.below(JITTER_MS));
        answer
    }

    /// When the next AppTimeReq is due.
    pub fn poll_timeout(&self) -> Millis {
        self.next_request
    }

    /// The AppTimeReq due at `now`, if one is.
    pub fn poll_request(&mut self, now: Millis, rng: &mut Rng) -> Option<Uplink> {
        if now < self.next_request {
            return None;
        }
        // Counted down in a local, stored once.
        let resync_left = self.resync_left.saturating_sub(1);
        self.resync_left = resync_left;
        self.next_request = if resync_left > 0 {
            now + RESYNC_SPACING_MS
        } else {
            // The period, or less while unsynchronized; jittered either way.
            let wait = match self.is_synced() {
                true => self.period_ms,
                // At most 60 s * 2^16, in 32 bits like the period.
                false => (UNSYNCED_RETRY_MS << self.unanswered.min(16)).min(self.period_ms),
            };
            // Jittered in 32 bits (at most 2^15 * 128 s + 30 s, below 2^32 ms), then one
            // 64-bit addition.
            now + u64::from(wait + rng.below(JITTER_MS))
        };
        self.unanswered = self.unanswered.saturating_add(1);
        let token = self.token;
        self.token = (self.token + 1) & 0x0f;
        self.outstanding |= 1 << token;
        Some(Uplink::AppTimeReq(AppTimeReq {
            device_time: self.device_time(now),
            token_req: token,
            ans_required: !self.is_synced(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fuota_codec::clock_sync::{AppTimeAns, DeviceAppTimePeriodicityReq, ForceDeviceResyncCmd};
    use std::vec::Vec;

    #[test]
    fn seconds_are_floored_like_div_euclid() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut cases = std::vec![
            0i64,
            1,
            999,
            1000,
            1001,
            -1,
            -999,
            -1000,
            -1001,
            i64::MAX,
            i64::MIN
        ];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x as i64);
            cases.push((x >> (x % 60)) as i64);
        }
        for ms in cases {
            assert_eq!(seconds_of(ms), ms.div_euclid(1000) as u32, "{ms}");
        }
    }

    fn req(u: Option<Uplink>) -> AppTimeReq {
        match u {
            Some(Uplink::AppTimeReq(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syncs_with_the_matching_token_only() {
        let mut rng = Rng::new(1);
        let mut c = ClockSync::new(Version::V2, 5_000);
        assert_eq!(c.poll_request(4_999, &mut rng), None);
        let r = req(c.poll_request(5_000, &mut rng));
        assert_eq!((r.device_time, r.token_req, r.ans_required), (5, 0, true));
        // A stale token is ignored.
        c.handle(
            6_000,
            Downlink::AppTimeAns(AppTimeAns {
                time_correction: 99,
                token_ans: 3,
            }),
            &mut rng,
        );
        assert!(!c.is_synced());
        c.handle(
            6_000,
            Downlink::AppTimeAns(AppTimeAns {
                time_correction: 1_000_000,
                token_ans: 0,
            }),
            &mut rng,
        );
        assert_eq!(c.gps_ms(6_000), Some(1_000_006_000));
        // Answered once: a replay changes nothing.
        c.handle(
            7_000,
            Downlink::AppTimeAns(AppTimeAns {
                time_correction: 5,
                token_ans: 0,
            }),
            &mut rng,
        );
        assert_eq!(c.gps_ms(7_000), Some(1_000_007_000));
        // The next request is a period (+ jitter) after the answer, with the next token.
        let due = c.poll_timeout();
        assert!((6_000 + 128_000 * 128..=6_000 + 128_000 * 128 + 30_000).contains(&due));
        let r = req(c.poll_request(due, &mut rng));
        assert_eq!((r.token_req, r.ans_required), (1, false));
    }

    #[test]
    fn periodicity_and_forced_resync() {
        let mut rng = Rng::new(2);
        let mut c = ClockSync::new(Version::V1, 0);
        req(c.poll_request(0, &mut rng));
        let ans = c.handle(
            1_000,
            Downlink::DeviceAppTimePeriodicityReq(DeviceAppTimePeriodicityReq { period: 0 }),
            &mut rng,
        );
        assert!(
            matches!(ans, Some(Uplink::DeviceAppTimePeriodicityAns(a)) if !a.not_supported && a.time == 1)
        );
        assert!((129_000..=159_000).contains(&c.poll_timeout()));
        c.handle(
            2_000,
            Downlink::ForceDeviceResync(ForceDeviceResyncCmd {
                nb_transmissions: 3,
            }),
            &mut rng,
        );
        let mut sent = 0;
        let mut t = 2_000;
        while t < 2_000 + 60_000 {
            if c.poll_request(t, &mut rng).is_some() {
                sent += 1;
            }
            t += 1_000;
        }
        assert_eq!(sent, 3);
        assert!(matches!(
            c.handle(0, Downlink::PackageVersionReq(Default::default()), &mut rng),
            Some(Uplink::PackageVersionAns(PackageVersionAns {
                package_identifier: 1,
                package_version: 1
            }))
        ));
    }

    #[test]
    fn unanswered_requests_back_off_from_a_minute_to_the_period() {
        let mut rng = Rng::new(3);
        let mut c = ClockSync::new(Version::V2, 0);
        c.handle(
            0,
            Downlink::DeviceAppTimePeriodicityReq(DeviceAppTimePeriodicityReq { period: 2 }),
            &mut rng,
        );
        let mut t = 0;
        let mut gaps = Vec::new();
        let mut last = None;
        let mut tokens = Vec::new();
        while gaps.len() < 6 {
            t = t.max(c.poll_timeout());
            let r = req(c.poll_request(t, &mut rng));
            assert!(r.ans_required);
            tokens.push(r.token_req);
            if let Some(l) = last {
                gaps.push((t - l) / 1000);
            }
            last = Some(t);
        }
        // 60, 120, 240, 480 s, then the period (512 s), each plus up to 30 s of jitter.
        for (gap, base) in gaps.iter().zip([60, 120, 240, 480, 512, 512]) {
            assert!((base..=base + 30).contains(gap), "{gaps:?}");
        }
        assert_eq!(tokens, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_late_answer_to_an_earlier_request_still_corrects_once() {
        let mut rng = Rng::new(4);
        let mut c = ClockSync::new(Version::V2, 0);
        let first = req(c.poll_request(0, &mut rng));
        let second = req(c.poll_request(c.poll_timeout(), &mut rng));
        assert_ne!(first.token_req, second.token_req);
        // The answer to the first comes after the second went out.
        let ans = |token_ans, time_correction| {
            Downlink::AppTimeAns(AppTimeAns {
                time_correction,
                token_ans,
            })
        };
        c.handle(70_000, ans(first.token_req, 1_000), &mut rng);
        assert_eq!(c.gps_ms(70_000), Some(1_070_000));
        // The second's answer was computed against the old clock: not applied on top.
        c.handle(71_000, ans(second.token_req, 1_000), &mut rng);
        assert_eq!(c.gps_ms(71_000), Some(1_071_000));
    }
}
