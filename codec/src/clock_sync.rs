//! TS003 Application Layer Clock Synchronization, v1.0.0 and v2.0.0 (port 202, package id 1).
//!
//! The two versions share every layout; v1 calls CID 0x03 ForceDeviceResyncReq, v2
//! ForceDeviceResyncCmd.

use crate::error::{Error, ErrorKind};
use crate::package::{Command, Commands, Version};
use crate::wire::{Reader, Stop, Writer};

pub const PORT: u8 = 202;
pub const PACKAGE_ID: u8 = 1;

/// PackageVersionReq (CID 0x00, downlink): no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackageVersionReq;

/// PackageVersionAns (CID 0x00, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageVersionAns {
    pub package_identifier: u8,
    pub package_version: u8,
}

/// AppTimeReq (CID 0x01, uplink): the device's GPS time and a 4-bit token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppTimeReq {
    /// Device's idea of GPS time, seconds, modulo 2^32.
    pub device_time: u32,
    /// 4 bits.
    pub token_req: u8,
    pub ans_required: bool,
}

/// AppTimeAns (CID 0x01, downlink): the correction to apply, echoing the request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppTimeAns {
    /// Seconds to add to the device clock.
    pub time_correction: i32,
    /// 4 bits.
    pub token_ans: u8,
}

/// DeviceAppTimePeriodicityReq (CID 0x02, downlink): AppTimeReq every 128 * 2^period s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAppTimePeriodicityReq {
    /// 4 bits.
    pub period: u8,
}

/// DeviceAppTimePeriodicityAns (CID 0x02, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAppTimePeriodicityAns {
    pub not_supported: bool,
    /// Device's GPS time, seconds.
    pub time: u32,
}

/// ForceDeviceResyncReq (v1) / ForceDeviceResyncCmd (v2), CID 0x03, downlink: send
/// `nb_transmissions` AppTimeReq now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForceDeviceResyncCmd {
    /// 3 bits.
    pub nb_transmissions: u8,
}

/// Commands the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    PackageVersionReq(PackageVersionReq),
    AppTimeAns(AppTimeAns),
    DeviceAppTimePeriodicityReq(DeviceAppTimePeriodicityReq),
    ForceDeviceResync(ForceDeviceResyncCmd),
}

/// Commands the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    PackageVersionAns(PackageVersionAns),
    AppTimeReq(AppTimeReq),
    DeviceAppTimePeriodicityAns(DeviceAppTimePeriodicityAns),
}

/// The downlink commands of one payload, in order.
pub fn downlinks(version: Version, payload: &[u8]) -> Commands<'_, Downlink> {
    Commands::new(version, payload)
}

/// The uplink commands of one payload, in order.
pub fn uplinks(version: Version, payload: &[u8]) -> Commands<'_, Uplink> {
    Commands::new(version, payload)
}

fn force_resync_name(version: Version) -> &'static str {
    match version {
        Version::V1 => "ForceDeviceResyncReq",
        Version::V2 => "ForceDeviceResyncCmd",
    }
}

impl Downlink {
    /// The CID on the wire.
    pub const fn cid(&self) -> u8 {
        match self {
            Downlink::PackageVersionReq(_) => 0x00,
            Downlink::AppTimeAns(_) => 0x01,
            Downlink::DeviceAppTimePeriodicityReq(_) => 0x02,
            Downlink::ForceDeviceResync(_) => 0x03,
        }
    }

