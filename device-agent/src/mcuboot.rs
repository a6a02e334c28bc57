//! MCUboot's side of an update: the image header and TLVs (to check a rebuilt image's own
//! SHA-256 and read its version and security counter), and the slot trailer (to ask for a
//! test or permanent swap, to confirm the running image, to see what the bootloader did).
//!
//! Layouts (MCUboot 2.x, imgtool 2.x):
//! - header, 32 bytes LE: magic 0x96f3b83d, load address, header size u16, protected TLV
//!   size u16, image size u32, flags u32, version `u8.u8.u16` + build u32, padding;
//! - after header and image: the protected TLV area (info magic 0x6908) if its size is not
//!   zero, then the TLV area (0x6907); each info is `magic u16, total length u16`, each TLV
//!   `type u16, length u16, value`; SHA256 (0x10) covers header, image and protected TLVs;
//!   SEC_CNT (0x50, protected) is a u32;
//! - trailer at the end of a slot of `S` bytes with `A` = BOOT_MAX_ALIGN: magic in the last 16
//!   bytes (for `A` = 8 the classic 16-byte magic; otherwise `A` as u16 then 14 fixed bytes),
//!   image_ok at `S - align_up(16, A) - A`, copy_done, swap_info and swap_size each `A` lower.

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::sha256::Sha256;

use crate::slot::Region;

pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
pub const TLV_INFO_MAGIC: u16 = 0x6907;
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
pub const TLV_SHA256: u16 = 0x10;
pub const TLV_SEC_CNT: u16 = 0x50;
pub const HEADER_LEN: usize = 32;
/// Image bytes read at once (stack) for the hash.
const HASH_CHUNK: usize = 128;

const MAGIC_8: [u8; 16] = [
    0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80,
];
const MAGIC_TAIL: [u8; 14] = [
    0x2d, 0xe1, 0x5d, 0x29, 0x41, 0x0b, 0x8d, 0x77, 0x67, 0x9c, 0x11, 0x0f, 0x1f, 0x8a,
];

/// swap_info values (low nibble: swap type).
pub const SWAP_TYPE_TEST: u8 = 0x02;
pub const SWAP_TYPE_PERM: u8 = 0x03;
const FLAG_SET: u8 = 0x01;

/// Why an image or trailer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McubootError<E> {
    Flash(E),
    /// No MCUboot image header at the start of the slot.
    NoImage,
    /// The header, or the TLV areas, are inconsistent or run past the slot.
    Malformed(Malformation),
    /// The image has no SHA256 TLV.
    NoHash,
    /// The image's SHA-256 differs from its SHA256 TLV.
    HashMismatch,
    /// The image reaches into the sectors that hold the trailer.
    ImageOverlapsTrailer,
    /// BOOT_MAX_ALIGN not a power of two from 8 to 32, or below the flash's write size.
    BadAlign,
}

/// Which of an image's sizes or magics is wrong ([`McubootError::Malformed`]). A code, not
/// a text: the texts would be flash that only a debugger reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformation {
    /// The header is shorter than 32 bytes, or header, image and protected TLVs run past the
    /// slot.
    HeaderSizes,
    /// A TLV area's info runs past the slot.
    TlvInfoPastSlot,
    /// A TLV area's info has the wrong magic.
    TlvInfoMagic,
    /// A TLV area's length is below its info's or runs past the slot.
    TlvAreaLength,
    /// A TLV's type and length run past its area.
    TlvHeaderPastArea,
    /// A TLV's value runs past its area.
    TlvValuePastArea,
    /// The protected TLV area's length differs from the header's.
    ProtectedTlvSize,
}

/// The 32-byte image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub load_addr: u32,
    pub hdr_size: u16,
    pub protect_tlv_size: u16,
    pub img_size: u32,
    pub flags: u32,
    pub version: ImageVersion,
}

