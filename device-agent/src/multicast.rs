//! TS005 remote multicast setup, device side (sans-IO).
//!
//! Groups hold the multicast address, the session keys derived from the McKey (decrypted with
//! McKEKey) and the frame-counter window; the LoRaWAN stack installs them when the agent says
//! so ([`McEvent::GroupKeys`], then [`Multicast::group`] for the keys). Class C sessions open and close on GPS time; the agent tells
//! the stack when to switch ([`McEvent::ClassCStart`], [`McEvent::ClassCEnd`]). Class B is
//! refused unless the integrator enables it.

use fuota_codec::keys::{decrypt_mc_key, mc_app_s_key, mc_nwk_s_key, Key128};
use fuota_codec::multicast_setup::{
    Downlink, McGroupDeleteAns, McGroupSetupAns, McGroupStatusAns, McGroupStatusItem, McSessionAns,
    PackageVersionAns, Uplink, MAX_GROUPS, PACKAGE_ID,
};
use fuota_codec::Version;

use crate::clock::Millis;

/// What the radio can do, for the DR and frequency checks of session requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RadioLimits {
    pub min_hz: u32,
    pub max_hz: u32,
    pub max_dr: u8,
    pub class_b: bool,
}

impl RadioLimits {
    /// EU868: 863-870 MHz, DR0-DR7, no class B.
    pub const EU868: Self = Self {
        min_hz: 863_000_000,
        max_hz: 870_000_000,
        max_dr: 7,
        class_b: false,
    };

    /// US915: 902-928 MHz, downlink DR8-DR13, no class B.
    pub const US915: Self = Self {
        min_hz: 902_000_000,
        max_hz: 928_000_000,
        max_dr: 13,
        class_b: false,
    };
}

/// A multicast group as the LoRaWAN stack needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McGroup {
    pub addr: u32,
    pub app_s_key: Key128,
    pub nwk_s_key: Key128,
    pub min_fcount: u32,
    pub max_fcount: u32,
}

/// A scheduled or running class C session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCSession {
    /// GPS seconds (mod 2^32 as carried; compared as wrapping differences).
    pub start_s: u32,
    pub timeout_exp: u8,
    pub freq_hz: u32,
    pub dr: u8,
    pub running: bool,
}

/// What the LoRaWAN stack must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McEvent {
    /// Install (or replace) group `id`: its address, keys and frame-counter window are in
    /// [`Multicast::group`] (the event stays small: events queue in RAM).
    GroupKeys { id: u8 },
    /// Forget group `id`.
    GroupDeleted { id: u8 },
    /// Open class C reception for group `id`.
    ClassCStart { id: u8, freq_hz: u32, dr: u8 },
    /// Close it: the session's time is up.
    ClassCEnd { id: u8 },
}

/// Device side of TS005.
#[derive(Debug, Clone)]
pub struct Multicast {
    version: Version,
    mc_ke_key: Key128,
    limits: RadioLimits,
    groups: [Option<McGroup>; MAX_GROUPS],
    sessions: [Option<ClassCSession>; MAX_GROUPS],
}

/// McGroupStatusAns's items before any is filled in: a constant (all zero), stored in place,
/// where an array expression is built aside and copied.
const NO_ITEMS: [McGroupStatusItem; MAX_GROUPS] = [McGroupStatusItem {
    mc_group_id: 0,
    mc_addr: 0,
}; MAX_GROUPS];

