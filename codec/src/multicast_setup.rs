//! TS005 Remote Multicast Setup, v1.0.0 and v2.0.0 (port 200, package id 2).
//!
//! The versions share every layout; v2 adds the StartMissed bit (5) to the class B and class
//! C session answers, which is reserved in v1.

use crate::error::{Error, ErrorKind};
use crate::package::{Command, Commands, Version};
use crate::wire::{split_cid, Reader, Stop, Writer};

pub const PORT: u8 = 200;
pub const PACKAGE_ID: u8 = 2;

/// Multicast groups a device can hold: McGroupID is 2 bits.
pub const MAX_GROUPS: usize = 4;

/// DLFrequ values from this one up count in 200 Hz steps (the 2.4 GHz band), below in 100 Hz.
const FREQ_2G4_THRESHOLD: u32 = 12_000_000;

/// DLFrequ, as carried: a 24-bit count of 100 Hz steps (200 Hz at 2.4 GHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DlFrequ(pub u32);

impl DlFrequ {
    /// The carried value for `hz`, or None if it is not on the grid or does not fit 24 bits.
    pub fn from_hz(hz: u32) -> Option<Self> {
        let (step, hz) = if hz >= 2_400_000_000 {
            (2, hz / 2)
        } else {
            (1, hz)
        };
        if hz % 100 != 0 || (step == 2 && hz % 2 != 0) {
            return None;
        }
        let v = hz / 100;
        (v <= 0x00ff_ffff).then_some(DlFrequ(v))
    }

    pub fn hz(self) -> u32 {
        if self.0 >= FREQ_2G4_THRESHOLD {
            self.0.saturating_mul(200)
        } else {
            self.0.saturating_mul(100)
        }
    }
}

/// PackageVersionReq (CID 0x00, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackageVersionReq;

/// PackageVersionAns (CID 0x00, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageVersionAns {
    pub package_identifier: u8,
    pub package_version: u8,
}

/// McGroupStatusReq (CID 0x01, downlink): which groups to report, bit i = group i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupStatusReq {
    /// 4 bits.
    pub req_group_mask: u8,
}

/// One defined group in McGroupStatusAns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupStatusItem {
    /// 2 bits.
    pub mc_group_id: u8,
    pub mc_addr: u32,
}

/// McGroupStatusAns (CID 0x01, uplink): one item per bit set in the mask, in the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupStatusAns {
    /// 4 bits: the groups that are defined among those asked for.
    pub ans_group_mask: u8,
    /// 3 bits: how many groups the device has defined in all.
    pub nb_total_groups: u8,
    /// The first `ans_group_mask.count_ones()` entries are the answer; the rest are unused.
    pub items: [McGroupStatusItem; MAX_GROUPS],
}

impl McGroupStatusAns {
    /// The items this answer carries.
    pub fn items(&self) -> &[McGroupStatusItem] {
        // The bits set in each 4-bit mask, looked up: a popcount is a dozen instructions on
        // a Cortex-M, inlined where the answer is sized and where it is written.
        const BITS: [u8; 16] = [0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4];
        let n = BITS[usize::from(self.ans_group_mask & 0x0f)];
        &self.items[..usize::from(n)]
    }
}

const EMPTY_ITEM: McGroupStatusItem = McGroupStatusItem {
    mc_group_id: 0,
    mc_addr: 0,
};

/// McGroupSetupReq (CID 0x02, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupSetupReq {
    /// 2 bits.
    pub mc_group_id: u8,
    pub mc_addr: u32,
    /// McKey encrypted under McKEKey (see [`crate::keys`]).
    pub mc_key_encrypted: [u8; 16],
    pub min_mc_fcount: u32,
    pub max_mc_fcount: u32,
}

/// McGroupSetupAns (CID 0x02, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupSetupAns {
    pub mc_group_id: u8,
    /// The device cannot hold a group with this id.
    pub id_error: bool,
}

/// McGroupDeleteReq (CID 0x03, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupDeleteReq {
    pub mc_group_id: u8,
}

/// McGroupDeleteAns (CID 0x03, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McGroupDeleteAns {
    pub mc_group_id: u8,
    pub mc_group_undefined: bool,
}

