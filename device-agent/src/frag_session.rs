//! TS004 fragmented data block transport, device side (sans-IO), over one flash storage
//! area ([`FragAreas`]): one session decodes at a time; a setup for another index while one is
//! open is answered NotEnoughMemory.
//!
//! Every fragment is logged before it is decoded, so [`Fragmentation::restore`] rebuilds the
//! decoder after a reboot by replaying the log.

use core::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::fec::decoder::{DecodeError, DecoderState};
use fuota_codec::fec::Progress;
use fuota_codec::fragmentation::{
    Downlink, FragDataBlockReceivedReq, FragSessionDeleteAns, FragSessionSetupAns,
    FragSessionSetupReq, FragSessionStatusAns, PackageVersionAns, Uplink, PACKAGE_ID,
};
use fuota_codec::keys::{DataBlockMic, Key128};
use fuota_codec::Version;

use crate::clock::Millis;
use crate::frag_store::{FlashStore, FragLog, StoreError, MAX_FRAG_SIZE};
use crate::rng::Rng;
use crate::slot::Region;

/// Flash for one session: the fragment log, the data block, spare slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragAreas {
    pub log: Region,
    pub block: Region,
    pub spare: Region,
}

/// How a downlink reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Unicast,
    /// Multicast group 0..=3.
    Multicast(u8),
}

/// The parts of a FragSessionSetupReq the session keeps.
pub type SessionParams = FragSessionSetupReq;

/// What the agent must know about a session's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragEvent {
    /// The block is complete: `len` bytes (padding removed); `mic_ok` is the v2 MIC check
    /// (always true in v1, which has none).
    BlockComplete {
        frag_index: u8,
        len: u32,
        mic_ok: bool,
    },
}

#[derive(Debug)]
struct Session<'a, F, const SPARES: usize> {
    params: SessionParams,
    decoder: DecoderState,
    store: FlashStore<'a, F, SPARES>,
    log: FragLog,
    /// Fragments received (duplicates included), for FragSessionStatusAns.
    received: u16,
    /// Some once complete: whether the MIC matched.
    mic_ok: Option<bool>,
    /// The decoder ran out of matrix rows (too many losses for this device).
    memory_error: bool,
    /// v2: FragDataBlockReceivedReq still to be acknowledged.
    ack_pending: bool,
}

/// Device side of TS004 over one storage area.
#[derive(Debug)]
pub struct Fragmentation<'a, F, const SPARES: usize> {
    version: Version,
    flash: &'a RefCell<F>,
    areas: FragAreas,
    workspace: &'a mut [u8],
    max_lost: usize,
    data_block_int_key: Key128,
    session: Option<Session<'a, F, SPARES>>,
    /// v2: the highest SessionCnt accepted (persist it, see [`Fragmentation::last_session_cnt`]).
    last_session_cnt: Option<u16>,
    pending_status: Option<(Millis, FragSessionStatusAns)>,
}

/// Bytes of the data block read at once for the MIC.
const MIC_CHUNK: usize = 64;

impl<'a, F: NorFlash, const SPARES: usize> Fragmentation<'a, F, SPARES> {
    /// `workspace` is the decoder's RAM; `max_lost` the data fragments it may recover.
    pub fn new(
        version: Version,
        flash: &'a RefCell<F>,
        areas: FragAreas,
        workspace: &'a mut [u8],
        max_lost: usize,
        data_block_int_key: Key128,
        last_session_cnt: Option<u16>,
    ) -> Self {
        Self {
            version,
            flash,
            areas,
            workspace,
            max_lost,
            data_block_int_key,
            session: None,
            last_session_cnt,
            pending_status: None,
        }
    }

    /// The SessionCnt to persist, so that a replayed setup is refused after a reboot too.
    pub fn last_session_cnt(&self) -> Option<u16> {
        self.last_session_cnt
    }

