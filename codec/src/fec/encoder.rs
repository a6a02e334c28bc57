//! Data and coded fragments of a block.
//!
//! Fragments are numbered as on the air: N = 1..=M are the data (the block zero-padded to a
//! whole number of fragments), N > M are coded with the TS004 parity rows. Nothing here needs
//! a heap except [`encode`], which returns every fragment at once.

use core::fmt;

use super::parity::{self, bit};
use crate::Version;

/// Largest N the 14-bit field of DataFragment can carry.
pub const MAX_FRAGMENT_NUMBER: usize = 0x3fff;

/// Why fragments cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// Fragment size 0.
    ZeroFragSize,
    /// Nothing to send.
    EmptyData,
    /// More fragments than N can number.
    TooManyFragments { total: usize },
    /// N is 0 or past the fragments asked for.
    FragmentNumber { n: usize },
    /// An output or scratch buffer has the wrong size.
    Buffer { needed: usize, got: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::ZeroFragSize => f.write_str("fragment size is 0"),
            EncodeError::EmptyData => f.write_str("the data block is empty"),
            EncodeError::TooManyFragments { total } => write!(
                f,
                "{total} fragments: more than the {MAX_FRAGMENT_NUMBER} a DataFragment can number"
            ),
            EncodeError::FragmentNumber { n } => write!(f, "fragment number {n} is out of range"),
            EncodeError::Buffer { needed, got } => {
                write!(f, "buffer of {got} bytes where {needed} are needed")
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// Makes fragment N of a block on demand, without copying the block.
#[derive(Debug, Clone, Copy)]
pub struct Encoder<'d> {
    version: Version,
    data: &'d [u8],
    frag_size: usize,
    nb_frag: usize,
}

impl<'d> Encoder<'d> {
    pub fn new(version: Version, data: &'d [u8], frag_size: usize) -> Result<Self, EncodeError> {
        if frag_size == 0 {
            return Err(EncodeError::ZeroFragSize);
        }
        if data.is_empty() {
            return Err(EncodeError::EmptyData);
        }
        let nb_frag = data.len().div_ceil(frag_size);
        if nb_frag > MAX_FRAGMENT_NUMBER {
            return Err(EncodeError::TooManyFragments { total: nb_frag });
        }
        Ok(Self {
            version,
            data,
            frag_size,
            nb_frag,
        })
    }

    /// M, the number of data fragments.
    pub fn nb_frag(&self) -> usize {
        self.nb_frag
    }

    pub fn frag_size(&self) -> usize {
        self.frag_size
    }

    /// Zero bytes added to fill the last data fragment.
    pub fn padding(&self) -> usize {
        self.nb_frag * self.frag_size - self.data.len()
    }

    /// Bytes of the scratch bitmap that [`Self::fragment_into`] needs for coded fragments.
    pub fn row_len(&self) -> usize {
        parity::bitmap_len(self.nb_frag)
    }

    /// Data fragment `i` (0-based), zero-padded, XOR-ed into `out`.
    fn xor_data(&self, i: usize, out: &mut [u8]) {
        let start = i * self.frag_size;
        let end = (start + self.frag_size).min(self.data.len());
        if let Some(src) = self.data.get(start..end) {
            for (o, s) in out.iter_mut().zip(src) {
                *o ^= *s;
            }
        }
    }

    /// Writes fragment `n` (1-based; data for n <= M, coded above) into `out`, which must be
    /// exactly one fragment long. `row` is scratch of at least [`Self::row_len`] bytes (unused
    /// for data fragments).
    pub fn fragment_into(
        &self,
        n: usize,
        row: &mut [u8],
        out: &mut [u8],
    ) -> Result<(), EncodeError> {
        if out.len() != self.frag_size {
            return Err(EncodeError::Buffer {
                needed: self.frag_size,
                got: out.len(),
            });
        }
        if n == 0 || n > MAX_FRAGMENT_NUMBER {
            return Err(EncodeError::FragmentNumber { n });
        }
        out.fill(0);
        if n <= self.nb_frag {
            self.xor_data(n - 1, out);
            return Ok(());
        }
        let row_len = self.row_len();
        let Some(row) = row.get_mut(..row_len) else {
            return Err(EncodeError::Buffer {
                needed: row_len,
                got: row.len(),
            });
        };
        parity::fill_row(self.version, (n - self.nb_frag) as u32, self.nb_frag, row).ok_or(
            EncodeError::Buffer {
                needed: row_len,
                got: row.len(),
            },
        )?;
        for i in 0..self.nb_frag {
            if bit(row, i) {
                self.xor_data(i, out);
            }
        }
        Ok(())
    }

    /// All M data fragments then `redundancy` coded ones.
    #[cfg(feature = "alloc")]
    pub fn encode_all(
        &self,
        redundancy: usize,
    ) -> Result<alloc::vec::Vec<alloc::vec::Vec<u8>>, EncodeError> {
        use alloc::vec;
        let total = self.nb_frag + redundancy;
        if total > MAX_FRAGMENT_NUMBER {
            return Err(EncodeError::TooManyFragments { total });
        }
        let mut row = vec![0u8; self.row_len()];
        let mut out = vec::Vec::with_capacity(total);
        for n in 1..=total {
            let mut fragment = vec![0u8; self.frag_size];
            self.fragment_into(n, &mut row, &mut fragment)?;
            out.push(fragment);
        }
        Ok(out)
    }
}

/// Every fragment of `data`: M data fragments (zero-padded) then `redundancy` coded ones.
#[cfg(feature = "alloc")]
pub fn encode(
    version: Version,
    data: &[u8],
    frag_size: usize,
    redundancy: usize,
) -> Result<alloc::vec::Vec<alloc::vec::Vec<u8>>, EncodeError> {
    Encoder::new(version, data, frag_size)?.encode_all(redundancy)
}
