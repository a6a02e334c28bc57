//! An in-RAM NOR flash for host tests and the simulator, with power cuts on demand.
//!
//! It behaves as the parts the agent runs on: erased bytes read 0xFF, writes must be aligned
//! to `WRITE` and land on erased bytes (a write over data is an error here, where real flash
//! would silently AND the bits), erases cover whole `ERASE` sectors. Each sector counts its
//! writes and erases.
//!
//! Fault injection: [`SimFlash::cut_power_after`] lets `k` more writes or erases succeed;
//! the next one is torn (a write lands partly, with garbage in the word being written; an
//! erase leaves the sector partly erased) and fails, and so does every operation after it
//! until [`SimFlash::reboot`].

use std::vec;
use std::vec::Vec;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// What the simulated flash refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFlashError {
    NotAligned,
    OutOfBounds,
    /// A write over bytes that are not erased.
    NotErased {
        offset: u32,
    },
    /// The power is off: a cut happened during this or an earlier operation.
    PowerCut,
}

impl NorFlashError for SimFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            SimFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

impl core::fmt::Display for SimFlashError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SimFlashError::NotAligned => f.write_str("not aligned"),
            SimFlashError::OutOfBounds => f.write_str("out of bounds"),
            SimFlashError::NotErased { offset } => {
                write!(f, "write over unerased flash at {offset:#x}")
            }
            SimFlashError::PowerCut => f.write_str("power cut"),
        }
    }
}

/// In-RAM NOR flash: `WRITE`-byte write granularity, `ERASE`-byte sectors.
#[derive(Debug, Clone)]
pub struct SimFlash<const WRITE: usize, const ERASE: usize> {
    mem: Vec<u8>,
    writes: Vec<u32>,
    erases: Vec<u32>,
    /// Mutating operations that may still succeed before the cut.
    budget: Option<u64>,
    off: bool,
    /// xorshift state for torn contents.
    noise: u64,
}

