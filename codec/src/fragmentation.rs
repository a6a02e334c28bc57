//! TS004 Fragmented Data Block Transport, v1.0.0 and v2.0.0 (port 201, package id 3).
//!
//! v2 extends v1: FragSessionSetupReq gains AckReception, SessionCnt and the data-block MIC,
//! FragSessionStatusAns moves its Status byte first and gains error bits, FragSessionSetupAns
//! gains SessionCntReplay, and CID 0x04 (FragDataBlockReceivedReq/Ans) appears. Fields that
//! only v2 has are plain fields here; building them with a non-default value under v1 fails
//! with `InvalidValue`, so nothing is silently dropped.
//!
//! A DataFragment takes the rest of its payload, so it must stand alone. [`downlinks`] reports
//! one that follows other commands as `TrailingBytes` on `DataFragment.CID`.

use crate::error::{Error, ErrorKind};
use crate::package::{Command, Commands, Valid, Version};
use crate::wire::{Reader, Stop, Writer};

pub const PORT: u8 = 201;
pub const PACKAGE_ID: u8 = 3;

/// Largest fragment number and NbFragReceived: both live in 14 bits.
pub const MAX_FRAGMENT_NUMBER: u16 = 0x3fff;
/// FragIndex is 2 bits: four sessions at most.
pub const MAX_FRAG_INDEX: u8 = 3;

/// PackageVersionReq (CID 0x00, downlink): no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackageVersionReq;

/// PackageVersionAns (CID 0x00, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageVersionAns {
    pub package_identifier: u8,
    pub package_version: u8,
}

/// FragSessionStatusReq (CID 0x01, downlink): ask for a session's reception status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionStatusReq {
    /// Every device answers when set; otherwise only devices still missing fragments.
    pub participants: bool,
    /// 2 bits.
    pub frag_index: u8,
}

/// FragSessionStatusAns (CID 0x01, uplink). v1: Received&Index, MissingFrag, Status;
/// v2: Status, Received&Index, MissingFrag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionStatusAns {
    /// 2 bits.
    pub frag_index: u8,
    /// Fragments received so far, 14 bits.
    pub nb_frag_received: u16,
    /// Fragments the device still lacks to decode (255 means 255 or more).
    pub missing_frag: u8,
    /// Status bit 0: v1 NotEnoughMatrixMemory, v2 MemoryError.
    pub memory_error: bool,
    /// Status bit 1, v2 only: the data block failed its MIC check.
    pub mic_error: bool,
    /// Status bit 2, v2 only: no session with this FragIndex.
    pub session_does_not_exist: bool,
}

/// FragSessionSetupReq (CID 0x02, downlink): 10 bytes in v1, 16 in v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionSetupReq {
    /// 2 bits.
    pub frag_index: u8,
    /// Multicast groups (bit n = group n) the fragments may arrive on, 4 bits.
    pub mc_group_bit_mask: u8,
    pub nb_frag: u16,
    pub frag_size: u8,
    /// FragmentationMatrix (v1) / FragAlgo (v2), 3 bits: 0 is the TS004 parity code.
    pub frag_algo: u8,
    /// 3 bits: the device spreads its answer over 2^(BlockAckDelay+4) s.
    pub block_ack_delay: u8,
    /// v2 only: the device sends FragDataBlockReceivedReq once the block is complete.
    pub ack_reception: bool,
    /// Bytes of padding in the last data fragment.
    pub padding: u8,
    pub descriptor: [u8; 4],
    /// v2 only: increments with every new session, guards against replays.
    pub session_cnt: u16,
    /// v2 only: MIC of the whole data block ([`crate::keys::data_block_mic`]).
    pub mic: [u8; 4],
}

