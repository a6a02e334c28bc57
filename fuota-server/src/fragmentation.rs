//! Data blocks to TS004 DataFragment payloads and back, over either fragment code.
//!
//! The server sends fragments N = 1..M (the data, zero-padded to whole fragments) then
//! N = M+1..M+R (coded). Rebuilding is what a device does; the server uses it to check its
//! own output and for the `fuota frag decode` command.

use std::fmt;

use fuota_codec::fec::{self, FragAlgo, Progress, RamStore};
use fuota_codec::fragmentation::{DataFragment, Downlink};
use fuota_codec::Version;

/// Largest fragment count the 14-bit N field can number, coded fragments included.
pub const MAX_FRAGMENT_NUMBER: usize = 0x3fff;

/// Which code makes the redundant fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The TS004 parity code; its rows differ between v1 and v2.
    Ts004(Version),
    /// Reed-Solomon over GF(2^8) (FragAlgo 1, a vendor value).
    ReedSolomon,
}

impl Code {
    pub fn algo(self) -> FragAlgo {
        match self {
            Code::Ts004(_) => FragAlgo::Ts004,
            Code::ReedSolomon => FragAlgo::ReedSolomon,
        }
    }
}

/// How a block is cut: fragment size, data fragment count M, zero padding at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub frag_size: usize,
    pub nb_frag: usize,
    pub padding: usize,
}

impl Layout {
    /// The layout of `len` bytes cut into `frag_size`-byte fragments.
    pub fn for_len(len: usize, frag_size: usize) -> Result<Self, FragmentationError> {
        if frag_size == 0 || frag_size > 255 {
            return Err(FragmentationError::FragSize(frag_size));
        }
        if len == 0 {
            return Err(FragmentationError::Empty);
        }
        let nb_frag = len.div_ceil(frag_size);
        Ok(Self {
            frag_size,
            nb_frag,
            padding: nb_frag * frag_size - len,
        })
    }

    /// Length of the data without its padding.
    pub fn data_len(&self) -> usize {
        (self.nb_frag * self.frag_size).saturating_sub(self.padding)
    }
}

/// Why a block cannot be cut or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentationError {
    FragSize(usize),
    Empty,
    TooManyFragments { total: usize, max: usize },
    Padding { padding: usize, frag_size: usize },
    FragIndex(u8),
    Codec(String),
}

impl fmt::Display for FragmentationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentationError::FragSize(n) => {
                write!(f, "fragment size {n} is out of range (1..=255)")
            }
            FragmentationError::Empty => f.write_str("the data block is empty"),
            FragmentationError::TooManyFragments { total, max } => {
                write!(f, "{total} fragments in all, more than the {max} this code can number")
            }
            FragmentationError::Padding { padding, frag_size } => {
                write!(f, "padding {padding} is not smaller than the fragment size {frag_size}")
            }
            FragmentationError::FragIndex(i) => write!(f, "fragmentation index {i} is not 0..=3"),
            FragmentationError::Codec(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for FragmentationError {}

fn codec_err(e: impl fmt::Debug) -> FragmentationError {
    FragmentationError::Codec(format!("{e:?}"))
}
