//! The agent: one sans-IO object that answers the three packages on their ports, keeps its
//! state in a flash journal, installs a complete patch into MCUboot's secondary slot and says
//! when to reboot.
//!
//! The driver feeds it downlinks ([`Agent::handle_downlink`]) and timeouts
//! ([`Agent::handle_timeout`] at [`Agent::poll_timeout`]), and drains uplinks
//! ([`Agent::poll_uplink`]: port and payload) and events ([`Agent::poll_event`]).

use core::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::agent_report::{self, Outcome, Refusal, UpdateReport};
use fuota_codec::firmware_management::{self, fw_version, DevVersionAns, UpImageStatus};
use fuota_codec::keys::Key128;
use fuota_codec::patch::apply::Checkpoint;
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::patch::{SignatureCheck, VerifyingKey};
use fuota_codec::{clock_sync, fragmentation, multicast_setup, Version};

use crate::clock::{ClockSync, Millis};
use crate::frag_session::{
    CompleteBlock, FragAreas, FragEvent, Fragmentation, SavedSession, SessionParams, Via,
    MAX_FRAG_SESSIONS,
};
use crate::hooks::{NoHooks, SelfTest, UpdateHooks};
use crate::install::{install, InstallConfig, InstallError};
use crate::journal::Journal;
use crate::mcuboot::{self, Trailer};
use crate::multicast::{ClassCSession, McEvent, McGroup, Multicast, RadioLimits};
use crate::rng::Rng;
use crate::slot::Region;

/// Bytes per journal record slot.
pub const JOURNAL_SLOT: usize = 512;
/// Heatshrink window the applier accepts (the patch maker's default budget).
pub const APPLY_WINDOW: usize = 512;
const UPLINK_LEN: usize = 64;
const UPLINK_QUEUE: usize = 4;
/// The end of the agent's clock: a time never reached (some 584 million years).
const NEVER: Millis = Millis::MAX;
const _: () = assert!(UPLINK_LEN <= u8::MAX as usize);
const EVENT_QUEUE: usize = 8;

/// Flash layout, declared by the integrator: `SESSIONS` fragment storage areas, one per
/// fragmentation session the device can hold at once (1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout<const SESSIONS: usize = 1> {
    pub primary: Region,
    pub secondary: Region,
    pub fragments: [FragAreas; SESSIONS],
    pub journal: Region,
}

/// Keys, limits and choices fixed at build or provisioning time.
/// `K` checks patch signatures: a P-256 public key ([`VerifyingKey`], software) by default.
#[derive(Debug, Clone)]
pub struct AgentConfig<const SESSIONS: usize = 1, K = VerifyingKey> {
    /// Package version spoken on all three ports.
    pub version: Version,
    pub mc_ke_key: Key128,
    pub data_block_int_key: Key128,
    pub limits: RadioLimits,
    /// Public key patches must be signed with (or a [`SignatureCheck`] that holds it).
    pub patch_key: K,
    pub layout: Layout<SESSIONS>,
    /// BOOT_MAX_ALIGN of the bootloader (8 or 32).
    pub boot_max_align: u32,
    /// Ask for a permanent swap instead of a test swap.
    pub permanent: bool,
    /// Data fragments the decoder may have to recover.
    pub max_lost: usize,
    /// Seed for protocol jitter (per device).
    pub seed: u64,
    /// HWversion reported by TS006 DevVersionAns.
    pub hw_version: u32,
}

/// Why an update did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFailure {
    /// The data block's MIC did not match.
    BlockMic,
    BadSignature,
    Rollback,
    /// The running image is not the patch's source, or the patch is malformed.
    BadPatch,
    /// The rebuilt image failed MCUboot's checks.
    BadImage,
    Flash,
    /// The running image is still on test (not confirmed): its secondary slot holds the way
    /// back, so nothing is installed over it. Confirm, then send the update again.
    Unconfirmed,
}

/// What the firmware must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Multicast group and class C changes for the LoRaWAN stack.
    Multicast(McEvent),
    /// A data block is complete (installing starts at the next timeout).
    BlockComplete { len: u32 },
    /// The new image is in the secondary slot with a swap request: reboot when convenient.
    RebootWanted { version: ImageVersion },
    /// An update failed; the running image is untouched.
    UpdateFailed(UpdateFailure),
    /// After the reboot, the bootloader went back to the old image.
    Reverted { version: ImageVersion },
    /// After the reboot, the new image runs. At the next [`Agent::handle_timeout`] the agent
    /// runs [`UpdateHooks::self_test`] and confirms it, or asks for a reboot back to the old
    /// image ([`Agent::confirm`] confirms it earlier).
    Booted { version: ImageVersion },
    /// The new image passed its self-test and is confirmed: the bootloader keeps it.
    Confirmed { version: ImageVersion },
    /// The firmware put the install off ([`UpdateHooks::may_update`]); asked again later.
    InstallDeferred(Refusal),
    /// The new image failed its self-test, or kept rebooting unconfirmed: reboot now, the
    /// bootloader goes back to the old image.
    RevertWanted { version: ImageVersion },
}

/// Where an update stands (journaled).
// In this order, not the update's: Idle and SwapRequested, which a complete block installs
// over, get adjacent tags in the checkpoint's niche, told apart from the others by one range
// compare (-12 B). The journal has codes of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Update {
    #[default]
    Idle,
    /// Swap requested for this version.
    SwapRequested(ImageVersion),
    /// The block of this FragIndex is complete; install (again) from this checkpoint.
    Installing {
        frag_index: u8,
        checkpoint: Option<Checkpoint>,
    },
    /// Running the new image, not yet confirmed.
    Testing(ImageVersion),
}

/// What the agent still owes the server (an UpdateReport, until it is handed out as an
/// uplink) and the unconfirmed boots of the new image (journaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Follow {
    report: Option<UpdateReport>,
    boots: u8,
}

/// The FUOTA device agent over flash `F`; `SPARES` spare fragment slots per session,
/// `SESSIONS` fragmentation sessions at once; `H` the firmware's [`UpdateHooks`].
// In this order (C layout): the small fields the agent reads most come first, at offsets the
// short load and store encodings reach, the fragmentation (reached from the downlinks) next,
// the configuration and the uplink buffers last (-68 B of code, for 8 B of padding).
#[derive(Debug)]
#[repr(C)]
pub struct Agent<
    'a,
    F: NorFlash,
    const SPARES: usize,
    const SESSIONS: usize = 1,
    K: SignatureCheck = VerifyingKey,
    H: UpdateHooks = NoHooks,
> {
    update: Update,
    follow: Follow,
    nb_uplinks: usize,
    flash: &'a RefCell<F>,
    /// When to install the complete block (0: at the next timeout; after a refusal, when to
    /// ask the firmware again); `NEVER` when none waits. One time, not a flag beside it: one
    /// compare.
    install_at: Millis,
    /// The new image booted: run its self-test at this time (the agent's clock); `NEVER`
    /// when none is due (a plain time, no Option to test: one compare).
    self_test_at: Millis,
    /// The refusal last reported, so that a repeated one is not reported again.
    last_refusal: Option<Refusal>,
    frag: Fragmentation<'a, F, SPARES, SESSIONS>,
    primary_trailer: Trailer,
    secondary_trailer: Trailer,
    journal: Journal<JOURNAL_SLOT>,
    rng: Rng,
    clock: ClockSync,
    events: Events,
    hooks: H,
    multicast: Multicast,
    config: AgentConfig<SESSIONS, K>,
    /// Port, length (a byte: at most `UPLINK_LEN`) and payload of each queued uplink.
    uplinks: [(u8, u8, [u8; UPLINK_LEN]); UPLINK_QUEUE],
}

