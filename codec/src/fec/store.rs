//! Where fragment payloads live while a block is being decoded: RAM in tests, flash on the
//! device. Slot `i` holds data fragment `i + 1` once decoding completes; before that the
//! decoders use the slots of missing fragments as scratch.

/// Fixed-size fragment slots.
pub trait FragmentStore {
    type Error: core::fmt::Debug;

    /// Copies slot `slot` into `buf` (`buf.len()` is the fragment size).
    fn read_slot(&mut self, slot: usize, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Replaces slot `slot` with `data` (`data.len()` is the fragment size). A flash store
    /// erases or relocates as it needs to; the decoder may rewrite a slot several times.
    fn write_slot(&mut self, slot: usize, data: &[u8]) -> Result<(), Self::Error>;
}

/// Slot index out of the store's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub slot: usize,
}

/// A store over a caller's byte slice: `slots * frag_size` bytes.
#[derive(Debug)]
pub struct RamStore<'a> {
    bytes: &'a mut [u8],
    frag_size: usize,
}

impl<'a> RamStore<'a> {
    pub fn new(bytes: &'a mut [u8], frag_size: usize) -> Self {
        Self { bytes, frag_size }
    }

    pub fn frag_size(&self) -> usize {
        self.frag_size
    }

    pub fn slots(&self) -> usize {
        self.bytes.len().checked_div(self.frag_size).unwrap_or(0)
    }

    /// The whole backing slice: after a complete decode, the data block (padding included).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
    }

    fn range(&self, slot: usize, len: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
        let start = slot
            .checked_mul(self.frag_size)
            .ok_or(OutOfRange { slot })?;
        let end = start.checked_add(len).ok_or(OutOfRange { slot })?;
        if len > self.frag_size || end > self.bytes.len() {
            return Err(OutOfRange { slot });
        }
        Ok(start..end)
    }
}

impl FragmentStore for RamStore<'_> {
    type Error = OutOfRange;

    fn read_slot(&mut self, slot: usize, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(slot, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write_slot(&mut self, slot: usize, data: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(slot, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}
