//! Reed-Solomon fragment code: FragAlgo 1, a vendor value (TS004 defines only 0).
//!
//! M data fragments (the block zero-padded) and R parity fragments over GF(2^8), with the
//! systematic Vandermonde code of `reed-solomon-erasure`: **any** M distinct fragments of the
//! M + R rebuild the block, where the TS004 parity code needs a few more on average. Fragment
//! numbers are as in TS004: N = 1..=M data, M+1..=M+R parity. Parity fragment `M + i` depends
//! only on M and i, not on R, so a decoder built for a larger R decodes a smaller one.
//!
//! # Limits and RAM
//! GF(2^8) allows at most [`MAX_SHARDS`] = 256 fragments in all: M + R <= 256, so the largest
//! block is M = 255 data fragments (with one parity fragment), e.g. 255 x 242 bytes at EU868
//! DR4+. Larger images need the TS004 code.
//!
//! The store needs M + R slots: received parity fragments are kept in slots M..M+R until the
//! block can be rebuilt. Rebuilding reads the M fragments received into RAM, so this decoder
//! needs a heap (feature `reed-solomon`) of about M·F (fragments) + (M+R)·M (the code's
//! matrix) + M² (the decode matrix) bytes: about 100 KiB for M = 200, R = 56, F = 50. Before
//! completion it holds only one flag per fragment.
//!
//! # Devices without it
//! A device that lacks this code answers FragSessionSetupReq (FragAlgo 1) with a
//! FragSessionSetupAns whose EncodingUnsupported bit (status bit 0) is set; the server then
//! sets the session up again with FragAlgo 0, the TS004 code, which every device has.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::{FragmentStore, Progress};

/// Most fragments (data + parity) GF(2^8) can number.
pub const MAX_SHARDS: usize = 256;

/// Why fragments cannot be made or taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReedSolomonError<E = core::convert::Infallible> {
    ZeroFragSize,
    EmptyData,
    /// M + R above [`MAX_SHARDS`].
    TooManyShards {
        total: usize,
    },
    /// N is 0 or above M + R.
    FragmentNumber {
        n: usize,
    },
    PayloadLength {
        expected: usize,
        got: usize,
    },
    /// The fragment store failed.
    Store(E),
    /// The underlying code refused (should not happen with checked parameters).
    Code,
}

