//! What MCUboot (swap with revert) does at each boot of a simulated device, at the level of
//! slots and trailers:
//! - a swap request in the secondary slot (magic, swap_info test or permanent) whose image
//!   checks out: the slots are exchanged; the primary's trailer says copy_done (and image_ok
//!   for a permanent swap);
//! - a test image in the primary slot (copy_done, no image_ok) at the next boot: the slots are
//!   exchanged back, and the old image is marked good;
//! - otherwise the primary image boots as it is.
//!
//! The simulated swap takes time per sector moved, during which the device is off the air.

use embedded_storage::nor_flash::NorFlash;
use fuota_device_agent::mcuboot::{self, read_trailer, Trailer, SWAP_TYPE_PERM, SWAP_TYPE_TEST};
use fuota_device_agent::slot::Region;

use crate::flash::{CowFlash, FlashError, SECTOR, WRITE};

/// What the bootloader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Booted the primary image as it was.
    Plain,
    /// Swapped the new image in, for a test (or for good).
    Swapped { permanent: bool },
    /// The test image was not confirmed: the old one is back.
    Reverted,
    /// The requested image failed its checks: the request was dropped.
    Rejected,
}

impl Boot {
    /// Sectors moved, for the time the boot takes.
    pub fn moved_sectors(&self, slot: Region) -> u64 {
        match self {
            Boot::Swapped { .. } | Boot::Reverted => 2 * u64::from(slot.len) / SECTOR as u64,
            _ => 0,
        }
    }
}

fn flag(flash: &mut CowFlash, at: u32, value: u8) -> Result<(), FlashError> {
    let mut word = [0xffu8; WRITE];
    word[0] = value;
    flash.write(at, &word)
}

/// Erases the sectors that hold the trailer of `slot`.
fn clear_trailer(flash: &mut CowFlash, slot: Region, t: Trailer) -> Result<(), FlashError> {
    let first = t.swap_size_off() / SECTOR as u32 * SECTOR as u32;
    flash.erase(slot.offset + first, slot.end())
}

/// Writes the primary trailer after a swap.
fn mark_primary(
    flash: &mut CowFlash,
    primary: Region,
    t: Trailer,
    swap_info: Option<u8>,
    image_ok: bool,
) -> Result<(), FlashError> {
    clear_trailer(flash, primary, t)?;
    let mut magic = [0xffu8; 16];
    magic.copy_from_slice(&t.magic());
    flash.write(primary.offset + t.magic_off(), &magic)?;
    if let Some(s) = swap_info {
        flag(flash, primary.offset + t.swap_info_off(), s)?;
        flag(flash, primary.offset + t.copy_done_off(), 1)?;
    }
    if image_ok {
        flag(flash, primary.offset + t.image_ok_off(), 1)?;
    }
    Ok(())
}

/// Exchanges the two slots' images (everything below the trailer sectors).
fn swap_slots(
    flash: &mut CowFlash,
    primary: Region,
    secondary: Region,
    t: Trailer,
) -> Result<(), FlashError> {
    let body = t.swap_size_off() / SECTOR as u32 * SECTOR as u32;
    flash.swap_sectors(primary.offset, secondary.offset, body)
}

/// One boot. Both slots have the same length; `align` is BOOT_MAX_ALIGN.
pub fn boot(
    flash: &mut CowFlash,
    primary: Region,
    secondary: Region,
    align: u32,
) -> Result<Boot, FlashError> {
    let t = Trailer::new(primary.len, align).ok_or(FlashError::NotAligned)?;
    let trailer = |flash: &mut CowFlash, slot| {
        read_trailer(flash, slot, t).map_err(|e| match e {
            mcuboot::McubootError::Flash(e) => e,
            _ => FlashError::OutOfBounds,
        })
    };
    let s = trailer(flash, secondary)?;
    if s.magic_good && matches!(s.swap_info, SWAP_TYPE_TEST | SWAP_TYPE_PERM) {
        if mcuboot::verify_image(flash, secondary).is_err() {
            clear_trailer(flash, secondary, t)?;
            return Ok(Boot::Rejected);
        }
        let permanent = s.swap_info == SWAP_TYPE_PERM || s.image_ok;
        swap_slots(flash, primary, secondary, t)?;
        clear_trailer(flash, secondary, t)?;
        mark_primary(flash, primary, t, Some(s.swap_info), permanent)?;
        return Ok(Boot::Swapped { permanent });
    }
    let p = trailer(flash, primary)?;
    if p.magic_good && p.copy_done && !p.image_ok {
        swap_slots(flash, primary, secondary, t)?;
        clear_trailer(flash, secondary, t)?;
        mark_primary(flash, primary, t, None, true)?;
        return Ok(Boot::Reverted);
    }
    Ok(Boot::Plain)
}
