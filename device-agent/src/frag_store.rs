//! Flash storage of a fragmentation session: a log of every fragment received (so that decode
//! progress survives a reboot: the log is replayed into a fresh decoder), and the data block
//! the decoder fills, with spare slots for the fragments it writes twice.
//!
//! The TS004 decoder writes a lost fragment's slot up to twice (its reduced coded row, then
//! the solved fragment); NOR flash cannot rewrite without erasing a whole sector. So a write
//! goes in place when the slot still reads erased, and otherwise to the next spare slot,
//! which a small table in RAM remembers. Slots are padded to the flash's write size.

use core::cell::RefCell;
use core::num::NonZeroUsize;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::fec::FragmentStore;

use crate::journal::{crc32, crc32_update};
use crate::slot::{is_erased, Region, WordWriter};

/// Largest fragment payload (DR with 242-byte downlinks, minus the 3-byte header... and a
/// little room): the log's record buffer is sized from it.
pub const MAX_FRAG_SIZE: usize = 242;
const RECORD_BUF: usize = 256;

/// Why the fragment storage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<E> {
    Flash(E),
    /// The log or the block area is full.
    Full,
    /// No spare slot left (more rewrites than the session was sized for).
    NoSpare,
    /// Fragment size zero or above [`MAX_FRAG_SIZE`], or a payload of another size.
    BadSize,
    /// A slot index or offset outside the block.
    OutOfRange,
}

fn record_len<F: NorFlash>(frag_size: usize) -> usize {
    (2 + frag_size + 4).next_multiple_of(F::WRITE_SIZE)
}

/// Append-only log of received fragments: `n u16 LE, payload, crc32`, padded.
#[derive(Debug, Clone, Copy)]
pub struct FragLog {
    region: Region,
    frag_size: usize,
    next: u32,
}

impl FragLog {
    /// The log of `region` before anything is known of its records (appends would go to its
    /// start): a placeholder until [`FragLog::replay`] finds the end.
    pub fn at_start(region: Region, frag_size: usize) -> Self {
        Self {
            region,
            frag_size,
            next: 0,
        }
    }

    /// Erases the log for a new session.
    pub fn create<F: NorFlash>(
        flash: &RefCell<F>,
        region: Region,
        frag_size: usize,
    ) -> Result<Self, StoreError<F::Error>> {
        if !(1..=MAX_FRAG_SIZE).contains(&frag_size) {
            return Err(StoreError::BadSize);
        }
        flash
            .borrow_mut()
            .erase(region.offset, region.end())
            .map_err(StoreError::Flash)?;
        Ok(Self {
            region,
            frag_size,
            next: 0,
        })
    }