    /// The command's name in the spec for `version`.
    pub fn name(&self, version: Version) -> &'static str {
        match self {
            Downlink::PackageVersionReq(_) => "PackageVersionReq",
            Downlink::AppTimeAns(_) => "AppTimeAns",
            Downlink::DeviceAppTimePeriodicityReq(_) => "DeviceAppTimePeriodicityReq",
            Downlink::ForceDeviceResync(_) => force_resync_name(version),
        }
    }

    /// Length on the wire, CID included.
    pub const fn len(&self, _version: Version) -> usize {
        match self {
            Downlink::PackageVersionReq(_) => 1,
            Downlink::AppTimeAns(_) => 6,
            Downlink::DeviceAppTimePeriodicityReq(_) => 2,
            Downlink::ForceDeviceResync(_) => 2,
        }
    }

    /// Parses the command at the start of `bytes`; returns it and the bytes it took.
    pub fn parse(version: Version, bytes: &[u8]) -> Result<(Self, usize), Error> {
        let Some((&cid, body)) = bytes.split_first() else {
            return Err(Error::new(
                "payload",
                "CID",
                ErrorKind::Truncated { needed: 1, got: 0 },
            ));
        };
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
            0x00 => Downlink::PackageVersionReq(PackageVersionReq),
            0x01 => {
                r.command("AppTimeAns");
                let time_correction = r.u32("TimeCorrection")? as i32;
                let param = r.u8("Param")?;
                r.check_rfu("Param", param, 0xf0)?;
                Downlink::AppTimeAns(AppTimeAns {
                    time_correction,
                    token_ans: param & 0x0f,
                })
            }
            0x02 => {
                r.command("DeviceAppTimePeriodicityReq");
                let period = r.u8("Periodicity")?;
                r.check_rfu("Periodicity", period, 0xf0)?;
                Downlink::DeviceAppTimePeriodicityReq(DeviceAppTimePeriodicityReq { period })
            }
            0x03 => {
                r.command(force_resync_name(version));
                let conf = r.u8("ForceConf")?;
                r.check_rfu("ForceConf", conf, 0xf8)?;
                Downlink::ForceDeviceResync(ForceDeviceResyncCmd {
                    nb_transmissions: conf,
                })
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    /// Writes CID and body into `buf`; returns the written bytes.
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
            Downlink::AppTimeAns(c) => {
                if c.token_ans > 0x0f {
                    return Err(w.invalid("TokenAns"));
                }
                w.u32(c.time_correction as u32);
                w.u8(c.token_ans);
            }
            Downlink::DeviceAppTimePeriodicityReq(c) => {
                if c.period > 0x0f {
                    return Err(w.invalid("Period"));
                }
                w.u8(c.period);
            }
            Downlink::ForceDeviceResync(c) => {
                if c.nb_transmissions > 0x07 {
                    return Err(w.invalid("NbTransmissions"));
                }
                w.u8(c.nb_transmissions);
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

impl Uplink {
    pub const fn cid(&self) -> u8 {
        match self {
            Uplink::PackageVersionAns(_) => 0x00,
            Uplink::AppTimeReq(_) => 0x01,
            Uplink::DeviceAppTimePeriodicityAns(_) => 0x02,
        }
    }

    pub fn name(&self, _version: Version) -> &'static str {
        match self {
            Uplink::PackageVersionAns(_) => "PackageVersionAns",
            Uplink::AppTimeReq(_) => "AppTimeReq",
            Uplink::DeviceAppTimePeriodicityAns(_) => "DeviceAppTimePeriodicityAns",
        }
    }

    pub const fn len(&self, _version: Version) -> usize {
        match self {
            Uplink::PackageVersionAns(_) => 3,
            Uplink::AppTimeReq(_) => 6,
            Uplink::DeviceAppTimePeriodicityAns(_) => 6,
        }
    }

    pub fn parse(version: Version, bytes: &[u8]) -> Result<(Self, usize), Error> {
        let Some((&cid, body)) = bytes.split_first() else {
            return Err(Error::new(
                "payload",
                "CID",
                ErrorKind::Truncated { needed: 1, got: 0 },
            ));
        };
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
            0x00 => {
                r.command("PackageVersionAns");
                let package_identifier = r.u8("PackageIdentifier")?;
                let package_version = r.u8("PackageVersion")?;
                Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier,
                    package_version,
                })
            }
            0x01 => {
                r.command("AppTimeReq");
                let device_time = r.u32("DeviceTime")?;
                let param = r.u8("Param")?;
                r.check_rfu("Param", param, 0xe0)?;
                Uplink::AppTimeReq(AppTimeReq {
                    device_time,
                    token_req: param & 0x0f,
                    ans_required: param & 0x10 != 0,
                })
            }
            0x02 => {
                r.command("DeviceAppTimePeriodicityAns");
                let status = r.u8("Status")?;
                r.check_rfu("Status", status, 0xfe)?;
                let time = r.u32("Time")?;
                Uplink::DeviceAppTimePeriodicityAns(DeviceAppTimePeriodicityAns {
                    not_supported: status & 0x01 != 0,
                    time,
                })
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
        _version: Version,
        w: &mut Writer<'_, REPORT>,
    ) -> Result<(), Stop> {
        w.u8(self.cid());
        match self {
            Uplink::PackageVersionAns(c) => {
                w.u8(c.package_identifier);
                w.u8(c.package_version);
            }
            Uplink::AppTimeReq(c) => {
                if c.token_req > 0x0f {
                    return Err(w.invalid("TokenReq"));
                }
                w.u32(c.device_time);
                w.u8(c.token_req | if c.ans_required { 0x10 } else { 0 });
            }
            Uplink::DeviceAppTimePeriodicityAns(c) => {
                w.u8(u8::from(c.not_supported));
                w.u32(c.time);
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
    fn several_commands_in_one_payload() {
        let payload = [0x00, 0x01, 0x10, 0x00, 0x00, 0x00, 0x03, 0x03, 0x05];
        let mut it = downlinks(Version::V2, &payload);
        assert_eq!(
            it.next(),
            Some(Ok(Downlink::PackageVersionReq(PackageVersionReq)))
        );
        assert_eq!(
            it.next(),
            Some(Ok(Downlink::AppTimeAns(AppTimeAns {
                time_correction: 16,
                token_ans: 3
            })))
        );
        assert_eq!(
            it.next(),
            Some(Ok(Downlink::ForceDeviceResync(ForceDeviceResyncCmd {
                nb_transmissions: 5
            })))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn errors_name_command_and_field() {
        let e = Uplink::parse(Version::V1, &[0x01, 1, 2, 3]).unwrap_err();
        assert_eq!(e.command, "AppTimeReq");
        assert_eq!(e.field, "DeviceTime");
        assert_eq!(e.kind, ErrorKind::Truncated { needed: 5, got: 4 });
        let e = Downlink::parse(Version::V1, &[0x03, 0x08]).unwrap_err();
        assert_eq!(
            (e.command, e.field, e.kind),
            ("ForceDeviceResyncReq", "ForceConf", ErrorKind::ReservedBits)
        );
        let e = Downlink::parse(Version::V2, &[0x09]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownCid(0x09));
    }
}
