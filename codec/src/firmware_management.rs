//! TS006 Firmware Management Protocol v1.0.0 (port 203, package id 4), the part a FUOTA
//! campaign needs to see what a device runs after its reboot: PackageVersion, DevVersion and
//! DevUpgradeImage. (DevRebootTime, DevRebootCountdown and DevDeleteImage are not
//! implemented: the agent reboots on its own once the image is in place.)
//!
//! FWversion is a u32 chosen by the firmware; this project puts an MCUboot version
//! `major.minor.revision` there as `major << 24 | minor << 16 | revision` (see
//! [`fw_version`]).

use crate::error::{Error, ErrorKind};
use crate::package::{Command, Commands, Version};
use crate::wire::{split_cid, Reader, Stop, Writer};

pub const PORT: u8 = 203;
pub const PACKAGE_ID: u8 = 4;
/// The only version of the package.
pub const PACKAGE_VERSION: u8 = 1;

/// The FWversion of an image version (the build number is not carried). Out of line: a
/// device builds it in several places.
#[inline(never)]
pub const fn fw_version(major: u8, minor: u8, revision: u16) -> u32 {
    (major as u32) << 24 | (minor as u32) << 16 | revision as u32
}

/// What the device says of the image waiting in its secondary slot (DevUpgradeImageAns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpImageStatus {
    /// No upgrade image.
    Absent,
    /// An image is there but fails its checks.
    Corrupt,
    /// A valid image that does not fit this device or the running image.
    Incompatible,
    /// A valid image, identified by its FWversion.
    Valid { firmware_id: u32 },
}

/// Commands the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    PackageVersionReq,
    DevVersionReq,
    DevUpgradeImageReq,
}

/// DevVersionAns: the running firmware and the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevVersionAns {
    pub fw_version: u32,
    pub hw_version: u32,
}

/// Commands the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    PackageVersionAns {
        package_identifier: u8,
        package_version: u8,
    },
    DevVersionAns(DevVersionAns),
    DevUpgradeImageAns(UpImageStatus),
}

/// The downlink commands of one payload, in order.
pub fn downlinks(version: Version, payload: &[u8]) -> Commands<'_, Downlink> {
    Commands::new(version, payload)
}

/// The uplink commands of one payload, in order.
pub fn uplinks(version: Version, payload: &[u8]) -> Commands<'_, Uplink> {
    Commands::new(version, payload)
}

impl Downlink {
    pub const fn cid(&self) -> u8 {
        match self {
            Downlink::PackageVersionReq => 0x00,
            Downlink::DevVersionReq => 0x01,
            Downlink::DevUpgradeImageReq => 0x04,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Downlink::PackageVersionReq => "PackageVersionReq",
            Downlink::DevVersionReq => "DevVersionReq",
            Downlink::DevUpgradeImageReq => "DevUpgradeImageReq",
        }
    }

    /// Every request here is its CID alone.
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), Error> {
        let (cid, _) = split_cid(bytes)?;
        let cmd = match cid {
            0x00 => Downlink::PackageVersionReq,
            0x01 => Downlink::DevVersionReq,
            0x04 => Downlink::DevUpgradeImageReq,
            other => return Err(Error::new("payload", "CID", ErrorKind::UnknownCid(other))),
        };
        Ok((cmd, 1))
    }

    pub fn build_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let mut w = Writer::<true>::new(self.name(), buf, 1)?;
        w.u8(self.cid());
        w.finish()
    }
}

impl<'a> Command<'a> for Downlink {
    fn parse_one(_version: Version, bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        Downlink::parse(bytes)
    }

    fn parse_valid(_version: Version, bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (cid, rest) = bytes.split_first()?;
        let cmd = match cid {
            0x00 => Downlink::PackageVersionReq,
            0x01 => Downlink::DevVersionReq,
            0x04 => Downlink::DevUpgradeImageReq,
            _ => return None,
        };
        Some((cmd, rest))
    }
}

impl Uplink {
    pub const fn cid(&self) -> u8 {
        match self {
            Uplink::PackageVersionAns { .. } => 0x00,
            Uplink::DevVersionAns(_) => 0x01,
            Uplink::DevUpgradeImageAns(_) => 0x04,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Uplink::PackageVersionAns { .. } => "PackageVersionAns",
            Uplink::DevVersionAns(_) => "DevVersionAns",
            Uplink::DevUpgradeImageAns(_) => "DevUpgradeImageAns",
        }
    }