/// FragSessionSetupAns (CID 0x02, uplink): the setup's outcome, all flags clear on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionSetupAns {
    /// 2 bits.
    pub frag_index: u8,
    /// Bit 0: EncodingUnsupported (v1) / FragAlgoUnsupported (v2).
    pub encoding_unsupported: bool,
    /// Bit 1.
    pub not_enough_memory: bool,
    /// Bit 2: FragSessionIndexNotSupported.
    pub frag_session_index_not_supported: bool,
    /// Bit 3.
    pub wrong_descriptor: bool,
    /// Bit 4, v2 only: SessionCnt was not above the last one seen.
    pub session_cnt_replay: bool,
}

/// FragSessionDeleteReq (CID 0x03, downlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionDeleteReq {
    /// 2 bits.
    pub frag_index: u8,
}

/// FragSessionDeleteAns (CID 0x03, uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragSessionDeleteAns {
    /// 2 bits.
    pub frag_index: u8,
    pub session_does_not_exist: bool,
}

/// FragDataBlockReceivedReq (CID 0x04, uplink, v2 only): the device has rebuilt the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragDataBlockReceivedReq {
    /// 2 bits.
    pub frag_index: u8,
    /// The rebuilt block did not match the MIC of its FragSessionSetupReq.
    pub mic_error: bool,
}

/// FragDataBlockReceivedAns (CID 0x04, downlink, v2 only): the server saw the
/// FragDataBlockReceivedReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragDataBlockReceivedAns {
    /// 2 bits.
    pub frag_index: u8,
}

/// DataFragment (CID 0x08, downlink): one fragment, borrowing the payload it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFragment<'a> {
    /// 2 bits.
    pub frag_index: u8,
    /// Fragment number, 1-based, 14 bits: 1..=NbFrag are data, above that coded fragments.
    pub n: u16,
    /// The fragment bytes: the rest of the payload.
    pub payload: &'a [u8],
}

/// Commands the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink<'a> {
    PackageVersionReq(PackageVersionReq),
    FragSessionStatusReq(FragSessionStatusReq),
    FragSessionSetupReq(FragSessionSetupReq),
    FragSessionDeleteReq(FragSessionDeleteReq),
    /// v2 only.
    FragDataBlockReceivedAns(FragDataBlockReceivedAns),
    DataFragment(DataFragment<'a>),
}

/// Commands the device sends.
// The CIDs as the discriminants: a command's CID is its tag, read as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Uplink {
    PackageVersionAns(PackageVersionAns) = 0x00,
    FragSessionStatusAns(FragSessionStatusAns) = 0x01,
    FragSessionSetupAns(FragSessionSetupAns) = 0x02,
    FragSessionDeleteAns(FragSessionDeleteAns) = 0x03,
    /// v2 only.
    FragDataBlockReceivedReq(FragDataBlockReceivedReq) = 0x04,
}

/// The downlink commands of one payload, in order. A DataFragment is accepted only as the
/// payload's first command (it then takes the rest).
pub fn downlinks(version: Version, payload: &[u8]) -> Downlinks<'_> {
    Downlinks {
        inner: Commands::new(version, payload),
        seen_command: false,
        failed: false,
    }
}

/// The uplink commands of one payload, in order.
pub fn uplinks(version: Version, payload: &[u8]) -> Commands<'_, Uplink> {
    Commands::new(version, payload)
}

/// Iterator returned by [`downlinks`]: [`Commands`] plus the rule that a DataFragment stands
/// alone. After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Downlinks<'a> {
    inner: Commands<'a, Downlink<'a>>,
    seen_command: bool,
    failed: bool,
}

impl<'a> Iterator for Downlinks<'a> {
    type Item = Result<Downlink<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        let item = match item {
            Ok(Downlink::DataFragment(_)) if self.seen_command => {
                Err(Error::new("DataFragment", "CID", ErrorKind::TrailingBytes))
            }
            other => other,
        };
        self.seen_command = true;
        self.failed = item.is_err();
        Some(item)
    }
}

impl core::iter::FusedIterator for Downlinks<'_> {}