impl<E: fmt::Debug> fmt::Display for ReedSolomonError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReedSolomonError::ZeroFragSize => f.write_str("fragment size is 0"),
            ReedSolomonError::EmptyData => f.write_str("the data block is empty"),
            ReedSolomonError::TooManyShards { total } => write!(
                f,
                "{total} fragments in all: Reed-Solomon over GF(2^8) allows at most {MAX_SHARDS}"
            ),
            ReedSolomonError::FragmentNumber { n } => {
                write!(f, "fragment number {n} is out of range")
            }
            ReedSolomonError::PayloadLength { expected, got } => {
                write!(f, "fragment of {got} bytes where {expected} are expected")
            }
            ReedSolomonError::Store(e) => write!(f, "fragment store: {e:?}"),
            ReedSolomonError::Code => f.write_str("Reed-Solomon code error"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for ReedSolomonError<E> {}

fn check_counts<E>(m: usize, redundancy: usize) -> Result<(), ReedSolomonError<E>> {
    let total = m.saturating_add(redundancy);
    if total > MAX_SHARDS {
        return Err(ReedSolomonError::TooManyShards { total });
    }
    Ok(())
}

/// Every fragment of `data`: M data fragments (zero-padded) then `redundancy` parity ones.
pub fn encode(
    data: &[u8],
    frag_size: usize,
    redundancy: usize,
) -> Result<Vec<Vec<u8>>, ReedSolomonError> {
    if frag_size == 0 {
        return Err(ReedSolomonError::ZeroFragSize);
    }
    if data.is_empty() {
        return Err(ReedSolomonError::EmptyData);
    }
    let m = data.len().div_ceil(frag_size);
    check_counts(m, redundancy)?;
    let mut shards: Vec<Vec<u8>> = data
        .chunks(frag_size)
        .map(|c| {
            let mut s = vec![0u8; frag_size];
            s[..c.len()].copy_from_slice(c);
            s
        })
        .collect();
    if redundancy == 0 {
        return Ok(shards);
    }
    shards.resize(m + redundancy, vec![0u8; frag_size]);
    let code = ReedSolomon::new(m, redundancy).map_err(|_| ReedSolomonError::Code)?;
    code.encode(&mut shards)
        .map_err(|_| ReedSolomonError::Code)?;
    Ok(shards)
}

/// Decoder of one block: complete as soon as any M distinct fragments have arrived.
#[derive(Debug)]
pub struct ReedSolomonDecoder {
    m: usize,
    redundancy: usize,
    frag_size: usize,
    have: Vec<bool>,
    received: usize,
    complete: bool,
}

impl ReedSolomonDecoder {
    pub fn new(m: usize, redundancy: usize, frag_size: usize) -> Result<Self, ReedSolomonError> {
        if frag_size == 0 {
            return Err(ReedSolomonError::ZeroFragSize);
        }
        if m == 0 {
            return Err(ReedSolomonError::EmptyData);
        }
        check_counts(m, redundancy)?;
        Ok(Self {
            m,
            redundancy,
            frag_size,
            have: vec![false; m + redundancy],
            received: 0,
            complete: false,
        })
    }

    /// Distinct fragments taken.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Fragments still needed (0 when complete).
    pub fn missing(&self) -> usize {
        if self.complete {
            0
        } else {
            self.m - self.received.min(self.m)
        }
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn progress(&self) -> Progress {
        if self.complete {
            Progress::Complete
        } else {
            Progress::NeedMore {
                missing: self.missing(),
            }
        }
    }

    /// Takes fragment `n` (1-based). Slot `n - 1` of `store` receives it.
    pub fn push<S: FragmentStore>(
        &mut self,
        store: &mut S,
        n: usize,
        payload: &[u8],
    ) -> Result<Progress, ReedSolomonError<S::Error>> {
        if payload.len() != self.frag_size {
            return Err(ReedSolomonError::PayloadLength {
                expected: self.frag_size,
                got: payload.len(),
            });
        }
        let Some(seen) = n.checked_sub(1).and_then(|i| self.have.get(i).copied()) else {
            return Err(ReedSolomonError::FragmentNumber { n });
        };
        if self.complete || seen {
            return Ok(self.progress());
        }
        store
            .write_slot(n - 1, payload)
            .map_err(ReedSolomonError::Store)?;
        self.have[n - 1] = true;
        self.received += 1;
        if self.received >= self.m {
            self.rebuild(store)?;
        }
        Ok(self.progress())
    }

    /// Rebuilds the missing data fragments from the M received ones into their slots.
    fn rebuild<S: FragmentStore>(
        &mut self,
        store: &mut S,
    ) -> Result<(), ReedSolomonError<S::Error>> {
        if self.have[..self.m].iter().all(|h| *h) {
            self.complete = true;
            return Ok(());
        }
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; self.m + self.redundancy];
        for (i, shard) in shards.iter_mut().enumerate() {
            if self.have[i] {
                let mut buf = vec![0u8; self.frag_size];
                store
                    .read_slot(i, &mut buf)
                    .map_err(ReedSolomonError::Store)?;
                *shard = Some(buf);
            }
        }
        let code = ReedSolomon::new(self.m, self.redundancy).map_err(|_| ReedSolomonError::Code)?;
        code.reconstruct_data(&mut shards)
            .map_err(|_| ReedSolomonError::Code)?;
        for (i, (shard, have)) in shards.iter().zip(&self.have).take(self.m).enumerate() {
            if *have {
                continue;
            }
            let shard = shard.as_deref().ok_or(ReedSolomonError::Code)?;
            store
                .write_slot(i, shard)
                .map_err(ReedSolomonError::Store)?;
        }
        self.complete = true;
        Ok(())
    }
}