/// McClassCSessionReq (CID 0x04, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McClassCSessionReq {
    pub mc_group_id: u8,
    /// GPS time (s) of the session start, modulo 2^32.
    pub session_time: u32,
    /// 4 bits: the session lasts at most 2^time_out seconds.
    pub time_out: u8,
    pub dl_frequ: DlFrequ,
    pub dr: u8,
}

/// McClassBSessionReq (CID 0x05, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McClassBSessionReq {
    pub mc_group_id: u8,
    /// GPS time (s) of the session start, modulo 2^32.
    pub session_time: u32,
    /// 4 bits: the session lasts at most 2^time_out beacon periods.
    pub time_out: u8,
    /// 3 bits: ping slot periodicity.
    pub periodicity: u8,
    pub dl_frequ: DlFrequ,
    pub dr: u8,
}

/// McClassCSessionAns (CID 0x04) and McClassBSessionAns (CID 0x05), uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McSessionAns {
    pub mc_group_id: u8,
    pub dr_error: bool,
    pub freq_error: bool,
    pub mc_group_undefined: bool,
    /// v2 only: the session start time has already passed.
    pub start_missed: bool,
    /// Seconds until the session starts (24 bits); present exactly when no error bit is set.
    pub time_to_start: Option<u32>,
}

impl McSessionAns {
    fn has_error(&self) -> bool {
        self.dr_error || self.freq_error || self.mc_group_undefined
    }
}

/// Commands the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    PackageVersionReq(PackageVersionReq),
    McGroupStatusReq(McGroupStatusReq),
    McGroupSetupReq(McGroupSetupReq),
    McGroupDeleteReq(McGroupDeleteReq),
    McClassCSessionReq(McClassCSessionReq),
    McClassBSessionReq(McClassBSessionReq),
}

/// Commands the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    PackageVersionAns(PackageVersionAns),
    McGroupStatusAns(McGroupStatusAns),
    McGroupSetupAns(McGroupSetupAns),
    McGroupDeleteAns(McGroupDeleteAns),
    McClassCSessionAns(McSessionAns),
    McClassBSessionAns(McSessionAns),
}

pub fn downlinks(version: Version, payload: &[u8]) -> Commands<'_, Downlink> {
    Commands::new(version, payload)
}

pub fn uplinks(version: Version, payload: &[u8]) -> Commands<'_, Uplink> {
    Commands::new(version, payload)
}

fn group_id<const REPORT: bool>(
    r: &mut Reader<'_, REPORT>,
    field: &'static str,
    b: u8,
    rfu: u8,
) -> Result<u8, Stop> {
    r.check_rfu(field, b, rfu)?;
    Ok(b & 0x03)
}

fn check_id<const REPORT: bool>(w: &mut Writer<'_, REPORT>, id: u8) -> Result<(), Stop> {
    if id > 3 {
        Err(w.invalid("McGroupID"))
    } else {
        Ok(())
    }
}

impl Downlink {
    pub const fn cid(&self) -> u8 {
        match self {
            Downlink::PackageVersionReq(_) => 0x00,
            Downlink::McGroupStatusReq(_) => 0x01,
            Downlink::McGroupSetupReq(_) => 0x02,
            Downlink::McGroupDeleteReq(_) => 0x03,
            Downlink::McClassCSessionReq(_) => 0x04,
            Downlink::McClassBSessionReq(_) => 0x05,
        }
    }

