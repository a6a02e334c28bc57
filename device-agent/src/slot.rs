//! Flash regions as the patch applier's images: a reader for the old slot (random access) and
//! a sequential writer for the new one that erases each sector when it first reaches it and
//! turns arbitrary-length writes into writes of the flash's word size. Both hold the flash
//! through a `RefCell`, since the old and new slots (and the patch) share one chip.

use core::cell::RefCell;

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use fuota_codec::patch::apply::{SourceImage, TargetImage};

/// Largest write granularity supported (MCUboot's BOOT_MAX_ALIGN goes up to 32).
pub const MAX_WRITE_SIZE: usize = 32;

/// A byte range of the flash, e.g. a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u32,
    pub len: u32,
}

impl Region {
    pub const fn end(&self) -> u32 {
        self.offset + self.len
    }

    /// Whether both ends fall on multiples of `align`.
    pub const fn is_aligned(&self, align: u32) -> bool {
        self.offset % align == 0 && self.len % align == 0
    }

    pub const fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

/// Why a slot access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError<E> {
    /// The flash driver failed.
    Flash(E),
    /// The access falls outside the region.
    OutOfRegion { offset: u32, len: usize },
    /// A write did not continue where the previous one ended.
    NotSequential { expected: u32, got: u32 },
    /// The flash's write size exceeds [`MAX_WRITE_SIZE`], or does not divide its sector.
    UnsupportedGeometry,
}

impl<E: core::fmt::Debug> core::fmt::Display for SlotError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SlotError::Flash(e) => write!(f, "flash: {e:?}"),
            SlotError::OutOfRegion { offset, len } => {
                write!(f, "{len} bytes at {offset:#x} fall outside the slot")
            }
            SlotError::NotSequential { expected, got } => {
                write!(f, "write at {got:#x}, expected {expected:#x}")
            }
            SlotError::UnsupportedGeometry => f.write_str("unsupported flash write size"),
        }
    }
}

fn within(region: Region, offset: u32, len: usize) -> bool {
    // The room left after `offset`, in 32-bit arithmetic (no 64-bit sum).
    region
        .len
        .checked_sub(offset)
        .is_some_and(|room| len <= room as usize)
}

/// Reads a region at random; the applier's source image.
#[derive(Debug)]
pub struct SlotReader<'a, F> {
    flash: &'a RefCell<F>,
    region: Region,
}

impl<'a, F: ReadNorFlash> SlotReader<'a, F> {
    pub fn new(flash: &'a RefCell<F>, region: Region) -> Self {
        Self { flash, region }
    }
}

impl<F: ReadNorFlash> SourceImage for SlotReader<'_, F> {
    type Error = SlotError<F::Error>;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        if !within(self.region, offset, buf.len()) {
            return Err(SlotError::OutOfRegion {
                offset,
                len: buf.len(),
            });
        }
        self.flash
            .borrow_mut()
            .read(self.region.offset + offset, buf)
            .map_err(SlotError::Flash)
    }
}

/// Writes bytes one after the other from a word-aligned flash address, in whole words of the
/// flash's write size: whole words go straight from the input, a tail waits in a one-word
/// buffer, and [`WordWriter::finish`] pads it with 0xFF. It never erases: the caller writes
/// only onto erased flash. The slot writer, the journal and the fragment store build on it,
/// so that none of them needs a buffer larger than a word.
#[derive(Debug)]
pub struct WordWriter {
    /// Flash address of the first byte in `pending`.
    at: u32,
    pending: [u8; MAX_WRITE_SIZE],
    pending_len: usize,
}

impl WordWriter {
    /// A writer from flash address `at`; `None` if the flash's write size is above
    /// [`MAX_WRITE_SIZE`].
    pub fn new<F: NorFlash>(at: u32) -> Option<Self> {
        (F::WRITE_SIZE <= MAX_WRITE_SIZE && F::WRITE_SIZE > 0).then_some(Self {
            at,
            pending: [0xff; MAX_WRITE_SIZE],
            pending_len: 0,
        })
    }