    /// The open session's setup, to persist with [`Fragmentation::restore`].
    pub fn params(&self) -> Option<&SessionParams> {
        self.session.as_ref().map(|s| &s.params)
    }

    /// Useful fragments still needed (0 once complete); `None` without a session.
    pub fn missing(&self) -> Option<usize> {
        self.session.as_ref().map(|s| s.decoder.missing())
    }

    fn open(
        &mut self,
        params: SessionParams,
        erase: bool,
    ) -> Result<Session<'a, F, SPARES>, StoreError<F::Error>> {
        let frag_size = usize::from(params.frag_size);
        let store = FlashStore::create(self.flash, self.areas.block, self.areas.spare, frag_size)?;
        let log = if erase {
            FragLog::create(self.flash, self.areas.log, frag_size)?
        } else {
            FragLog::replay(self.flash, self.areas.log, frag_size, |_, _| Ok(()))?
        };
        let decoder = DecoderState::new(
            self.version,
            usize::from(params.nb_frag),
            frag_size,
            self.max_lost,
            self.workspace,
        )
        .map_err(|_| StoreError::BadSize)?;
        Ok(Session {
            params,
            decoder,
            store,
            log,
            received: 0,
            mic_ok: None,
            memory_error: false,
            ack_pending: false,
        })
    }

    /// After a reboot: reopens the session with its saved setup and replays its log.
    pub fn restore(
        &mut self,
        params: SessionParams,
    ) -> Result<Option<FragEvent>, StoreError<F::Error>> {
        let mut session = self.open(params, false)?;
        let mut event = None;
        let workspace = &mut *self.workspace;
        let flash = self.flash;
        let key = &self.data_block_int_key;
        let areas = self.areas;
        let frag_size = usize::from(params.frag_size);
        let mut progress = session.decoder.progress();
        let mut received = 0u16;
        session.log = FragLog::replay(flash, areas.log, frag_size, |n, payload| {
            received = received.saturating_add(1);
            if progress != Progress::Complete {
                progress = session
                    .decoder
                    .push(workspace, &mut session.store, usize::from(n), payload)
                    .or_else(|e| match e {
                        DecodeError::Store(e) => Err(e),
                        _ => Ok(progress),
                    })?;
            }
            Ok(())
        })?;
        session.received = received;
        if progress == Progress::Complete {
            event = Some(complete(&mut session, key, self.version)?);
        }
        self.session = Some(session);
        Ok(event)
    }

    fn status_of(&self, frag_index: u8) -> FragSessionStatusAns {
        match self
            .session
            .as_ref()
            .filter(|s| s.params.frag_index == frag_index)
        {
            None => FragSessionStatusAns {
                frag_index,
                nb_frag_received: 0,
                missing_frag: 0,
                memory_error: false,
                mic_error: false,
                session_does_not_exist: true,
            },
            Some(s) => FragSessionStatusAns {
                frag_index,
                nb_frag_received: s.received & 0x3fff,
                missing_frag: s.decoder.missing().min(255) as u8,
                memory_error: s.memory_error,
                mic_error: s.mic_ok == Some(false),
                session_does_not_exist: false,
            },
        }
    }

    /// Handles one command. Answers come back at once, except FragSessionStatusAns, which
    /// waits its random BlockAckDelay (see [`Fragmentation::poll_uplink`]).
    pub fn handle(
        &mut self,
        now: Millis,
        via: Via,
        cmd: Downlink<'_>,
        rng: &mut Rng,
        mut emit: impl FnMut(FragEvent),
    ) -> Result<Option<Uplink>, StoreError<F::Error>> {
        // Setup and management come unicast; only fragments may come on a multicast group.
        if via != Via::Unicast && !matches!(cmd, Downlink::DataFragment(_)) {
            return Ok(None);
        }
        match cmd {
            Downlink::PackageVersionReq(_) => {
                Ok(Some(Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier: PACKAGE_ID,
                    package_version: self.version.number(),
                })))
            }
            Downlink::FragSessionSetupReq(req) => {
                Ok(Some(Uplink::FragSessionSetupAns(self.setup(req)?)))
            }
            Downlink::FragSessionDeleteReq(req) => {
                let exists = self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.params.frag_index == req.frag_index);
                if exists {
                    self.session = None;
                }
                Ok(Some(Uplink::FragSessionDeleteAns(FragSessionDeleteAns {
                    frag_index: req.frag_index,
                    session_does_not_exist: !exists,
                })))
            }
            Downlink::FragSessionStatusReq(req) => {
                let ans = self.status_of(req.frag_index);
                // With Participants = 0 only devices still missing fragments answer.
                let done = !ans.session_does_not_exist && ans.missing_frag == 0 && !ans.mic_error;
                if !req.participants && (done || ans.session_does_not_exist) {
                    return Ok(None);
                }
                let delay_exp = self
                    .session
                    .as_ref()
                    .map_or(0, |s| s.params.block_ack_delay);
                let spread_ms = (1u64 << (u32::from(delay_exp) + 4)) * 1000;
                self.pending_status = Some((now + rng.below(spread_ms), ans));
                Ok(None)
            }
            Downlink::FragDataBlockReceivedAns(ans) => {
                if let Some(s) = self
                    .session
                    .as_mut()
                    .filter(|s| s.params.frag_index == ans.frag_index)
                {
                    s.ack_pending = false;
                }
                Ok(None)
            }
            Downlink::DataFragment(f) => {
                let version = self.version;
                let Some(s) = self
                    .session
                    .as_mut()
                    .filter(|s| s.params.frag_index == f.frag_index)
                else {
                    return Ok(None);
                };
                if let Via::Multicast(g) = via {
                    if s.params.mc_group_bit_mask & (1 << g) == 0 {
                        return Ok(None);
                    }
                }
                if s.mic_ok.is_some()
                    || s.memory_error
                    || f.payload.len() != usize::from(s.params.frag_size)
                {
                    return Ok(None);
                }
                s.log.append(self.flash, f.n, f.payload)?;
                s.received = s.received.saturating_add(1);
                match s
                    .decoder
                    .push(self.workspace, &mut s.store, usize::from(f.n), f.payload)
                {
                    Ok(Progress::Complete) => {
                        let event = complete(s, &self.data_block_int_key, version)?;
                        emit(event);
                        if s.ack_pending {
                            return Ok(Some(Uplink::FragDataBlockReceivedReq(
                                FragDataBlockReceivedReq {
                                    frag_index: f.frag_index,
                                    mic_error: s.mic_ok == Some(false),
                                },
                            )));
                        }
                        Ok(None)
                    }
                    Ok(Progress::NeedMore { .. }) => Ok(None),
                    Err(DecodeError::Store(e)) => Err(e),
                    Err(DecodeError::NotEnoughMatrixMemory { .. }) => {
                        s.memory_error = true;
                        Ok(None)
                    }
                    // A fragment number out of range: nothing to do with it.
                    Err(_) => Ok(None),
                }
            }
        }
    }

    fn setup(
        &mut self,
        req: FragSessionSetupReq,
    ) -> Result<FragSessionSetupAns, StoreError<F::Error>> {
        let mut ans = FragSessionSetupAns {
            frag_index: req.frag_index,
            encoding_unsupported: req.frag_algo != 0,
            not_enough_memory: false,
            frag_session_index_not_supported: false,
            wrong_descriptor: false,
            session_cnt_replay: false,
        };
        let frag_size = usize::from(req.frag_size);
        let m = usize::from(req.nb_frag);
        let pitch = frag_size.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        let record = (2 + frag_size + 4).div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        let busy = self
            .session
            .as_ref()
            .is_some_and(|s| s.params.frag_index != req.frag_index);
        ans.not_enough_memory = busy
            || m == 0
            || frag_size == 0
            || frag_size > MAX_FRAG_SIZE
            || m * pitch > self.areas.block.len as usize
            || (m + self.max_lost) * record > self.areas.log.len as usize
            || DecoderState::workspace_len(m, self.max_lost, frag_size) > self.workspace.len();
        if self.version == Version::V2 {
            ans.session_cnt_replay = self
                .last_session_cnt
                .is_some_and(|last| req.session_cnt <= last);
        }
        if ans.encoding_unsupported || ans.not_enough_memory || ans.session_cnt_replay {
            return Ok(ans);
        }
        if self.version == Version::V2 {
            self.last_session_cnt = Some(req.session_cnt);
        }
        let mut session = self.open(req, true)?;
        session.ack_pending = false;
        self.session = Some(session);
        Ok(ans)
    }

    /// A FragSessionStatusAns whose delay is over, or a FragDataBlockReceivedReq not yet
    /// acknowledged (repeated at each poll after its delay).
    pub fn poll_uplink(&mut self, now: Millis) -> Option<Uplink> {
        match self.pending_status {
            Some((due, ans)) if now >= due => {
                self.pending_status = None;
                Some(Uplink::FragSessionStatusAns(ans))
            }
            _ => None,
        }
    }

    /// When [`Fragmentation::poll_uplink`] has something.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.pending_status.map(|(due, _)| due)
    }

    /// Reads the complete block (for the installer).
    pub fn store(&mut self) -> Option<&mut FlashStore<'a, F, SPARES>> {
        self.session
            .as_mut()
            .filter(|s| s.mic_ok == Some(true))
            .map(|s| &mut s.store)
    }
}

