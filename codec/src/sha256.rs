//! SHA-256 (FIPS 180-4), written for code size: one rolled compression loop with a 16-word
//! message schedule, no SIMD and no unrolling (on a Cortex-M4 at opt-level z, 368 bytes of
//! compression function where the `sha2` crate's unrolled one takes about 2 KB).
//!
//! Its state can leave as a plain byte array and come back ([`Sha256::to_state_bytes`],
//! [`Sha256::from_state_bytes`]), so a device hashing a whole image can checkpoint the hash in
//! flash and carry on after a power cut instead of reading the image again.

use core::fmt;

use crate::error::{Error, ErrorKind};

/// The first 32 bits of the fractional parts of the cube roots of the first 64 primes
/// (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// The initial hash value: fractional parts of the square roots of the first 8 primes (5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A SHA-256 computation fed in pieces.
///
/// The byte count is kept modulo 2^64 and hashed as a bit count modulo 2^64; FIPS 180-4 limits
/// messages to 2^64 - 1 bits (2^61 bytes), far past any image.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    /// Bytes fed so far, low word first; the partial block holds the last `len % 64` of
    /// them. Two words rather than a u64: the state then aligns to 4 bytes, and a device's
    /// copies and clears of it need no 8-byte variants of the memory functions.
    len: [u32; 2],
    block: [u8; 64],
}

impl Sha256 {
    /// Length of [`Sha256::to_state_bytes`].
    pub const STATE_LEN: usize = 105;

    // Out of line: built in several places on a device, each inline copy larger than a call.
    #[inline(never)]
    pub const fn new() -> Self {
        Self {
            state: H0,
            len: [0; 2],
            block: [0; 64],
        }
    }

    /// The digest of `data` in one call.
    pub fn digest(data: &[u8]) -> [u8; 32] {
        let mut sha = Self::new();
        sha.update(data);
        sha.finalize_reset()
    }

    /// Bytes hashed so far.
    pub const fn len(&self) -> u64 {
        self.len[0] as u64 | (self.len[1] as u64) << 32
    }

    fn set_len(&mut self, len: u64) {
        self.len = [len as u32, (len >> 32) as u32];
    }

    /// Whether nothing has been hashed yet.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds the next piece of the message.
    pub fn update(&mut self, data: &[u8]) {
        let mut fill = (self.len[0] % 64) as usize;
        self.set_len(self.len().wrapping_add(data.len() as u64));
        // Byte by byte through the block: a few cycles a byte more than copying whole
        // blocks, in a fraction of the code.
        for &byte in data {
            self.block[fill] = byte;
            fill = (fill + 1) % 64;
            if fill == 0 {
                compress(&mut self.state, &self.block);
            }
        }
    }

    /// Pads the message (a 1 bit, zeros, the bit length in 64 bits big-endian; 5.1.1) and
    /// returns the digest.
    pub fn finalize(mut self) -> [u8; 32] {
        self.pad()
    }

    /// [`Sha256::finalize`] in place, then starts over: for callers short of stack, where
    /// moving the state into `finalize` would copy it first.
    pub fn finalize_reset(&mut self) -> [u8; 32] {
        let out = self.pad();
        // Field by field: a whole new value would be built on the stack first. The block
        // keeps its old bytes: only the first `len % 64` (none now) are ever read.
        self.state = H0;
        self.len = [0; 2];
        out
    }

