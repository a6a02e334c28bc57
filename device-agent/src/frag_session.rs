//! TS004 fragmented data block transport, device side (sans-IO), with up to `SESSIONS`
//! sessions open at once (at most [`MAX_FRAG_SESSIONS`], the protocol's FragIndex range).
//! Each session takes one storage slot: its own flash areas ([`FragAreas`]) and its own share
//! of the decoder workspace, so sessions decode side by side. A slot is given to a FragIndex
//! at setup; a setup for a new index when every slot is taken is answered NotEnoughMemory.
//!
//! Every fragment is logged before it is decoded, so [`Fragmentation::restore`] rebuilds the
//! decoder after a reboot by replaying the log.

use core::cell::RefCell;
use core::num::NonZeroUsize;

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
use crate::frag_store::{erase_regions, FlashStore, FragLog, StoreError, MAX_FRAG_SIZE};
use crate::rng::Rng;
use crate::slot::Region;

/// FragIndex is two bits: at most four sessions.
pub const MAX_FRAG_SESSIONS: usize = 4;

/// Flash for one session: the fragment log, the data block, spare slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragAreas {
    pub log: Region,
    pub block: Region,
    pub spare: Region,
}

impl FragAreas {
    /// Erases the block and spare areas, then the log too if `log` (for a new session). The
    /// list of regions is built here once, not at each caller.
    fn erase<F: NorFlash>(
        &self,
        flash: &RefCell<F>,
        log: bool,
    ) -> Result<(), StoreError<F::Error>> {
        let regions = [self.block, self.spare, self.log];
        erase_regions(
            flash,
            regions.get(..2 + usize::from(log)).unwrap_or_default(),
        )
    }
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

/// What must be journaled of one slot to bring its session back after a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSession {
    pub params: SessionParams,
    /// The complete block was handed to the installer already (do not install it again).
    pub consumed: bool,
    /// v2: FragDataBlockReceivedReq not yet acknowledged (sent again after a reboot).
    pub ack_pending: bool,
}

/// FragDataBlockReceivedReq goes out this many times at most without its answer.
const MAX_ACK_TRIES: u8 = 4;

#[derive(Debug)]
struct Session<'a, F, const SPARES: usize> {
    params: SessionParams,
    decoder: DecoderState,
    /// The data block; `None` for a block already used, not decoded again after a reboot.
    store: Option<FlashStore<'a, F, SPARES>>,
    log: FragLog,
    /// Fragments received (duplicates included), for FragSessionStatusAns.
    received: u16,
    /// Some once complete: whether the MIC matched.
    mic_ok: Option<bool>,
    /// The decoder ran out of matrix rows (too many losses for this device).
    memory_error: bool,
    /// v2: FragDataBlockReceivedReq still to be acknowledged.
    ack_pending: bool,
    /// When it goes out next (0: at the next poll, after a reboot).
    ack_due: Millis,
    ack_tries: u8,
    consumed: bool,
}

/// A complete block handed to the installer ([`Fragmentation::complete_block`]).
#[derive(Debug)]
pub struct CompleteBlock<'s, 'a, F, const SPARES: usize> {
    /// The image's bytes: the fragments less the padding.
    pub len: u32,
    pub store: &'s mut FlashStore<'a, F, SPARES>,
    /// The session's share of the decoder workspace, free once the decode is complete.
    pub workspace: &'s mut [u8],
    /// Set once the block is used: the session is not looked up again for it.
    pub consumed: &'s mut bool,
}

/// One storage slot: flash areas, a share of the workspace, maybe a session.
#[derive(Debug)]
struct Slot<'a, F, const SPARES: usize> {
    areas: FragAreas,
    workspace: &'a mut [u8],
    session: Option<Session<'a, F, SPARES>>,
}

/// Device side of TS004 over `SESSIONS` storage slots.
#[derive(Debug)]
pub struct Fragmentation<'a, F, const SPARES: usize, const SESSIONS: usize = 1> {
    version: Version,
    flash: &'a RefCell<F>,
    slots: [Slot<'a, F, SPARES>; SESSIONS],
    max_lost: usize,
    data_block_int_key: Key128,
    /// v2: the highest SessionCnt accepted per FragIndex (persist it, see
    /// [`Fragmentation::last_session_cnt`]).
    last_session_cnt: [Option<u16>; MAX_FRAG_SESSIONS],
    /// FragSessionStatusAns waiting for their BlockAckDelay, per FragIndex.
    pending_status: [Option<(Millis, FragSessionStatusAns)>; MAX_FRAG_SESSIONS],
}

