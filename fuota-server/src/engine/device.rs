//! What the engine knows of one device: where it stands, why it failed, what it last said.

use core::fmt;

use fuota_codec::fragmentation::FragSessionSetupAns;
use fuota_codec::multicast_setup::McSessionAns;

use super::GpsMillis;

/// A unicast request the engine waits an answer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub enum Request {
    /// TS004 PackageVersionReq and FragSessionSetupReq, in one frame.
    FragSetup,
    /// TS005 McGroupSetupReq and McClassCSessionReq, in one frame.
    McSetup,
    /// FragSessionStatusReq (unicast, after the multicast).
    Status,
    /// TS006 DevVersionReq, after the device has had time to install and reboot.
    DevVersion,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Request::FragSetup => "PackageVersionReq + FragSessionSetupReq",
            Request::McSetup => "McGroupSetupReq + McClassCSessionReq",
            Request::Status => "FragSessionStatusReq",
            Request::DevVersion => "DevVersionReq",
        })
    }
}

/// Why a device did not get the update.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub enum Failure {
    /// No answer after every retry.
    NoAnswer(Request),
    /// The device does not speak TS004 in the campaign's version.
    PackageVersion { identifier: u8, version: u8 },
    /// McGroupSetupAns with IDerror.
    McGroupId,
    /// FragSessionSetupAns with error bits (the raw status byte's meaning, bit by bit).
    FragSessionSetup {
        encoding_unsupported: bool,
        not_enough_memory: bool,
        index_not_supported: bool,
        wrong_descriptor: bool,
        session_cnt_replay: bool,
    },
    /// McClassCSessionAns with error bits.
    ClassCSession {
        dr_error: bool,
        freq_error: bool,
        group_undefined: bool,
        start_missed: bool,
    },
    /// Setup was not finished when the multicast session started.
    NotReadyInTime,
    /// The rebuilt block failed its MIC.
    MicError,
    /// The device ran out of decoder memory (too many losses for it).
    MemoryError,
    /// The device no longer has the fragmentation session.
    SessionLost,
    /// The window closed with fragments still missing (`None`: never told).
    WindowClosed { missing: Option<u16> },
    /// After the block was complete and time to reboot, the device still runs another
    /// version: it reverted to the old image, or never installed the new one.
    NotUpdated { running: u32 },
    /// The device's firmware kept putting the install off until the window closed.
    Deferred { reason: String },
    /// The new image failed the firmware's self-test; the device went back to the old one.
    SelfTestFailed,
    /// The new image kept rebooting before it confirmed; the device went back to the old one.
    BootLoop,
    /// The device reported that the install failed (the agent's failure code).
    InstallFailed { code: u8 },
}

impl Failure {
    /// A short label for reports and failure counts.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::NoAnswer(Request::FragSetup | Request::McSetup) => "no answer to setup",
            Failure::NoAnswer(Request::Status) => "no answer to status",
            Failure::NoAnswer(Request::DevVersion) => "no answer to version",
            Failure::PackageVersion { .. } => "package version",
            Failure::McGroupId => "multicast group refused",
            Failure::FragSessionSetup { .. } => "fragmentation session refused",
            Failure::ClassCSession { .. } => "class C session refused",
            Failure::NotReadyInTime => "not set up in time",
            Failure::MicError => "data block MIC error",
            Failure::MemoryError => "decoder out of memory",
            Failure::SessionLost => "session lost",
            Failure::WindowClosed { .. } => "window closed",
            Failure::NotUpdated { .. } => "reverted or not installed",
            Failure::Deferred { .. } => "install put off by the device",
            Failure::SelfTestFailed => "self-test failed",
            Failure::BootLoop => "boot loop",
            Failure::InstallFailed { .. } => "install failed on the device",
        }
    }

    pub(crate) fn from_setup_ans(a: &FragSessionSetupAns) -> Option<Self> {
        let any = a.encoding_unsupported
            || a.not_enough_memory
            || a.frag_session_index_not_supported
            || a.wrong_descriptor
            || a.session_cnt_replay;
        any.then_some(Failure::FragSessionSetup {
            encoding_unsupported: a.encoding_unsupported,
            not_enough_memory: a.not_enough_memory,
            index_not_supported: a.frag_session_index_not_supported,
            wrong_descriptor: a.wrong_descriptor,
            session_cnt_replay: a.session_cnt_replay,
        })
    }

    pub(crate) fn from_session_ans(a: &McSessionAns) -> Option<Self> {
        let any = a.dr_error || a.freq_error || a.mc_group_undefined || a.start_missed;
        any.then_some(Failure::ClassCSession {
            dr_error: a.dr_error,
            freq_error: a.freq_error,
            group_undefined: a.mc_group_undefined,
            start_missed: a.start_missed,
        })
    }
}