impl ImageHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Self> {
        has_magic(b).then(|| Self::fields(b))
    }

    /// The fields, magic unchecked. Inlined: a few loads where it is used.
    #[inline(always)]
    fn fields(b: &[u8; HEADER_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            load_addr: u32_at(4),
            hdr_size: u16_at(8),
            protect_tlv_size: u16_at(10),
            img_size: u32_at(12),
            flags: u32_at(16),
            // Major, minor and revision as one little-endian word, its parts taken by
            // shifts: one load, not three (ImageVersion keeps them in reverse order).
            version: ImageVersion {
                major: u32_at(20) as u8,
                minor: (u32_at(20) >> 8) as u8,
                revision: (u32_at(20) >> 16) as u16,
                build: u32_at(24),
            },
        }
    }

    /// Bytes the SHA256 TLV covers.
    pub fn hashed_len(&self) -> u32 {
        u32::from(self.hdr_size) + self.img_size + u32::from(self.protect_tlv_size)
    }
}

fn has_magic(b: &[u8; HEADER_LEN]) -> bool {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == IMAGE_MAGIC
}

/// What a verified image says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// In a C layout, the header last: `inspect` stores the length and the counter, then the
// header's words in one run (-4 B).
#[repr(C)]
pub struct ImageInfo {
    /// Total length: header, image and both TLV areas.
    pub len: u32,
    pub security_counter: Option<u32>,
    pub header: ImageHeader,
}

fn read<F: NorFlash>(flash: &mut F, at: u32, buf: &mut [u8]) -> Result<(), McubootError<F::Error>> {
    flash.read(at, buf).map_err(McubootError::Flash)
}

/// Walks one TLV area at `at`: reads the value of each TLV of type `kind` and length
/// `value.len()` into `value` (the last one stays). Returns the area's total length and
/// whether one was found. Both areas use it, so its loop is in the code once.
fn walk_tlvs<F: NorFlash>(
    flash: &mut F,
    slot: Region,
    at: u32,
    magic: u16,
    kind: u16,
    value: &mut [u8],
) -> Result<(u32, bool), McubootError<F::Error>> {
    // The area's info, then each TLV's type and length: one buffer, cleared once.
    let mut head = [0u8; 4];
    if at + 4 > slot.len {
        return Err(McubootError::Malformed(Malformation::TlvInfoPastSlot));
    }
    read(flash, slot.offset + at, &mut head)?;
    if u16::from_le_bytes([head[0], head[1]]) != magic {
        return Err(McubootError::Malformed(Malformation::TlvInfoMagic));
    }
    let total = u32::from(u16::from_le_bytes([head[2], head[3]]));
    if total < 4 || at + total > slot.len {
        return Err(McubootError::Malformed(Malformation::TlvAreaLength));
    }
    let mut found = false;
    let mut off = 4;
    while off < total {
        if off + 4 > total {
            return Err(McubootError::Malformed(Malformation::TlvHeaderPastArea));
        }
        read(flash, slot.offset + at + off, &mut head)?;
        let len = u16::from_le_bytes([head[2], head[3]]);
        if off + 4 + u32::from(len) > total {
            return Err(McubootError::Malformed(Malformation::TlvValuePastArea));
        }
        // Type and length compared as one word: one compare, not two (the values looked
        // for are 4 and 32 bytes long, well within the u16).
        if u32::from_le_bytes(head) == u32::from(kind) | (value.len() as u32) << 16 {
            read(flash, slot.offset + at + off + 4, value)?;
            found = true;
        }
        off += 4 + u32::from(len);
    }
    Ok((total, found))
}

/// Checks the image in `slot` against its own SHA256 TLV, and reads its security counter.
// Inlined, as `read_image`: one more argument at the call, not a function that only passes
// it on.
#[inline(always)]
pub fn verify_image<F: NorFlash>(
    flash: &mut F,
    slot: Region,
) -> Result<ImageInfo, McubootError<F::Error>> {
    inspect(flash, slot, true)
}

/// Reads the header and TLVs of the image in `slot` (version, security counter, length),
/// with the same structural checks as [`verify_image`] but without hashing the image: for
/// the running image, which the bootloader verified before starting it.
#[inline(always)]
pub fn read_image<F: NorFlash>(
    flash: &mut F,
    slot: Region,
) -> Result<ImageInfo, McubootError<F::Error>> {
    inspect(flash, slot, false)
}