/// Why the agent could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentError<E> {
    Flash(E),
    /// A region is not whole sectors, lies outside the flash or overlaps another, or the
    /// journal has fewer than two sectors.
    Layout,
    /// `boot_max_align` is not 8, 16 or 32, or not a multiple of the flash's write size.
    BootMaxAlign,
    /// Each session's share of the decoder workspace (`share` bytes) is smaller than the
    /// patch applier's heatshrink window (`needed` bytes), which an install borrows from it.
    Workspace {
        share: usize,
        needed: usize,
    },
}

impl<const SESSIONS: usize> Layout<SESSIONS> {
    /// Whether every region is whole sectors of a flash of `capacity` bytes and no two
    /// regions overlap.
    pub fn is_valid(&self, erase_size: u32, capacity: u32) -> bool {
        // Filled with the primary slot, which is the first: no copy for it.
        let mut regions = [self.primary; 3 + 3 * MAX_FRAG_SESSIONS];
        (regions[1], regions[2]) = (self.secondary, self.journal);
        // By chunks of three: no range to check per session.
        for (a, r) in self.fragments.iter().zip(regions[3..].chunks_exact_mut(3)) {
            if let [log, block, spare] = r {
                (*log, *block, *spare) = (a.log, a.block, a.spare);
            }
        }
        if SESSIONS > MAX_FRAG_SESSIONS {
            return false;
        }
        // Each region, then against those after it: taken off the front, with no index.
        let mut rest = &regions[..3 + 3 * SESSIONS];
        while let [r, others @ ..] = rest {
            let fits = r.len > 0
                && erase_size > 0
                && r.is_aligned(erase_size)
                && r.offset
                    .checked_add(r.len)
                    .is_some_and(|end| end <= capacity);
            if !fits || others.iter().any(|o| r.overlaps(o)) {
                return false;
            }
            rest = others;
        }
        true
    }
}

impl<'a, F: NorFlash, const SPARES: usize, const SESSIONS: usize, K: SignatureCheck>
    Agent<'a, F, SPARES, SESSIONS, K, NoHooks>
{
    /// [`Agent::with_hooks`] with [`NoHooks`]: installs as soon as a block is complete,
    /// confirms a new image that boots.
    pub fn new(
        flash: &'a RefCell<F>,
        config: AgentConfig<SESSIONS, K>,
        workspace: &'a mut [u8],
        now: Millis,
    ) -> Result<Self, AgentError<F::Error>> {
        Self::with_hooks(flash, config, workspace, now, NoHooks)
    }
}