/// Bytes of the data block read at once for the MIC.
const MIC_CHUNK: usize = 64;

/// Whether a command that came on `via` is for a session of the groups in `mask` (unicast
/// is for every session).
fn heard_on(via: Via, mask: u8) -> bool {
    match via {
        Via::Unicast => true,
        Via::Multicast(g) => mask & (1 << (g & 3)) != 0,
    }
}

/// The answers of a group spread over 2^(BlockAckDelay + 4) seconds.
fn ack_spread_ms(block_ack_delay: u8) -> u32 {
    // At most 2^11 s: a 32-bit shift, not a 64-bit shift and multiply.
    1000u32 << (u32::from(block_ack_delay & 7) + 4)
}

/// When an answer spread by `block_ack_delay` goes out: at a random point of the spread
/// from `from`.
fn ack_time(from: Millis, rng: &mut Rng, block_ack_delay: u8) -> Millis {
    from + u64::from(rng.below(ack_spread_ms(block_ack_delay)))
}

impl<'a, F: NorFlash, const SPARES: usize, const SESSIONS: usize>
    Fragmentation<'a, F, SPARES, SESSIONS>
{
    /// `areas` gives each slot's flash; `workspace` is the decoders' RAM, shared equally
    /// between the slots; `max_lost` the data fragments a decoder may recover.
    pub fn new(
        version: Version,
        flash: &'a RefCell<F>,
        areas: [FragAreas; SESSIONS],
        workspace: &'a mut [u8],
        max_lost: usize,
        data_block_int_key: Key128,
        last_session_cnt: [Option<u16>; MAX_FRAG_SESSIONS],
    ) -> Self {
        let share = workspace.len() / SESSIONS.max(1);
        let mut rest = Some(workspace);
        let slots = core::array::from_fn(|i| {
            let all = rest.take().unwrap_or_default();
            // Always fits: the shares add up to at most the workspace.
            let (mine, others) = all.split_at_mut_checked(share).unwrap_or_default();
            rest = Some(others);
            Slot {
                areas: areas[i],
                workspace: mine,
                session: None,
            }
        });
        Self {
            version,
            flash,
            slots,
            max_lost,
            data_block_int_key,
            last_session_cnt,
            // Through Default: stored empty in place, not built aside and copied in.
            pending_status: Default::default(),
        }
    }

    /// The SessionCnt to persist per FragIndex, so that a replayed setup is refused after a
    /// reboot too.
    pub fn last_session_cnt(&self) -> [Option<u16>; MAX_FRAG_SESSIONS] {
        self.last_session_cnt
    }

    /// [`Fragmentation::last_session_cnt`] by reference, for the journal record.
    pub(crate) fn session_cnts(&self) -> &[Option<u16>; MAX_FRAG_SESSIONS] {
        &self.last_session_cnt
    }

    /// Each slot's session, to persist and give back to [`Fragmentation::restore`].
    // Out of line: the agent's journal save and its install both take it.
    #[inline(never)]
    pub fn saved(&self) -> [Option<SavedSession>; SESSIONS] {
        core::array::from_fn(|i| {
            self.slots[i].session.as_ref().map(|s| SavedSession {
                params: s.params,
                consumed: s.consumed,
                ack_pending: s.ack_pending,
            })
        })
    }

    /// A bit per slot whose session still has a FragDataBlockReceivedReq to send: the part
    /// of [`Fragmentation::saved`] that [`Fragmentation::poll_uplink`] can change.
    // Out of line: the agent asks before and after each poll.
    #[inline(never)]
    pub fn acks_pending(&self) -> u8 {
        self.slots.iter().enumerate().fold(0, |bits, (i, slot)| {
            let pending = slot.session.as_ref().is_some_and(|s| s.ack_pending);
            bits | u8::from(pending) << i
        })
    }

    fn find(&self, frag_index: u8) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.session
                .as_ref()
                .is_some_and(|s| s.params.frag_index == frag_index)
        })
    }

    // Out of line: left to the one caller in `handle`, it is inlined there, into the large
    // frame `handle` shares with the agent's downlink handling (measured: 72 bytes more).
    #[inline(never)]
    fn session(&self, frag_index: u8) -> Option<&Session<'a, F, SPARES>> {
        self.find(frag_index)
            .and_then(|i| self.slots[i].session.as_ref())
    }

    fn session_mut(&mut self, frag_index: u8) -> Option<&mut Session<'a, F, SPARES>> {
        self.find(frag_index)
            .and_then(|i| self.slots[i].session.as_mut())
    }

    /// The setup of the session on `frag_index`.
    pub fn params(&self, frag_index: u8) -> Option<&SessionParams> {
        self.session(frag_index).map(|s| &s.params)
    }

    /// Useful fragments still needed on `frag_index` (0 once complete); `None` without a
    /// session.
    pub fn missing(&self, frag_index: u8) -> Option<usize> {
        self.session(frag_index)
            .map(|s| if s.consumed { 0 } else { s.decoder.missing() })
    }

    /// Marks the complete block of `frag_index` as handed to the installer.
    pub fn consume(&mut self, frag_index: u8) {
        if let Some(s) = self.session_mut(frag_index) {
            s.consumed = true;
        }
    }

    /// After a reboot: reopens the session of `slot` with its saved setup and replays its
    /// log into a new decode. The event says whether the block was complete. A session whose
    /// block was used already is only counted, not decoded again (no erase, no writes).
    pub fn restore(
        &mut self,
        slot: usize,
        saved: SavedSession,
    ) -> Result<Option<FragEvent>, StoreError<F::Error>> {
        let params = saved.params;
        if self.find(params.frag_index).is_some() {
            return Err(StoreError::OutOfRange);
        }
        let (flash, version, max_lost) = (self.flash, self.version, self.max_lost);
        let key = &self.data_block_int_key;
        let place = self.slots.get_mut(slot).ok_or(StoreError::OutOfRange)?;
        let areas = place.areas;
        // A used block is not decoded again: no erase, no writes, no store (dropped below).
        // The fragment size is checked by the decoder and the replay.
        if !saved.consumed {
            areas.erase(flash, false)?;
        }
        // The log is found again by the replay below.
        place.open(flash, version, max_lost, params)?;
        // Taken apart here, not handed back by `open`: a unit result comes back in a register.
        let Slot {
            workspace,
            session: Some(session),
            ..
        } = place
        else {
            // Just opened: not reached.
            return Err(StoreError::OutOfRange);
        };
        let event = replay(session, workspace, flash, areas.log, key, version, saved);
        // A session that could not be brought back is not kept.
        if event.is_err() {
            place.session = None;
        }
        event
    }

    // Out of line: inlined, it is built in the large frame `handle` shares with the agent's
    // downlink handling (measured: 12 bytes more).
    #[inline(never)]
    fn status_of(session: Option<&Session<'a, F, SPARES>>, frag_index: u8) -> FragSessionStatusAns {
        match session {
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
                // Through `progress`, which the decoder has out of line anyway.
                missing_frag: match s.decoder.progress() {
                    Progress::NeedMore { missing } if !s.consumed => missing.min(255) as u8,
                    _ => 0,
                },
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
        // Setup and management come unicast; fragments and status requests (whose answers
        // BlockAckDelay spreads out for that reason) may come on a multicast group.
        let multicast_ok = matches!(
            cmd,
            Downlink::DataFragment(_) | Downlink::FragSessionStatusReq(_)
        );
        if via != Via::Unicast && !multicast_ok {
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
                let slot = self.find(req.frag_index);
                if let Some(i) = slot {
                    self.slots[i].session = None;
                }
                Ok(Some(Uplink::FragSessionDeleteAns(FragSessionDeleteAns {
                    frag_index: req.frag_index,
                    session_does_not_exist: slot.is_none(),
                })))
            }
            Downlink::FragSessionStatusReq(req) => {
                // The session looked up once for the group, the delay and the answer.
                let session = self.session(req.frag_index);
                if session.is_some_and(|s| !heard_on(via, s.params.mc_group_bit_mask)) {
                    return Ok(None);
                }
                let delay_exp = session.map_or(0, |s| s.params.block_ack_delay);
                let ans = Self::status_of(session, req.frag_index);
                // With Participants = 0 only devices still missing fragments answer: not
                // one whose block is done, nor one without the session (whose answer has
                // no missing fragment and no MIC error either, so one test covers both).
                if !req.participants && ans.missing_frag == 0 && !ans.mic_error {
                    return Ok(None);
                }
                self.pending_status[usize::from(req.frag_index & 3)] =
                    Some((ack_time(now, rng, delay_exp), ans));
                Ok(None)
            }
            Downlink::FragDataBlockReceivedAns(ans) => {
                if let Some(s) = self.session_mut(ans.frag_index) {
                    s.ack_pending = false;
                }
                Ok(None)
            }
            Downlink::DataFragment(f) => {
                let version = self.version;
                let flash = self.flash;
                let Some(i) = self.find(f.frag_index) else {
                    return Ok(None);
                };
                let Slot {
                    workspace,
                    session: Some(s),
                    ..
                } = &mut self.slots[i]
                else {
                    return Ok(None);
                };
                if !heard_on(via, s.params.mc_group_bit_mask) {
                    return Ok(None);
                }
                let Some(store) = s.store.as_mut() else {
                    return Ok(None);
                };
                if s.mic_ok.is_some()
                    || s.memory_error
                    // The log's size (the setup's), so that its own check folds into this one.
                    || f.payload.len() != s.log.frag_size()
                {
                    return Ok(None);
                }
                s.log.append(flash, f.n, f.payload)?;
                s.received = s.received.saturating_add(1);
                match s
                    .decoder
                    .push(workspace, store, usize::from(f.n), f.payload)
                {
                    // The progress is the decoder's own state, read below.
                    Ok(_) => {}
                    Err(DecodeError::Store(e)) => return Err(e),
                    Err(DecodeError::NotEnoughMatrixMemory { .. }) => {
                        s.memory_error = true;
                        return Ok(None);
                    }
                    // A fragment number out of range: nothing to do with it.
                    Err(_) => return Ok(None),
                }
                if s.decoder.is_complete() {
                    complete(s, &self.data_block_int_key, version)?;
                    // Every device of a multicast group completes on the same fragment:
                    // the report waits a random BlockAckDelay, or they all collide.
                    s.ack_due = ack_time(now, rng, s.params.block_ack_delay);
                    emit(s.event());
                }
                Ok(None)
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
            frag_session_index_not_supported: usize::from(req.frag_index) >= MAX_FRAG_SESSIONS,
            wrong_descriptor: false,
            session_cnt_replay: false,
        };
        // The index's own slot (a new setup replaces its session), else a free one.
        let slot = self
            .find(req.frag_index)
            .or_else(|| self.slots.iter().position(|s| s.session.is_none()));
        let frag_size = usize::from(req.frag_size);
        let m = usize::from(req.nb_frag);
        let pitch = frag_size.next_multiple_of(F::WRITE_SIZE);
        let record = (2 + frag_size + 4).next_multiple_of(F::WRITE_SIZE);
        ans.not_enough_memory = match slot.and_then(|i| self.slots.get(i)) {
            None => true,
            Some(s) => {
                m == 0
                    || !(1..=MAX_FRAG_SIZE).contains(&frag_size)
                    || m * pitch > s.areas.block.len as usize
                    || (m + self.max_lost) * record > s.areas.log.len as usize
                    || DecoderState::workspace_len(m, self.max_lost, frag_size) > s.workspace.len()
            }
        };
        let last = &mut self.last_session_cnt[usize::from(req.frag_index) % MAX_FRAG_SESSIONS];
        if self.version == Version::V2 {
            ans.session_cnt_replay = last.is_some_and(|last| req.session_cnt <= last);
        }
        let refused = ans.encoding_unsupported
            || ans.not_enough_memory
            || ans.frag_session_index_not_supported
            || ans.session_cnt_replay;
        let (flash, version, max_lost) = (self.flash, self.version, self.max_lost);
        // The slot taken once (`get_mut`: it was found above, an index would keep a check).
        let Some(place) = slot
            .filter(|_| !refused)
            .and_then(|i| self.slots.get_mut(i))
        else {
            return Ok(ans);
        };
        if version == Version::V2 {
            *last = Some(req.session_cnt);
        }
        // The old session goes first: if erasing fails, no half-open session remains.
        place.session = None;
        // The fragment size was checked above (NotEnoughMemory).
        place.areas.erase(flash, true)?;
        place.open(flash, version, max_lost, req)?;
        Ok(ans)
    }

    /// A FragSessionStatusAns whose delay is over, or a FragDataBlockReceivedReq due (sent
    /// again, a BlockAckDelay spread apart, until answered or [`MAX_ACK_TRIES`] times).
    pub fn poll_uplink(&mut self, now: Millis, rng: &mut Rng) -> Option<Uplink> {
        // Plain loops, as in poll_timeout: smaller than `find` and a second look at the find.
        for pending in &mut self.pending_status {
            if let Some((due, ans)) = *pending {
                if now >= due {
                    *pending = None;
                    return Some(Uplink::FragSessionStatusAns(ans));
                }
            }
        }
        for s in self
            .slots
            .iter_mut()
            .filter_map(|slot| slot.session.as_mut())
        {
            if !s.ack_pending || now < s.ack_due {
                continue;
            }
            s.ack_tries += 1;
            if s.ack_tries >= MAX_ACK_TRIES {
                s.ack_pending = false;
            }
            // Again a spread later: from the end of this spread.
            let delay = s.params.block_ack_delay;
            s.ack_due = ack_time(now + u64::from(ack_spread_ms(delay)), rng, delay);
            return Some(Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
                frag_index: s.params.frag_index,
                mic_error: s.mic_ok == Some(false),
            }));
        }
        None
    }

    /// When [`Fragmentation::poll_uplink`] has something.
    pub fn poll_timeout(&self) -> Option<Millis> {
        // Plain loops: smaller code than an iterator chain over both tables. The minimum
        // starts at the end of time, not at `None`: one compare per time. (A time at the end
        // of time is never due: the agent takes the minimum with its own times anyway.)
        let mut earliest = Millis::MAX;
        for (t, _) in self.pending_status.iter().flatten() {
            earliest = earliest.min(*t);
        }
        for s in self.slots.iter().filter_map(|slot| slot.session.as_ref()) {
            if s.ack_pending {
                earliest = earliest.min(s.ack_due);
            }
        }
        (earliest < Millis::MAX).then_some(earliest)
    }

    /// The complete block of `frag_index` (MIC checked), for the installer.
    pub fn store(&mut self, frag_index: u8) -> Option<&mut FlashStore<'a, F, SPARES>> {
        self.session_mut(frag_index)
            .filter(|s| s.mic_ok == Some(true))
            .and_then(|s| s.store.as_mut())
    }

    /// [`Fragmentation::store`], with the block's length, the session's share of the decoder
    /// workspace as RAM for the installer and its consumed flag, the session looked up
    /// once. A complete decode never reads or writes its workspace again: its fragments are
    /// dropped (here and in the replay after a reboot, which stops decoding at completion),
    /// and only a new setup (which starts a fresh decoder) uses it again.
    pub fn complete_block(&mut self, frag_index: u8) -> Option<CompleteBlock<'_, 'a, F, SPARES>> {
        let i = self.find(frag_index)?;
        let Slot {
            workspace,
            session: Some(s),
            ..
        } = &mut self.slots[i]
        else {
            return None;
        };
        if s.mic_ok != Some(true) || !s.decoder.is_complete() {
            return None;
        }
        let len = block_len(&s.params);
        Some(CompleteBlock {
            len,
            store: s.store.as_mut()?,
            workspace,
            consumed: &mut s.consumed,
        })
    }
}