fn complete<F: NorFlash, const SPARES: usize>(
    s: &mut Session<'_, F, SPARES>,
    key: &Key128,
    version: Version,
) -> Result<FragEvent, StoreError<F::Error>> {
    let p = s.params;
    let len = u32::from(p.nb_frag) * u32::from(p.frag_size) - u32::from(p.padding);
    let mic_ok = if version == Version::V2 {
        let mut mic = DataBlockMic::new(key, p.session_cnt, p.frag_index, p.descriptor, len);
        let mut buf = [0u8; MIC_CHUNK];
        let mut at = 0;
        while at < len {
            let n = ((len - at) as usize).min(MIC_CHUNK);
            s.store.read_block(at, &mut buf[..n])?;
            mic.update(&buf[..n]);
            at += n as u32;
        }
        mic.finalize().is_ok_and(|m| m == p.mic)
    } else {
        true
    };
    s.mic_ok = Some(mic_ok);
    s.ack_pending = version == Version::V2 && p.ack_reception;
    Ok(FragEvent::BlockComplete {
        frag_index: p.frag_index,
        len,
        mic_ok,
    })
}

#[cfg(all(test, feature = "sim-flash"))]
mod tests {
    use super::*;
    use crate::sim_flash::SimFlash;
    use fuota_codec::fec::encoder::Encoder;
    use fuota_codec::fragmentation::{
        DataFragment, FragDataBlockReceivedAns, FragSessionDeleteReq, FragSessionStatusReq,
    };
    use fuota_codec::keys::data_block_mic;
    use std::vec;
    use std::vec::Vec;

