//! The agent's update report (a vendor message, not a LoRa Alliance package): what became of
//! an update on the device, for the server to show per device. It travels on its own port,
//! [`PORT`], as one command:
//!
//! ```text
//! UpdateReport  CID 0x01 | outcome u8 | detail u8 | FWversion u32 LE   (7 bytes)
//! ```
//!
//! `outcome` says what happened ([`Outcome`]); `detail` qualifies it (the refusal's reason, or
//! the failure's kind); FWversion is the version the update was for (as TS006 encodes it:
//! [`crate::firmware_management::fw_version`]).

use crate::error::{Error, ErrorKind};

/// The port of the agent's reports (next to the FUOTA packages' 200 to 203).
pub const PORT: u8 = 204;
pub const CID_UPDATE_REPORT: u8 = 0x01;
/// Bytes of an UpdateReport, CID included.
pub const LEN: usize = 7;

/// Why the firmware put an install off ([`Outcome::Deferred`]'s detail).
///
/// The discriminants are the wire's detail codes (0x80 with the reason below it for
/// [`Refusal::Other`]), so that [`Refusal::to_byte`] reads a code as the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Refusal {
    LowBattery = 1,
    /// Not on mains power.
    NoMains = 2,
    /// A busy period (metering, a job that must not be interrupted).
    Busy = 3,
    /// The firmware's own reason code (0 to 127).
    Other(u8) = 0x80,
}

impl Refusal {
    pub const fn to_byte(self) -> u8 {
        match self {
            Refusal::LowBattery => 1,
            Refusal::NoMains => 2,
            Refusal::Busy => 3,
            Refusal::Other(code) => 0x80 | (code & 0x7f),
        }
    }

    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Refusal::LowBattery),
            2 => Some(Refusal::NoMains),
            3 => Some(Refusal::Busy),
            0x80..=0xff => Some(Refusal::Other(b & 0x7f)),
            _ => None,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Refusal::LowBattery => "low battery",
            Refusal::NoMains => "not on mains power",
            Refusal::Busy => "busy",
            Refusal::Other(_) => "refused by the firmware",
        }
    }
}

/// What became of an update.
// The wire's outcome codes as the discriminants: the code is then the variant's tag, read
// as it is, not mapped through a jump table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// The block is complete but the firmware said not now; the agent asks again later.
    Deferred(Refusal) = 1,
    /// The install failed before anything changed (detail: the agent's failure code).
    Failed(u8) = 2,
    /// The new image ran and failed its self-test: the bootloader goes back.
    SelfTestFailed = 3,
    /// The new image kept rebooting before it confirmed: the agent had the bootloader go back.
    BootLoop = 4,
    /// After the reboot, the bootloader was back on the old image.
    Reverted = 5,
    /// The new image passed its self-test and is confirmed.
    Confirmed = 6,
}

/// An UpdateReport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpdateReport {
    pub outcome: Outcome,
    /// FWversion of the update.
    pub fw_version: u32,
}

impl UpdateReport {
    /// The 7 bytes of the command.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let (outcome, detail) = match self.outcome {
            Outcome::Deferred(r) => (1, r.to_byte()),
            Outcome::Failed(code) => (2, code),
            Outcome::SelfTestFailed => (3, 0),
            Outcome::BootLoop => (4, 0),
            Outcome::Reverted => (5, 0),
            Outcome::Confirmed => (6, 0),
        };
        let v = self.fw_version.to_le_bytes();
        [CID_UPDATE_REPORT, outcome, detail, v[0], v[1], v[2], v[3]]
    }

    /// Parses one UpdateReport (the whole payload).
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        const NAME: &str = "UpdateReport";
        let b: &[u8; LEN] = match payload.try_into() {
            Ok(b) => b,
            Err(_) if payload.len() < LEN => {
                let kind = ErrorKind::Truncated {
                    needed: LEN,
                    got: payload.len(),
                };
                return Err(Error::new(NAME, "payload", kind));
            }
            Err(_) => return Err(Error::new(NAME, "payload", ErrorKind::TrailingBytes)),
        };
        if b[0] != CID_UPDATE_REPORT {
            return Err(Error::new(NAME, "CID", ErrorKind::UnknownCid(b[0])));
        }
        // The outcomes without a detail want it zero: checked once for them all.
        if matches!(b[1], 3..=6) && b[2] != 0 {
            return Err(Error::new(NAME, "detail", ErrorKind::ReservedBits));
        }
        let outcome = match b[1] {
            1 => Outcome::Deferred(Refusal::from_byte(b[2]).ok_or(Error::new(
                NAME,
                "detail",
                ErrorKind::InvalidValue,
            ))?),
            2 => Outcome::Failed(b[2]),
            3 => Outcome::SelfTestFailed,
            4 => Outcome::BootLoop,
            5 => Outcome::Reverted,
            6 => Outcome::Confirmed,
            _ => return Err(Error::new(NAME, "outcome", ErrorKind::InvalidValue)),
        };
        Ok(Self {
            outcome,
            fw_version: u32::from_le_bytes([b[3], b[4], b[5], b[6]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips_and_bad_bytes_are_refused() {
        let outcomes = [
            Outcome::Deferred(Refusal::LowBattery),
            Outcome::Deferred(Refusal::NoMains),
            Outcome::Deferred(Refusal::Busy),
            Outcome::Deferred(Refusal::Other(0)),
            Outcome::Deferred(Refusal::Other(127)),
            Outcome::Failed(0),
            Outcome::Failed(9),
            Outcome::SelfTestFailed,
            Outcome::BootLoop,
            Outcome::Reverted,
            Outcome::Confirmed,
        ];
        for outcome in outcomes {
            let r = UpdateReport {
                outcome,
                fw_version: 0x0102_0003,
            };
            assert_eq!(UpdateReport::parse(&r.to_bytes()), Ok(r));
        }
        assert_eq!(
            UpdateReport {
                outcome: Outcome::Deferred(Refusal::Busy),
                fw_version: 0x0102_0003
            }
            .to_bytes(),
            [0x01, 1, 3, 0x03, 0x00, 0x02, 0x01]
        );
        let ok = [0x01, 6, 0, 1, 2, 3, 4];
        assert!(UpdateReport::parse(&ok[..6]).is_err());
        assert!(UpdateReport::parse(&[ok.as_slice(), &[0]].concat()).is_err());
        for (i, v) in [(0, 0x02), (1, 0), (1, 7), (2, 1)] {
            let mut b = ok;
            b[i] = v;
            assert!(UpdateReport::parse(&b).is_err(), "byte {i} = {v}");
        }
        // A deferral with an undefined reason byte.
        assert!(UpdateReport::parse(&[0x01, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(UpdateReport::parse(&[0x01, 1, 4, 0, 0, 0, 0]).is_err());
        assert!(UpdateReport::parse(&[]).is_err());
    }
}
