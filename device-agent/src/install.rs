//! From a complete patch in flash to a swap request: signature, anti-rollback against the
//! running image, source check, streaming apply into the secondary slot (resumable from a
//! checkpoint), the target's SHA-256 and the MCUboot image's own SHA256 TLV, then the
//! trailer. Only the secondary slot is ever written; the primary is read.

use core::cell::RefCell;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::patch::apply::{
    check_preamble, ApplyError, BorrowedApplier, Checkpoint, Verified,
};
use fuota_codec::patch::container::{ImageVersion, Manifest, PREAMBLE_LEN};
use fuota_codec::patch::{SignatureCheck, VerifyingKey};

use crate::frag_store::{FlashStore, StoreError};
use crate::mcuboot::{self, McubootError, Trailer};
use crate::slot::{Region, SlotError, SlotReader, SlotWriter};

/// Where the patch is read from: the decoded data block (see [`FlashStore`]) or a plain
/// flash region ([`RegionPatch`]).
pub trait PatchSource<E> {
    fn read_patch(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreError<E>>;
}

impl<F: NorFlash, const S: usize> PatchSource<F::Error> for FlashStore<'_, F, S> {
    fn read_patch(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreError<F::Error>> {
        self.read_block(offset, buf)
    }
}

/// A patch stored as is in a flash region.
#[derive(Debug)]
pub struct RegionPatch<'a, F> {
    pub flash: &'a RefCell<F>,
    pub region: Region,
}

impl<F: NorFlash> PatchSource<F::Error> for RegionPatch<'_, F> {
    fn read_patch(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreError<F::Error>> {
        if offset as u64 + buf.len() as u64 > u64::from(self.region.len) {
            return Err(StoreError::OutOfRange);
        }
        self.flash
            .borrow_mut()
            .read(self.region.offset + offset, buf)
            .map_err(StoreError::Flash)
    }
}

/// Where things are and what is trusted.
#[derive(Debug, Clone, Copy)]
pub struct InstallConfig<K = VerifyingKey> {
    pub primary: Region,
    pub secondary: Region,
    pub trailer: Trailer,
    /// Checks patch signatures: the public key patches must be signed with.
    pub key: K,
    /// Swap for good at the next boot, instead of a test swap that needs `confirm`.
    pub permanent: bool,
}

/// Why an install stopped. The primary slot is untouched in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallError<E> {
    /// Reading the patch failed.
    Patch(StoreError<E>),
    /// The patch was refused, or reading/writing a slot failed while applying it.
    Apply(ApplyError<SlotError<E>>),
    /// The patch would install an older image than the running one.
    Rollback {
        running: ImageVersion,
        offered: ImageVersion,
    },
    /// The patch's security counter is below the running image's.
    SecurityCounter { running: u32, offered: u32 },
    /// The running image (primary) or the rebuilt one (secondary) fails MCUboot's checks.
    Image(McubootError<E>),
    /// The rebuilt image's header says another version than the signed manifest.
    VersionMismatch {
        manifest: ImageVersion,
        image: ImageVersion,
    },
    /// The RAM lent to the install (`len` bytes) cannot hold the patch's preamble
    /// ([`PREAMBLE_LEN`] bytes).
    Window { len: usize },
}

/// A finished install: MCUboot swaps at the next boot. (Not the whole manifest: the result
/// sits in the caller's frame through the install.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The new image's version (the manifest's, which its MCUboot header repeats).
    pub version: ImageVersion,
    pub image_len: u32,
}

/// Patch bytes read from flash at once (stack).
const CHUNK: usize = 64;

/// Checks the patch (its first `patch_len` bytes) and applies it into the secondary slot.
/// `window` is RAM the install may use throughout, at least [`PREAMBLE_LEN`] bytes: first for
/// the patch's preamble, then as the heatshrink decoder's window (patches whose window fits
/// are accepted); its contents do not matter. `resume` continues an interrupted install;
/// `save` is called with each checkpoint worth keeping (sector-aligned, durable), which the
/// caller journals.
///
/// The steps run in functions of their own, kept out of line, so that the stack holds one
/// step's buffers at a time: the signature check's, then the applier's.
pub fn install<F: NorFlash, K: SignatureCheck>(
    flash: &RefCell<F>,
    patch: &mut impl PatchSource<F::Error>,
    patch_len: u32,
    config: &InstallConfig<K>,
    window: &mut [u8],
    resume: Option<Checkpoint>,
    mut save: impl FnMut(Checkpoint),
) -> Result<Installed, InstallError<F::Error>> {
    // Borrowed out of the result: moving it out would copy the manifest on the stack.
    let checked = check(patch, patch_len, config, window);
    let verified = match checked {
        Ok(ref v) => v,
        Err(e) => return Err(e),
    };
    // Here, not in `check`: with no call between its making and its return, the checked
    // manifest is parsed straight into the result, not moved through two copies.
    check_rollback(flash, config.primary, verified.manifest())?;
    apply(
        flash, patch, patch_len, config, window, verified, resume, &mut save,
    )?;
    request_swap(flash, config, verified.manifest())
}