impl<'a, F: NorFlash, const SPARES: usize> Slot<'a, F, SPARES> {
    /// Opens a session here with a fresh decoder, a store over the slot's block and spare
    /// areas, which the caller erased ([`erase_regions`]), and the log from the start of its
    /// area (erased too, or replayed by the caller next). The session is built in place:
    /// built elsewhere, it (some 250 bytes) would be copied in, out of a `Result`.
    fn open(
        &mut self,
        flash: &'a RefCell<F>,
        version: Version,
        max_lost: usize,
        params: SessionParams,
    ) -> Result<(), StoreError<F::Error>> {
        let decoder = DecoderState::new(
            version,
            usize::from(params.nb_frag),
            usize::from(params.frag_size),
            max_lost,
            self.workspace,
        );
        // Both refusals are the same error: one test and one return.
        let (Some(frag_size), Ok(decoder)) =
            (NonZeroUsize::new(usize::from(params.frag_size)), decoder)
        else {
            return Err(StoreError::BadSize);
        };
        self.session = Some(Session {
            params,
            decoder,
            store: Some(FlashStore::erased(
                flash,
                self.areas.block,
                self.areas.spare,
                frag_size,
            )),
            log: FragLog::at_start(self.areas.log, frag_size.get()),
            received: 0,
            mic_ok: None,
            memory_error: false,
            ack_pending: false,
            ack_due: 0,
            ack_tries: 0,
            consumed: false,
        });
        Ok(())
    }
}