    type Flash = SimFlash<8, 1024>;
    const AREAS: FragAreas = FragAreas {
        log: Region {
            offset: 0,
            len: 16 * 1024,
        },
        block: Region {
            offset: 16 * 1024,
            len: 8 * 1024,
        },
        spare: Region {
            offset: 24 * 1024,
            len: 2 * 1024,
        },
    };
    const KEY: [u8; 16] = [5; 16];

    struct Block {
        data: Vec<u8>,
        frags: Vec<Vec<u8>>,
        setup: FragSessionSetupReq,
    }

    fn block(session_cnt: u16) -> Block {
        let (m, frag_size, padding) = (50usize, 40usize, 7u8);
        let data: Vec<u8> = (0..m * frag_size - usize::from(padding))
            .map(|i| (i * 13 % 256) as u8)
            .collect();
        let mut padded = data.clone();
        padded.resize(m * frag_size, 0);
        let enc = Encoder::new(Version::V2, &padded, frag_size).unwrap();
        let mut row = vec![0u8; enc.row_len()];
        let frags = (1..=m + 25)
            .map(|n| {
                let mut p = vec![0u8; frag_size];
                enc.fragment_into(n, &mut row, &mut p).unwrap();
                p
            })
            .collect();
        let descriptor = [1, 2, 3, 4];
        let mic =
            data_block_mic(&Key128::from_bytes(KEY), session_cnt, 1, descriptor, &data).unwrap();
        Block {
            data,
            frags,
            setup: FragSessionSetupReq {
                frag_index: 1,
                mc_group_bit_mask: 0b0001,
                nb_frag: m as u16,
                frag_size: frag_size as u8,
                frag_algo: 0,
                block_ack_delay: 1,
                ack_reception: true,
                padding,
                descriptor,
                session_cnt,
                mic,
            },
        }
    }

