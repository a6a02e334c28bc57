//! NOR flash for thousands of simulated devices: sectors are shared copy-on-write. Every
//! device starts from the same image, erased sectors are one shared page, and a device owns
//! a private copy of a sector only once it writes it. Same rules as real NOR flash (and as
//! the agent's `SimFlash`): erase to 0xFF by sector, write only erased, aligned words.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Why a flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashError {
    OutOfBounds,
    NotAligned,
    /// A write over bytes that are not erased.
    NotErased {
        offset: u32,
    },
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FlashError::NotErased { .. } => NorFlashErrorKind::Other,
        }
    }
}

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashError::OutOfBounds => f.write_str("out of bounds"),
            FlashError::NotAligned => f.write_str("not aligned"),
            FlashError::NotErased { offset } => {
                write!(f, "write over unerased byte at {offset:#x}")
            }
        }
    }
}

impl std::error::Error for FlashError {}

/// Write granularity and sector size of the simulated part (STM32WL-like: 8-byte double
/// words, 2 KiB pages).
pub const WRITE: usize = 8;
pub const SECTOR: usize = 2048;

/// A quick 64-bit hash of a sector's bytes (multiply-rotate over 8-byte words): sectors are
/// compared in full when their hashes meet, so it need only spread, not resist attacks, and
/// SipHash over every private sector of every device was a measurable part of a run.
fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h
}

/// Sectors seen by [`CowFlash::intern`], by content hash.
#[derive(Debug, Default)]
pub struct SectorPool {
    pages: HashMap<u64, Vec<Weak<[u8]>>>,
}

/// A device's flash: a table of shared sectors.
#[derive(Clone)]
pub struct CowFlash {
    sectors: Vec<Arc<[u8]>>,
    erased: Arc<[u8]>,
}

impl fmt::Debug for CowFlash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CowFlash({} sectors, {} private)",
            self.sectors.len(),
            self.private_sectors()
        )
    }
}

impl CowFlash {
    /// `sectors` erased sectors.
    pub fn new(sectors: usize) -> Self {
        let erased: Arc<[u8]> = Arc::from(vec![0xffu8; SECTOR]);
        Self {
            sectors: vec![erased.clone(); sectors],
            erased,
        }
    }

    /// Puts `bytes` at `offset` (sector-aligned) as shared sectors: the factory image every
    /// clone of this flash starts from.
    pub fn program(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let first = offset as usize / SECTOR;
        if offset as usize % SECTOR != 0 {
            return Err(FlashError::NotAligned);
        }
        for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
            let slot = self
                .sectors
                .get_mut(first + i)
                .ok_or(FlashError::OutOfBounds)?;
            let mut page = vec![0xffu8; SECTOR];
            page[..chunk.len()].copy_from_slice(chunk);
            *slot = Arc::from(page);
        }
        Ok(())
    }

    /// Sectors this flash owns alone (its memory cost beyond the shared ones).
    pub fn private_sectors(&self) -> usize {
        self.sectors
            .iter()
            .filter(|s| Arc::strong_count(s) == 1 && !Arc::ptr_eq(s, &self.erased))
            .count()
    }

    /// Shares this flash's private sectors with identical ones met before (every device
    /// rebuilds the same new image, sector for sector): the memory of ten thousand devices
    /// is then little more than one. Returns the sectors it let go of.
    pub fn intern(&mut self, pool: &mut SectorPool) -> usize {
        let mut shared = 0;
        for sector in &mut self.sectors {
            if Arc::strong_count(sector) != 1 || Arc::ptr_eq(sector, &self.erased) {
                continue;
            }
            let bucket = pool.pages.entry(content_hash(sector)).or_default();
            bucket.retain(|w| w.strong_count() > 0);
            match bucket
                .iter()
                .filter_map(Weak::upgrade)
                .find(|p| p[..] == sector[..])
            {
                Some(same) => {
                    *sector = same;
                    shared += 1;
                }
                None => bucket.push(Arc::downgrade(sector)),
            }
        }
        shared
    }

    /// Exchanges the `len` bytes at `a` and `b` (whole sectors, not overlapping): what erasing
    /// both ranges and writing each one's old contents into the other leaves, done by
    /// exchanging the shared sectors themselves (the bootloader's swap, without copies).
    pub fn swap_sectors(&mut self, a: u32, b: u32, len: u32) -> Result<(), FlashError> {
        let (a, b, len) = (a as usize, b as usize, len as usize);
        if a % SECTOR != 0 || b % SECTOR != 0 || len % SECTOR != 0 {
            return Err(FlashError::NotAligned);
        }
        let total = self.sectors.len() * SECTOR;
        if a.max(b) + len > total || (a < b + len && b < a + len && len > 0) {
            return Err(FlashError::OutOfBounds);
        }
        for i in 0..len / SECTOR {
            self.sectors.swap(a / SECTOR + i, b / SECTOR + i);
        }
        Ok(())
    }

    /// A copy of `len` bytes at `offset`.
    pub fn read_vec(&self, offset: u32, len: usize) -> Result<Vec<u8>, FlashError> {
        let mut out = vec![0u8; len];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }

    fn read_into(&self, offset: u32, out: &mut [u8]) -> Result<(), FlashError> {
        let mut at = offset as usize;
        if at + out.len() > self.sectors.len() * SECTOR {
            return Err(FlashError::OutOfBounds);
        }
        let mut done = 0;
        while done < out.len() {
            let (s, o) = (at / SECTOR, at % SECTOR);
            let n = (SECTOR - o).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.sectors[s][o..o + n]);
            done += n;
            at += n;
        }
        Ok(())
    }
}