    /// Opens an existing log, handing every intact record to `each` in order. A record torn
    /// by a power cut is skipped; the log continues after it.
    pub fn replay<F: NorFlash>(
        flash: &RefCell<F>,
        region: Region,
        frag_size: usize,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), StoreError<F::Error>>,
    ) -> Result<Self, StoreError<F::Error>> {
        if !(1..=MAX_FRAG_SIZE).contains(&frag_size) {
            return Err(StoreError::BadSize);
        }
        let len = record_len::<F>(frag_size);
        let mut buf = [0u8; RECORD_BUF];
        // Never too long for the buffer with a fragment size in range (an error, not a
        // panic, if a flash's write size made it so).
        let rec = buf.get_mut(..len).ok_or(StoreError::BadSize)?;
        let mut at = 0u32;
        while at as usize + len <= region.len as usize {
            flash
                .borrow_mut()
                .read(region.offset + at, rec)
                .map_err(StoreError::Flash)?;
            if rec.iter().all(|&b| b == 0xff) {
                break;
            }
            // Split once: one bounds check instead of one per byte of the CRC. (Checked: the
            // record is never shorter, but `split_at` would keep a panic path.)
            if let Some((body, tail)) = rec.split_at_checked(2 + frag_size) {
                let crc = tail.first_chunk().map(|c| u32::from_le_bytes(*c));
                if crc == Some(crc32(body)) {
                    if let Some((n, payload)) = body.split_first_chunk() {
                        each(u16::from_le_bytes(*n), payload)?;
                    }
                }
            }
            at += len as u32;
        }
        Ok(Self {
            region,
            frag_size,
            next: at,
        })
    }

    /// Appends fragment `n`.
    pub fn append<F: NorFlash>(
        &mut self,
        flash: &RefCell<F>,
        n: u16,
        payload: &[u8],
    ) -> Result<(), StoreError<F::Error>> {
        if payload.len() != self.frag_size {
            return Err(StoreError::BadSize);
        }
        let len = record_len::<F>(self.frag_size);
        if self.next as usize + len > self.region.len as usize {
            return Err(StoreError::Full);
        }
        let n = n.to_le_bytes();
        let crc = !crc32_update(crc32_update(!0, &n), payload);
        // Advance first: a torn record is skipped on replay, never written over.
        let at = self.next;
        self.next += len as u32;
        let mut words = WordWriter::new::<F>(self.region.offset + at).ok_or(StoreError::BadSize)?;
        let mut f = flash.borrow_mut();
        words.write(&mut *f, &n).map_err(StoreError::Flash)?;
        words.write(&mut *f, payload).map_err(StoreError::Flash)?;
        words
            .write(&mut *f, &crc.to_le_bytes())
            .map_err(StoreError::Flash)?;
        words.finish(&mut *f).map_err(StoreError::Flash)
    }

    /// The payload size of its records.
    pub fn frag_size(&self) -> usize {
        self.frag_size
    }

    /// Fragments the log can still take.
    pub fn room<F: NorFlash>(&self) -> usize {
        (self.region.len - self.next) as usize / record_len::<F>(self.frag_size)
    }
}

/// Erases `regions`, in order: a session's areas, erased in one call for a new session.
pub(crate) fn erase_regions<F: NorFlash>(
    flash: &RefCell<F>,
    regions: &[Region],
) -> Result<(), StoreError<F::Error>> {
    let mut f = flash.borrow_mut();
    for r in regions {
        f.erase(r.offset, r.end()).map_err(StoreError::Flash)?;
    }
    Ok(())
}

/// The decoder's slots in flash: `block` holds slot i at `i * pitch`, `spare` the rewrites.
#[derive(Debug)]
pub struct FlashStore<'a, F, const SPARES: usize> {
    flash: &'a RefCell<F>,
    block: Region,
    spare: Region,
    // Non-zero, both: divisions by them need no zero check.
    frag_size: NonZeroUsize,
    pitch: NonZeroUsize,
    /// `moved[k]`: the slot whose current contents sit in spare slot k.
    moved: [u16; SPARES],
    nb_moved: usize,
}

impl<'a, F: NorFlash, const SPARES: usize> FlashStore<'a, F, SPARES> {
    /// Erases block and spare areas for a new decode.
    pub fn create(
        flash: &'a RefCell<F>,
        block: Region,
        spare: Region,
        frag_size: usize,
    ) -> Result<Self, StoreError<F::Error>> {
        let frag_size = NonZeroUsize::new(frag_size)
            .filter(|f| f.get() <= MAX_FRAG_SIZE)
            .ok_or(StoreError::BadSize)?;
        erase_regions(flash, &[block, spare])?;
        Ok(Self::erased(flash, block, spare, frag_size))
    }

    /// The store over block and spare areas already erased ([`erase_regions`]), with a
    /// fragment size already checked: [`FlashStore::create`] without the flash access, for
    /// a caller that builds the store in place instead of copying it out of a `Result`.
    pub(crate) fn erased(
        flash: &'a RefCell<F>,
        block: Region,
        spare: Region,
        frag_size: NonZeroUsize,
    ) -> Self {
        // Never zero (the fragment size rounded up to the write size): the fallback is not used.
        let pitch = frag_size.get().next_multiple_of(F::WRITE_SIZE);
        Self {
            flash,
            block,
            spare,
            frag_size,
            pitch: NonZeroUsize::new(pitch).unwrap_or(frag_size),
            moved: [0; SPARES],
            nb_moved: 0,
        }
    }