/// The replay of [`Fragmentation::restore`] into the session just opened.
fn replay<F: NorFlash, const SPARES: usize>(
    session: &mut Session<'_, F, SPARES>,
    workspace: &mut [u8],
    flash: &RefCell<F>,
    log: Region,
    key: &Key128,
    version: Version,
    saved: SavedSession,
) -> Result<Option<FragEvent>, StoreError<F::Error>> {
    let frag_size = usize::from(saved.params.frag_size);
    if saved.consumed {
        session.store = None;
    }
    let mut received = 0u16;
    let Session { decoder, store, .. } = session;
    // One replay for both cases (its loop once in the code): a used block's fragments are
    // only counted. A complete decoder takes no more fragments (and never touches the store
    // for them), and only a store failure ends the replay.
    session.log = FragLog::replay(flash, log, frag_size, |n, payload| {
        received = received.saturating_add(1);
        let Some(store) = store else { return Ok(()) };
        match decoder.push(workspace, store, usize::from(n), payload) {
            Err(DecodeError::Store(e)) => Err(e),
            _ => Ok(()),
        }
    })?;
    session.received = received;
    if saved.consumed {
        session.mic_ok = Some(true);
        session.consumed = true;
        session.ack_pending = saved.ack_pending;
        Ok(None)
    } else if session.decoder.is_complete() {
        complete(session, key, version)?;
        Ok(Some(session.event()))
    } else {
        Ok(None)
    }
}