    /// Flash address the next byte goes to.
    pub fn position(&self) -> u32 {
        self.at + self.pending_len as u32
    }

    /// Flash address up to which the bytes are written (all but the unfinished word).
    pub fn durable(&self) -> u32 {
        self.at
    }

    pub fn write<F: NorFlash>(&mut self, flash: &mut F, mut data: &[u8]) -> Result<(), F::Error> {
        let w = F::WRITE_SIZE;
        if self.pending_len > 0 {
            // Byte by byte behind the pending bytes, until the word is full or the data
            // runs out: a few bytes, counted in a local and stored once.
            let mut n = self.pending_len;
            while n < w {
                let Some((&byte, rest)) = data.split_first() else {
                    self.pending_len = n;
                    return Ok(());
                };
                // In bounds: `n` is below the write size, at most MAX_WRITE_SIZE (`new`).
                if let Some(d) = self.pending.get_mut(n) {
                    *d = byte;
                }
                n += 1;
                data = rest;
            }
            self.pending_len = n;
            self.write_pending(flash)?;
        }
        let (whole, tail) = data.split_at(data.len() / w * w);
        if !whole.is_empty() {
            flash.write(self.at, whole)?;
            self.at += whole.len() as u32;
        }
        // Byte by byte, as the head: the tail is shorter than a word.
        for (d, &s) in self.pending.iter_mut().zip(tail) {
            *d = s;
        }
        self.pending_len = tail.len();
        Ok(())
    }

    fn write_pending<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), F::Error> {
        flash.write(self.at, &self.pending[..F::WRITE_SIZE])?;
        self.at += F::WRITE_SIZE as u32;
        self.pending_len = 0;
        // Only the first word is ever written out: only it is padding again.
        self.pending[..F::WRITE_SIZE].fill(0xff);
        Ok(())
    }

    /// Writes the unfinished word, padded with 0xFF.
    pub fn finish<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), F::Error> {
        if self.pending_len == 0 {
            return Ok(());
        }
        self.write_pending(flash)
    }
}

/// Whether `len` bytes of flash at `at` read erased (0xFF), read a word-sized piece at a time.
pub fn is_erased<F: NorFlash>(flash: &mut F, at: u32, len: usize) -> Result<bool, F::Error> {
    let mut buf = [0u8; MAX_WRITE_SIZE];
    let mut done = 0;
    while done < len {
        // One slice for the read and the check, split off: a length known to fit needs no
        // check (slicing it would call the checked index).
        let (chunk, _) = buf.split_at_mut((len - done).min(MAX_WRITE_SIZE));
        flash.read(at + done as u32, chunk)?;
        if chunk.iter().any(|&b| b != 0xff) {
            return Ok(false);
        }
        done += chunk.len();
    }
    Ok(true)
}

/// Writes a region front to back from `start` on (a sector boundary): the applier's target.
#[derive(Debug)]
pub struct SlotWriter<'a, F> {
    flash: &'a RefCell<F>,
    region: Region,
    /// Region-relative end of what this writer has erased.
    erased_to: u32,
    words: WordWriter,
}

impl<'a, F: NorFlash> SlotWriter<'a, F> {
    /// A writer starting at region offset `start`, which must be sector-aligned: everything
    /// from there on is erased as it is reached.
    pub fn new(
        flash: &'a RefCell<F>,
        region: Region,
        start: u32,
    ) -> Result<Self, SlotError<F::Error>> {
        let words = WordWriter::new::<F>(region.offset + start)
            .filter(|_| F::ERASE_SIZE % F::WRITE_SIZE == 0)
            .ok_or(SlotError::UnsupportedGeometry)?;
        if start as usize % F::ERASE_SIZE != 0 || start > region.len {
            return Err(SlotError::OutOfRegion {
                offset: start,
                len: 0,
            });
        }
        Ok(Self {
            flash,
            region,
            erased_to: start,
            words,
        })
    }