impl<
        'a,
        F: NorFlash,
        const SPARES: usize,
        const SESSIONS: usize,
        K: SignatureCheck,
        H: UpdateHooks,
    > Agent<'a, F, SPARES, SESSIONS, K, H>
{
    /// Starts the agent: reads its journal back (groups, sessions, SessionCnt, an update in
    /// progress), replays the fragment sessions' logs, and looks at what the bootloader did.
    /// `workspace` is the TS004 decoders' RAM, shared equally between the sessions; `hooks`
    /// the firmware's decisions around an update.
    // Out of line, like `handle_downlink`: inlined into the firmware's main loop, the agent
    // is built in (and its fields reached through) that function's large frame, which costs
    // more code than the call (-288 B on the size probe; `handle_downlink` -416 B).
    #[inline(never)]
    pub fn with_hooks(
        flash: &'a RefCell<F>,
        config: AgentConfig<SESSIONS, K>,
        workspace: &'a mut [u8],
        now: Millis,
        hooks: H,
    ) -> Result<Self, AgentError<F::Error>> {
        let capacity = u32::try_from(flash.borrow().capacity()).unwrap_or(u32::MAX);
        if !config.layout.is_valid(F::ERASE_SIZE as u32, capacity) {
            return Err(AgentError::Layout);
        }
        let align = config.boot_max_align;
        let trailers = (
            Trailer::new(config.layout.primary.len, align),
            Trailer::new(config.layout.secondary.len, align),
        );
        let (Some(primary_trailer), Some(secondary_trailer)) = trailers else {
            return Err(AgentError::BootMaxAlign);
        };
        if align as usize % F::WRITE_SIZE != 0 {
            return Err(AgentError::BootMaxAlign);
        }
        let share = workspace.len() / SESSIONS.max(1);
        if share < APPLY_WINDOW {
            return Err(AgentError::Workspace {
                share,
                needed: APPLY_WINDOW,
            });
        }
        // The newest record, read into the workspace: the decoders do not need it before
        // the sessions are restored, and what is taken out of the record is small.
        let Some(buf) = workspace.first_chunk_mut::<JOURNAL_SLOT>() else {
            return Err(AgentError::Layout);
        };
        // The error made where it is returned, not mapped and then passed through `?`.
        let (journal, record) =
            match Journal::open_read(&mut *flash.borrow_mut(), config.layout.journal, buf) {
                Ok(opened) => opened,
                Err(crate::journal::JournalError::Flash(e)) => return Err(AgentError::Flash(e)),
                Err(_) => return Err(AgentError::Layout),
            };
        let saved = record.and_then(Saved::new);
        let mut multicast = Multicast::new(config.version, config.mc_ke_key.clone(), config.limits);
        let mut sessions = [None; SESSIONS];
        let (mut last_session_cnt, mut update) = ([None; MAX_FRAG_SESSIONS], Update::Idle);
        let mut follow = Follow::default();
        if let Some(saved) = saved {
            follow = saved.follow();
            for (id, group) in (0..4).zip(saved.groups()) {
                if let (Some(g), session) = group {
                    multicast.restore(id, g, session);
                }
            }
            for (s, saved) in sessions.iter_mut().zip(saved.sessions()) {
                *s = saved;
            }
            (last_session_cnt, update) = (saved.session_cnts(), saved.update());
        }
        let mut agent = Self {
            primary_trailer,
            secondary_trailer,
            clock: ClockSync::new(config.version, now),
            rng: Rng::new(config.seed),
            // Made in place (before `config` moves in), not in a local moved into it.
            frag: Fragmentation::new(
                config.version,
                flash,
                config.layout.fragments,
                workspace,
                config.max_lost,
                config.data_block_int_key.clone(),
                last_session_cnt,
            ),
            config,
            hooks,
            follow,
            install_at: NEVER,
            last_refusal: None,
            self_test_at: NEVER,
            flash,
            journal,
            multicast,
            update,
            // The empty queues as constants: filled in place, not built in a temporary and
            // copied in (-48 B).
            uplinks: const { [(0, 0, [0; UPLINK_LEN]); UPLINK_QUEUE] },
            nb_uplinks: 0,
            events: Events {
                slots: const { [const { None }; EVENT_QUEUE] },
                first: 0,
            },
        };
        // By value: each session handed to `restore` without a copy of its own.
        for (slot, saved) in sessions.into_iter().enumerate() {
            let Some(saved) = saved else { continue };
            match agent.frag.restore(slot, saved) {
                // A block that completed just before the power went, not yet handed over.
                Ok(Some(FragEvent::BlockComplete {
                    frag_index,
                    mic_ok: true,
                    ..
                })) if !saved.consumed && agent.update == Update::Idle => {
                    agent.update = Update::Installing {
                        frag_index,
                        checkpoint: None,
                    };
                }
                Ok(_) => {}
                Err(_) => agent.failed(UpdateFailure::Flash),
            }
        }
        if let Update::Installing { .. } = agent.update {
            agent.install_at = 0;
        }
        agent.check_boot();
        Ok(agent)
    }

    /// After a swap request: did the bootloader run the new image, or go back?
    /// After a reset that followed a swap request, or while the new image is on test (not
    /// confirmed): which image runs now?
    // Out of line: the agent's fields reached through `self` at short offsets, not in
    // `with_hooks`'s large frame.
    #[inline(never)]
    fn check_boot(&mut self) {
        let (wanted, on_test) = match self.update {
            Update::SwapRequested(v) => (v, false),
            Update::Testing(v) => (v, true),
            _ => return,
        };
        let running = {
            let mut f = self.flash.borrow_mut();
            mcuboot::read_image(&mut *f, self.config.layout.primary)
        };
        match running {
            // Through the order, one comparison shared with the rest of the agent (the
            // derived `==` compares field by field inline: -32 B).
            Ok(info) if info.header.version.cmp(&wanted).is_eq() => {
                self.update = Update::Testing(wanted);
                self.follow.boots = self.follow.boots.saturating_add(1);
                if self.follow.boots > self.hooks.boot_limit() {
                    self.revert(wanted, Outcome::BootLoop);
                } else {
                    self.self_test_at = 0;
                    self.push_event(Event::Booted { version: wanted });
                }
            }
            // Not the new image. On test: it was not confirmed before this reset, MCUboot
            // went back. Otherwise still (or again) the old image: a revert, unless the swap
            // request is still in the secondary slot (one arm for both: -28 B).
            Ok(_) | Err(_) if on_test || !self.trailer_flag(false) => {
                self.update = Update::Idle;
                self.reverted(wanted);
            }
            // A swap that has not happened yet.
            Ok(_) | Err(_) => {}
        }
        self.save();
    }

    /// The flag the agent reads in each slot's trailer: whether the primary's image is
    /// confirmed (image_ok), whether the secondary holds a swap request (good magic); false
    /// when the trailer cannot be read. Out of line: one copy of the borrow and the read
    /// serves both slots, which hands back a bool, not the trailer's state.
    #[inline(never)]
    fn trailer_flag(&self, primary: bool) -> bool {
        let (slot, trailer) = if primary {
            (self.config.layout.primary, self.primary_trailer)
        } else {
            (self.config.layout.secondary, self.secondary_trailer)
        };
        mcuboot::read_trailer(&mut *self.flash.borrow_mut(), slot, trailer).is_ok_and(|t| {
            if primary {
                t.image_ok
            } else {
                t.magic_good
            }
        })
    }

    /// TS006: what runs, and what waits in the secondary slot.
    // Out of line: its image reads and version compares stay off `handle_downlink`'s
    // registers and frame (-16 B).
    #[inline(never)]
    fn firmware_answer(&self, cmd: firmware_management::Downlink) -> firmware_management::Uplink {
        use firmware_management::{Downlink as D, Uplink as U};
        let fw = |v: ImageVersion| fw_version(v.major, v.minor, v.revision);
        let running = self.running_version();
        match cmd {
            D::PackageVersionReq => U::PackageVersionAns {
                package_identifier: firmware_management::PACKAGE_ID,
                package_version: firmware_management::PACKAGE_VERSION,
            },
            D::DevVersionReq => U::DevVersionAns(DevVersionAns {
                fw_version: running.map_or(0, fw),
                hw_version: self.config.hw_version,
            }),
            D::DevUpgradeImageReq => {
                let waiting = {
                    let mut f = self.flash.borrow_mut();
                    mcuboot::verify_image(&mut *f, self.config.layout.secondary)
                };
                // The version to upgrade to, or the status without one: one conversion of
                // the version for both that have one.
                let upgrade = match (&self.update, waiting) {
                    (Update::SwapRequested(v), _) => Ok(*v),
                    (_, Ok(info)) if running.is_none_or(|r| info.header.version > r) => {
                        Ok(info.header.version)
                    }
                    // Nothing newer than the running image: nothing to upgrade to.
                    (_, Ok(_) | Err(mcuboot::McubootError::NoImage)) => Err(UpImageStatus::Absent),
                    (_, Err(_)) => Err(UpImageStatus::Corrupt),
                };
                U::DevUpgradeImageAns(upgrade.map_or_else(
                    |status| status,
                    |v| UpImageStatus::Valid { firmware_id: fw(v) },
                ))
            }
        }
    }

    /// The version in the primary slot's image header.
    fn running_version(&self) -> Option<ImageVersion> {
        let mut h = [0u8; mcuboot::HEADER_LEN];
        let primary = self.config.layout.primary.offset;
        self.flash.borrow_mut().read(primary, &mut h).ok()?;
        mcuboot::ImageHeader::parse(&h).map(|h| h.version)
    }

    /// Multicast group `id` as the LoRaWAN stack must install it (on
    /// [`McEvent::GroupKeys`]): McAddr, McAppSKey, McNwkSKey and the FCnt window.
    pub fn multicast_group(&self, id: u8) -> Option<&McGroup> {
        self.multicast.group(id)
    }

    /// Marks the running (new) image good, so that the bootloader keeps it.
    pub fn confirm(&mut self) -> Result<(), mcuboot::McubootError<F::Error>> {
        mcuboot::confirm(
            &mut *self.flash.borrow_mut(),
            self.config.layout.primary,
            self.primary_trailer,
        )?;
        if let Update::Testing(_) = self.update {
            self.update = Update::Idle;
            self.follow.boots = 0;
            self.self_test_at = NEVER;
            self.save();
        }
        Ok(())
    }

    /// The bootloader is back on the old image after `version`: reported (unless a more
    /// precise reason, a failed self-test or a boot loop, is still to be sent).
    fn reverted(&mut self, version: ImageVersion) {
        self.follow.boots = 0;
        let precise = self
            .follow
            .report
            .is_some_and(|r| matches!(r.outcome, Outcome::SelfTestFailed | Outcome::BootLoop));
        if !precise {
            self.report(Outcome::Reverted, version);
        }
        self.push_event(Event::Reverted { version });
    }

    /// Owes the server an UpdateReport (journaled with the next save).
    fn report(&mut self, outcome: Outcome, version: ImageVersion) {
        self.follow.report = Some(UpdateReport {
            outcome,
            fw_version: fw_version(version.major, version.minor, version.revision),
        });
    }

    /// The new image `version` must not stay: on test, a reset is enough (MCUboot goes back
    /// to the unconfirmed image's predecessor); confirmed already (a permanent swap), the old
    /// image, now in the secondary slot, is swapped back in for good.
    fn revert(&mut self, version: ImageVersion, why: Outcome) {
        self.report(why, version);
        let confirmed = self.trailer_flag(true);
        if confirmed {
            let mut f = self.flash.borrow_mut();
            let secondary = self.config.layout.secondary;
            let back = mcuboot::verify_image(&mut *f, secondary).and_then(|old| {
                mcuboot::request_swap(&mut *f, secondary, self.secondary_trailer, old.len, true)
            });
            if back.is_err() {
                // Nothing to go back to: the new image stays, and says so.
                drop(f);
                self.report(Outcome::Failed(UpdateFailure::BadImage as u8), version);
                self.update = Update::Idle;
                self.save();
                return;
            }
        }
        self.save();
        self.push_event(Event::RevertWanted { version });
    }

    fn push_event(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Reports a failed update. Out of line: each caller passes the reason alone, not an
    /// event built on its stack.
    #[inline(never)]
    fn failed(&mut self, why: UpdateFailure) {
        self.push_event(Event::UpdateFailed(why));
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    fn queue_uplink(&mut self, port: u8, payload: &[u8]) {
        // The next free slot, or none when the queue is full: one test, no index check.
        let Some((p, len, buf)) = self.uplinks.get_mut(self.nb_uplinks) else {
            return;
        };
        if payload.is_empty() {
            return;
        }
        let n = payload.len().min(UPLINK_LEN);
        // Through get (both always fit): the checked slices keep their panic calls.
        if let (Some(to), Some(from)) = (buf.get_mut(..n), payload.get(..n)) {
            to.copy_from_slice(from);
        }
        (*p, *len) = (port, n as u8);
        self.nb_uplinks += 1;
    }

    /// Writes the next uplink into `buf`: `(port, length)`.
    pub fn poll_uplink(&mut self, now: Millis, buf: &mut [u8]) -> Option<(u8, usize)> {
        // Answers that were waiting for their time.
        let version = self.config.version;
        let mut b = [0u8; UPLINK_LEN];
        let before = self.frag.acks_pending();
        // The answer written from where it was returned, by reference: not moved field by
        // field into a binding first (-32 B).
        if let Some(u) = &self.frag.poll_uplink(now, &mut self.rng) {
            if let Some(bytes) = u.write_into(version, &mut b) {
                self.queue_uplink(fragmentation::PORT, bytes);
            }
        }
        // The last try of a FragDataBlockReceivedReq: nothing to send again after a reboot.
        if self.frag.acks_pending() != before {
            self.save();
        }
        if let Some(u) = self.clock.poll_request(now, &mut self.rng) {
            if let Some(bytes) = u.write_into(version, &mut b) {
                self.queue_uplink(clock_sync::PORT, bytes);
            }
        }
        if self.nb_uplinks == 0 {
            // A report leaves the journal only once it is handed out.
            let report = self.follow.report.take()?;
            // Handed out through the queue: one copy into `buf` for every uplink.
            self.queue_uplink(agent_report::PORT, &report.to_bytes());
            self.save();
        }
        let (port, len, data) = &self.uplinks[0];
        let (port, n) = (*port, usize::from(*len).min(buf.len()));
        // A queued uplink is never longer than its buffer: no slice check with a panic.
        if let (Some(to), Some(from)) = (buf.get_mut(..n), data.get(..n)) {
            to.copy_from_slice(from);
        }
        // The whole queue moves up by one (the slots past the last are unused): a loop of
        // known length, with no index to check.
        for i in 1..UPLINK_QUEUE {
            self.uplinks[i - 1] = self.uplinks[i];
        }
        self.nb_uplinks -= 1;
        Some((port, n))
    }

    /// Earliest time the agent wants [`Agent::handle_timeout`] (or a poll of uplinks).
    pub fn poll_timeout(&self, now: Millis) -> Millis {
        let mut t = self.clock.poll_timeout();
        t = t.min(self.frag.poll_timeout().unwrap_or(NEVER));
        // The sooner of the two, not before now (one max for both); at `NEVER`, the minimum
        // is unchanged.
        t = t.min(now.max(self.install_at.min(self.self_test_at)));
        if self.follow.report.is_some() {
            t = now;
        }
        // Sessions are timed on GPS seconds: none is due before the clock is synchronized.
        if let Some(gps_ms) = self.clock.gps_ms(now) {
            let gps = crate::clock::seconds_of(gps_ms);
            if let Some(next) = self.multicast.next_deadline_s(gps) {
                t = t.min(Multicast::at(next, now, gps_ms));
            }
        }
        t
    }

    /// Runs what is due: class C session changes, and an install of a complete block.
    pub fn handle_timeout(&mut self, now: Millis) {
        let gps = self.clock.device_time(now);
        let events = &mut self.events;
        let mut changed = false;
        // Behind a `dyn`, as for the setup's events: the push made once.
        let emit: &mut dyn FnMut(McEvent) = &mut |e| {
            events.push(Event::Multicast(e));
            changed = true;
        };
        self.multicast.handle_timeout(gps, emit);
        if changed {
            self.save();
        }
        if now >= self.self_test_at {
            self.self_test_at = NEVER;
            if let Update::Testing(version) = self.update {
                match self.hooks.self_test(now) {
                    SelfTest::Pass => {
                        if self.confirm().is_ok() {
                            self.push_event(Event::Confirmed { version });
                        }
                    }
                    SelfTest::Fail => self.revert(version, Outcome::SelfTestFailed),
                    SelfTest::Later => self.self_test_at = now + self.hooks.retry_ms(),
                }
            }
        }
        if now >= self.install_at {
            if let Err(refusal) = self.hooks.may_update(now) {
                self.install_at = now + self.hooks.retry_ms();
                if self.last_refusal != Some(refusal) {
                    self.last_refusal = Some(refusal);
                    self.follow.report = Some(UpdateReport {
                        outcome: Outcome::Deferred(refusal),
                        fw_version: 0,
                    });
                    self.push_event(Event::InstallDeferred(refusal));
                    self.save();
                }
                return;
            }
            self.install_at = NEVER;
            self.last_refusal = None;
            self.run_install();
        }
    }

    // Kept out of line: its frame (the applier, buffers) would otherwise weigh on every
    // handle_timeout, not only the one that installs.
    #[inline(never)]
    fn run_install(&mut self) {
        let Update::Installing {
            frag_index,
            checkpoint: resume,
        } = self.update
        else {
            return;
        };
        // The journal record for checkpoints: the state as it is now (only the checkpoint
        // changes during the install), borrowed rather than copied.
        let sessions = self.frag.saved();
        let last_session_cnt = self.frag.last_session_cnt();
        let Some(CompleteBlock {
            len,
            store,
            workspace: window,
            consumed,
        }) = self.frag.complete_block(frag_index)
        else {
            // The session was deleted before its install ran, or holds no complete block.
            self.update = Update::Idle;
            self.save();
            return;
        };
        let config = InstallConfig {
            primary: self.config.layout.primary,
            secondary: self.config.layout.secondary,
            trailer: self.secondary_trailer,
            key: &self.config.patch_key,
            permanent: self.config.permanent,
        };
        let flash = self.flash;
        let journal = &mut self.journal;
        // The state borrowed once, outside the closure, which takes it and the rest by value
        // (fewer captures to set up).
        let state = (
            &last_session_cnt,
            &sessions[..],
            &self.multicast,
            &self.follow,
        );
        let save = move |cp| {
            let update = Update::Installing {
                frag_index,
                checkpoint: Some(cp),
            };
            save_state(journal, flash, &state, &update);
        };
        let result = install(flash, store, len, &config, window, resume, save);
        // Success or not, this block has been used: a reboot must not install it again.
        *consumed = true;
        // By reference: the outcome is read where install returned it, not moved out first.
        match &result {
            Ok(done) => {
                self.update = Update::SwapRequested(done.version);
                self.push_event(Event::RebootWanted {
                    version: done.version,
                });
            }
            Err(e) => {
                self.update = Update::Idle;
                let why = failure(e);
                self.follow.report = Some(UpdateReport {
                    outcome: Outcome::Failed(why as u8),
                    fw_version: 0,
                });
                self.failed(why);
            }
        }
        self.save();
    }

    /// Journals the state, encoded from the agent's own fields as it goes to flash.
    #[inline(never)]
    fn save(&mut self) {
        let sessions = self.frag.saved();
        let state = (
            self.frag.session_cnts(),
            &sessions[..],
            &self.multicast,
            &self.follow,
        );
        // Through the checkpoints' function: one copy of the record's assembly (-40 B of
        // code, for about 80 B more stack under a save).
        save_state(&mut self.journal, self.flash, &state, &self.update);
    }

    /// Handles a downlink on `port` that came `via` unicast or a multicast group.
    #[inline(never)]
    pub fn handle_downlink(&mut self, now: Millis, via: Via, port: u8, bytes: &[u8]) {
        let version = self.config.version;
        let mut out = [0u8; UPLINK_LEN];
        let mut len = 0;
        let mut dirty = false;
        // Answers of one downlink go out together, in order. Out of line: one copy of the
        // range check and the call serves the four ports (-4 B). The closures hand back the
        // writer's own result, the bytes written: no length mapped out of it in each (-16 B).
        // Those that pass the version take it by value (`move`), so that it need not be kept
        // in memory for them to point at (-16 B).
        #[inline(never)]
        fn append(u: &dyn Fn(&mut [u8]) -> Option<&[u8]>, out: &mut [u8], len: &mut usize) {
            if let Some(w) = out.get_mut(*len..).and_then(u) {
                *len += w.len();
            }
        }
        // On every port: the commands before the first malformed one, which ends the
        // payload (there is no one to report it to, so no error is made).
        match port {
            clock_sync::PORT if via == Via::Unicast => {
                for cmd in clock_sync::downlinks(version, bytes).valid() {
                    if let Some(u) = &self.clock.handle(now, cmd, &mut self.rng) {
                        append(&move |b| u.write_into(version, b), &mut out, &mut len);
                    }
                }
            }
            multicast_setup::PORT if via == Via::Unicast => {
                let gps = self.clock.device_time(now);
                let events = &mut self.events;
                // Behind a `dyn`: one copy of the event's push, not one inlined at each of
                // the events `handle` raises.
                let emit: &mut dyn FnMut(McEvent) = &mut |e| events.push(Event::Multicast(e));
                for cmd in multicast_setup::downlinks(version, bytes).valid() {
                    let ans = self.multicast.handle(gps, cmd, &mut *emit);
                    // By reference: the answer is read where it was returned, not moved
                    // into a binding first (-64 B).
                    if let Some(u) = &ans {
                        // Setups, deletes and session requests change what must survive a
                        // reboot, whether or not they raise an event (a scheduled session
                        // does not). Told by the answer, one kind per request, whose kind is
                        // known where it is made (the request's: -64 B).
                        dirty |= !matches!(
                            u,
                            multicast_setup::Uplink::PackageVersionAns(_)
                                | multicast_setup::Uplink::McGroupStatusAns(_)
                        );
                        append(&move |b| u.write_into(version, b), &mut out, &mut len);
                    }
                }
            }
            firmware_management::PORT if via == Via::Unicast => {
                for cmd in firmware_management::downlinks(Version::V1, bytes).valid() {
                    let u = self.firmware_answer(cmd);
                    append(&|b| u.write_into(b), &mut out, &mut len);
                }
            }
            fragmentation::PORT => {
                for cmd in fragmentation::downlinks(version, bytes).valid() {
                    // Everything but these changes what a reboot must find (the answer to
                    // FragDataBlockReceivedReq ends its repetitions).
                    let setup_like = !matches!(
                        cmd,
                        fragmentation::Downlink::DataFragment(_)
                            | fragmentation::Downlink::FragSessionStatusReq(_)
                            | fragmentation::Downlink::PackageVersionReq(_)
                    );
                    let mut complete = None;
                    match self
                        .frag
                        .handle(now, via, cmd, &mut self.rng, |e| complete = Some(e))
                    {
                        Ok(Some(u)) => {
                            append(&move |b| u.write_into(version, b), &mut out, &mut len);
                        }
                        Ok(None) => {}
                        Err(_) => self.failed(UpdateFailure::Flash),
                    }
                    dirty |= setup_like;
                    match complete {
                        Some(FragEvent::BlockComplete {
                            len: block,
                            mic_ok: true,
                            frag_index,
                        }) => {
                            self.push_event(Event::BlockComplete { len: block });
                            dirty = true;
                            match self.update {
                                Update::Idle | Update::SwapRequested(_) => {
                                    self.update = Update::Installing {
                                        frag_index,
                                        checkpoint: None,
                                    };
                                    self.install_at = 0;
                                }
                                // One install at a time; the later block waits for a resend.
                                // Refused on test, and reported: one consume for both.
                                Update::Installing { .. } | Update::Testing(_) => {
                                    self.frag.consume(frag_index);
                                    if let Update::Testing(_) = self.update {
                                        self.failed(UpdateFailure::Unconfirmed);
                                    }
                                }
                            }
                        }
                        Some(FragEvent::BlockComplete { mic_ok: false, .. }) => {
                            self.failed(UpdateFailure::BlockMic);
                        }
                        None => {}
                    }
                }
            }
            _ => {}
        }
        // queue_uplink ignores an empty payload.
        if let Some(answers) = out.get(..len) {
            self.queue_uplink(port, answers);
        }
        if dirty {
            self.save();
        }
    }
}

/// The events not yet taken, a ring: the oldest at `first`, the others after it without a
/// gap, so that taking the oldest moves none of the rest (shifting them cost more code).
#[derive(Debug)]
struct Events {
    slots: [Option<Event>; EVENT_QUEUE],
    first: usize,
}

impl Events {
    /// Queues an event after the others; when the queue is full the event is dropped.
    fn push(&mut self, e: Event) {
        for k in 0..EVENT_QUEUE {
            if let slot @ None = &mut self.slots[(self.first + k) % EVENT_QUEUE] {
                *slot = Some(e);
                return;
            }
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let e = self.slots[self.first % EVENT_QUEUE].take();
        if e.is_some() {
            self.first = (self.first + 1) % EVENT_QUEUE;
        }
        e
    }
}

/// Appends a record to the journal. A failed append shows up as the next flash operation
/// failing, and the previous state stays the journal's newest.
fn append_record<F: NorFlash, G: GroupSource + ?Sized>(
    journal: &mut Journal<JOURNAL_SLOT>,
    flash: &RefCell<F>,
    record: &Record<'_, G>,
) {
    let _ = journal.append_with(&mut *flash.borrow_mut(), Record::<G>::LEN, |out| {
        record.encode(out)
    });
}

/// Journals the state with `update` (an install in progress: its checkpoint). Out of line:
/// the record would otherwise sit in the frame of the apply, under everything the apply calls.
#[inline(never)]
fn save_state<F: NorFlash>(
    journal: &mut Journal<JOURNAL_SLOT>,
    flash: &RefCell<F>,
    &(last_session_cnt, sessions, multicast, follow): &(
        &[Option<u16>; MAX_FRAG_SESSIONS],
        &[Option<SavedSession>],
        &Multicast,
        &Follow,
    ),
    update: &Update,
) {
    let record = Record {
        last_session_cnt,
        sessions,
        groups: multicast,
        update,
        follow,
    };
    append_record(journal, flash, &record);
}

fn failure<E>(e: &InstallError<E>) -> UpdateFailure {
    use fuota_codec::patch::ApplyError;
    match e {
        InstallError::Apply(ApplyError::BadSignature) => UpdateFailure::BadSignature,
        InstallError::Rollback { .. } | InstallError::SecurityCounter { .. } => {
            UpdateFailure::Rollback
        }
        InstallError::Apply(ApplyError::Source(_) | ApplyError::Target(_))
        | InstallError::Patch(_) => UpdateFailure::Flash,
        InstallError::Image(_) | InstallError::VersionMismatch { .. } => UpdateFailure::BadImage,
        // A window too small (the agent lends at least APPLY_WINDOW bytes) is the patch's.
        InstallError::Apply(_) | InstallError::Window { .. } => UpdateFailure::BadPatch,
    }
}

/// The journaled state, as read back (for the tests; the agent reads a record through
/// [`Saved`]).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Per FragIndex.
    last_session_cnt: [Option<u16>; MAX_FRAG_SESSIONS],
    /// Per storage slot (the agent's first `SESSIONS`).
    sessions: [Option<SavedSession>; MAX_FRAG_SESSIONS],
    groups: [(Option<McGroup>, Option<ClassCSession>); 4],
    update: Update,
    follow: Follow,
}

/// Where a journal record's multicast groups come from: the agent's [`Multicast`], or a
/// record read back.
trait GroupSource {
    fn group(&self, id: u8) -> (Option<&McGroup>, Option<&ClassCSession>);
}

impl GroupSource for Multicast {
    fn group(&self, id: u8) -> (Option<&McGroup>, Option<&ClassCSession>) {
        (Multicast::group(self, id), self.session(id))
    }
}

#[cfg(test)]
impl GroupSource for [(Option<McGroup>, Option<ClassCSession>); 4] {
    fn group(&self, id: u8) -> (Option<&McGroup>, Option<&ClassCSession>) {
        self.get(usize::from(id))
            .map_or((None, None), |(g, s)| (g.as_ref(), s.as_ref()))
    }
}

/// The state to journal, borrowed from where it lives: saving needs no copy of it.
struct Record<'s, G: ?Sized> {
    last_session_cnt: &'s [Option<u16>; MAX_FRAG_SESSIONS],
    /// Per storage slot; slots past the end (up to [`MAX_FRAG_SESSIONS`]) are empty.
    sessions: &'s [Option<SavedSession>],
    groups: &'s G,
    update: &'s Update,
    follow: &'s Follow,
}

/// Format 3 adds the follow-up section (a report owed to the server, unconfirmed boots) to
/// format 2, which is still read (with nothing owed).
const SNAPSHOT_FORMAT: u8 = 3;
const FORMAT_2: u8 = 2;
// Agent::new reads the record into the workspace, which holds at least the applier's window.
const _: () = assert!(JOURNAL_SLOT <= APPLY_WINDOW);

// The record, section by section, each field at a fixed offset (little-endian), absent
// values as zeros: the format byte and a SessionCnt (present flag, u16) per FragIndex; per
// storage slot a session (flags, setup fields); per multicast group its keys (present flag,
// McAddr, McAppSKey, McNwkSKey, FCnt window) and class C session (present flag, start,
// timeout, frequency, DR); the update (kind, then a checkpoint and FragIndex, or a version).
// Sections go to the journal through one buffer: the head with the sessions, then each group,
// then the update with the follow-up.
const HEAD: usize = 1 + 3 * MAX_FRAG_SESSIONS;
const SESSION: usize = 20;
const GROUP: usize = 45 + 11;
const UPDATE: usize = 41;
const FOLLOW: usize = 8;

/// The follow-up section: present flag, the report's bytes after its CID, the boots. The
/// flag is the report's CID (1), so the section starts with the report as it goes on the air.
fn follow_bytes(follow: &Follow, b: &mut [u8; FOLLOW]) {
    if let Some(r) = follow.report {
        put(b, 0, &r.to_bytes());
    }
    b[7] = follow.boots;
}

const _: () = assert!(agent_report::CID_UPDATE_REPORT == 1 && agent_report::LEN == 7);

fn follow_of(b: &[u8; FOLLOW]) -> Follow {
    Follow {
        // Parsed in place: without the flag (the CID) it is no report.
        report: UpdateReport::parse(&b[..agent_report::LEN]).ok(),
        boots: b[7],
    }
}

// The field readers and `put` are inlined: on a section's array, at a constant offset, a
// field is a load or store, with no bounds check left (out of line, each is a call and
// checks; -256 B on the size probe).
#[inline(always)]
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The `N` bytes at `at`, copied out whole: `copy_from_slice` into a fresh array costs more
/// code per field (-52 B).
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    match b.get(at..).and_then(<[u8]>::first_chunk) {
        Some(a) => *a,
        None => [0; N],
    }
}