    /// Data fragments the block area holds.
    pub fn capacity(&self) -> usize {
        self.block.len as usize / self.pitch
    }

    /// Where slot `slot` is now; `None` outside the block. (An `Option`, not a `Result`: it
    /// comes back in registers.)
    fn location(&self, slot: usize) -> Option<u32> {
        if slot >= self.capacity() {
            return None;
        }
        // The latest move wins. (`get`: `nb_moved` never exceeds SPARES, but an index would
        // keep a panic path.)
        match self
            .moved
            .get(..self.nb_moved)
            .unwrap_or_default()
            .iter()
            .rposition(|&s| usize::from(s) == slot)
        {
            Some(k) => Some(self.spare.offset + (k * self.pitch.get()) as u32),
            None => Some(self.block.offset + (slot * self.pitch.get()) as u32),
        }
    }

    /// Reads `buf.len()` bytes of the data block at `offset` (fragments laid end to end).
    pub fn read_block(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreError<F::Error>> {
        let mut at = offset as usize;
        let mut rest = buf;
        // Borrowed once for the whole read, not at each slot.
        let mut f = self.flash.borrow_mut();
        while !rest.is_empty() {
            let slot = at / self.frag_size;
            let within = at % self.frag_size;
            let loc = self.location(slot).ok_or(StoreError::OutOfRange)?;
            // Cut at most the rest: the split needs no panic path.
            let n = (self.frag_size.get() - within).min(rest.len());
            let (chunk, tail) = rest.split_at_mut(n);
            f.read(loc + within as u32, chunk)
                .map_err(StoreError::Flash)?;
            at += n;
            rest = tail;
        }
        Ok(())
    }
}

impl<F: NorFlash, const SPARES: usize> FragmentStore for FlashStore<'_, F, SPARES> {
    type Error = StoreError<F::Error>;

    fn read_slot(&mut self, slot: usize, buf: &mut [u8]) -> Result<(), Self::Error> {
        // A block read of the slot's bytes (one read loop in the code). An offset past the
        // block, saturated, is out of range there too.
        let at = u32::try_from(slot.saturating_mul(self.frag_size.get())).unwrap_or(u32::MAX);
        let n = self.frag_size.get().min(buf.len());
        // `get` (never short: `n` is at most the buffer): an index keeps a panic path.
        self.read_block(at, buf.get_mut(..n).unwrap_or_default())
    }

    fn write_slot(&mut self, slot: usize, data: &[u8]) -> Result<(), Self::Error> {
        if data.len() != self.frag_size.get() {
            return Err(StoreError::BadSize);
        }
        let here = self.location(slot).ok_or(StoreError::OutOfRange)?;
        let mut f = self.flash.borrow_mut();
        let target = if is_erased(&mut *f, here, self.pitch.get()).map_err(StoreError::Flash)? {
            here
        } else {
            // `>=`, not `==` (the same, as it never exceeds SPARES): the index below then
            // needs no bounds check.
            let k = self.nb_moved;
            if k >= SPARES || (k + 1) * self.pitch.get() > self.spare.len as usize {
                return Err(StoreError::NoSpare);
            }
            self.moved[k] = slot as u16;
            self.nb_moved = k + 1;
            self.spare.offset + (k * self.pitch.get()) as u32
        };
        let mut words = WordWriter::new::<F>(target).ok_or(StoreError::BadSize)?;
        words.write(&mut *f, data).map_err(StoreError::Flash)?;
        words.finish(&mut *f).map_err(StoreError::Flash)
    }
}

#[cfg(all(test, feature = "sim-flash"))]
mod tests {
    use super::*;
    use crate::sim_flash::SimFlash;
    use fuota_codec::fec::decoder::Decoder;
    use fuota_codec::fec::encoder::Encoder;
    use fuota_codec::fec::Progress;
    use fuota_codec::Version;
    use std::vec;
    use std::vec::Vec;