    /// Length on the wire, CID included.
    pub const fn wire_len(&self) -> usize {
        match self {
            Uplink::PackageVersionAns { .. } => 3,
            Uplink::DevVersionAns(_) => 9,
            Uplink::DevUpgradeImageAns(UpImageStatus::Valid { .. }) => 6,
            Uplink::DevUpgradeImageAns(_) => 2,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), Error> {
        let (cid, body) = split_cid(bytes)?;
        let mut r = Reader::<true>::new("payload", body);
        let cmd = Self::parse_body(cid, &mut r).map_err(|_| r.into_error())?;
        Ok((cmd, cmd.wire_len()))
    }

    fn parse_body<const REPORT: bool>(cid: u8, r: &mut Reader<'_, REPORT>) -> Result<Self, Stop> {
        Ok(match cid {
            0x00 => {
                r.command("PackageVersionAns");
                Uplink::PackageVersionAns {
                    package_identifier: r.u8("PackageIdentifier")?,
                    package_version: r.u8("PackageVersion")?,
                }
            }
            0x01 => {
                r.command("DevVersionAns");
                Uplink::DevVersionAns(DevVersionAns {
                    fw_version: r.u32("FWversion")?,
                    hw_version: r.u32("HWversion")?,
                })
            }
            0x04 => {
                r.command("DevUpgradeImageAns");
                let status = r.u8("TypeStatus")?;
                r.check_rfu("TypeStatus", status, 0xf8)?;
                Uplink::DevUpgradeImageAns(match status {
                    0 => UpImageStatus::Absent,
                    1 => UpImageStatus::Corrupt,
                    2 => UpImageStatus::Incompatible,
                    3 => UpImageStatus::Valid {
                        firmware_id: r.u32("FirmwareID")?,
                    },
                    _ => return Err(r.error("UpImageStatus", ErrorKind::InvalidValue)),
                })
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    /// [`Uplink::build_into`] for a device, which has no one to tell why a build failed:
    /// `None` where that gives an error, and no code to describe it.
    pub fn write_into<'b>(&self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let mut w = Writer::<false>::new(self.name(), buf, self.wire_len()).ok()?;
        // The first error stays in the writer, which gives it back.
        let _ = self.write_body(&mut w);
        w.finish().ok()
    }

    pub fn build_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let mut w = Writer::<true>::new(self.name(), buf, self.wire_len())?;
        let _ = self.write_body(&mut w);
        w.finish()
    }

    fn write_body<const REPORT: bool>(&self, w: &mut Writer<'_, REPORT>) -> Result<(), Stop> {
        w.u8(self.cid());
        match self {
            Uplink::PackageVersionAns {
                package_identifier,
                package_version,
            } => {
                w.u8(*package_identifier);
                w.u8(*package_version);
            }
            Uplink::DevVersionAns(a) => {
                w.expect(8)?;
                w.u32(a.fw_version);
                w.u32(a.hw_version);
            }
            Uplink::DevUpgradeImageAns(s) => {
                // One write of the status, the FirmwareID after it when there is one.
                let (status, firmware_id) = match s {
                    UpImageStatus::Absent => (0, None),
                    UpImageStatus::Corrupt => (1, None),
                    UpImageStatus::Incompatible => (2, None),
                    UpImageStatus::Valid { firmware_id } => (3, Some(*firmware_id)),
                };
                w.u8(status);
                if let Some(id) = firmware_id {
                    w.u32(id);
                }
            }
        }
        Ok(())
    }
}

impl<'a> Command<'a> for Uplink {
    fn parse_one(_version: Version, bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        Uplink::parse(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_match_their_layouts() {
        let mut buf = [0u8; 16];
        let ans = Uplink::DevVersionAns(DevVersionAns {
            fw_version: fw_version(1, 2, 3),
            hw_version: 0x0a0b_0c0d,
        });
        let bytes = ans.build_into(&mut buf).unwrap();
        assert_eq!(bytes, [0x01, 3, 0, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(Uplink::parse(bytes).unwrap(), (ans, 9));
        let valid = Uplink::DevUpgradeImageAns(UpImageStatus::Valid {
            firmware_id: 0x0102_0000,
        });
        let bytes = valid.build_into(&mut buf).unwrap();
        assert_eq!(bytes, [0x04, 3, 0, 0, 2, 1]);
        assert_eq!(Uplink::parse(bytes).unwrap(), (valid, 6));
        let absent = Uplink::DevUpgradeImageAns(UpImageStatus::Absent);
        assert_eq!(absent.build_into(&mut buf).unwrap(), [0x04, 0]);
        let pv = Uplink::PackageVersionAns {
            package_identifier: PACKAGE_ID,
            package_version: PACKAGE_VERSION,
        };
        assert_eq!(pv.build_into(&mut buf).unwrap(), [0x00, 4, 1]);
        // The device's quiet build: the same bytes, or nothing where they do not fit.
        for u in [ans, valid, absent, pv] {
            let want = u.build_into(&mut buf).unwrap().to_vec();
            let (mut quiet, mut short) = ([0u8; 16], [0u8; 1]);
            assert_eq!(u.write_into(&mut quiet), Some(&want[..]));
            assert_eq!(u.write_into(&mut short), None);
        }
    }

    #[test]
    fn requests_and_bad_input() {
        let mut cmds = downlinks(Version::V1, &[0x00, 0x01, 0x04]).map(Result::unwrap);
        assert_eq!(cmds.next(), Some(Downlink::PackageVersionReq));
        assert_eq!(cmds.next(), Some(Downlink::DevVersionReq));
        assert_eq!(cmds.next(), Some(Downlink::DevUpgradeImageReq));
        assert_eq!(cmds.next(), None);
        let mut it = downlinks(Version::V1, &[0x01, 0x02, 0x01]);
        assert!(it.next().unwrap().is_ok());
        assert!(
            it.next().unwrap().is_err(),
            "DevRebootTimeReq is not implemented"
        );
        assert!(it.next().is_none());
        assert!(Uplink::parse(&[0x01, 1, 2, 3]).is_err());
        assert!(Uplink::parse(&[0x04, 7]).is_err());
        assert!(Uplink::parse(&[0x04, 0x13]).is_err());
        assert!(Uplink::parse(&[]).is_err());
    }
}