/// Writes `v` at `at`.
#[inline(always)]
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn session_bytes(saved: Option<&SavedSession>, b: &mut [u8; SESSION]) {
    let Some(SavedSession {
        params: p,
        consumed,
        ack_pending,
    }) = saved
    else {
        return;
    };
    b[0] = 1 | u8::from(*consumed) << 1 | u8::from(*ack_pending) << 2;
    b[1] = p.frag_index;
    b[2] = p.mc_group_bit_mask;
    put(b, 3, &p.nb_frag.to_le_bytes());
    b[5] = p.frag_size;
    b[6] = p.frag_algo;
    b[7] = p.block_ack_delay;
    b[8] = u8::from(p.ack_reception);
    b[9] = p.padding;
    put(b, 10, &p.descriptor);
    put(b, 14, &p.session_cnt.to_le_bytes());
    put(b, 16, &p.mic);
}

fn session_of(b: &[u8; SESSION]) -> Option<SavedSession> {
    let flags = b[0];
    (flags & 1 == 1).then(|| SavedSession {
        params: SessionParams {
            frag_index: b[1],
            mc_group_bit_mask: b[2],
            nb_frag: le16(b, 3),
            frag_size: b[5],
            frag_algo: b[6],
            block_ack_delay: b[7],
            ack_reception: b[8] == 1,
            padding: b[9],
            descriptor: array(b, 10),
            session_cnt: le16(b, 14),
            mic: array(b, 16),
        },
        consumed: flags & 2 != 0,
        ack_pending: flags & 4 != 0,
    })
}