    const LOG: Region = Region {
        offset: 0,
        len: 16 * 1024,
    };
    const BLOCK: Region = Region {
        offset: 16 * 1024,
        len: 8 * 1024,
    };
    const SPARE: Region = Region {
        offset: 24 * 1024,
        len: 2 * 1024,
    };

    /// Fragments of a block, 20% lost, through the flash store; then a "reboot" replays the
    /// log into a fresh decoder and store, which must reach the same block.
    #[test]
    fn decodes_in_flash_and_replays_after_reboot() {
        let m = 60;
        let frag_size = 50;
        let block: Vec<u8> = (0..m * frag_size).map(|i| (i * 7 % 251) as u8).collect();
        let enc = Encoder::new(Version::V2, &block, frag_size).unwrap();
        let mut row = vec![0u8; enc.row_len()];
        let frags: Vec<(u16, Vec<u8>)> = (1..=m + 30)
            .filter(|n| n % 5 != 0)
            .map(|n| {
                let mut p = vec![0u8; frag_size];
                enc.fragment_into(n, &mut row, &mut p).unwrap();
                (n as u16, p)
            })
            .collect();
        let flash = RefCell::new(SimFlash::<8, 1024>::new(32));
        let mut ws = vec![0u8; Decoder::workspace_len(m, 20, frag_size)];
        let mut log = FragLog::create(&flash, LOG, frag_size).unwrap();
        let mut store = FlashStore::<_, 20>::create(&flash, BLOCK, SPARE, frag_size).unwrap();
        let mut dec = Decoder::new(Version::V2, m, frag_size, 20, &mut ws).unwrap();
        let mut done = false;
        for (n, p) in &frags {
            log.append(&flash, *n, p).unwrap();
            if dec.push(&mut store, usize::from(*n), p).unwrap() == Progress::Complete {
                done = true;
                break;
            }
        }
        assert!(done);
        let mut out = vec![0u8; block.len()];
        store.read_block(0, &mut out).unwrap();
        assert_eq!(out, block);

        // Reboot: replay the log.
        let mut ws = vec![0u8; Decoder::workspace_len(m, 20, frag_size)];
        let mut store = FlashStore::<_, 20>::create(&flash, BLOCK, SPARE, frag_size).unwrap();
        let mut dec = Decoder::new(Version::V2, m, frag_size, 20, &mut ws).unwrap();
        let mut progress = Progress::NeedMore { missing: 0 };
        let log = FragLog::replay(&flash, LOG, frag_size, |n, p| {
            progress = dec.push(&mut store, usize::from(n), p).unwrap();
            Ok(())
        });
        let log = log.unwrap();
        assert_eq!(progress, Progress::Complete);
        assert!(log.room::<SimFlash<8, 1024>>() > 0);
        let mut out2 = vec![0u8; block.len()];
        store.read_block(0, &mut out2).unwrap();
        assert_eq!(out2, block);
    }

    #[test]
    fn torn_log_record_is_skipped() {
        let flash = RefCell::new(SimFlash::<8, 1024>::new(32));
        let mut log = FragLog::create(&flash, LOG, 10).unwrap();
        log.append(&flash, 1, &[1; 10]).unwrap();
        flash.borrow_mut().cut_power_after(0);
        assert!(log.append(&flash, 2, &[2; 10]).is_err());
        flash.borrow_mut().reboot();
        let mut seen = Vec::new();
        let mut log = FragLog::replay(&flash, LOG, 10, |n, _| {
            seen.push(n);
            Ok(())
        })
        .unwrap();
        log.append(&flash, 3, &[3; 10]).unwrap();
        let mut seen2 = Vec::new();
        FragLog::replay(&flash, LOG, 10, |n, _| {
            seen2.push(n);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [1]);
        // The torn record may or may not have survived whole; either way 1 and 3 are there.
        assert!(seen2 == [1, 3] || seen2 == [1, 2, 3], "{seen2:?}");
    }
}