impl ErrorType for CowFlash {
    type Error = FlashError;
}

impl ReadNorFlash for CowFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        self.read_into(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.sectors.len() * SECTOR
    }
}

impl NorFlash for CowFlash {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        let (from, to) = (from as usize, to as usize);
        if from % SECTOR != 0 || to % SECTOR != 0 {
            return Err(FlashError::NotAligned);
        }
        if to < from || to > self.sectors.len() * SECTOR {
            return Err(FlashError::OutOfBounds);
        }
        for s in from / SECTOR..to / SECTOR {
            // A page this flash owns alone (never the shared erased one, which `self.erased`
            // also holds) is erased in place: no new page at its next write.
            match Arc::get_mut(&mut self.sectors[s]) {
                Some(page) => page.fill(0xff),
                None => self.sectors[s] = self.erased.clone(),
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let start = offset as usize;
        if start % WRITE != 0 || bytes.len() % WRITE != 0 {
            return Err(FlashError::NotAligned);
        }
        if start + bytes.len() > self.sectors.len() * SECTOR {
            return Err(FlashError::OutOfBounds);
        }
        let mut at = start;
        let mut done = 0;
        while done < bytes.len() {
            let (s, o) = (at / SECTOR, at % SECTOR);
            let n = (SECTOR - o).min(bytes.len() - done);
            let sector = &mut self.sectors[s];
            if let Some(i) = sector[o..o + n].iter().position(|&b| b != 0xff) {
                return Err(FlashError::NotErased {
                    offset: (at + i) as u32,
                });
            }
            // Copy on first write (one copy, into a page of this flash's own): the shared
            // page stays as it is for everyone else.
            Arc::make_mut(sector)[o..o + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_they_write() {
        let mut base = CowFlash::new(8);
        base.program(0, &[1u8; 3000]).unwrap();
        let mut a = base.clone();
        let b = base.clone();
        assert_eq!(a.private_sectors(), 0);
        a.erase(4096, 6144).unwrap();
        a.write(4096, &[7u8; 16]).unwrap();
        assert_eq!(a.private_sectors(), 1);
        assert_eq!(
            a.read_vec(4096, 17).unwrap()[..],
            [[7u8; 16].as_slice(), &[0xff]].concat()
        );
        assert_eq!(b.read_vec(4096, 16).unwrap(), vec![0xff; 16]);
        assert_eq!(a.read_vec(2040, 16).unwrap()[..8], [1u8; 8]);
        // NOR rules.
        assert_eq!(
            a.write(4096, &[0u8; 8]),
            Err(FlashError::NotErased { offset: 4096 })
        );
        assert_eq!(a.write(4100, &[0u8; 8]), Err(FlashError::NotAligned));
        assert_eq!(a.erase(0, 100), Err(FlashError::NotAligned));
        assert_eq!(a.write(8 * 2048, &[0u8; 8]), Err(FlashError::OutOfBounds));
    }

    #[test]
    fn swapping_sectors_equals_erasing_and_rewriting_both() {
        let mut base = CowFlash::new(8);
        base.program(0, &(0..4096u32).map(|i| i as u8).collect::<Vec<_>>())
            .unwrap();
        base.write(4096, &[9u8; 4096]).unwrap();
        let mut by_copy = base.clone();
        let a = by_copy.read_vec(0, 4096).unwrap();
        let b = by_copy.read_vec(4096, 4096).unwrap();
        by_copy.erase(0, 8192).unwrap();
        by_copy.write(0, &b).unwrap();
        by_copy.write(4096, &a).unwrap();
        let mut swapped = base.clone();
        swapped.swap_sectors(0, 4096, 4096).unwrap();
        assert_eq!(swapped.read_vec(0, 16384), by_copy.read_vec(0, 16384));
        assert_eq!(
            swapped.swap_sectors(0, 2048, 4096),
            Err(FlashError::OutOfBounds)
        );
        assert_eq!(
            swapped.swap_sectors(0, 100, 2048),
            Err(FlashError::NotAligned)
        );
        assert_eq!(
            swapped.swap_sectors(0, 14336, 4096),
            Err(FlashError::OutOfBounds)
        );
    }

    #[test]
    fn identical_private_sectors_are_shared_after_interning() {
        let base = CowFlash::new(4);
        let (mut a, mut b) = (base.clone(), base.clone());
        a.write(0, &[5u8; 64]).unwrap();
        b.write(0, &[5u8; 64]).unwrap();
        b.write(2048, &[6u8; 8]).unwrap();
        let mut pool = SectorPool::default();
        assert_eq!(a.intern(&mut pool), 0);
        assert_eq!(b.intern(&mut pool), 1);
        assert_eq!((a.private_sectors(), b.private_sectors()), (0, 1));
        // Still copy on write: a write to the shared sector stays in its own flash.
        a.write(64, &[7u8; 8]).unwrap();
        assert_eq!(b.read_vec(64, 8).unwrap(), vec![0xff; 8]);
        assert_eq!(a.read_vec(0, 72).unwrap()[64..], [7u8; 8]);
    }
}