fn group_bytes(group: Option<&McGroup>, session: Option<&ClassCSession>, b: &mut [u8; GROUP]) {
    if let Some(g) = group {
        b[0] = 1;
        put(b, 1, &g.addr.to_le_bytes());
        put(b, 5, g.app_s_key.as_bytes());
        put(b, 21, g.nwk_s_key.as_bytes());
        put(b, 37, &g.min_fcount.to_le_bytes());
        put(b, 41, &g.max_fcount.to_le_bytes());
    }
    if let Some(s) = session {
        b[45] = 1;
        put(b, 46, &s.start_s.to_le_bytes());
        b[50] = s.timeout_exp;
        put(b, 51, &s.freq_hz.to_le_bytes());
        b[55] = s.dr;
    }
}

fn group_of(b: &[u8; GROUP]) -> (Option<McGroup>, Option<ClassCSession>) {
    let group = (b[0] == 1).then(|| McGroup {
        addr: le32(b, 1),
        app_s_key: Key128::from_bytes(array(b, 5)),
        nwk_s_key: Key128::from_bytes(array(b, 21)),
        min_fcount: le32(b, 37),
        max_fcount: le32(b, 41),
    });
    let session = (b[45] == 1).then(|| ClassCSession {
        start_s: le32(b, 46),
        timeout_exp: b[50],
        freq_hz: le32(b, 51),
        dr: b[55],
        running: false,
    });
    (group, session)
}