impl<'a> Downlinks<'a> {
    /// The commands up to the first error, which ends the iteration unreported (see
    /// [`Commands::valid`]); a DataFragment after another command is one.
    pub fn valid(self) -> ValidDownlinks<'a> {
        ValidDownlinks {
            inner: self.inner.valid(),
            seen_command: self.seen_command,
            failed: self.failed,
        }
    }
}

/// Iterator returned by [`Downlinks::valid`].
#[derive(Debug, Clone)]
pub struct ValidDownlinks<'a> {
    inner: Valid<'a, Downlink<'a>>,
    seen_command: bool,
    failed: bool,
}

impl<'a> Iterator for ValidDownlinks<'a> {
    type Item = Downlink<'a>;

    fn next(&mut self) -> Option<Downlink<'a>> {
        if self.failed {
            return None;
        }
        // A DataFragment after another command ends the payload: told by its CID before it
        // is parsed (a byte compare, not a test of the parsed command it would be).
        if self.seen_command && self.inner.rest().first() == Some(&DATA_FRAGMENT_CID) {
            self.failed = true;
            return None;
        }
        let cmd = self.inner.next()?;
        self.seen_command = true;
        Some(cmd)
    }
}

impl core::iter::FusedIterator for ValidDownlinks<'_> {}

/// DataFragment's CID, the one command that must come alone.
const DATA_FRAGMENT_CID: u8 = 0x08;

fn missing_cid() -> Error {
    Error::new("payload", "CID", ErrorKind::Truncated { needed: 1, got: 0 })
}

/// Fails with `InvalidValue` on FragIndex when it needs more than 2 bits.
fn check_frag_index<const REPORT: bool>(
    w: &mut Writer<'_, REPORT>,
    frag_index: u8,
) -> Result<(), Stop> {
    if frag_index > MAX_FRAG_INDEX {
        Err(w.invalid("FragIndex"))
    } else {
        Ok(())
    }
}

/// Fails with `InvalidValue` on `field` when a v2-only field is set while building v1.
fn check_v1_unset<const REPORT: bool>(
    w: &mut Writer<'_, REPORT>,
    version: Version,
    field: &'static str,
    set: bool,
) -> Result<(), Stop> {
    if version == Version::V1 && set {
        Err(w.invalid(field))
    } else {
        Ok(())
    }
}

/// Packs a 2-bit FragIndex over a 14-bit count, as Received&Index and Index&N do.
fn index_and_count(frag_index: u8, count: u16) -> u16 {
    (u16::from(frag_index) << 14) | count
}

fn split_index_and_count(v: u16) -> (u8, u16) {
    ((v >> 14) as u8, v & MAX_FRAGMENT_NUMBER)
}

impl<'a> Downlink<'a> {
    /// The CID on the wire.
    pub const fn cid(&self) -> u8 {
        match self {
            Downlink::PackageVersionReq(_) => 0x00,
            Downlink::FragSessionStatusReq(_) => 0x01,
            Downlink::FragSessionSetupReq(_) => 0x02,
            Downlink::FragSessionDeleteReq(_) => 0x03,
            Downlink::FragDataBlockReceivedAns(_) => 0x04,
            Downlink::DataFragment(_) => 0x08,
        }
    }