fn inspect<F: NorFlash>(
    flash: &mut F,
    slot: Region,
    check_hash: bool,
) -> Result<ImageInfo, McubootError<F::Error>> {
    // The header's bytes and the hash's chunks side by side in one value: cleared at once.
    let mut bufs = ([0u8; HEADER_LEN], [0u8; HASH_CHUNK]);
    let (h, buf) = (&mut bufs.0, &mut bufs.1);
    read(flash, slot.offset, h)?;
    if !has_magic(h) {
        return Err(McubootError::NoImage);
    }
    let header = ImageHeader::fields(h);
    let hashed = header.hashed_len();
    if usize::from(header.hdr_size) < HEADER_LEN || hashed > slot.len {
        return Err(McubootError::Malformed(Malformation::HeaderSizes));
    }
    let mut sha = Sha256::new();
    let mut off = if check_hash { 0 } else { hashed };
    while off < hashed {
        // One slice for the read and the hash, split off: a length known to fit needs no
        // check (slicing it would call the checked index).
        let (chunk, _) = buf.split_at_mut(((hashed - off) as usize).min(HASH_CHUNK));
        read(flash, slot.offset + off, chunk)?;
        sha.update(chunk);
        off += chunk.len() as u32;
    }
    let digest = sha.finalize_reset();
    let mut security_counter = None;
    let mut at = u32::from(header.hdr_size) + header.img_size;
    // The protected area (if any: its security counter), then the other (its SHA256), in one
    // loop so that the walk is in the code once. One buffer takes both values: the counter
    // is taken from it before the hash is read. It is the start of the hash's buffer, done
    // with by now: no third buffer to clear.
    let (t, _) = buf.split_at_mut(32);
    let mut protected = header.protect_tlv_size > 0;
    let (total, found) = loop {
        let (magic, kind, value): (_, _, &mut [u8]) = match protected {
            // Split off, not sliced: no call to the checked index.
            true => (TLV_PROT_INFO_MAGIC, TLV_SEC_CNT, t.split_at_mut(4).0),
            false => (TLV_INFO_MAGIC, TLV_SHA256, &mut *t),
        };
        let (total, found) = walk_tlvs(flash, slot, at, magic, kind, value)?;
        if !protected {
            break (total, found);
        }
        if total != u32::from(header.protect_tlv_size) {
            return Err(McubootError::Malformed(Malformation::ProtectedTlvSize));
        }
        security_counter = found.then_some(u32::from_le_bytes([t[0], t[1], t[2], t[3]]));
        at += total;
        protected = false;
    };
    if !found {
        return Err(McubootError::NoHash);
    }
    // Compared only when hashed.
    if check_hash && *t != digest {
        return Err(McubootError::HashMismatch);
    }
    Ok(ImageInfo {
        // Read from the header's bytes again, which are still at hand: smaller than
        // keeping every field aside through the hash and the TLV walk.
        header: ImageHeader::fields(h),
        security_counter,
        len: at + total,
    })
}

/// Trailer offsets for a slot of `slot_len` bytes and BOOT_MAX_ALIGN `align`. Made by
/// [`Trailer::new`], whose checks on `align` the offsets rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub slot_len: u32,
    pub align: u32,
}

impl Trailer {
    pub fn new(slot_len: u32, align: u32) -> Option<Self> {
        (align.is_power_of_two() && (8..=32).contains(&align)).then_some(Self { slot_len, align })
    }

    /// The 16 magic bytes for this alignment.
    pub fn magic(&self) -> [u8; 16] {
        if self.align == 8 {
            return MAGIC_8;
        }
        let mut m = [0u8; 16];
        m[..2].copy_from_slice(&(self.align as u16).to_le_bytes());
        m[2..].copy_from_slice(&MAGIC_TAIL);
        m
    }

    pub fn magic_off(&self) -> u32 {
        self.slot_len - 16
    }

    pub fn image_ok_off(&self) -> u32 {
        // align_up(16, A) is max(16, A) for the powers of two that `new` admits: no division.
        self.slot_len - self.align.max(16) - self.align
    }

    pub fn copy_done_off(&self) -> u32 {
        self.image_ok_off() - self.align
    }

    pub fn swap_info_off(&self) -> u32 {
        self.copy_done_off() - self.align
    }

    pub fn swap_size_off(&self) -> u32 {
        self.swap_info_off() - self.align
    }
}