impl<const WRITE: usize, const ERASE: usize> SimFlash<WRITE, ERASE> {
    /// `sectors` erased sectors.
    pub fn new(sectors: usize) -> Self {
        assert!(WRITE.is_power_of_two() && ERASE % WRITE == 0);
        Self {
            mem: vec![0xff; sectors * ERASE],
            writes: vec![0; sectors],
            erases: vec![0; sectors],
            budget: None,
            off: false,
            noise: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Lets `k` more writes or erases succeed; the one after is torn.
    pub fn cut_power_after(&mut self, k: u64) {
        self.budget = Some(k);
    }

    /// Power back on: operations work again, no cut is scheduled.
    pub fn reboot(&mut self) {
        self.off = false;
        self.budget = None;
    }

    /// Whether a cut has happened since the last reboot.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// The whole contents.
    pub fn as_bytes(&self) -> &[u8] {
        &self.mem
    }

    /// Writes and erases per sector so far.
    pub fn wear(&self) -> (&[u32], &[u32]) {
        (&self.writes, &self.erases)
    }

    /// Total writes and erases so far (what `cut_power_after` counts).
    pub fn operations(&self) -> u64 {
        self.writes
            .iter()
            .chain(&self.erases)
            .map(|&n| u64::from(n))
            .sum()
    }

    fn next_noise(&mut self) -> u8 {
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        self.noise as u8
    }

    /// Spends one operation; `Err` when this one is the torn one.
    fn spend(&mut self) -> Result<bool, SimFlashError> {
        if self.off {
            return Err(SimFlashError::PowerCut);
        }
        match self.budget {
            Some(0) => {
                self.off = true;
                Ok(false)
            }
            Some(ref mut k) => {
                *k -= 1;
                Ok(true)
            }
            None => Ok(true),
        }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, SimFlashError> {
        let start = offset as usize;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.mem.len())
        {
            return Err(SimFlashError::OutOfBounds);
        }
        if start % align != 0 || len % align != 0 {
            return Err(SimFlashError::NotAligned);
        }
        Ok(start)
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for SimFlash<WRITE, ERASE> {
    type Error = SimFlashError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for SimFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        if self.off {
            return Err(SimFlashError::PowerCut);
        }
        let start = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.mem[start..start + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for SimFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        if to < from {
            return Err(SimFlashError::OutOfBounds);
        }
        let start = self.check(from, (to - from) as usize, ERASE)?;
        let end = to as usize;
        for sector in (start..end).step_by(ERASE) {
            if !self.spend()? {
                // Torn erase: part of the sector is erased, the rest holds what it held.
                let cut = usize::from(self.next_noise()) * ERASE / 256;
                self.mem[sector..sector + cut].fill(0xff);
                self.erases[sector / ERASE] += 1;
                return Err(SimFlashError::PowerCut);
            }
            self.mem[sector..sector + ERASE].fill(0xff);
            self.erases[sector / ERASE] += 1;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        let start = self.check(offset, bytes.len(), WRITE)?;
        if let Some(i) = self.mem[start..start + bytes.len()]
            .iter()
            .position(|&b| b != 0xff)
        {
            return Err(SimFlashError::NotErased {
                offset: (start + i) as u32,
            });
        }
        if !self.spend()? {
            // Torn write: whole words before the cut land, the word being written holds
            // garbage (bits only cleared, as flash does), the rest stays erased.
            let words = bytes.len() / WRITE;
            let done = usize::from(self.next_noise()) % words.max(1);
            let at = start + done * WRITE;
            self.mem[start..at].copy_from_slice(&bytes[..done * WRITE]);
            for i in 0..WRITE.min(bytes.len() - done * WRITE) {
                let junk = self.next_noise();
                self.mem[at + i] = bytes[done * WRITE + i] | junk;
                self.mem[at + i] &= 0xff ^ (junk & 0x55);
            }
            self.writes[start / ERASE] += 1;
            return Err(SimFlashError::PowerCut);
        }
        self.mem[start..start + bytes.len()].copy_from_slice(bytes);
        self.writes[start / ERASE] += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_nor_flash() {
        let mut f = SimFlash::<8, 256>::new(4);
        assert_eq!(f.capacity(), 1024);
        f.write(8, &[1; 16]).unwrap();
        assert_eq!(
            f.write(8, &[2; 8]),
            Err(SimFlashError::NotErased { offset: 8 })
        );
        assert_eq!(f.write(3, &[2; 8]), Err(SimFlashError::NotAligned));
        assert_eq!(f.erase(0, 100), Err(SimFlashError::NotAligned));
        assert_eq!(f.write(1024, &[0; 8]), Err(SimFlashError::OutOfBounds));
        let mut b = [0u8; 4];
        f.read(22, &mut b).unwrap();
        assert_eq!(b, [1, 1, 0xff, 0xff]);
        f.erase(0, 256).unwrap();
        f.read(8, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        assert_eq!(f.wear(), (&[1, 0, 0, 0][..], &[1, 0, 0, 0][..]));
    }

    #[test]
    fn power_cut_tears_one_operation_and_stops_the_rest() {
        let mut f = SimFlash::<8, 256>::new(4);
        f.cut_power_after(2);
        f.write(0, &[0; 8]).unwrap();
        f.write(8, &[0; 8]).unwrap();
        assert_eq!(f.write(256, &[0x11; 64]), Err(SimFlashError::PowerCut));
        assert!(f.is_off());
        let mut b = [0u8; 1];
        assert_eq!(f.read(0, &mut b), Err(SimFlashError::PowerCut));
        assert_eq!(f.erase(0, 256), Err(SimFlashError::PowerCut));
        f.reboot();
        f.read(0, &mut b).unwrap();
        assert_eq!(f.operations(), 3);
        // The torn write left at most the written words plus one word of garbage.
        let torn = &f.as_bytes()[256..320];
        let landed = torn.chunks(8).take_while(|w| *w == [0x11; 8]).count();
        assert!(torn[(landed + 1) * 8..].iter().all(|&b| b == 0xff));
    }
}