/// `a - b` in seconds, both mod 2^32: in 32 bits, as no two times of interest lie 68 years
/// apart (and 64-bit compares cost twice the code).
fn wrapping_secs(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

impl Multicast {
    pub fn new(version: Version, mc_ke_key: Key128, limits: RadioLimits) -> Self {
        Self {
            version,
            mc_ke_key,
            limits,
            // Default: the empty slots are stored in place, where an array expression is
            // built aside and copied.
            groups: Default::default(),
            sessions: Default::default(),
        }
    }

    /// Puts back a group and its session saved before a reboot. A running session comes back
    /// as not running, so that the next timeout announces its start again.
    pub fn restore(&mut self, id: u8, group: McGroup, session: Option<ClassCSession>) {
        if let Some(slot) = self.groups.get_mut(usize::from(id)) {
            *slot = Some(group);
            let s = &mut self.sessions[usize::from(id)];
            *s = session;
            if let Some(s) = s {
                s.running = false;
            }
        }
    }

    pub fn group(&self, id: u8) -> Option<&McGroup> {
        self.groups.get(usize::from(id)).and_then(Option::as_ref)
    }

    pub fn session(&self, id: u8) -> Option<&ClassCSession> {
        self.sessions.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Drops group `id`'s class C session (`id` is in range), ending it if it runs; gives
    /// back the emptied slot.
    fn end_session(
        &mut self,
        id: u8,
        emit: &mut impl FnMut(McEvent),
    ) -> Option<&mut Option<ClassCSession>> {
        let slot = self.sessions.get_mut(usize::from(id))?;
        if slot.take().is_some_and(|s| s.running) {
            emit(McEvent::ClassCEnd { id });
        }
        Some(slot)
    }

    /// Handles one command; `gps_s` is the device's GPS time in seconds. Events go to `emit`.
    pub fn handle(
        &mut self,
        gps_s: u32,
        cmd: Downlink,
        mut emit: impl FnMut(McEvent),
    ) -> Option<Uplink> {
        match cmd {
            Downlink::PackageVersionReq(_) => Some(Uplink::PackageVersionAns(PackageVersionAns {
                package_identifier: PACKAGE_ID,
                package_version: self.version.number(),
            })),
            Downlink::McGroupStatusReq(req) => {
                // The mask and the count in locals, stored once in the answer, not after
                // every group.
                let (mut mask, mut total) = (0, 0);
                let mut ans = McGroupStatusAns {
                    ans_group_mask: 0,
                    nb_total_groups: 0,
                    items: NO_ITEMS,
                };
                // One pass counts the groups and lists those asked for, each in the next
                // item (an iterator: no index to check).
                let mut next = ans.items.iter_mut();
                for (id, g) in self.groups.iter().enumerate() {
                    let Some(g) = g else { continue };
                    total += 1;
                    if req.req_group_mask & (1 << id) != 0 {
                        mask |= 1 << id;
                        if let Some(item) = next.next() {
                            *item = McGroupStatusItem {
                                mc_group_id: id as u8,
                                mc_addr: g.addr,
                            };
                        }
                    }
                }
                ans.ans_group_mask = mask;
                ans.nb_total_groups = total;
                Some(Uplink::McGroupStatusAns(ans))
            }
            Downlink::McGroupSetupReq(req) => {
                let id = req.mc_group_id;
                let Some(slot) = self.groups.get_mut(usize::from(id)) else {
                    return Some(Uplink::McGroupSetupAns(McGroupSetupAns {
                        mc_group_id: id,
                        id_error: true,
                    }));
                };
                let mc_key = decrypt_mc_key(&self.mc_ke_key, &req.mc_key_encrypted);
                let group = McGroup {
                    addr: req.mc_addr,
                    app_s_key: mc_app_s_key(&mc_key, req.mc_addr),
                    nwk_s_key: mc_nwk_s_key(&mc_key, req.mc_addr),
                    min_fcount: req.min_mc_fcount,
                    max_fcount: req.max_mc_fcount,
                };
                *slot = Some(group);
                // A new definition ends any session of the old one.
                self.end_session(id, &mut emit);
                emit(McEvent::GroupKeys { id });
                Some(Uplink::McGroupSetupAns(McGroupSetupAns {
                    mc_group_id: id,
                    id_error: false,
                }))
            }
            Downlink::McGroupDeleteReq(req) => {
                let id = req.mc_group_id;
                let existed = self
                    .groups
                    .get_mut(usize::from(id))
                    .and_then(Option::take)
                    .is_some();
                if existed {
                    self.end_session(id, &mut emit);
                    emit(McEvent::GroupDeleted { id });
                }
                Some(Uplink::McGroupDeleteAns(McGroupDeleteAns {
                    mc_group_id: id,
                    mc_group_undefined: !existed,
                }))
            }
            Downlink::McClassCSessionReq(req) => {
                let id = req.mc_group_id;
                let freq_hz = req.dl_frequ.hz();
                let until = wrapping_secs(req.session_time, gps_s);
                let mut ans = McSessionAns {
                    mc_group_id: id,
                    dr_error: req.dr > self.limits.max_dr,
                    freq_error: !(self.limits.min_hz..=self.limits.max_hz).contains(&freq_hz),
                    mc_group_undefined: self.group(id).is_none(),
                    start_missed: false,
                    time_to_start: None,
                };
                if !(ans.dr_error || ans.freq_error || ans.mc_group_undefined) {
                    // v2 says so; v1 has no bit for it and takes the session late (one
                    // already over ends, unannounced, at the next timeout).
                    ans.start_missed = until < 0 && self.version == Version::V2;
                }
                if !(ans.dr_error || ans.freq_error || ans.mc_group_undefined || ans.start_missed) {
                    let session = ClassCSession {
                        start_s: req.session_time,
                        timeout_exp: req.time_out,
                        freq_hz,
                        dr: req.dr,
                        running: false,
                    };
                    if let Some(slot) = self.end_session(id, &mut emit) {
                        *slot = Some(session);
                    }
                    ans.time_to_start = Some(until.clamp(0, 0x00ff_ffff) as u32);
                }
                Some(Uplink::McClassCSessionAns(ans))
            }
            Downlink::McClassBSessionReq(req) => {
                // Without class B nothing about the request can be honoured: DR and
                // frequency are both refused.
                let undefined = self.group(req.mc_group_id).is_none();
                Some(Uplink::McClassBSessionAns(McSessionAns {
                    mc_group_id: req.mc_group_id,
                    dr_error: !self.limits.class_b || req.dr > self.limits.max_dr,
                    freq_error: !self.limits.class_b,
                    mc_group_undefined: undefined,
                    start_missed: false,
                    time_to_start: None,
                }))
            }
        }
    }

    /// Starts and ends sessions whose time has come; `gps_s` as in [`Multicast::handle`].
    pub fn handle_timeout(&mut self, gps_s: u32, mut emit: impl FnMut(McEvent)) {
        for (id, slot) in self.sessions.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let id = id as u8;
            let end = s.start_s.wrapping_add(1u32 << s.timeout_exp);
            if wrapping_secs(end, gps_s) <= 0 {
                if s.running {
                    emit(McEvent::ClassCEnd { id });
                }
                *slot = None;
            } else if !s.running && wrapping_secs(s.start_s, gps_s) <= 0 {
                s.running = true;
                emit(McEvent::ClassCStart {
                    id,
                    freq_hz: s.freq_hz,
                    dr: s.dr,
                });
            }
        }
    }

    /// GPS second of the next session start or end after `gps_s`, for the agent's timer.
    pub fn next_deadline_s(&self, gps_s: u32) -> Option<u32> {
        // The smallest distance from `gps_s`, then the second it leads to.
        let mut soonest: Option<i32> = None;
        for s in self.sessions.iter().flatten() {
            let t = match s.running {
                true => s.start_s.wrapping_add(1u32 << s.timeout_exp),
                false => s.start_s,
            };
            let d = wrapping_secs(t, gps_s);
            if soonest.is_none_or(|m| d < m) {
                soonest = Some(d);
            }
        }
        soonest.map(|d| gps_s.wrapping_add(d as u32))
    }

    /// A running session's group, to route class C downlinks (and refuse the rest).
    pub fn is_receiving(&self, id: u8) -> bool {
        self.session(id).is_some_and(|s| s.running)
    }

    /// When, on the caller's clock, a GPS second falls, given the current offset.
    pub fn at(gps_s: u32, now: Millis, gps_now_ms: i64) -> Millis {
        let ahead_s = wrapping_secs(gps_s, crate::clock::seconds_of(gps_now_ms));
        // A second already past is due now. Unsigned from here on: no 64-bit signed compare.
        now + u64::from(ahead_s.max(0) as u32) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuota_codec::keys::{encrypt_mc_key, mc_ke_key, mc_root_key_lorawan_1_1};
    use fuota_codec::multicast_setup::{
        DlFrequ, McClassBSessionReq, McClassCSessionReq, McGroupDeleteReq, McGroupSetupReq,
        McGroupStatusReq,
    };

    fn setup() -> (Multicast, Key128) {
        let ke = mc_ke_key(&mc_root_key_lorawan_1_1(&Key128::from_bytes([1; 16])));
        (
            Multicast::new(Version::V2, ke.clone(), RadioLimits::EU868),
            ke,
        )
    }

    fn session_req(id: u8, time: u32) -> Downlink {
        Downlink::McClassCSessionReq(McClassCSessionReq {
            mc_group_id: id,
            session_time: time,
            time_out: 4,
            dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
            dr: 0,
        })
    }

    #[test]
    fn group_setup_derives_keys_and_sessions_run_on_gps_time() {
        let (mut m, ke) = setup();
        let mc_key = Key128::from_bytes([7; 16]);
        let mut events = std::vec::Vec::new();
        let ans = m.handle(
            1000,
            Downlink::McGroupSetupReq(McGroupSetupReq {
                mc_group_id: 1,
                mc_addr: 0x0102_0304,
                mc_key_encrypted: encrypt_mc_key(&ke, &mc_key),
                min_mc_fcount: 0,
                max_mc_fcount: 1000,
            }),
            |e| events.push(e),
        );
        assert_eq!(
            ans,
            Some(Uplink::McGroupSetupAns(McGroupSetupAns {
                mc_group_id: 1,
                id_error: false
            }))
        );
        assert_eq!(events, [McEvent::GroupKeys { id: 1 }]);
        let group = m.group(1).unwrap();
        assert_eq!(group.app_s_key, mc_app_s_key(&mc_key, 0x0102_0304));
        // Status: only group 1 defined.
        let Some(Uplink::McGroupStatusAns(s)) = m.handle(
            1000,
            Downlink::McGroupStatusReq(McGroupStatusReq {
                req_group_mask: 0x0f,
            }),
            |_| {},
        ) else {
            panic!()
        };
        assert_eq!(
            (s.ans_group_mask, s.nb_total_groups, s.items()[0].mc_addr),
            (0b10, 1, 0x0102_0304)
        );
        // A session 100 s ahead, 16 s long.
        let Some(Uplink::McClassCSessionAns(a)) = m.handle(1000, session_req(1, 1100), |_| {})
        else {
            panic!()
        };
        assert_eq!(a.time_to_start, Some(100));
        events.clear();
        m.handle_timeout(1099, |e| events.push(e));
        assert!(events.is_empty());
        m.handle_timeout(1100, |e| events.push(e));
        assert_eq!(
            events,
            [McEvent::ClassCStart {
                id: 1,
                freq_hz: 869_525_000,
                dr: 0
            }]
        );
        assert!(m.is_receiving(1));
        m.handle_timeout(1116, |e| events.push(e));
        assert_eq!(events[1], McEvent::ClassCEnd { id: 1 });
        assert!(!m.is_receiving(1));
        // Errors: undefined group, bad DR, bad frequency, start missed (v2).
        let Some(Uplink::McClassCSessionAns(a)) = m.handle(2000, session_req(2, 2100), |_| {})
        else {
            panic!()
        };
        assert!(a.mc_group_undefined && a.time_to_start.is_none());
        let Some(Uplink::McClassCSessionAns(a)) = m.handle(2000, session_req(1, 1990), |_| {})
        else {
            panic!()
        };
        assert!(a.start_missed && a.time_to_start.is_none());
        let bad = McClassCSessionReq {
            mc_group_id: 1,
            session_time: 2100,
            time_out: 4,
            dl_frequ: DlFrequ::from_hz(915_000_000).unwrap(),
            dr: 9,
        };
        let Some(Uplink::McClassCSessionAns(a)) =
            m.handle(2000, Downlink::McClassCSessionReq(bad), |_| {})
        else {
            panic!()
        };
        assert!(a.dr_error && a.freq_error);
        // Class B is refused when not configured.
        let Some(Uplink::McClassBSessionAns(a)) = m.handle(
            2000,
            Downlink::McClassBSessionReq(McClassBSessionReq {
                mc_group_id: 1,
                session_time: 2100,
                time_out: 1,
                periodicity: 0,
                dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
                dr: 0,
            }),
            |_| {},
        ) else {
            panic!()
        };
        assert!(a.dr_error && a.freq_error && !a.mc_group_undefined && a.time_to_start.is_none());
        // Delete, then delete again.
        events.clear();
        let ans = m.handle(
            2000,
            Downlink::McGroupDeleteReq(McGroupDeleteReq { mc_group_id: 1 }),
            |e| events.push(e),
        );
        assert_eq!(
            ans,
            Some(Uplink::McGroupDeleteAns(McGroupDeleteAns {
                mc_group_id: 1,
                mc_group_undefined: false
            }))
        );
        assert_eq!(events, [McEvent::GroupDeleted { id: 1 }]);
        let ans = m.handle(
            2000,
            Downlink::McGroupDeleteReq(McGroupDeleteReq { mc_group_id: 1 }),
            |_| {},
        );
        assert_eq!(
            ans,
            Some(Uplink::McGroupDeleteAns(McGroupDeleteAns {
                mc_group_id: 1,
                mc_group_undefined: true
            }))
        );
    }

    #[test]
    fn a_running_session_ends_when_replaced_redefined_or_deleted() {
        let (mut m, ke) = setup();
        let setup_req = Downlink::McGroupSetupReq(McGroupSetupReq {
            mc_group_id: 2,
            mc_addr: 0x0a0b_0c0d,
            mc_key_encrypted: encrypt_mc_key(&ke, &Key128::from_bytes([9; 16])),
            min_mc_fcount: 0,
            max_mc_fcount: 100,
        });
        let mut events = std::vec::Vec::new();
        let run = |m: &mut Multicast, at: u32, cmd: Downlink| {
            let mut ev = std::vec::Vec::new();
            m.handle(at, cmd, |e| ev.push(e));
            m.handle_timeout(at, |e| ev.push(e));
            ev
        };
        run(&mut m, 10, setup_req);
        // Started, then a new session for the group: the running one ends, the new one waits.
        assert_eq!(run(&mut m, 10, session_req(2, 10)).len(), 1);
        assert!(m.is_receiving(2));
        events.extend(run(&mut m, 11, session_req(2, 50)));
        assert_eq!(events, [McEvent::ClassCEnd { id: 2 }]);
        assert!(!m.is_receiving(2) && m.session(2).is_some_and(|s| s.start_s == 50));
        // A session not yet started ends silently with a new definition of its group.
        assert_eq!(run(&mut m, 12, setup_req), [McEvent::GroupKeys { id: 2 }]);
        assert!(m.session(2).is_none());
        // Running, then redefined; running, then deleted.
        run(&mut m, 13, session_req(2, 13));
        assert_eq!(
            run(&mut m, 14, setup_req),
            [McEvent::ClassCEnd { id: 2 }, McEvent::GroupKeys { id: 2 }]
        );
        run(&mut m, 15, session_req(2, 15));
        assert!(m.is_receiving(2));
        assert_eq!(
            run(
                &mut m,
                16,
                Downlink::McGroupDeleteReq(McGroupDeleteReq { mc_group_id: 2 })
            ),
            [
                McEvent::ClassCEnd { id: 2 },
                McEvent::GroupDeleted { id: 2 }
            ]
        );
        assert!(m.session(2).is_none() && m.group(2).is_none());
    }

    #[test]
    fn the_next_deadline_is_the_soonest_start_or_end_across_the_wrap() {
        let (mut m, ke) = setup();
        for id in [0, 1] {
            m.handle(
                0,
                Downlink::McGroupSetupReq(McGroupSetupReq {
                    mc_group_id: id,
                    mc_addr: u32::from(id),
                    mc_key_encrypted: encrypt_mc_key(&ke, &Key128::from_bytes([3; 16])),
                    min_mc_fcount: 0,
                    max_mc_fcount: 10,
                }),
                |_| {},
            );
        }
        assert_eq!(m.next_deadline_s(0), None);
        // Group 0 starts 10 s from now, past the wrap of GPS seconds; group 1 now, for 16 s.
        let now = u32::MAX - 5;
        m.handle(now, session_req(0, now.wrapping_add(10)), |_| {});
        m.handle(now, session_req(1, now), |_| {});
        assert_eq!(m.next_deadline_s(now), Some(now));
        // Group 1 runs: its end is after group 0's start.
        m.handle_timeout(now, |_| {});
        assert_eq!(m.next_deadline_s(now), Some(now.wrapping_add(10)));
        m.handle_timeout(now.wrapping_add(10), |_| {});
        assert_eq!(m.next_deadline_s(now), Some(now.wrapping_add(16)));
    }

    #[test]
    fn v1_takes_a_late_session_and_drops_it_unannounced_once_over() {
        let ke = mc_ke_key(&mc_root_key_lorawan_1_1(&Key128::from_bytes([1; 16])));
        let mut m = Multicast::new(Version::V1, ke.clone(), RadioLimits::EU868);
        m.handle(
            0,
            Downlink::McGroupSetupReq(McGroupSetupReq {
                mc_group_id: 0,
                mc_addr: 1,
                mc_key_encrypted: encrypt_mc_key(&ke, &Key128::from_bytes([3; 16])),
                min_mc_fcount: 0,
                max_mc_fcount: 10,
            }),
            |_| {},
        );
        // Started 5 s ago, 16 s long: taken, starting now.
        let Some(Uplink::McClassCSessionAns(a)) = m.handle(105, session_req(0, 100), |_| {}) else {
            panic!()
        };
        assert!(!a.start_missed && a.time_to_start == Some(0));
        // Over already: taken all the same, then dropped at the timeout without an event.
        let Some(Uplink::McClassCSessionAns(a)) = m.handle(200, session_req(0, 100), |_| {}) else {
            panic!()
        };
        assert!(!a.start_missed && a.time_to_start == Some(0));
        let mut events = std::vec::Vec::new();
        m.handle_timeout(200, |e| events.push(e));
        assert!(events.is_empty() && m.session(0).is_none());
    }
}
