//! The TS004 parity rows.
//!
//! Coded fragment `N = M + n` (n >= 1) is the XOR of the data fragments that row `n` selects.
//! A row is drawn from a 23-bit pseudo-random sequence seeded with `1 + 1001 * n`: each step
//! shifts right by one and feeds `bit0 ^ bit5` into bit 22; each value is taken modulo M (M + 1
//! when M is a power of two, which keeps the draws from being biased to a few positions) and
//! drawn again while it is out of range. v1 makes `M / 2` draws, repeats allowed (a repeat
//! leaves the position set, so v1 rows may hold fewer ones); v2 keeps drawing until `M / 2`
//! distinct positions are set. The two disagree for most rows, so the version must travel
//! with the session: decoding with the wrong rows yields wrong data without any error.

use crate::Version;

/// One step of the 23-bit sequence.
const fn prbs23(x: u32) -> u32 {
    let feedback = (x ^ (x >> 5)) & 1;
    // Added, not OR-ed: seeds above 2^23 (n > 8380) keep their high bits, and shipping
    // encoders add, so we do the same to stay bit-compatible.
    (x >> 1).wrapping_add(feedback << 22)
}

/// Draws the positions of parity row `n` for `m` data fragments, one at a time.
///
/// v1 rows may yield a position more than once (a repeat sets nothing new); v2 rows are
/// produced by [`fill_row`] which filters repeats.
#[derive(Debug, Clone)]
pub struct Draws {
    x: u32,
    m: u32,
    modulus: u32,
}

impl Draws {
    /// `n` is 1-based (coded fragment `M + n`); `m >= 1`.
    pub fn new(n: u32, m: u32) -> Self {
        let modulus = if m.is_power_of_two() { m + 1 } else { m };
        Self {
            x: 1u32.wrapping_add(1001u32.wrapping_mul(n)),
            m,
            modulus: modulus.max(1),
        }
    }

    /// The next drawn position, in `0..m`.
    pub fn next_position(&mut self) -> u32 {
        loop {
            self.x = prbs23(self.x);
            let r = self.x % self.modulus;
            if r < self.m {
                return r;
            }
        }
    }
}

/// Bytes of a bitmap of `m` bits.
// Whole bytes, plus one for a partial byte ((0..8 + 7) / 8 is 0 or 1): no overflow, and
// shorter on a device than div_ceil, which tests and adds separately.
#[allow(clippy::manual_div_ceil)]
pub const fn bitmap_len(m: usize) -> usize {
    m / 8 + (m % 8 + 7) / 8
}

// Out of line, both: the decoder reads and sets bits in a dozen places, and a call is
// smaller than the bounds-checked access inlined each time.
#[inline(never)]
pub(crate) fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[inline(never)]
pub(crate) fn set_bit(map: &mut [u8], i: usize) {
    if let Some(b) = map.get_mut(i / 8) {
        *b |= 1 << (i % 8);
    }
}

/// Writes parity row `n` (1-based) for `m` data fragments into `row` as a bitmap (bit `i` of
/// byte `i / 8` selects data fragment `i + 1`). `row` must hold [`bitmap_len`]`(m)` bytes;
/// returns the number of positions set, or `None` when `m` is 0 or `row` is too short.
pub fn fill_row(version: Version, n: u32, m: usize, row: &mut [u8]) -> Option<usize> {
    let len = bitmap_len(m);
    if m == 0 || m > u32::MAX as usize / 2 {
        return None;
    }
    let row = row.get_mut(..len)?;
    row.fill(0);
    let target = m / 2;
    let mut draws = Draws::new(n, m as u32);
    let (mut set, mut drawn) = (0, 0);
    // One loop for both versions: v1 stops after `target` draws, v2 at `target` positions.
    loop {
        let done = match version {
            Version::V1 => drawn,
            Version::V2 => set,
        };
        if done >= target {
            break;
        }
        drawn += 1;
        let p = draws.next_position() as usize;
        if !bit(row, p) {
            set_bit(row, p);
            set += 1;
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_the_expected_weight() {
        let mut row = [0u8; 128];
        for m in [1usize, 2, 3, 8, 100, 1000, 1024] {
            for n in 1..20 {
                let v2 = fill_row(Version::V2, n, m, &mut row).unwrap();
                assert_eq!(v2, m / 2);
                let v1 = fill_row(Version::V1, n, m, &mut row).unwrap();
                assert!(v1 <= m / 2);
            }
        }
    }

    #[test]
    fn v1_and_v2_rows_differ() {
        let (mut a, mut b) = ([0u8; 13], [0u8; 13]);
        let differ = (1..50).any(|n| {
            fill_row(Version::V1, n, 100, &mut a);
            fill_row(Version::V2, n, 100, &mut b);
            a != b
        });
        assert!(differ);
    }

    #[test]
    fn rejects_short_rows_and_zero_m() {
        let mut row = [0u8; 1];
        assert_eq!(fill_row(Version::V2, 1, 9, &mut row), None);
        assert_eq!(fill_row(Version::V2, 1, 0, &mut row), None);
    }
}