/// The rebuilt image's MCUboot checks (its SHA256 TLV, the version against the manifest),
/// then the swap request. Left to inline into [`install`]: the image walk it calls has its
/// own frame, and its few locals cost the install 16 to 24 bytes of stack.
fn request_swap<F: NorFlash, K>(
    flash: &RefCell<F>,
    config: &InstallConfig<K>,
    manifest: &Manifest,
) -> Result<Installed, InstallError<F::Error>> {
    let mut f = flash.borrow_mut();
    let image = mcuboot::verify_image(&mut *f, config.secondary).map_err(InstallError::Image)?;
    if image.header.version != manifest.version {
        return Err(InstallError::VersionMismatch {
            manifest: manifest.version,
            image: image.header.version,
        });
    }
    mcuboot::request_swap(
        &mut *f,
        config.secondary,
        config.trailer,
        image.len,
        config.permanent,
    )
    .map_err(InstallError::Image)?;
    Ok(Installed {
        version: manifest.version,
        image_len: image.len,
    })
}

/// The preamble's signature, before anything is written.
#[inline(never)]
fn check<E, K: SignatureCheck>(
    patch: &mut impl PatchSource<E>,
    patch_len: u32,
    config: &InstallConfig<K>,
    window: &mut [u8],
) -> Result<Verified, InstallError<E>> {
    if (patch_len as usize) < PREAMBLE_LEN {
        return Err(InstallError::Apply(ApplyError::Truncated));
    }
    // Read into the lent RAM, not the stack, where it would lie under the signature check.
    let Some(preamble) = window.get_mut(..PREAMBLE_LEN) else {
        return Err(InstallError::Window { len: window.len() });
    };
    patch.read_patch(0, preamble).map_err(InstallError::Patch)?;
    check_preamble(preamble, &config.key).map_err(InstallError::Apply)
}

/// The patch's version and security counter against the running image's. Left to inline
/// into [`install`]: its few locals cost that frame 16 bytes, and the signature check's
/// frame, the deepest, is the smaller for not holding them and the manifest's copies.
fn check_rollback<F: NorFlash>(
    flash: &RefCell<F>,
    primary: Region,
    manifest: &Manifest,
) -> Result<(), InstallError<F::Error>> {
    // Borrowed out of the result, not copied out of it.
    let read = mcuboot::read_image(&mut *flash.borrow_mut(), primary);
    let running = match read {
        Ok(ref running) => running,
        Err(e) => return Err(InstallError::Image(e)),
    };
    if manifest.version < running.header.version {
        return Err(InstallError::Rollback {
            running: running.header.version,
            offered: manifest.version,
        });
    }
    let running_counter = running.security_counter.unwrap_or(0);
    if manifest.security_counter < running_counter {
        return Err(InstallError::SecurityCounter {
            running: running_counter,
            offered: manifest.security_counter,
        });
    }
    Ok(())
}

/// The source check and the streaming apply into the secondary slot, from the checkpoint's
/// sector on; its target hash and length are checked at the end.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn apply<F: NorFlash, K: SignatureCheck>(
    flash: &RefCell<F>,
    patch: &mut impl PatchSource<F::Error>,
    patch_len: u32,
    config: &InstallConfig<K>,
    window: &mut [u8],
    verified: &Verified,
    // `mut` here, not rebound: rounded where the caller passed it, not copied in first.
    mut resume: Option<Checkpoint>,
    // A `dyn` borrow: the closure's captures stay behind it, instead of each being set
    // aside in this frame for the loop (smaller).
    save: &mut dyn FnMut(Checkpoint),
) -> Result<(), InstallError<F::Error>> {
    let manifest = verified.manifest();
    // A checkpoint is only good on a sector boundary the writer can restart from, and only
    // for this patch's target.
    let sector = F::ERASE_SIZE as u32;
    // One match decides the start and whether a fresh install withdraws a swap request.
    let start = match &mut resume {
        // Rounded down where it lies, not copied into a new checkpoint.
        Some(c) if c.target_sha256 == manifest.target_sha256 => {
            c.written = c.written / sector * sector;
            c.written
        }
        // A checkpoint for another target stays: the applier drops it itself (it checks
        // the target too).
        _ => {
            mcuboot::cancel_swap(&mut *flash.borrow_mut(), config.secondary, config.trailer)
                .map_err(InstallError::Image)?;
            0
        }
    };
    let mut applier = BorrowedApplier::verified(&config.key, *verified, resume, window);
    let mut source = SlotReader::new(flash, config.primary);
    let mut target = SlotWriter::new(flash, config.secondary, start)
        .map_err(|e| InstallError::Apply(ApplyError::Target(e)))?;
    let mut saved = start;
    let mut buf = [0u8; CHUNK];
    let mut at = PREAMBLE_LEN as u32;
    while at < patch_len {
        let n = ((patch_len - at) as usize).min(CHUNK);
        // Split off, not sliced: a length known to fit needs no call to the checked index.
        let (chunk, _) = buf.split_at_mut(n);
        patch.read_patch(at, chunk).map_err(InstallError::Patch)?;
        applier
            .push(chunk, &mut source, &mut target)
            .map_err(InstallError::Apply)?;
        at += n as u32;
        let durable = target.durable() / sector * sector;
        if durable > saved {
            saved = durable;
            save(Checkpoint {
                target_sha256: manifest.target_sha256,
                written: durable,
            });
        }
    }
    // Both errors the applier's: mapped into the install's once.
    target
        .flush()
        .map_err(ApplyError::Target)
        .and_then(|()| applier.finish())
        .map(|_applied| ())
        .map_err(InstallError::Apply)
}