fn update_bytes(update: &Update, b: &mut [u8; UPDATE]) {
    let v = match update {
        Update::Idle => return,
        Update::Installing {
            frag_index,
            checkpoint,
        } => {
            b[0] = 1;
            if let Some(c) = checkpoint {
                b[1] = 1;
                // The checkpoint's fields where `to_bytes` puts them, without its copy.
                put(b, 2, &c.target_sha256);
                put(b, 34, &c.written.to_le_bytes());
            }
            b[38] = *frag_index;
            return;
        }
        Update::SwapRequested(v) => {
            b[0] = 2;
            v
        }
        Update::Testing(v) => {
            b[0] = 3;
            v
        }
    };
    b[1] = v.major;
    b[2] = v.minor;
    put(b, 3, &v.revision.to_le_bytes());
    put(b, 5, &v.build.to_le_bytes());
}

fn update_of(b: &[u8; UPDATE]) -> Update {
    let version = || ImageVersion {
        major: b[1],
        minor: b[2],
        revision: le16(b, 3),
        build: le32(b, 5),
    };
    match b[0] {
        1 => Update::Installing {
            // The checkpoint's fields read where `update_bytes` puts them: no copy of its
            // bytes for `from_bytes` to copy again.
            checkpoint: (b[1] == 1).then(|| Checkpoint {
                target_sha256: array(b, 2),
                written: le32(b, 34),
            }),
            frag_index: b[38],
        },
        2 => Update::SwapRequested(version()),
        3 => Update::Testing(version()),
        _ => Update::Idle,
    }
}