    /// A unicast command, events dropped.
    fn unicast(
        fr: &mut Fragmentation<'_, Flash, 16>,
        rng: &mut Rng,
        cmd: Downlink<'_>,
    ) -> Option<Uplink> {
        fr.handle(0, Via::Unicast, cmd, rng, |_| {}).unwrap()
    }

    fn frag(b: &Block, n: usize) -> Downlink<'_> {
        Downlink::DataFragment(DataFragment {
            frag_index: 1,
            n: n as u16,
            payload: &b.frags[n - 1],
        })
    }

    #[test]
    fn session_decodes_checks_mic_answers_and_survives_reboot() {
        let flash = RefCell::new(Flash::new(26));
        let mut ws = vec![0u8; 2048];
        let mut rng = Rng::new(3);
        let b = block(5);
        let mut events = Vec::new();
        let last_cnt;
        {
            let mut fr = Fragmentation::<_, 16>::new(
                Version::V2,
                &flash,
                AREAS,
                &mut ws,
                16,
                Key128::from_bytes(KEY),
                None,
            );
            let ans = fr
                .handle(
                    0,
                    Via::Unicast,
                    Downlink::FragSessionSetupReq(b.setup),
                    &mut rng,
                    |_| {},
                )
                .unwrap();
            assert!(
                matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if !a.encoding_unsupported && !a.not_enough_memory && !a.session_cnt_replay)
            );
            // Setup over multicast is ignored; fragments on a group not in the mask too.
            assert_eq!(
                fr.handle(
                    0,
                    Via::Multicast(0),
                    Downlink::FragSessionSetupReq(b.setup),
                    &mut rng,
                    |_| {}
                )
                .unwrap(),
                None
            );
            fr.handle(0, Via::Multicast(2), frag(&b, 1), &mut rng, |_| {})
                .unwrap();
            assert_eq!(fr.missing(), Some(50));
            // Half the data fragments (20% lost), on group 0.
            for n in (1..=25).filter(|n| n % 5 != 0) {
                fr.handle(0, Via::Multicast(0), frag(&b, n), &mut rng, |e| {
                    events.push(e)
                })
                .unwrap();
            }
            // Status: answered after a random delay within 2^(1+4) s.
            unicast(
                &mut fr,
                &mut rng,
                Downlink::FragSessionStatusReq(FragSessionStatusReq {
                    participants: true,
                    frag_index: 1,
                }),
            );
            let due = fr.poll_timeout().unwrap();
            assert!(due < 32_000);
            assert_eq!(
                fr.poll_uplink(due.saturating_sub(1)).filter(|_| due > 0),
                None
            );
            let Some(Uplink::FragSessionStatusAns(st)) = fr.poll_uplink(due) else {
                panic!()
            };
            assert_eq!(
                (
                    st.nb_frag_received,
                    st.missing_frag,
                    st.session_does_not_exist
                ),
                (20, 30, false)
            );
            last_cnt = fr.last_session_cnt();
        }
        // Reboot: a new agent restores the session from its saved setup and the log.
        let mut fr = Fragmentation::<_, 16>::new(
            Version::V2,
            &flash,
            AREAS,
            &mut ws,
            16,
            Key128::from_bytes(KEY),
            last_cnt,
        );
        assert_eq!(fr.restore(b.setup).unwrap(), None);
        assert_eq!(fr.missing(), Some(30));
        let mut ack = None;
        for n in (26..=75).filter(|n| n % 5 != 0) {
            if let Some(u) = fr
                .handle(0, Via::Multicast(0), frag(&b, n), &mut rng, |e| {
                    events.push(e)
                })
                .unwrap()
            {
                ack = Some(u);
                break;
            }
        }
        assert_eq!(
            events,
            [FragEvent::BlockComplete {
                frag_index: 1,
                len: b.data.len() as u32,
                mic_ok: true
            }]
        );
        assert_eq!(
            ack,
            Some(Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
                frag_index: 1,
                mic_error: false
            }))
        );
        unicast(
            &mut fr,
            &mut rng,
            Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns { frag_index: 1 }),
        );
        let mut out = vec![0u8; b.data.len()];
        fr.store().unwrap().read_block(0, &mut out).unwrap();
        assert_eq!(out, b.data);
        // Participants = 0 and nothing missing: no answer.
        unicast(
            &mut fr,
            &mut rng,
            Downlink::FragSessionStatusReq(FragSessionStatusReq {
                participants: false,
                frag_index: 1,
            }),
        );
        assert_eq!(fr.poll_timeout(), None);
        // A replayed setup (SessionCnt not above the last) is refused.
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(b.setup));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if a.session_cnt_replay));
        // Delete, twice.
        let del = |fr: &mut Fragmentation<'_, Flash, 16>, rng: &mut Rng| {
            unicast(
                fr,
                rng,
                Downlink::FragSessionDeleteReq(FragSessionDeleteReq { frag_index: 1 }),
            )
        };
        assert!(
            matches!(del(&mut fr, &mut rng), Some(Uplink::FragSessionDeleteAns(a)) if !a.session_does_not_exist)
        );
        assert!(
            matches!(del(&mut fr, &mut rng), Some(Uplink::FragSessionDeleteAns(a)) if a.session_does_not_exist)
        );
    }

    #[test]
    fn setups_the_device_cannot_take_are_refused() {
        let flash = RefCell::new(Flash::new(26));
        let mut ws = vec![0u8; 2048];
        let mut rng = Rng::new(4);
        let mut fr = Fragmentation::<_, 16>::new(
            Version::V2,
            &flash,
            AREAS,
            &mut ws,
            16,
            Key128::from_bytes(KEY),
            None,
        );
        let b = block(1);
        let mut big = b.setup;
        big.nb_frag = 1000;
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(big));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if a.not_enough_memory));
        let mut rs = b.setup;
        rs.frag_algo = 1;
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(rs));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if a.encoding_unsupported));
        // A wrong MIC is reported, and the block is not handed out.
        let mut bad = b.setup;
        bad.mic = [0; 4];
        unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(bad));
        let mut events = Vec::new();
        for n in 1..=50 {
            fr.handle(0, Via::Unicast, frag(&b, n), &mut rng, |e| events.push(e))
                .unwrap();
        }
        assert_eq!(
            events,
            [FragEvent::BlockComplete {
                frag_index: 1,
                len: b.data.len() as u32,
                mic_ok: false
            }]
        );
        assert!(fr.store().is_none());
        // Another index while one is open: no room.
        let mut other = b.setup;
        other.frag_index = 2;
        other.session_cnt = 9;
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(other));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if a.not_enough_memory));
    }
}