    pub fn name(&self, _version: Version) -> &'static str {
        match self {
            Downlink::PackageVersionReq(_) => "PackageVersionReq",
            Downlink::McGroupStatusReq(_) => "McGroupStatusReq",
            Downlink::McGroupSetupReq(_) => "McGroupSetupReq",
            Downlink::McGroupDeleteReq(_) => "McGroupDeleteReq",
            Downlink::McClassCSessionReq(_) => "McClassCSessionReq",
            Downlink::McClassBSessionReq(_) => "McClassBSessionReq",
        }
    }

    /// Length on the wire, CID included.
    pub const fn len(&self, _version: Version) -> usize {
        match self {
            Downlink::PackageVersionReq(_) => 1,
            Downlink::McGroupStatusReq(_) | Downlink::McGroupDeleteReq(_) => 2,
            Downlink::McGroupSetupReq(_) => 30,
            Downlink::McClassCSessionReq(_) | Downlink::McClassBSessionReq(_) => 11,
        }
    }

    pub fn parse(version: Version, bytes: &[u8]) -> Result<(Self, usize), Error> {
        let (cid, body) = split_cid(bytes)?;
        let mut r = Reader::<true>::new("payload", body);
        let cmd = Self::parse_body(version, cid, &mut r).map_err(|_| r.into_error())?;
        Ok((cmd, cmd.len(version)))
    }

    fn parse_body<const REPORT: bool>(
        _version: Version,
        cid: u8,
        r: &mut Reader<'_, REPORT>,
    ) -> Result<Self, Stop> {
        Ok(match cid {
            0x00 => Downlink::PackageVersionReq(PackageVersionReq),
            0x01 => {
                r.command("McGroupStatusReq");
                let mask = r.u8("CmdMask")?;
                r.check_rfu("CmdMask", mask, 0xf0)?;
                Downlink::McGroupStatusReq(McGroupStatusReq {
                    req_group_mask: mask,
                })
            }
            0x02 => {
                r.command("McGroupSetupReq");
                // The fixed 29-byte body checked once on a device: the reads fold their checks.
                r.expect(29)?;
                let header = r.u8("McGroupIDHeader")?;
                let mc_group_id = group_id(r, "McGroupIDHeader", header, 0xfc)?;
                Downlink::McGroupSetupReq(McGroupSetupReq {
                    mc_group_id,
                    mc_addr: r.u32("McAddr")?,
                    mc_key_encrypted: r.bytes("McKey_encrypted")?,
                    min_mc_fcount: r.u32("minMcFCount")?,
                    max_mc_fcount: r.u32("maxMcFCount")?,
                })
            }
            0x03 => {
                r.command("McGroupDeleteReq");
                let header = r.u8("McGroupIDHeader")?;
                Downlink::McGroupDeleteReq(McGroupDeleteReq {
                    mc_group_id: group_id(r, "McGroupIDHeader", header, 0xfc)?,
                })
            }
            0x04 => {
                r.command("McClassCSessionReq");
                r.expect(10)?;
                let header = r.u8("McGroupIDHeader")?;
                let mc_group_id = group_id(r, "McGroupIDHeader", header, 0xfc)?;
                let session_time = r.u32("SessionTime")?;
                let time_out = r.u8("SessionTimeOut")?;
                r.check_rfu("SessionTimeOut", time_out, 0xf0)?;
                Downlink::McClassCSessionReq(McClassCSessionReq {
                    mc_group_id,
                    session_time,
                    time_out,
                    dl_frequ: DlFrequ(r.u24("DLFrequ")?),
                    dr: r.u8("DR")?,
                })
            }
            0x05 => {
                r.command("McClassBSessionReq");
                r.expect(10)?;
                let header = r.u8("McGroupIDHeader")?;
                let mc_group_id = group_id(r, "McGroupIDHeader", header, 0xfc)?;
                let session_time = r.u32("SessionTime")?;
                let tp = r.u8("TimeOutPeriodicity")?;
                r.check_rfu("TimeOutPeriodicity", tp, 0x80)?;
                Downlink::McClassBSessionReq(McClassBSessionReq {
                    mc_group_id,
                    session_time,
                    time_out: tp & 0x0f,
                    periodicity: (tp >> 4) & 0x07,
                    dl_frequ: DlFrequ(r.u24("DLFrequ")?),
                    dr: r.u8("DR")?,
                })
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    pub fn build_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let mut w = Writer::<true>::new(self.name(version), buf, self.len(version))?;
        // The first error stays in the writer, which gives it back.
        let _ = self.build_body(version, &mut w);
        w.finish()
    }

    fn build_body<const REPORT: bool>(
        &self,
        _version: Version,
        w: &mut Writer<'_, REPORT>,
    ) -> Result<(), Stop> {
        w.u8(self.cid());
        match self {
            Downlink::PackageVersionReq(_) => {}
            Downlink::McGroupStatusReq(c) => {
                if c.req_group_mask > 0x0f {
                    return Err(w.invalid("ReqGroupMask"));
                }
                w.u8(c.req_group_mask);
            }
            Downlink::McGroupSetupReq(c) => {
                check_id(w, c.mc_group_id)?;
                w.u8(c.mc_group_id);
                w.u32(c.mc_addr);
                w.put(&c.mc_key_encrypted);
                w.u32(c.min_mc_fcount);
                w.u32(c.max_mc_fcount);
            }
            Downlink::McGroupDeleteReq(c) => {
                check_id(w, c.mc_group_id)?;
                w.u8(c.mc_group_id);
            }
            Downlink::McClassCSessionReq(c) => {
                check_id(w, c.mc_group_id)?;
                if c.time_out > 0x0f {
                    return Err(w.invalid("TimeOut"));
                }
                w.u8(c.mc_group_id);
                w.u32(c.session_time);
                w.u8(c.time_out);
                w.u24("DLFrequ", c.dl_frequ.0)?;
                w.u8(c.dr);
            }
            Downlink::McClassBSessionReq(c) => {
                check_id(w, c.mc_group_id)?;
                if c.time_out > 0x0f {
                    return Err(w.invalid("TimeOut"));
                }
                if c.periodicity > 0x07 {
                    return Err(w.invalid("Periodicity"));
                }
                w.u8(c.mc_group_id);
                w.u32(c.session_time);
                w.u8(c.periodicity << 4 | c.time_out);
                w.u24("DLFrequ", c.dl_frequ.0)?;
                w.u8(c.dr);
            }
        }
        Ok(())
    }
}

impl<'a> Command<'a> for Downlink {
    fn parse_one(version: Version, bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        Downlink::parse(version, bytes)
    }

    fn parse_valid(version: Version, bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (&cid, body) = bytes.split_first()?;
        let mut r = Reader::<false>::new("payload", body);
        let cmd = Self::parse_body(version, cid, &mut r).ok()?;
        // Each command's fields are exactly its length: the reader stops at the next one.
        Some((cmd, r.remaining()))
    }
}

fn parse_session_ans<const REPORT: bool>(
    version: Version,
    r: &mut Reader<'_, REPORT>,
) -> Result<McSessionAns, Stop> {
    let status = r.u8("StatusAndMcGroupID")?;
    let rfu = match version {
        Version::V1 => 0xe0,
        Version::V2 => 0xc0,
    };
    r.check_rfu("StatusAndMcGroupID", status, rfu)?;
    let mut ans = McSessionAns {
        mc_group_id: status & 0x03,
        dr_error: status & 0x04 != 0,
        freq_error: status & 0x08 != 0,
        mc_group_undefined: status & 0x10 != 0,
        start_missed: status & 0x20 != 0,
        time_to_start: None,
    };
    if !ans.has_error() {
        ans.time_to_start = Some(r.u24("TimeToStart")?);
    }
    Ok(ans)
}

fn build_session_ans<const REPORT: bool>(
    version: Version,
    w: &mut Writer<'_, REPORT>,
    a: &McSessionAns,
) -> Result<(), Stop> {
    check_id(w, a.mc_group_id)?;
    if a.start_missed && version == Version::V1 {
        return Err(w.invalid("StartMissed"));
    }
    if a.has_error() != a.time_to_start.is_none() {
        // TimeToStart travels exactly when the session was accepted.
        return Err(w.invalid("TimeToStart"));
    }
    let status = a.mc_group_id
        | u8::from(a.dr_error) << 2
        | u8::from(a.freq_error) << 3
        | u8::from(a.mc_group_undefined) << 4
        | u8::from(a.start_missed) << 5;
    w.u8(status);
    if let Some(t) = a.time_to_start {
        w.u24("TimeToStart", t)?;
    }
    Ok(())
}

impl Uplink {
    pub const fn cid(&self) -> u8 {
        match self {
            Uplink::PackageVersionAns(_) => 0x00,
            Uplink::McGroupStatusAns(_) => 0x01,
            Uplink::McGroupSetupAns(_) => 0x02,
            Uplink::McGroupDeleteAns(_) => 0x03,
            Uplink::McClassCSessionAns(_) => 0x04,
            Uplink::McClassBSessionAns(_) => 0x05,
        }
    }

    pub fn name(&self, _version: Version) -> &'static str {
        match self {
            Uplink::PackageVersionAns(_) => "PackageVersionAns",
            Uplink::McGroupStatusAns(_) => "McGroupStatusAns",
            Uplink::McGroupSetupAns(_) => "McGroupSetupAns",
            Uplink::McGroupDeleteAns(_) => "McGroupDeleteAns",
            Uplink::McClassCSessionAns(_) => "McClassCSessionAns",
            Uplink::McClassBSessionAns(_) => "McClassBSessionAns",
        }
    }

    /// Length on the wire, CID included: McGroupStatusAns carries 5 bytes per group and the
    /// session answers carry TimeToStart only when accepted.
    pub fn len(&self, _version: Version) -> usize {
        match self {
            Uplink::PackageVersionAns(_) => 3,
            Uplink::McGroupStatusAns(a) => 2 + 5 * a.items().len(),
            Uplink::McGroupSetupAns(_) | Uplink::McGroupDeleteAns(_) => 2,
            Uplink::McClassCSessionAns(a) | Uplink::McClassBSessionAns(a) => {
                if a.time_to_start.is_some() {
                    5
                } else {
                    2
                }
            }
        }
    }

    pub fn parse(version: Version, bytes: &[u8]) -> Result<(Self, usize), Error> {
        let (cid, body) = split_cid(bytes)?;
        let mut r = Reader::<true>::new("payload", body);
        let cmd = Self::parse_body(version, cid, &mut r).map_err(|_| r.into_error())?;
        Ok((cmd, cmd.len(version)))
    }

    fn parse_body<const REPORT: bool>(
        version: Version,
        cid: u8,
        r: &mut Reader<'_, REPORT>,
    ) -> Result<Self, Stop> {
        Ok(match cid {
            0x00 => {
                r.command("PackageVersionAns");
                Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier: r.u8("PackageIdentifier")?,
                    package_version: r.u8("PackageVersion")?,
                })
            }
            0x01 => {
                r.command("McGroupStatusAns");
                let status = r.u8("Status")?;
                r.check_rfu("Status", status, 0x80)?;
                let mask = status & 0x0f;
                let mut items = [EMPTY_ITEM; MAX_GROUPS];
                for item in items.iter_mut().take(mask.count_ones() as usize) {
                    let id = r.u8("McGroupID")?;
                    item.mc_group_id = group_id(r, "McGroupID", id, 0xfc)?;
                    item.mc_addr = r.u32("McAddr")?;
                }
                Uplink::McGroupStatusAns(McGroupStatusAns {
                    ans_group_mask: mask,
                    nb_total_groups: (status >> 4) & 0x07,
                    items,
                })
            }
            0x02 => {
                r.command("McGroupSetupAns");
                let b = r.u8("McGroupIDHeader")?;
                Uplink::McGroupSetupAns(McGroupSetupAns {
                    mc_group_id: group_id(r, "McGroupIDHeader", b, 0xf8)?,
                    id_error: b & 0x04 != 0,
                })
            }
            0x03 => {
                r.command("McGroupDeleteAns");
                let b = r.u8("McGroupIDHeader")?;
                Uplink::McGroupDeleteAns(McGroupDeleteAns {
                    mc_group_id: group_id(r, "McGroupIDHeader", b, 0xf8)?,
                    mc_group_undefined: b & 0x04 != 0,
                })
            }
            0x04 => {
                r.command("McClassCSessionAns");
                Uplink::McClassCSessionAns(parse_session_ans(version, r)?)
            }
            0x05 => {
                r.command("McClassBSessionAns");
                Uplink::McClassBSessionAns(parse_session_ans(version, r)?)
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    /// [`Uplink::build_into`] for a device, which has no one to tell why a build failed:
    /// `None` where that gives an error, and no code to describe it.
    pub fn write_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let mut w = Writer::<false>::new(self.name(version), buf, self.len(version)).ok()?;
        self.build_body(version, &mut w).ok()?;
        w.finish().ok()
    }

    pub fn build_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let mut w = Writer::<true>::new(self.name(version), buf, self.len(version))?;
        // The first error stays in the writer, which gives it back.
        let _ = self.build_body(version, &mut w);
        w.finish()
    }

    fn build_body<const REPORT: bool>(
        &self,
        version: Version,
        w: &mut Writer<'_, REPORT>,
    ) -> Result<(), Stop> {
        w.u8(self.cid());
        match self {
            Uplink::PackageVersionAns(c) => {
                w.u8(c.package_identifier);
                w.u8(c.package_version);
            }
            Uplink::McGroupStatusAns(c) => {
                if c.ans_group_mask > 0x0f {
                    return Err(w.invalid("AnsGroupMask"));
                }
                if c.nb_total_groups > 0x07 {
                    return Err(w.invalid("NbTotalGroups"));
                }
                w.u8(c.nb_total_groups << 4 | c.ans_group_mask);
                for item in c.items() {
                    check_id(w, item.mc_group_id)?;
                    w.u8(item.mc_group_id);
                    w.u32(item.mc_addr);
                }
            }
            Uplink::McGroupSetupAns(c) => {
                check_id(w, c.mc_group_id)?;
                w.u8(c.mc_group_id | u8::from(c.id_error) << 2);
            }
            Uplink::McGroupDeleteAns(c) => {
                check_id(w, c.mc_group_id)?;
                w.u8(c.mc_group_id | u8::from(c.mc_group_undefined) << 2);
            }
            Uplink::McClassCSessionAns(a) | Uplink::McClassBSessionAns(a) => {
                build_session_ans(version, w, a)?;
            }
        }
        Ok(())
    }
}

impl<'a> Command<'a> for Uplink {
    fn parse_one(version: Version, bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        Uplink::parse(version, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_c_session_request_layout() {
        let req = Downlink::McClassCSessionReq(McClassCSessionReq {
            mc_group_id: 1,
            session_time: 0x0102_0304,
            time_out: 9,
            dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
            dr: 0,
        });
        let mut buf = [0u8; 11];
        let bytes = req.build_into(Version::V2, &mut buf).unwrap();
        assert_eq!(
            bytes,
            [0x04, 0x01, 0x04, 0x03, 0x02, 0x01, 0x09, 0xd2, 0xad, 0x84, 0x00]
        );
        assert_eq!(Downlink::parse(Version::V2, bytes), Ok((req, 11)));
        assert_eq!(DlFrequ(0x84add2).hz(), 869_525_000);
    }

    #[test]
    fn status_answer_carries_one_item_per_group() {
        let bytes = [0x01, 0x25, 0x00, 1, 2, 3, 4, 0x02, 5, 6, 7, 8];
        let (Uplink::McGroupStatusAns(a), used) = Uplink::parse(Version::V1, &bytes).unwrap()
        else {
            panic!("wrong command")
        };
        assert_eq!(used, 12);
        assert_eq!(a.nb_total_groups, 2);
        assert_eq!(a.items().len(), 2);
        assert_eq!(
            a.items()[1],
            McGroupStatusItem {
                mc_group_id: 2,
                mc_addr: 0x0807_0605
            }
        );
        let e = Uplink::parse(Version::V1, &bytes[..10]).unwrap_err();
        assert_eq!((e.command, e.field), ("McGroupStatusAns", "McAddr"));
    }

    #[test]
    fn start_missed_is_v2_only() {
        let bytes = [0x04, 0x21, 0x10, 0x00, 0x00];
        assert!(Uplink::parse(Version::V2, &bytes).is_ok());
        let e = Uplink::parse(Version::V1, &bytes).unwrap_err();
        assert_eq!(
            (e.field, e.kind),
            ("StatusAndMcGroupID", ErrorKind::ReservedBits)
        );
        // A refused session carries no TimeToStart.
        let (cmd, used) = Uplink::parse(Version::V1, &[0x04, 0x09, 0x04, 0x01]).unwrap();
        assert_eq!(used, 2);
        assert!(
            matches!(cmd, Uplink::McClassCSessionAns(a) if a.freq_error && a.time_to_start.is_none())
        );
    }
}