impl<G: GroupSource + ?Sized> Record<'_, G> {
    /// Encoded length: every field has a fixed place, present or not.
    const LEN: usize = HEAD + MAX_FRAG_SESSIONS * SESSION + 4 * GROUP + UPDATE + FOLLOW;

    fn encode(&self, out: &mut dyn FnMut(&[u8])) {
        // The head and the sessions in one piece: one clearing and one call, not one per
        // section.
        let mut b = [0u8; HEAD + MAX_FRAG_SESSIONS * SESSION];
        let (head, sessions) = b.split_at_mut(HEAD);
        head[0] = SNAPSHOT_FORMAT;
        // By 3-byte chunks, not `put` at 2 + 3 * i: no bounds check left (-40 B).
        let chunks = head[1..].chunks_exact_mut(3);
        for (cnt, b) in self.last_session_cnt.iter().zip(chunks) {
            if let (Some(c), [flag, lo, hi]) = (cnt, b) {
                let [l, h] = c.to_le_bytes();
                (*flag, *lo, *hi) = (1, l, h);
            }
        }
        for (slot, b) in sessions.chunks_exact_mut(SESSION).enumerate() {
            if let Ok(b) = b.try_into() {
                session_bytes(self.sessions.get(slot).and_then(Option::as_ref), b);
            }
        }
        out(&b);
        // The other sections in the front of the same buffer, cleared for each: one buffer
        // on the stack.
        if let Some(buf) = b.first_chunk_mut::<GROUP>() {
            for id in 0..4 {
                let (group, session) = self.groups.group(id);
                *buf = [0; GROUP];
                group_bytes(group, session, buf);
                out(buf);
            }
        }
        // The last two sections in one piece: one call less.
        if let Some(b) = b.first_chunk_mut::<{ UPDATE + FOLLOW }>() {
            *b = [0; UPDATE + FOLLOW];
            if let Some((update, follow)) = b.split_first_chunk_mut::<UPDATE>() {
                update_bytes(self.update, update);
                if let Some(follow) = follow.first_chunk_mut() {
                    follow_bytes(self.follow, follow);
                }
            }
            out(b);
        }
    }
}

/// A journal record read back: its sections, decoded on demand. Those of format 2 as an
/// array, in which a section at a constant offset is found without a length check (-48 B),
/// then format 3's follow-up section.
#[derive(Clone, Copy)]
struct Saved<'b>(&'b [u8; FORMAT_2_LEN], Option<&'b [u8; FOLLOW]>);

/// Length of a format 2 record: all but the follow-up section.
const FORMAT_2_LEN: usize = HEAD + MAX_FRAG_SESSIONS * SESSION + 4 * GROUP + UPDATE;

impl<'b> Saved<'b> {
    const SESSIONS: usize = HEAD;
    const GROUPS: usize = Self::SESSIONS + MAX_FRAG_SESSIONS * SESSION;
    const UPDATE: usize = Self::GROUPS + 4 * GROUP;

    /// `None` unless `b` is a whole record of this format or of format 2.
    fn new(b: &'b [u8]) -> Option<Self> {
        let (main, rest) = b.split_first_chunk()?;
        match main[0] {
            SNAPSHOT_FORMAT => Some(Self(main, Some(rest.first_chunk()?))),
            FORMAT_2 => Some(Self(main, None)),
            _ => None,
        }
    }

    /// The `N`-byte section at `at`, if the record has it. The section readers take arrays:
    /// their field reads need no bounds checks.
    fn section<const N: usize>(self, at: usize) -> Option<&'b [u8; N]> {
        self.0.get(at..)?.first_chunk()
    }

    // Out of line, with `update`: the two decodes hand back their values whole, not field by
    // field in `with_hooks`'s registers and frame while the agent is put together (-56 B
    // together; -8 and -4 B each alone).
    #[inline(never)]
    fn follow(self) -> Follow {
        self.1.map_or_else(Follow::default, follow_of)
    }

    fn session_cnts(self) -> [Option<u16>; MAX_FRAG_SESSIONS] {
        let b = self.0;
        core::array::from_fn(|i| (b[1 + 3 * i] == 1).then(|| le16(b, 2 + 3 * i)))
    }

    /// The storage slots' sessions, in order (as [`Saved::groups`]).
    fn sessions(self) -> impl Iterator<Item = Option<SavedSession>> + 'b {
        self.0[Self::SESSIONS..Self::GROUPS]
            .chunks_exact(SESSION)
            .map(|b| b.try_into().ok().and_then(session_of))
    }

    /// Storage slot `slot`'s session; `None` past [`MAX_FRAG_SESSIONS`].
    #[cfg(test)]
    fn session(self, slot: usize) -> Option<SavedSession> {
        self.sessions().nth(slot).flatten()
    }

    /// The four groups, in order: by chunks, with no offset computed per group.
    fn groups(self) -> impl Iterator<Item = (Option<McGroup>, Option<ClassCSession>)> + 'b {
        self.0[Self::GROUPS..Self::UPDATE]
            .chunks_exact(GROUP)
            .map(|b| b.try_into().map_or((None, None), group_of))
    }

    #[cfg(test)]
    fn group(self, id: usize) -> (Option<McGroup>, Option<ClassCSession>) {
        self.groups().nth(id).unwrap_or((None, None))
    }

    #[inline(never)]
    fn update(self) -> Update {
        self.section(Self::UPDATE).map_or(Update::Idle, update_of)
    }
}