/// The length of a session's block: its fragments less the padding.
fn block_len(p: &SessionParams) -> u32 {
    u32::from(p.nb_frag) * u32::from(p.frag_size) - u32::from(p.padding)
}

impl<F, const SPARES: usize> Session<'_, F, SPARES> {
    /// The event of a block [`complete`] checked.
    fn event(&self) -> FragEvent {
        FragEvent::BlockComplete {
            frag_index: self.params.frag_index,
            len: block_len(&self.params),
            mic_ok: self.mic_ok == Some(true),
        }
    }
}

/// Checks the MIC of a complete block and records the outcome in the session (its event is
/// then [`Session::event`]: a unit result comes back in a register, an event would not).
fn complete<F: NorFlash, const SPARES: usize>(
    s: &mut Session<'_, F, SPARES>,
    key: &Key128,
    version: Version,
) -> Result<(), StoreError<F::Error>> {
    let p = s.params;
    let len = block_len(&p);
    let mic_ok = if version == Version::V2 {
        // Looked up once, not at each chunk (a complete block's session always has its
        // store: only a used block's, never checked again, has none).
        let store = s.store.as_mut().ok_or(StoreError::OutOfRange)?;
        let mut mic = DataBlockMic::new(key, p.session_cnt, p.frag_index, p.descriptor, len);
        let mut buf = [0u8; MIC_CHUNK];
        let mut at = 0;
        while at < len {
            let n = ((len - at) as usize).min(MIC_CHUNK);
            // `get` (never short: `n` is at most the buffer): an index keeps a panic path.
            let chunk = buf.get_mut(..n).unwrap_or_default();
            store.read_block(at, chunk)?;
            mic.update(chunk);
            at += n as u32;
        }
        mic.finalize().is_ok_and(|m| m == p.mic)
    } else {
        true
    };
    s.mic_ok = Some(mic_ok);
    s.ack_pending = version == Version::V2 && p.ack_reception;
    Ok(())
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
        block_for(1, session_cnt)
    }

    fn block_for(frag_index: u8, session_cnt: u16) -> Block {
        let (m, frag_size, padding) = (50usize, 40usize, 7u8);
        let data: Vec<u8> = (0..m * frag_size - usize::from(padding))
            .map(|i| ((i * 13 + usize::from(frag_index) * 101) % 256) as u8)
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
        let mic = data_block_mic(
            &Key128::from_bytes(KEY),
            session_cnt,
            frag_index,
            descriptor,
            &data,
        )
        .unwrap();
        Block {
            data,
            frags,
            setup: FragSessionSetupReq {
                frag_index,
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
    fn unicast<const S: usize>(
        fr: &mut Fragmentation<'_, Flash, 16, S>,
        rng: &mut Rng,
        cmd: Downlink<'_>,
    ) -> Option<Uplink> {
        fr.handle(0, Via::Unicast, cmd, rng, |_| {}).unwrap()
    }

    fn frag(b: &Block, n: usize) -> Downlink<'_> {
        Downlink::DataFragment(DataFragment {
            frag_index: b.setup.frag_index,
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
                [AREAS],
                &mut ws,
                16,
                Key128::from_bytes(KEY),
                [None; MAX_FRAG_SESSIONS],
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
            assert_eq!(fr.missing(1), Some(50));
            // Half the data fragments (20% lost), on group 0.
            for n in (1..=25).filter(|n| n % 5 != 0) {
                fr.handle(0, Via::Multicast(0), frag(&b, n), &mut rng, |e| {
                    events.push(e)
                })
                .unwrap();
            }
            // Status, asked on the multicast group (on a group outside the session's mask:
            // ignored), only of devices still missing fragments: answered after a random
            // delay within 2^(1+4) s.
            let status = Downlink::FragSessionStatusReq(FragSessionStatusReq {
                participants: false,
                frag_index: 1,
            });
            fr.handle(0, Via::Multicast(1), status, &mut rng, |_| {})
                .unwrap();
            assert_eq!(fr.poll_timeout(), None);
            fr.handle(0, Via::Multicast(0), status, &mut rng, |_| {})
                .unwrap();
            let due = fr.poll_timeout().unwrap();
            assert!(due < 32_000);
            assert_eq!(
                fr.poll_uplink(due.saturating_sub(1), &mut rng)
                    .filter(|_| due > 0),
                None
            );
            let Some(Uplink::FragSessionStatusAns(st)) = fr.poll_uplink(due, &mut rng) else {
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
            [AREAS],
            &mut ws,
            16,
            Key128::from_bytes(KEY),
            last_cnt,
        );
        assert_eq!(
            fr.restore(
                0,
                SavedSession {
                    params: b.setup,
                    consumed: false,
                    ack_pending: false
                }
            )
            .unwrap(),
            None
        );
        assert_eq!(fr.missing(1), Some(30));
        for n in (26..=75).filter(|n| n % 5 != 0) {
            let up = fr
                .handle(0, Via::Multicast(0), frag(&b, n), &mut rng, |e| {
                    events.push(e)
                })
                .unwrap();
            assert_eq!(up, None);
        }
        assert_eq!(
            events,
            [FragEvent::BlockComplete {
                frag_index: 1,
                len: b.data.len() as u32,
                mic_ok: true
            }]
        );
        // FragDataBlockReceivedReq after a random delay within 2^(1+4) s, then again a
        // spread later while unanswered.
        let ack = Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
            frag_index: 1,
            mic_error: false,
        });
        let due = fr.poll_timeout().unwrap();
        assert!(due < 32_000);
        assert_eq!(fr.poll_uplink(due, &mut rng), Some(ack));
        assert_eq!(fr.poll_uplink(due, &mut rng), None);
        let again = fr.poll_timeout().unwrap();
        assert!(
            (due + 32_000..due + 64_000).contains(&again),
            "{due} {again}"
        );
        assert_eq!(fr.poll_uplink(again, &mut rng), Some(ack));
        assert!(fr.saved()[0].unwrap().ack_pending);
        unicast(
            &mut fr,
            &mut rng,
            Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns { frag_index: 1 }),
        );
        assert!(!fr.saved()[0].unwrap().ack_pending);
        assert_eq!(fr.poll_timeout(), None);
        let mut out = vec![0u8; b.data.len()];
        fr.store(1).unwrap().read_block(0, &mut out).unwrap();
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
            [AREAS],
            &mut ws,
            16,
            Key128::from_bytes(KEY),
            [None; MAX_FRAG_SESSIONS],
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
        assert!(fr.store(1).is_none());
        // Another index while one is open: no room.
        let mut other = b.setup;
        other.frag_index = 2;
        other.session_cnt = 9;
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(other));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(a)) if a.not_enough_memory));
    }

    #[test]
    fn two_sessions_decode_side_by_side_and_come_back_after_a_reboot() {
        let second = FragAreas {
            log: Region {
                offset: 26 * 1024,
                len: 16 * 1024,
            },
            block: Region {
                offset: 42 * 1024,
                len: 8 * 1024,
            },
            spare: Region {
                offset: 50 * 1024,
                len: 2 * 1024,
            },
        };
        let flash = RefCell::new(Flash::new(52));
        // RAM before and after the reboot.
        let (mut ws, mut ws_after) = (vec![0u8; 4096], vec![0u8; 4096]);
        let mut rng = Rng::new(5);
        let (a, b, c) = (block_for(0, 3), block_for(2, 1), block_for(3, 1));
        let mut events = Vec::new();
        let boot = |ws, cnt| {
            Fragmentation::<_, 16, 2>::new(
                Version::V2,
                &flash,
                [AREAS, second],
                ws,
                16,
                Key128::from_bytes(KEY),
                cnt,
            )
        };
        let (saved, cnt) = {
            let mut fr = boot(&mut ws, [None; MAX_FRAG_SESSIONS]);
            for blk in [&a, &b] {
                let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(blk.setup));
                assert!(
                    matches!(ans, Some(Uplink::FragSessionSetupAns(x)) if !x.not_enough_memory && !x.session_cnt_replay)
                );
            }
            // Both slots taken: a third index gets NotEnoughMemory.
            let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(c.setup));
            assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(x)) if x.not_enough_memory));
            // Interleaved fragments, 1 in 6 lost, the first block only half way.
            for n in (1..=72).filter(|n| n % 6 != 0) {
                if n <= 30 {
                    fr.handle(0, Via::Multicast(0), frag(&a, n), &mut rng, |e| {
                        events.push(e)
                    })
                    .unwrap();
                }
                fr.handle(0, Via::Multicast(0), frag(&b, n), &mut rng, |e| {
                    events.push(e)
                })
                .unwrap();
            }
            assert_eq!(
                events,
                [FragEvent::BlockComplete {
                    frag_index: 2,
                    len: b.data.len() as u32,
                    mic_ok: true
                }]
            );
            assert_eq!(fr.missing(2), Some(0));
            assert!(fr.missing(0).unwrap() > 0);
            let mut out = vec![0u8; b.data.len()];
            fr.store(2).unwrap().read_block(0, &mut out).unwrap();
            assert_eq!(out, b.data);
            fr.consume(2);
            (fr.saved(), fr.last_session_cnt())
        };
        assert_eq!(cnt, [Some(3), None, Some(1), None]);
        assert!(saved[1].is_some_and(|s| s.consumed));
        // Reboot: both come back from their own logs.
        let mut fr = boot(&mut ws_after, cnt);
        for (slot, s) in saved.iter().enumerate() {
            fr.restore(slot, s.unwrap()).unwrap();
        }
        assert_eq!(fr.saved(), saved);
        // The used block is not decoded again: it stays complete, but is not handed out.
        assert_eq!(fr.missing(2), Some(0));
        assert!(fr.store(2).is_none());
        let mut out = vec![0u8; a.data.len()];
        events.clear();
        for n in (31..=75).filter(|n| n % 6 != 0) {
            fr.handle(0, Via::Unicast, frag(&a, n), &mut rng, |e| events.push(e))
                .unwrap();
        }
        assert_eq!(
            events,
            [FragEvent::BlockComplete {
                frag_index: 0,
                len: a.data.len() as u32,
                mic_ok: true
            }]
        );
        fr.store(0).unwrap().read_block(0, &mut out).unwrap();
        assert_eq!(out, a.data);
        // Deleting one frees its slot for the third index.
        unicast(
            &mut fr,
            &mut rng,
            Downlink::FragSessionDeleteReq(FragSessionDeleteReq { frag_index: 2 }),
        );
        let ans = unicast(&mut fr, &mut rng, Downlink::FragSessionSetupReq(c.setup));
        assert!(matches!(ans, Some(Uplink::FragSessionSetupAns(x)) if !x.not_enough_memory));
        assert_eq!(fr.missing(3), Some(50));
    }
}