fn write_bits(f: &mut fmt::Formatter<'_>, label: &str, bits: &[(bool, &str)]) -> fmt::Result {
    f.write_str(label)?;
    let mut sep = ": ";
    for (_, name) in bits.iter().filter(|(on, _)| *on) {
        write!(f, "{sep}{name}")?;
        sep = ", ";
    }
    Ok(())
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAnswer(r) => write!(f, "no answer to {r}"),
            Failure::PackageVersion {
                identifier,
                version,
            } => write!(f, "package {identifier} version {version}"),
            Failure::WindowClosed {
                missing: Some(missing),
            } => write!(f, "window closed, {missing} fragments missing"),
            Failure::NotUpdated { running } => {
                write!(f, "still runs firmware {running:#010x}")
            }
            Failure::FragSessionSetup {
                encoding_unsupported,
                not_enough_memory,
                index_not_supported,
                wrong_descriptor,
                session_cnt_replay,
            } => {
                let bits = [
                    (*encoding_unsupported, "encoding unsupported"),
                    (*not_enough_memory, "not enough memory"),
                    (*index_not_supported, "FragIndex unsupported"),
                    (*wrong_descriptor, "wrong descriptor"),
                    (*session_cnt_replay, "SessionCnt replay"),
                ];
                write_bits(f, self.label(), &bits)
            }
            Failure::ClassCSession {
                dr_error,
                freq_error,
                group_undefined,
                start_missed,
            } => {
                let bits = [
                    (*dr_error, "DR error"),
                    (*freq_error, "frequency error"),
                    (*group_undefined, "group undefined"),
                    (*start_missed, "start missed"),
                ];
                write_bits(f, self.label(), &bits)
            }
            other => f.write_str(other.label()),
        }
    }
}

/// Where a device stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub enum Phase {
    /// Unicast setup, at this request.
    Setup(Request),
    /// Set up; waiting for the multicast session.
    Ready,
    /// In the multicast session (or being repaired).
    Receiving,
    /// The device has the whole block; it installs and reboots.
    Complete,
    /// Asking what it runs after the reboot.
    Verifying,
    /// Runs the new firmware.
    Updated,
    Failed(Failure),
}

impl Phase {
    /// Updated or failed: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Phase::Updated | Phase::Failed(_))
    }
}

/// Per-device progress, observable at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize))]
pub struct DeviceProgress {
    pub phase: Phase,
    /// Fragments still needed, from the last FragSessionStatusAns.
    pub missing: Option<u16>,
    /// Fragments received, from the last FragSessionStatusAns.
    pub received: Option<u16>,
    /// The device's clock was within a second of GPS time at its last AppTimeReq.
    pub clock_synced: bool,
    /// Unicast downlinks sent to it.
    pub unicast_downlinks: u32,
    /// Coded fragments sent to it alone.
    pub unicast_fragments: u32,
    pub last_uplink: Option<GpsMillis>,
    /// When its block was complete.
    pub complete_at: Option<GpsMillis>,
    /// When it was seen running the new firmware.
    pub updated_at: Option<GpsMillis>,
    /// FWversion from its last DevVersionAns.
    pub fw_version: Option<u32>,
    /// The device's last UpdateReport, as a short text (a deferral and its reason, a failed
    /// self-test, a revert...).
    pub report: Option<String>,
}

impl DeviceProgress {
    pub(crate) fn new() -> Self {
        Self {
            phase: Phase::Setup(Request::FragSetup),
            missing: None,
            received: None,
            clock_synced: false,
            unicast_downlinks: 0,
            unicast_fragments: 0,
            last_uplink: None,
            complete_at: None,
            updated_at: None,
            fw_version: None,
            report: None,
        }
    }
}