    /// The command's name in the spec.
    pub fn name(&self, _version: Version) -> &'static str {
        match self {
            Downlink::PackageVersionReq(_) => "PackageVersionReq",
            Downlink::FragSessionStatusReq(_) => "FragSessionStatusReq",
            Downlink::FragSessionSetupReq(_) => "FragSessionSetupReq",
            Downlink::FragSessionDeleteReq(_) => "FragSessionDeleteReq",
            Downlink::FragDataBlockReceivedAns(_) => "FragDataBlockReceivedAns",
            Downlink::DataFragment(_) => "DataFragment",
        }
    }

    /// Length on the wire, CID included.
    pub const fn len(&self, version: Version) -> usize {
        match self {
            Downlink::PackageVersionReq(_) => 1,
            Downlink::FragSessionStatusReq(_) => 2,
            Downlink::FragSessionSetupReq(_) => match version {
                Version::V1 => 11,
                Version::V2 => 17,
            },
            Downlink::FragSessionDeleteReq(_) => 2,
            Downlink::FragDataBlockReceivedAns(_) => 2,
            Downlink::DataFragment(c) => 3 + c.payload.len(),
        }
    }

    /// Parses the command at the start of `bytes`; returns it and the bytes it took. A
    /// DataFragment takes everything after its header.
    pub fn parse(version: Version, bytes: &'a [u8]) -> Result<(Self, usize), Error> {
        let Some((&cid, body)) = bytes.split_first() else {
            return Err(missing_cid());
        };
        let mut r = Reader::<true>::new("payload", body);
        let cmd = Self::parse_body(version, cid, &mut r).map_err(|_| r.into_error())?;
        Ok((cmd, cmd.len(version)))
    }

    fn parse_body<const REPORT: bool>(
        version: Version,
        cid: u8,
        r: &mut Reader<'a, REPORT>,
    ) -> Result<Self, Stop> {
        Ok(match cid {
            0x00 => Downlink::PackageVersionReq(PackageVersionReq),
            0x01 => {
                r.command("FragSessionStatusReq");
                let param = r.u8("FragStatusReqParam")?;
                r.check_rfu("FragStatusReqParam", param, 0xf8)?;
                Downlink::FragSessionStatusReq(FragSessionStatusReq {
                    participants: param & 0x01 != 0,
                    frag_index: (param >> 1) & 0x03,
                })
            }
            0x02 => {
                r.command("FragSessionSetupReq");
                r.expect(match version {
                    Version::V1 => 10,
                    Version::V2 => 16,
                })?;
                let session = r.u8("FragSession")?;
                r.check_rfu("FragSession", session, 0xc0)?;
                let nb_frag = r.u16("NbFrag")?;
                let frag_size = r.u8("FragSize")?;
                let control = r.u8("Control")?;
                let control_rfu = match version {
                    Version::V1 => 0xc0,
                    Version::V2 => 0x80,
                };
                r.check_rfu("Control", control, control_rfu)?;
                let padding = r.u8("Padding")?;
                let descriptor = r.bytes::<4>("Descriptor")?;
                let (session_cnt, mic) = match version {
                    Version::V1 => (0, [0; 4]),
                    Version::V2 => (r.u16("SessionCnt")?, r.bytes::<4>("MIC")?),
                };
                Downlink::FragSessionSetupReq(FragSessionSetupReq {
                    frag_index: (session >> 4) & 0x03,
                    mc_group_bit_mask: session & 0x0f,
                    nb_frag,
                    frag_size,
                    frag_algo: (control >> 3) & 0x07,
                    block_ack_delay: control & 0x07,
                    ack_reception: control & 0x40 != 0,
                    padding,
                    descriptor,
                    session_cnt,
                    mic,
                })
            }
            0x03 => {
                r.command("FragSessionDeleteReq");
                let param = r.u8("Param")?;
                r.check_rfu("Param", param, 0xfc)?;
                Downlink::FragSessionDeleteReq(FragSessionDeleteReq { frag_index: param })
            }
            0x04 if version == Version::V2 => {
                r.command("FragDataBlockReceivedAns");
                let param = r.u8("Param")?;
                r.check_rfu("Param", param, 0xfc)?;
                Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns { frag_index: param })
            }
            0x08 => {
                r.command("DataFragment");
                let (frag_index, n) = split_index_and_count(r.u16("IndexAndN")?);
                if n == 0 {
                    // Fragments count from 1: N = 0 names no fragment.
                    return Err(r.error("N", ErrorKind::InvalidValue));
                }
                Downlink::DataFragment(DataFragment {
                    frag_index,
                    n,
                    payload: r.take_rest(),
                })
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    /// Writes CID and body into `buf`; returns the written bytes.
    pub fn build_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        if let Downlink::FragDataBlockReceivedAns(_) = self {
            if version == Version::V1 {
                return Err(Error::new(
                    self.name(version),
                    "CID",
                    ErrorKind::UnknownCid(self.cid()),
                ));
            }
        }
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
        match self {
            Downlink::PackageVersionReq(_) => w.u8(self.cid()),
            Downlink::FragSessionStatusReq(c) => {
                check_frag_index(w, c.frag_index)?;
                w.u8(self.cid());
                w.u8((c.frag_index << 1) | u8::from(c.participants));
            }
            Downlink::FragSessionSetupReq(c) => {
                check_frag_index(w, c.frag_index)?;
                if c.mc_group_bit_mask > 0x0f {
                    return Err(w.invalid("McGroupBitMask"));
                }
                if c.frag_algo > 0x07 {
                    return Err(w.invalid("FragAlgo"));
                }
                if c.block_ack_delay > 0x07 {
                    return Err(w.invalid("BlockAckDelay"));
                }
                check_v1_unset(w, version, "AckReception", c.ack_reception)?;
                check_v1_unset(w, version, "SessionCnt", c.session_cnt != 0)?;
                check_v1_unset(w, version, "MIC", c.mic != [0; 4])?;
                w.u8(self.cid());
                w.u8((c.frag_index << 4) | c.mc_group_bit_mask);
                w.u16(c.nb_frag);
                w.u8(c.frag_size);
                let ack = if c.ack_reception { 0x40 } else { 0 };
                w.u8(ack | (c.frag_algo << 3) | c.block_ack_delay);
                w.u8(c.padding);
                w.put(&c.descriptor);
                if version == Version::V2 {
                    w.u16(c.session_cnt);
                    w.put(&c.mic);
                }
            }
            Downlink::FragSessionDeleteReq(FragSessionDeleteReq { frag_index })
            | Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns { frag_index }) => {
                check_frag_index(w, *frag_index)?;
                w.u8(self.cid());
                w.u8(*frag_index);
            }
            Downlink::DataFragment(c) => {
                check_frag_index(w, c.frag_index)?;
                if c.n == 0 || c.n > MAX_FRAGMENT_NUMBER {
                    return Err(w.invalid("N"));
                }
                w.u8(self.cid());
                w.u16(index_and_count(c.frag_index, c.n));
                w.put(c.payload);
            }
        }
        Ok(())
    }
}

