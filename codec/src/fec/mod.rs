//! Forward error correction for fragmented data blocks.
//!
//! - [`parity`]: the TS004 parity rows (v1 and v2 differ).
//! - [`encoder`]: data and coded fragments, one at a time or (with `alloc`) all at once.
//! - [`decoder`]: an on-the-fly GF(2) decoder that keeps fragment payloads in a
//!   [`FragmentStore`] and only bit rows and the missing-fragment index in RAM.
//! - [`reed_solomon`] (feature `reed-solomon`): FragAlgo 1, a vendor value.

pub mod decoder;
pub mod encoder;
pub mod parity;
#[cfg(feature = "reed-solomon")]
pub mod reed_solomon;
pub mod store;

pub use store::{FragmentStore, RamStore};

/// Fragmentation algorithm, as carried in FragSessionSetupReq's Control.FragAlgo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragAlgo {
    /// 0: the TS004 parity code.
    Ts004,
    /// 1: Reed-Solomon over GF(2^8) (a vendor value, not in the spec).
    ReedSolomon,
}

impl FragAlgo {
    pub const fn value(self) -> u8 {
        match self {
            FragAlgo::Ts004 => 0,
            FragAlgo::ReedSolomon => 1,
        }
    }

    pub const fn from_value(v: u8) -> Option<Self> {
        match v {
            0 => Some(FragAlgo::Ts004),
            1 => Some(FragAlgo::ReedSolomon),
            _ => None,
        }
    }
}

/// How far a decoder has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The data cannot be rebuilt yet; at least `missing` more useful fragments are needed.
    NeedMore { missing: usize },
    /// Every data fragment is in the store, slots `0..M` in order.
    Complete,
}