    /// Region-relative offset the next byte goes to.
    pub fn position(&self) -> u32 {
        self.words.position() - self.region.offset
    }

    /// Bytes that are durable in flash (everything but the unfinished word).
    pub fn durable(&self) -> u32 {
        self.words.durable() - self.region.offset
    }

    /// Erases every sector a write up to region offset `end` (rounded up to a word) touches,
    /// on the flash its caller borrowed once for the erase and the write after it. Its only
    /// error is the driver's, returned as such: smaller at the call sites than a
    /// [`SlotError`] to copy.
    fn erase_through(&mut self, flash: &mut F, end: u32) -> Result<(), F::Error> {
        // `end` as it is, not rounded up to a word first: `erased_to` is a multiple of the
        // sector and so of the word, and a multiple of the word is below `end` exactly when
        // it is below `end` rounded up.
        while self.erased_to < end {
            let from = self.region.offset + self.erased_to;
            flash.erase(from, from + F::ERASE_SIZE as u32)?;
            self.erased_to += F::ERASE_SIZE as u32;
        }
        Ok(())
    }

    /// Writes the unfinished word padded with 0xFF (the end of the image).
    pub fn flush(&mut self) -> Result<(), SlotError<F::Error>> {
        let mut flash = self.flash.borrow_mut();
        self.erase_through(&mut flash, self.position())
            .and_then(|()| self.words.finish(&mut *flash))
            .map_err(SlotError::Flash)
    }
}

impl<F: NorFlash> TargetImage for SlotWriter<'_, F> {
    type Error = SlotError<F::Error>;
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        let expected = self.position();
        if offset != expected {
            return Err(SlotError::NotSequential {
                expected,
                got: offset,
            });
        }
        if !within(self.region, offset, data.len()) {
            return Err(SlotError::OutOfRegion {
                offset,
                len: data.len(),
            });
        }
        // Whole words of this write may reach flash now; the tail waits in the writer.
        let words_end = (offset + data.len() as u32) / F::WRITE_SIZE as u32 * F::WRITE_SIZE as u32;
        let mut flash = self.flash.borrow_mut();
        self.erase_through(&mut flash, words_end)
            .and_then(|()| self.words.write(&mut *flash, data))
            .map_err(SlotError::Flash)
    }
}

#[cfg(all(test, feature = "sim-flash"))]
mod tests {
    use super::*;
    use crate::sim_flash::SimFlash;

    #[test]
    fn writer_erases_ahead_and_aligns_writes() {
        let flash = RefCell::new(SimFlash::<8, 256>::new(8));
        let region = Region {
            offset: 512,
            len: 1024,
        };
        let data: std::vec::Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        {
            let mut w = SlotWriter::new(&flash, region, 0).unwrap();
            let mut at = 0;
            for piece in data.chunks(13) {
                w.write(at, piece).unwrap();
                at += piece.len() as u32;
            }
            assert_eq!(
                w.write(3, &[1]),
                Err(SlotError::NotSequential {
                    expected: 700,
                    got: 3
                })
            );
            w.flush().unwrap();
            assert_eq!(w.durable(), 704);
        }
        assert_eq!(&flash.borrow().as_bytes()[512..1212], &data[..]);
        assert!(flash.borrow().as_bytes()[1212..].iter().all(|&b| b == 0xff));
        // Only the sectors reached were erased, once each.
        assert_eq!(flash.borrow().wear().1, &[0, 0, 1, 1, 1, 0, 0, 0]);
        let mut r = SlotReader::new(&flash, region);
        let mut b = [0u8; 3];
        r.read(699, &mut b[..1]).unwrap();
        assert_eq!(b[0], data[699]);
        assert!(r.read(1023, &mut b).is_err());
    }
}