/// What a slot's trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// In a C layout, the raw byte first: the tags of the results that carry a state (and of
// `Option`) are then the byte of `magic_good`, and passing the flash's error on or
// dropping it moves no byte of the state (-80 B).
#[repr(C)]
pub struct TrailerState {
    /// The raw swap_info byte (0xff: unset).
    pub swap_info: u8,
    pub magic_good: bool,
    pub image_ok: bool,
    pub copy_done: bool,
}

/// Reads a slot's trailer flags.
pub fn read_trailer<F: NorFlash>(
    flash: &mut F,
    slot: Region,
    trailer: Trailer,
) -> Result<TrailerState, McubootError<F::Error>> {
    trailer_state(flash, slot, trailer).map_err(McubootError::Flash)
}

/// [`read_trailer`], with the driver's error as such (its only one).
fn trailer_state<F: NorFlash>(
    flash: &mut F,
    slot: Region,
    trailer: Trailer,
) -> Result<TrailerState, F::Error> {
    let mut buf = [0u8; 16];
    flash.read(slot.offset + trailer.magic_off(), &mut buf)?;
    let magic_good = buf == trailer.magic();
    // image_ok, copy_done, swap_info: a field every `align` bytes down from image_ok, read
    // in one loop into the magic's buffer, done with (no second one to clear).
    let (flags, _) = buf.split_at_mut(3);
    let mut off = trailer.image_ok_off();
    for flag in flags.iter_mut() {
        flash.read(slot.offset + off, core::slice::from_mut(flag))?;
        off = off.wrapping_sub(trailer.align);
    }
    Ok(TrailerState {
        magic_good,
        image_ok: flags[0] == FLAG_SET,
        copy_done: flags[1] == FLAG_SET,
        swap_info: flags[2],
    })
}

// The flash-only helpers return the driver's error as such: smaller at the call sites than
// an `McubootError` to copy; the callers map it once.

fn write_flag<F: NorFlash>(flash: &mut F, at: u32, align: u32, value: u8) -> Result<(), F::Error> {
    let mut buf = [0xffu8; 32];
    // The flag stored with the rest of its word: a byte alone would leave 31 bytes to fill
    // from an odd address, through the byte-wise memset (linked for little else).
    if let Some(first) = buf.first_chunk_mut() {
        *first = (0xffff_ff00 | u32::from(value)).to_le_bytes();
    }
    // Clamped, not sliced: `Trailer::new` admits no align above 32, and the clamp is smaller
    // than the checked index's call.
    flash.write(at, buf.split_at(align.min(32) as usize).0)
}

/// Offset of the first sector holding trailer fields (images must end before it).
fn trailer_sectors<F: NorFlash>(trailer: Trailer) -> u32 {
    let sector = F::ERASE_SIZE as u32;
    trailer.swap_size_off() / sector * sector
}

fn erase_trailer<F: NorFlash>(
    flash: &mut F,
    slot: Region,
    trailer: Trailer,
) -> Result<(), F::Error> {
    flash.erase(slot.offset + trailer_sectors::<F>(trailer), slot.end())
}

/// Withdraws a swap request from `secondary` (before its image is overwritten, so that a
/// power cut mid-write never leaves a request next to a half-written image).
pub fn cancel_swap<F: NorFlash>(
    flash: &mut F,
    secondary: Region,
    trailer: Trailer,
) -> Result<(), McubootError<F::Error>> {
    trailer_state(flash, secondary, trailer)
        .and_then(|state| match state.magic_good {
            true => erase_trailer(flash, secondary, trailer),
            false => Ok(()),
        })
        .map_err(McubootError::Flash)
}

/// Asks MCUboot to swap in the image of `secondary` at the next boot: for a test (reverted
/// unless confirmed) or permanently. The image must end before the trailer's sectors, which
/// are erased first.
pub fn request_swap<F: NorFlash>(
    flash: &mut F,
    secondary: Region,
    trailer: Trailer,
    image_len: u32,
    permanent: bool,
) -> Result<(), McubootError<F::Error>> {
    // Above 32 as well (which `Trailer::new` refuses): the magic's field then fits its
    // buffer, with no panic path for the slice that writes it.
    let align = trailer.align as usize;
    if align < F::WRITE_SIZE || align % F::WRITE_SIZE != 0 || align > 32 {
        return Err(McubootError::BadAlign);
    }
    let sectors = trailer_sectors::<F>(trailer);
    if image_len > sectors {
        return Err(McubootError::ImageOverlapsTrailer);
    }
    write_request(flash, secondary, trailer, sectors, permanent).map_err(McubootError::Flash)
}