    /// [`Sha256::finalize`] in place; the state is spent afterwards.
    fn pad(&mut self) -> [u8; 32] {
        let bits = self.len().wrapping_mul(8);
        // Byte by byte, 0x80 then zeros: at most 64 calls, and smaller code than a padding
        // table.
        let mut byte = 0x80;
        loop {
            self.update(&[byte]);
            byte = 0;
            if self.len[0] % 64 == 56 {
                break;
            }
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(&self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The state as bytes, for a checkpoint in flash. Layout (integers little-endian):
    ///
    /// | offset | length | field |
    /// |---|---|---|
    /// | 0 | 32 | the eight working hash words H0..H7, 4 bytes each |
    /// | 32 | 8 | bytes hashed so far (u64) |
    /// | 40 | 1 | bytes in the partial block, always the count modulo 64 |
    /// | 41 | 64 | the partial block; the bytes past its length are zero |
    ///
    /// The redundancy (the partial length, the zero padding) lets
    /// [`Sha256::from_state_bytes`] refuse most damaged records, erased flash (all `ff`)
    /// among them. A checkpoint should still carry a checksum of its own.
    pub fn to_state_bytes(&self) -> [u8; Self::STATE_LEN] {
        let mut out = [0u8; Self::STATE_LEN];
        for (bytes, word) in out[..32].chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        out[32..40].copy_from_slice(&self.len().to_le_bytes());
        let fill = (self.len[0] % 64) as usize;
        out[40] = fill as u8;
        out[41..41 + fill].copy_from_slice(&self.block[..fill]);
        out
    }

    /// A hash resumed from [`Sha256::to_state_bytes`]. Fails with `InvalidValue` on a state no
    /// hash can be in: a partial length of 64 or more, or other than the byte count modulo 64;
    /// a byte count of 2^61 or more (past FIPS 180-4's limit); nonzero bytes past the partial
    /// block.
    pub fn from_state_bytes(bytes: &[u8; Self::STATE_LEN]) -> Result<Self, Error> {
        let bad = |field| Error::new("Sha256State", field, ErrorKind::InvalidValue);
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[32..40]);
        let len = u64::from_le_bytes(count);
        let fill = usize::from(bytes[40]);
        if fill >= 64 || fill as u64 != len % 64 {
            return Err(bad("PartialLength"));
        }
        if len >= 1 << 61 {
            return Err(bad("ByteCount"));
        }
        if bytes[41 + fill..].iter().any(|&b| b != 0) {
            return Err(bad("PartialBlock"));
        }
        let mut state = [0u32; 8];
        for (word, b) in state.iter_mut().zip(bytes[..32].chunks_exact(4)) {
            *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let mut block = [0u8; 64];
        block.copy_from_slice(&bytes[41..]);
        let mut sha = Self {
            state,
            len: [0; 2],
            block,
        };
        sha.set_len(len);
        Ok(sha)
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// One application of the compression function to a 64-byte block: the `sha2` crate's with
/// the feature `accelerated`, else [`compress_compact`].
fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    #[cfg(feature = "accelerated")]
    {
        use sha2::digest::generic_array::GenericArray;
        sha2::compress256(
            state,
            core::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    #[cfg(not(feature = "accelerated"))]
    compress_compact(state, block);
}

/// The compression function (6.2.2) on a 64-byte block. The schedule keeps only the last 16
/// words W[t-16..t], in a ring indexed by `t % 16`. (Compiled with either backend, so that
/// its test runs whatever the features.)
#[cfg_attr(feature = "accelerated", allow(dead_code))]
fn compress_compact(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 16];
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    // One counter, which indexes K too (always in bounds): not a second one walking K.
    for t in 0..64 {
        if t < 16 {
            // The first 16 rounds take the block's words as they come: no loop of its own.
            let i = 4 * t;
            w[t] = u32::from_be_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
        } else {
            // W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16]
            let w15 = w[(t + 1) % 16];
            let w2 = w[(t + 14) % 16];
            let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            w[t % 16] = w[t % 16]
                .wrapping_add(s0)
                .wrapping_add(w[(t + 9) % 16])
                .wrapping_add(s1);
        }
        let big_s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        // Ch and Maj in their short forms (FIPS 180-4's (e ∧ f) ⊕ (¬e ∧ g) and
        // (a ∧ b) ⊕ (a ∧ c) ⊕ (b ∧ c)): the same bits in fewer operations.
        let ch = g ^ (e & (f ^ g));
        let t1 = h
            .wrapping_add(big_s1)
            .wrapping_add(ch)
            .wrapping_add(K[t])
            .wrapping_add(w[t % 16]);
        let big_s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) | (c & (a | b));
        let t2 = big_s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    // By reference: a by-value array would be copied out first.
    for (s, v) in state.iter_mut().zip(&[a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use sha2::Digest;
    use std::vec;
    use std::vec::Vec;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    fn oracle(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    /// FIPS 180-4's examples (NIST "SHA256.pdf" example values).
    #[test]
    fn the_compact_compression_matches_the_sha2_crate() {
        use sha2::digest::generic_array::GenericArray;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..500 {
            let mut state: [u32; 8] = core::array::from_fn(|_| rng.gen());
            let block: [u8; 64] = core::array::from_fn(|_| rng.gen());
            let mut theirs = state;
            sha2::compress256(&mut theirs, &[*GenericArray::from_slice(&block)]);
            compress_compact(&mut state, &block);
            assert_eq!(state, theirs);
        }
    }

    #[test]
    fn fips_180_4_examples() {
        assert_eq!(
            Sha256::digest(b"abc"),
            hex32("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            Sha256::digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            hex32("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        );
        assert_eq!(
            Sha256::digest(b""),
            hex32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        let mut sha = Sha256::new();
        let thousand = [b'a'; 1000];
        for _ in 0..1000 {
            sha.update(&thousand);
        }
        assert_eq!(sha.len(), 1_000_000);
        assert_eq!(
            sha.finalize(),
            hex32("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        );
    }

    /// Cuts `data` at random points (empty pieces included).
    fn random_split<'a>(rng: &mut ChaCha8Rng, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = match rng.gen_range(0..4) {
                0 => 0,
                1 => rng.gen_range(1..=3),
                2 => rng.gen_range(1..=70),
                _ => rng.gen_range(1..=200),
            }
            .min(rest.len());
            let (head, tail) = rest.split_at(n);
            pieces.push(head);
            rest = tail;
        }
        pieces
    }

    #[test]
    fn matches_sha2_for_every_length_and_random_splits() {
        let mut rng = ChaCha8Rng::seed_from_u64(1804);
        for len in 0..300 {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let want = oracle(&data);
            assert_eq!(Sha256::digest(&data), want, "one shot, length {len}");
            for _ in 0..4 {
                let mut sha = Sha256::new();
                for piece in random_split(&mut rng, &data) {
                    sha.update(piece);
                }
                assert_eq!(sha.len(), len as u64);
                assert_eq!(sha.finalize(), want, "split, length {len}");
            }
        }
    }

    #[test]
    fn clone_forks_the_hash() {
        let mut sha = Sha256::new();
        sha.update(b"firmware ");
        let mut other = sha.clone();
        sha.update(b"one");
        other.update(b"two");
        assert_eq!(sha.finalize(), oracle(b"firmware one"));
        assert_eq!(other.finalize(), oracle(b"firmware two"));
    }

    #[test]
    fn state_export_and_import_resume_the_hash() {
        let mut rng = ChaCha8Rng::seed_from_u64(105);
        for len in [0usize, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4099] {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            for _ in 0..8 {
                let cut = rng.gen_range(0..=len);
                // Only the bytes carry the hash on.
                let saved = {
                    let mut sha = Sha256::new();
                    sha.update(&data[..cut]);
                    sha.to_state_bytes()
                };
                assert_eq!(usize::from(saved[40]), cut % 64);
                let mut resumed = Sha256::from_state_bytes(&saved).unwrap();
                assert_eq!(resumed.len(), cut as u64);
                assert_eq!(resumed.to_state_bytes(), saved);
                resumed.update(&data[cut..]);
                assert_eq!(resumed.finalize(), oracle(&data), "len {len}, cut {cut}");
            }
        }
    }

    #[test]
    fn fresh_state_layout() {
        let s = Sha256::new().to_state_bytes();
        assert_eq!(&s[..4], &0x6a09e667u32.to_le_bytes());
        assert_eq!(&s[28..32], &0x5be0cd19u32.to_le_bytes());
        assert!(s[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn impossible_states_are_refused() {
        let mut sha = Sha256::new();
        sha.update(&[7u8; 70]);
        let good = sha.to_state_bytes();
        assert_eq!(good[40], 6);
        let field =
            |bytes: &[u8; Sha256::STATE_LEN]| Sha256::from_state_bytes(bytes).unwrap_err().field;

        let mut s = good;
        s[40] = 64;
        assert_eq!(field(&s), "PartialLength");
        s[40] = 0xff;
        assert_eq!(field(&s), "PartialLength");
        // A partial length that disagrees with the byte count.
        s[40] = 7;
        assert_eq!(field(&s), "PartialLength");

        let mut s = good;
        s[32..40].copy_from_slice(&((1u64 << 61) + 6).to_le_bytes());
        assert_eq!(field(&s), "ByteCount");

        let mut s = good;
        s[41 + 6] = 1;
        assert_eq!(field(&s), "PartialBlock");
        let mut s = good;
        s[Sha256::STATE_LEN - 1] = 0x80;
        assert_eq!(field(&s), "PartialBlock");

        assert_eq!(field(&[0xff; Sha256::STATE_LEN]), "PartialLength");
        // Every single-bit flip in the count, the partial length or the padding is either
        // refused or moves the byte count by a multiple of 64 (which the layout cannot tell
        // from a real state).
        for bit in (32 * 8..41 * 8).chain(47 * 8..Sha256::STATE_LEN * 8) {
            let mut s = good;
            s[bit / 8] ^= 1 << (bit % 8);
            match Sha256::from_state_bytes(&s) {
                Err(_) => {}
                Ok(h) => assert!((32..40).contains(&(bit / 8)) && h.len() % 64 == 6),
            }
        }
    }

    #[test]
    fn arbitrary_state_bytes_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut s = [0u8; Sha256::STATE_LEN];
            rng.fill_bytes(&mut s);
            if rng.gen_bool(0.5) {
                s[40] = rng.gen_range(0..70);
                let fill = usize::from(s[40]).min(64);
                s[41 + fill..].fill(0);
            }
            if let Ok(mut h) = Sha256::from_state_bytes(&s) {
                h.update(b"more");
                let _ = h.finalize();
            }
        }
    }
}