impl<'a> Command<'a> for Downlink<'a> {
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
    /// The CID on the wire.
    pub const fn cid(&self) -> u8 {
        match self {
            Uplink::PackageVersionAns(_) => 0x00,
            Uplink::FragSessionStatusAns(_) => 0x01,
            Uplink::FragSessionSetupAns(_) => 0x02,
            Uplink::FragSessionDeleteAns(_) => 0x03,
            Uplink::FragDataBlockReceivedReq(_) => 0x04,
        }
    }

    /// The command's name in the spec.
    pub fn name(&self, _version: Version) -> &'static str {
        match self {
            Uplink::PackageVersionAns(_) => "PackageVersionAns",
            Uplink::FragSessionStatusAns(_) => "FragSessionStatusAns",
            Uplink::FragSessionSetupAns(_) => "FragSessionSetupAns",
            Uplink::FragSessionDeleteAns(_) => "FragSessionDeleteAns",
            Uplink::FragDataBlockReceivedReq(_) => "FragDataBlockReceivedReq",
        }
    }

    /// Length on the wire, CID included.
    pub const fn len(&self, _version: Version) -> usize {
        match self {
            Uplink::PackageVersionAns(_) => 3,
            Uplink::FragSessionStatusAns(_) => 5,
            Uplink::FragSessionSetupAns(_) => 2,
            Uplink::FragSessionDeleteAns(_) => 2,
            Uplink::FragDataBlockReceivedReq(_) => 2,
        }
    }

    /// Parses the command at the start of `bytes`; returns it and the bytes it took.
    pub fn parse(version: Version, bytes: &[u8]) -> Result<(Self, usize), Error> {
        let Some((&cid, body)) = bytes.split_first() else {
            return Err(missing_cid());
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
                r.command("FragSessionStatusAns");
                let (status, received, missing_frag) = match version {
                    Version::V1 => {
                        let received = r.u16("ReceivedAndIndex")?;
                        let missing = r.u8("MissingFrag")?;
                        let status = r.u8("Status")?;
                        r.check_rfu("Status", status, 0xfe)?;
                        (status, received, missing)
                    }
                    Version::V2 => {
                        let status = r.u8("Status")?;
                        r.check_rfu("Status", status, 0xf8)?;
                        let received = r.u16("ReceivedAndIndex")?;
                        (status, received, r.u8("MissingFrag")?)
                    }
                };
                let (frag_index, nb_frag_received) = split_index_and_count(received);
                Uplink::FragSessionStatusAns(FragSessionStatusAns {
                    frag_index,
                    nb_frag_received,
                    missing_frag,
                    memory_error: status & 0x01 != 0,
                    mic_error: status & 0x02 != 0,
                    session_does_not_exist: status & 0x04 != 0,
                })
            }
            0x02 => {
                r.command("FragSessionSetupAns");
                let status = r.u8("StatusBitMask")?;
                let rfu = match version {
                    Version::V1 => 0x30,
                    Version::V2 => 0x20,
                };
                r.check_rfu("StatusBitMask", status, rfu)?;
                Uplink::FragSessionSetupAns(FragSessionSetupAns {
                    frag_index: status >> 6,
                    encoding_unsupported: status & 0x01 != 0,
                    not_enough_memory: status & 0x02 != 0,
                    frag_session_index_not_supported: status & 0x04 != 0,
                    wrong_descriptor: status & 0x08 != 0,
                    session_cnt_replay: status & 0x10 != 0,
                })
            }
            0x03 => {
                r.command("FragSessionDeleteAns");
                let status = r.u8("Status")?;
                r.check_rfu("Status", status, 0xf8)?;
                Uplink::FragSessionDeleteAns(FragSessionDeleteAns {
                    frag_index: status & 0x03,
                    session_does_not_exist: status & 0x04 != 0,
                })
            }
            0x04 if version == Version::V2 => {
                r.command("FragDataBlockReceivedReq");
                let status = r.u8("Status")?;
                r.check_rfu("Status", status, 0xf8)?;
                Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
                    frag_index: status & 0x03,
                    mic_error: status & 0x04 != 0,
                })
            }
            other => return Err(r.error("CID", ErrorKind::UnknownCid(other))),
        })
    }

    /// [`Uplink::build_into`] for a device, which has no one to tell why a build failed:
    /// `None` where that gives an error, and no code to describe it.
    pub fn write_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        if let (Uplink::FragDataBlockReceivedReq(_), Version::V1) = (self, version) {
            return None;
        }
        let mut w = Writer::<false>::new(self.name(version), buf, self.len(version)).ok()?;
        // A failed build leaves the writer past its buffer, which finish refuses: one test.
        let _ = self.build_body(version, &mut w);
        w.finish().ok()
    }

    /// Writes CID and body into `buf`; returns the written bytes.
    pub fn build_into<'b>(&self, version: Version, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        if let Uplink::FragDataBlockReceivedReq(_) = self {
            if version == Version::V1 {
                return Err(Error::new(
                    self.name(version),
                    "CID",
                    ErrorKind::UnknownCid(self.cid()),
                ));
            }
        }
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
        // The CID first for every command: a failed check after it makes the build fail all
        // the same (the error is the check's, the CID always fits).
        w.u8(self.cid());
        match self {
            Uplink::PackageVersionAns(c) => {
                w.u8(c.package_identifier);
                w.u8(c.package_version);
            }
            Uplink::FragSessionStatusAns(c) => {
                check_frag_index(w, c.frag_index)?;
                if c.nb_frag_received > MAX_FRAGMENT_NUMBER {
                    return Err(w.invalid("NbFragReceived"));
                }
                // Both v2-only bits in one test; the error names the first set.
                let field = match c.mic_error {
                    true => "MICError",
                    false => "SessionDoesNotExist",
                };
                check_v1_unset(w, version, field, c.mic_error || c.session_does_not_exist)?;
                let status = u8::from(c.memory_error)
                    | (u8::from(c.mic_error) << 1)
                    | (u8::from(c.session_does_not_exist) << 2);
                let received = index_and_count(c.frag_index, c.nb_frag_received);
                // The four bytes as one little-endian word, one length check; v2 moves Status
                // from last to first.
                let v1 = u32::from(received)
                    | (u32::from(c.missing_frag) << 16)
                    | (u32::from(status) << 24);
                w.u32(match version {
                    Version::V1 => v1,
                    // Status in the low byte, the rest one byte up.
                    Version::V2 => v1.rotate_left(8),
                });
            }
            Uplink::FragSessionSetupAns(c) => {
                check_frag_index(w, c.frag_index)?;
                check_v1_unset(w, version, "SessionCntReplay", c.session_cnt_replay)?;
                w.u8((c.frag_index << 6)
                    | u8::from(c.encoding_unsupported)
                    | (u8::from(c.not_enough_memory) << 1)
                    | (u8::from(c.frag_session_index_not_supported) << 2)
                    | (u8::from(c.wrong_descriptor) << 3)
                    | (u8::from(c.session_cnt_replay) << 4));
            }
            Uplink::FragSessionDeleteAns(FragSessionDeleteAns {
                frag_index,
                session_does_not_exist: flag,
            })
            | Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
                frag_index,
                mic_error: flag,
            }) => {
                check_frag_index(w, *frag_index)?;
                w.u8(*frag_index | (u8::from(*flag) << 2));
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
    fn setup_req_v1_and_v2_vectors() {
        let v1 = [
            0x02, 0x31, 0x00, 0x04, 0x80, 0x0d, 0x40, 0x01, 0x02, 0x03, 0x04,
        ];
        let (cmd, used) = Downlink::parse(Version::V1, &v1).unwrap();
        assert_eq!(used, 11);
        let Downlink::FragSessionSetupReq(req) = cmd else {
            panic!("wrong command {cmd:?}")
        };
        assert_eq!(
            req,
            FragSessionSetupReq {
                frag_index: 3,
                mc_group_bit_mask: 1,
                nb_frag: 1024,
                frag_size: 128,
                frag_algo: 1,
                block_ack_delay: 5,
                ack_reception: false,
                padding: 64,
                descriptor: [1, 2, 3, 4],
                session_cnt: 0,
                mic: [0; 4],
            }
        );
        let mut buf = [0u8; 32];
        assert_eq!(cmd.build_into(Version::V1, &mut buf).unwrap(), &v1);

        let v2 = Downlink::FragSessionSetupReq(FragSessionSetupReq {
            ack_reception: true,
            session_cnt: 0x0201,
            mic: [0xaa, 0xbb, 0xcc, 0xdd],
            ..req
        });
        assert_eq!(
            v2.build_into(Version::V2, &mut buf).unwrap(),
            &[
                0x02, 0x31, 0x00, 0x04, 0x80, 0x4d, 0x40, 0x01, 0x02, 0x03, 0x04, 0x01, 0x02, 0xaa,
                0xbb, 0xcc, 0xdd
            ]
        );
        let e = v2.build_into(Version::V1, &mut buf).unwrap_err();
        assert_eq!((e.field, e.kind), ("AckReception", ErrorKind::InvalidValue));
        // Bit 6 of Control is AckReception in v2 but RFU in v1.
        let mut v1_with_ack = v1;
        v1_with_ack[5] |= 0x40;
        let e = Downlink::parse(Version::V1, &v1_with_ack).unwrap_err();
        assert_eq!((e.field, e.kind), ("Control", ErrorKind::ReservedBits));
        let e = Downlink::parse(Version::V2, &v1).unwrap_err();
        assert_eq!(
            (e.field, e.kind),
            (
                "SessionCnt",
                ErrorKind::Truncated {
                    needed: 13,
                    got: 11
                }
            )
        );
    }

    #[test]
    fn status_ans_moves_status_first_in_v2() {
        let ans = Uplink::FragSessionStatusAns(FragSessionStatusAns {
            frag_index: 3,
            nb_frag_received: 1024,
            missing_frag: 128,
            memory_error: true,
            mic_error: false,
            session_does_not_exist: false,
        });
        let mut buf = [0u8; 8];
        assert_eq!(
            ans.build_into(Version::V1, &mut buf).unwrap(),
            &[0x01, 0x00, 0xc4, 0x80, 0x01]
        );
        assert_eq!(
            ans.build_into(Version::V2, &mut buf).unwrap(),
            &[0x01, 0x01, 0x00, 0xc4, 0x80]
        );
        let e = Uplink::parse(Version::V1, &[0x01, 0x00, 0xc4, 0x80, 0x02]).unwrap_err();
        assert_eq!((e.field, e.kind), ("Status", ErrorKind::ReservedBits));
    }

    #[test]
    fn data_fragment_takes_the_rest_and_counts_from_one() {
        let payload = [0x08, 0x05, 0x40, 0xde, 0xad, 0xbe, 0xef];
        let (cmd, used) = Downlink::parse(Version::V1, &payload).unwrap();
        assert_eq!(used, payload.len());
        assert_eq!(
            cmd,
            Downlink::DataFragment(DataFragment {
                frag_index: 1,
                n: 5,
                payload: &[0xde, 0xad, 0xbe, 0xef],
            })
        );
        let e = Downlink::parse(Version::V2, &[0x08, 0x00, 0xc0, 1]).unwrap_err();
        assert_eq!(
            (e.command, e.field, e.kind),
            ("DataFragment", "N", ErrorKind::InvalidValue)
        );
        let zero = Downlink::DataFragment(DataFragment {
            frag_index: 0,
            n: 0,
            payload: &[],
        });
        assert_eq!(
            zero.build_into(Version::V1, &mut [0u8; 8])
                .unwrap_err()
                .field,
            "N"
        );
    }

    #[test]
    fn data_fragment_must_stand_alone() {
        let payload = [0x00, 0x08, 0x01, 0x00, 0xaa];
        let mut it = downlinks(Version::V2, &payload);
        assert_eq!(
            it.next(),
            Some(Ok(Downlink::PackageVersionReq(PackageVersionReq)))
        );
        assert_eq!(
            it.next(),
            Some(Err(Error::new(
                "DataFragment",
                "CID",
                ErrorKind::TrailingBytes
            )))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn v2_only_cid_is_unknown_in_v1() {
        assert_eq!(
            Uplink::parse(Version::V1, &[0x04, 0x01]).unwrap_err().kind,
            ErrorKind::UnknownCid(0x04)
        );
        assert_eq!(
            Downlink::parse(Version::V1, &[0x04, 0x01])
                .unwrap_err()
                .kind,
            ErrorKind::UnknownCid(0x04)
        );
        let req = Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
            frag_index: 2,
            mic_error: true,
        });
        let mut buf = [0u8; 4];
        assert_eq!(
            req.build_into(Version::V1, &mut buf).unwrap_err().kind,
            ErrorKind::UnknownCid(0x04)
        );
        assert_eq!(
            req.build_into(Version::V2, &mut buf).unwrap(),
            &[0x04, 0x06]
        );
    }
}