/// The flash half of [`request_swap`]: its only errors are the driver's.
fn write_request<F: NorFlash>(
    flash: &mut F,
    secondary: Region,
    trailer: Trailer,
    sectors: u32,
    permanent: bool,
) -> Result<(), F::Error> {
    // The trailer's sectors, from the offset the overlap check has worked out: not again.
    flash.erase(secondary.offset + sectors, secondary.end())?;
    // The magic ends its field of align_up(16, A) bytes, after 0xFF padding: built at the
    // end of a 32-byte buffer whose last `field` bytes are written.
    let field = trailer.align.max(16);
    let mut magic = [0xffu8; 32];
    if let Some(end) = magic.last_chunk_mut::<16>() {
        *end = trailer.magic();
    }
    flash.write(
        secondary.offset + (trailer.slot_len - field),
        &magic[32 - field as usize..],
    )?;
    if permanent {
        write_flag(
            flash,
            secondary.offset + trailer.image_ok_off(),
            trailer.align,
            FLAG_SET,
        )?;
    }
    let swap = if permanent {
        SWAP_TYPE_PERM
    } else {
        SWAP_TYPE_TEST
    };
    write_flag(
        flash,
        secondary.offset + trailer.swap_info_off(),
        trailer.align,
        swap,
    )
}

/// After booting a test image: makes it permanent by setting image_ok in the primary slot's
/// trailer. Does nothing if it is already set.
pub fn confirm<F: NorFlash>(
    flash: &mut F,
    primary: Region,
    trailer: Trailer,
) -> Result<(), McubootError<F::Error>> {
    trailer_state(flash, primary, trailer)
        .and_then(|state| match state.image_ok {
            true => Ok(()),
            false => write_flag(
                flash,
                primary.offset + trailer.image_ok_off(),
                trailer.align,
                FLAG_SET,
            ),
        })
        .map_err(McubootError::Flash)
}

#[cfg(all(test, feature = "sim-flash"))]
mod tests {
    use super::*;
    use crate::sim_flash::SimFlash;

    #[test]
    fn trailer_offsets_match_imgtool() {
        // imgtool: image_ok at -(align_up(16, A) + A), magic in the last 16 bytes.
        let t = Trailer::new(0x20000, 8).unwrap();
        assert_eq!(t.image_ok_off(), 0x20000 - 24);
        assert_eq!(t.swap_info_off(), 0x20000 - 40);
        assert_eq!(t.magic(), MAGIC_8);
        let t = Trailer::new(0x20000, 32).unwrap();
        assert_eq!(t.image_ok_off(), 0x20000 - 64);
        assert_eq!(&t.magic()[..2], &[32, 0]);
        assert!(Trailer::new(0x20000, 12).is_none());
    }

    #[test]
    fn swap_request_and_confirm_round_trip() {
        let mut flash = SimFlash::<8, 4096>::new(8);
        let primary = Region {
            offset: 0,
            len: 4 * 4096,
        };
        let secondary = Region {
            offset: 4 * 4096,
            len: 4 * 4096,
        };
        for align in [8, 32] {
            let t = Trailer::new(secondary.len, align).unwrap();
            flash.erase(0, 8 * 4096).unwrap();
            request_swap(&mut flash, secondary, t, 100, false).unwrap();
            let s = read_trailer(&mut flash, secondary, t).unwrap();
            assert!(s.magic_good && !s.image_ok && s.swap_info == SWAP_TYPE_TEST);
            assert_eq!(
                &flash.as_bytes()[secondary.end() as usize - 16..secondary.end() as usize],
                &t.magic()
            );
            assert_eq!(
                request_swap(&mut flash, secondary, t, 4 * 4096 - 10, false),
                Err(McubootError::ImageOverlapsTrailer)
            );
            // The bootloader swapped; the primary's trailer carries the magic, unconfirmed.
            request_swap(&mut flash, primary, t, 100, false).unwrap();
            confirm(&mut flash, primary, t).unwrap();
            assert!(read_trailer(&mut flash, primary, t).unwrap().image_ok);
            confirm(&mut flash, primary, t).unwrap();
        }
    }
}