#[cfg(test)]
impl Snapshot {
    /// The record that encodes this state.
    fn record(&self) -> Record<'_, [(Option<McGroup>, Option<ClassCSession>); 4]> {
        Record {
            last_session_cnt: &self.last_session_cnt,
            sessions: &self.sessions,
            groups: &self.groups,
            update: &self.update,
            follow: &self.follow,
        }
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let saved = Saved::new(b)?;
        Some(Self {
            last_session_cnt: saved.session_cnts(),
            sessions: core::array::from_fn(|i| saved.session(i)),
            groups: core::array::from_fn(|i| saved.group(i)),
            update: saved.update(),
            follow: saved.follow(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn encoded(s: &Snapshot) -> Vec<u8> {
        let mut v = Vec::new();
        s.record().encode(&mut |b| v.extend_from_slice(b));
        v
    }

    const LEN: usize = Record::<[(Option<McGroup>, Option<ClassCSession>); 4]>::LEN;

    #[test]
    fn events_leave_in_order_and_a_full_queue_drops_the_newest() {
        let mut q = Events {
            slots: [const { None }; EVENT_QUEUE],
            first: 0,
        };
        let ev = |len| Event::BlockComplete { len };
        // From every starting slot of the ring.
        for round in 0..EVENT_QUEUE as u32 {
            for i in 0..EVENT_QUEUE as u32 + 2 {
                q.push(ev(100 * round + i));
            }
            for i in 0..EVENT_QUEUE as u32 {
                assert_eq!(q.pop(), Some(ev(100 * round + i)));
            }
            assert_eq!(q.pop(), None);
            q.push(ev(1));
            assert_eq!(q.pop(), Some(ev(1)));
        }
    }

    #[test]
    fn a_snapshot_has_its_fixed_length_and_decodes_back() {
        let empty = Snapshot::default();
        assert_eq!(encoded(&empty).len(), LEN);
        let group = McGroup {
            addr: 0x0102_0304,
            app_s_key: Key128::from_bytes([5; 16]),
            nwk_s_key: Key128::from_bytes([6; 16]),
            min_fcount: 7,
            max_fcount: 8,
        };
        let session = ClassCSession {
            start_s: 9,
            timeout_exp: 10,
            freq_hz: 869_525_000,
            dr: 3,
            running: false,
        };
        let full = Snapshot {
            last_session_cnt: [Some(1), None, Some(3), Some(u16::MAX)],
            groups: core::array::from_fn(|_| (Some(group.clone()), Some(session))),
            update: Update::Installing {
                frag_index: 2,
                checkpoint: Some(Checkpoint {
                    target_sha256: [9; 32],
                    written: 4096,
                }),
            },
            ..Snapshot::default()
        };
        let bytes = encoded(&full);
        assert_eq!(bytes.len(), LEN);
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back.last_session_cnt, full.last_session_cnt);
        assert_eq!(back.update, full.update);
        assert_eq!(back.groups[3].0.as_ref().map(|g| g.addr), Some(group.addr));
        assert_eq!(encoded(&back), bytes);
        for update in [
            Update::SwapRequested(ImageVersion::default()),
            Update::Testing(ImageVersion::default()),
        ] {
            let s = Snapshot {
                update,
                ..Snapshot::default()
            };
            assert_eq!(encoded(&s).len(), LEN);
            assert_eq!(Snapshot::decode(&encoded(&s)).unwrap().update, update);
        }
        // The follow-up section: a report owed and the boots.
        let owed = Snapshot {
            update: Update::Testing(ImageVersion::default()),
            follow: Follow {
                report: Some(UpdateReport {
                    outcome: Outcome::Deferred(Refusal::Busy),
                    fw_version: 0x0102_0003,
                }),
                boots: 2,
            },
            ..Snapshot::default()
        };
        let bytes = encoded(&owed);
        assert_eq!(Snapshot::decode(&bytes).unwrap().follow, owed.follow);
        // A format-2 record (before the section existed) still reads, with nothing owed.
        let mut old = bytes[..LEN - FOLLOW].to_vec();
        old[0] = FORMAT_2;
        let back = Snapshot::decode(&old).unwrap();
        assert_eq!(back.update, owed.update);
        assert_eq!(back.follow, Follow::default());
        old[0] = 4;
        assert!(Snapshot::decode(&old).is_none());
    }

    /// Every field of a rich record, at its place: journals written before a change of the
    /// code must read back the same after it.
    #[test]
    fn the_record_layout_is_frozen() {
        let params = SessionParams {
            frag_index: 1,
            mc_group_bit_mask: 0b1010,
            nb_frag: 0x0203,
            frag_size: 0x44,
            frag_algo: 0,
            block_ack_delay: 5,
            ack_reception: true,
            padding: 0x66,
            descriptor: [0x71, 0x72, 0x73, 0x74],
            session_cnt: 0x0809,
            mic: [0x91, 0x92, 0x93, 0x94],
        };
        let group = |n: u8| McGroup {
            addr: 0x0102_0304 + u32::from(n),
            app_s_key: Key128::from_bytes([0x10 + n; 16]),
            nwk_s_key: Key128::from_bytes([0x20 + n; 16]),
            min_fcount: 0x0a0b_0c0d,
            max_fcount: 0x1a1b_1c1d,
        };
        let session = ClassCSession {
            start_s: 0x3132_3334,
            timeout_exp: 7,
            freq_hz: 869_525_000,
            dr: 3,
            running: false,
        };
        let mut s = Snapshot {
            last_session_cnt: [Some(0x0102), None, Some(3), Some(u16::MAX)],
            sessions: [
                Some(SavedSession {
                    params,
                    consumed: true,
                    ack_pending: false,
                }),
                None,
                None,
                Some(SavedSession {
                    params: SessionParams {
                        ack_reception: false,
                        ..params
                    },
                    consumed: false,
                    ack_pending: true,
                }),
            ],
            groups: [
                (Some(group(0)), Some(session)),
                (None, None),
                (Some(group(2)), None),
                (None, Some(session)),
            ],
            update: Update::Installing {
                frag_index: 2,
                checkpoint: Some(Checkpoint {
                    target_sha256: core::array::from_fn(|i| i as u8),
                    written: 0x0004_1000,
                }),
            },
            follow: Follow {
                report: Some(UpdateReport {
                    outcome: Outcome::Deferred(Refusal::Busy),
                    fw_version: 0x0102_0003,
                }),
                boots: 2,
            },
        };
        let digest = |s: &Snapshot| {
            let b = encoded(s);
            let d = fuota_codec::sha256::Sha256::digest(&b);
            d[..8]
                .iter()
                .map(|b| std::format!("{b:02x}"))
                .collect::<std::string::String>()
        };
        let installing = digest(&s);
        let back = Snapshot::decode(&encoded(&s)).unwrap();
        assert_eq!(digest(&back), installing);
        assert_eq!(back.sessions, s.sessions);
        s.update = Update::SwapRequested(ImageVersion {
            major: 1,
            minor: 2,
            revision: 0x0304,
            build: 0x0506_0708,
        });
        let swap = digest(&s);
        assert_eq!(Snapshot::decode(&encoded(&s)).unwrap().update, s.update);
        assert_eq!([installing, swap], ["a2c9dc0cbf2f5746", "8ae4969df90f433c"]);
    }
}
