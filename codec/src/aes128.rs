//! AES-128 (FIPS 197), written for code size: the state is 16 bytes, the only table is the
//! 256-byte S-box, and the round keys are made one at a time as the rounds need them, so the
//! cipher holds nothing but its 16-byte key.
//!
//! The device only encrypts (key derivation, CMAC, and McKey unwrapping, which the TS005
//! spec does with AES encryption); [`Aes128::decrypt_block`] is for the server's McKey
//! wrapping, and the linker drops it and its inverse S-box from a device build.
//!
//! The S-box is a table lookup indexed by secret bytes. A Cortex-M4 without a data cache
//! takes the same time for every index; on a processor with caches the access pattern can in
//! principle be observed by code sharing the cache.

use core::fmt;

/// Multiplication by x (that is, 02) in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (FIPS 197,
/// 4.2.1), without a branch on the value.
const fn xtime(b: u8) -> u8 {
    (b << 1) ^ ((b >> 7) * 0x1b)
}

/// Multiplication in GF(2^8) (FIPS 197, 4.2).
const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    product
}

/// The S-box from its definition (FIPS 197, 5.1.1): the multiplicative inverse in GF(2^8)
/// (00 maps to 00), computed as b^254, then the affine transformation
/// b'_i = b_i ^ b_(i+4) ^ b_(i+5) ^ b_(i+6) ^ b_(i+7) ^ c_i with c = 63.
/// Evaluated by the compiler, so no one types 256 numbers.
const fn sbox_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut x = 0;
    while x < 256 {
        let mut inverse = 1u8;
        let mut power = x as u8;
        let mut e = 254u8;
        while e != 0 {
            if e & 1 != 0 {
                inverse = gf_mul(inverse, power);
            }
            power = gf_mul(power, power);
            e >>= 1;
        }
        let b = inverse;
        table[x] =
            b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        x += 1;
    }
    table
}

const fn inverse_table(forward: &[u8; 256]) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut x = 0;
    while x < 256 {
        table[forward[x] as usize] = x as u8;
        x += 1;
    }
    table
}

const SBOX_TABLE: [u8; 256] = sbox_table();
static SBOX: [u8; 256] = SBOX_TABLE;
static INV_SBOX: [u8; 256] = inverse_table(&SBOX_TABLE);

/// An AES-128 key ready to encrypt or decrypt single blocks. Its `Debug` output hides the key.
#[derive(Clone)]
pub struct Aes128 {
    key: [u8; 16],
    /// The `aes` crate's expanded key, for [`Aes128::encrypt_block`] (feature `accelerated`).
    #[cfg(feature = "accelerated")]
    fast: aes::Aes128,
}

impl Aes128 {
    pub fn new(key: &[u8; 16]) -> Self {
        Self {
            key: *key,
            #[cfg(feature = "accelerated")]
            fast: aes::cipher::KeyInit::new(key.into()),
        }
    }

    /// The cipher on one block, in place: the `aes` crate's with the feature `accelerated`,
    /// else [`Aes128::encrypt_block_compact`].
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        #[cfg(feature = "accelerated")]
        aes::cipher::BlockEncrypt::encrypt_block(&self.fast, block.into());
        #[cfg(not(feature = "accelerated"))]
        self.encrypt_block_compact(block);
    }

    /// The cipher (FIPS 197, 5.1) on one block, in place. Bytes are in the spec's order: byte
    /// `r + 4c` of the block is row `r`, column `c` of the state. (Compiled with either
    /// backend, so that its tests run whatever the features.)
    pub fn encrypt_block_compact(&self, block: &mut [u8; 16]) {
        let mut round_key = self.key;
        let mut rcon = 1;
        // AddRoundKey at the top of the loop, for the first key and each round's: one use.
        for round in 1..12 {
            add_round_key(block, &round_key);
            if round == 11 {
                break;
            }
            sub_bytes_shift_rows(block);
            if round != 10 {
                mix_columns(block);
            }
            next_round_key(&mut round_key, rcon);
            rcon = xtime(rcon);
        }
    }

    /// The inverse cipher (FIPS 197, 5.3) on one block, in place. Server side only; it
    /// expands all eleven round keys first, since it walks them backwards.
    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        let mut round_keys = [self.key; 11];
        let mut rcon = 1;
        for i in 1..11 {
            round_keys[i] = round_keys[i - 1];
            next_round_key(&mut round_keys[i], rcon);
            rcon = xtime(rcon);
        }
        add_round_key(block, &round_keys[10]);
        for round in (0..10).rev() {
            inv_shift_rows_sub_bytes(block);
            add_round_key(block, &round_keys[round]);
            if round != 0 {
                inv_mix_columns(block);
            }
        }
    }
}

impl fmt::Debug for Aes128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aes128(<redacted>)")
    }
}

fn add_round_key(state: &mut [u8; 16], round_key: &[u8; 16]) {
    for (s, k) in state.iter_mut().zip(round_key) {
        *s ^= k;
    }
}

/// SubBytes and ShiftRows together. ShiftRows moves row `r` left by `r` columns, so byte
/// `i = r + 4c` takes the byte at `r + 4((c + r) mod 4)`, which is `5i mod 16`.
fn sub_bytes_shift_rows(state: &mut [u8; 16]) {
    let old = *state;
    for (i, s) in state.iter_mut().enumerate() {
        *s = SBOX[usize::from(old[(5 * i) % 16])];
    }
}

/// InvShiftRows and InvSubBytes: the byte at `r + 4((c - r) mod 4)`, which is `13i mod 16`
/// (13 is the inverse of 5 modulo 16).
fn inv_shift_rows_sub_bytes(state: &mut [u8; 16]) {
    let old = *state;
    for (i, s) in state.iter_mut().enumerate() {
        *s = INV_SBOX[usize::from(old[(13 * i) % 16])];
    }
}

/// MixColumns (5.1.3): each column times the circulant matrix (02 03 01 01). With
/// t = a0 ^ a1 ^ a2 ^ a3, row 0 is 02·a0 ^ 03·a1 ^ a2 ^ a3 = a0 ^ t ^ 02·(a0 ^ a1), and the
/// other rows likewise, rotated. A column is one little-endian word (row r in byte r), so the
/// four rows are worked out together in word operations.
fn mix_columns(state: &mut [u8; 16]) {
    for col in state.chunks_exact_mut(4) {
        let Ok(col) = <&mut [u8; 4]>::try_from(col) else {
            continue;
        };
        let a = u32::from_le_bytes(*col);
        // Byte r: a[r] ^ a[r + 1], then the XOR of all four in every byte.
        let pairs = a ^ a.rotate_right(8);
        let t = pairs ^ pairs.rotate_right(16);
        *col = (a ^ t ^ xtime_word(pairs)).to_le_bytes();
    }
}

/// [`xtime`] on each byte of a word.
const fn xtime_word(w: u32) -> u32 {
    ((w & 0x7f7f_7f7f) << 1) ^ ((w >> 7 & 0x0101_0101) * 0x1b)
}

/// InvMixColumns (5.3.3): the circulant matrix (0e 0b 0d 09).
fn inv_mix_columns(state: &mut [u8; 16]) {
    for col in state.chunks_exact_mut(4) {
        let a = [col[0], col[1], col[2], col[3]];
        for r in 0..4 {
            col[r] = gf_mul(a[r], 0x0e)
                ^ gf_mul(a[(r + 1) % 4], 0x0b)
                ^ gf_mul(a[(r + 2) % 4], 0x0d)
                ^ gf_mul(a[(r + 3) % 4], 0x09);
        }
    }
}

/// The next four words of the key expansion (5.2) for AES-128 (Nk = 4), in place:
/// w[i] = w[i-4] ^ SubWord(RotWord(w[i-1])) ^ Rcon for the first word, w[i-4] ^ w[i-1] for the
/// other three.
fn next_round_key(key: &mut [u8; 16], rcon: u8) {
    // SubWord(RotWord(w[i-1])): byte i takes the S-box of byte 12 + (i + 1) mod 4.
    // Rcon first: XOR commutes, and byte 0 is not among the bytes SubWord reads.
    key[0] ^= rcon;
    for i in 0..16 {
        key[i] ^= if i < 4 {
            SBOX[usize::from(key[12 + (i + 1) % 4])]
        } else {
            key[i - 4]
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::generic_array::GenericArray;
    use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    #[test]
    fn sbox_entries_from_fips_197() {
        // Figure 7: S-box(00) = 63, S-box(53) = ed, S-box(ff) = 16; and a few more.
        assert_eq!(SBOX[0x00], 0x63);
        assert_eq!(SBOX[0x01], 0x7c);
        assert_eq!(SBOX[0x53], 0xed);
        assert_eq!(SBOX[0x9a], 0xb8);
        assert_eq!(SBOX[0xff], 0x16);
        // Figure 14: InvS-box(00) = 52.
        assert_eq!(INV_SBOX[0x00], 0x52);
        for x in 0..=255u8 {
            assert_eq!(INV_SBOX[usize::from(SBOX[usize::from(x)])], x);
        }
    }

    /// FIPS 197 Appendix C.1 (AES-128).
    #[test]
    fn fips_197_appendix_c1() {
        let cipher = Aes128::new(&hex16("000102030405060708090a0b0c0d0e0f"));
        let mut block = hex16("00112233445566778899aabbccddeeff");
        cipher.encrypt_block_compact(&mut block);
        assert_eq!(block, hex16("69c4e0d86a7b0430d8cdb78070b4c55a"));
        cipher.decrypt_block(&mut block);
        assert_eq!(block, hex16("00112233445566778899aabbccddeeff"));
    }

    /// FIPS 197 Appendix B: the cipher example with the key expansion of Appendix A.1.
    #[test]
    fn fips_197_appendix_b() {
        let cipher = Aes128::new(&hex16("2b7e151628aed2a6abf7158809cf4f3c"));
        let mut block = hex16("3243f6a8885a308d313198a2e0370734");
        cipher.encrypt_block_compact(&mut block);
        assert_eq!(block, hex16("3925841d02dc09fbdc118597196a0b32"));
        // Appendix A.1: the last round key, w[40..44].
        let mut key = hex16("2b7e151628aed2a6abf7158809cf4f3c");
        let mut rcon = 1;
        for _ in 0..10 {
            next_round_key(&mut key, rcon);
            rcon = xtime(rcon);
        }
        assert_eq!(key, hex16("d014f9a8c9ee2589e13f0cc8b6630ca6"));
    }

    #[test]
    fn matches_the_aes_crate() {
        let mut rng = ChaCha8Rng::seed_from_u64(197);
        for _ in 0..2000 {
            let mut key = [0u8; 16];
            let mut block = [0u8; 16];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut block);
            let oracle = aes::Aes128::new(GenericArray::from_slice(&key));
            let ours = Aes128::new(&key);

            let mut want = GenericArray::from(block);
            oracle.encrypt_block(&mut want);
            let mut got = block;
            ours.encrypt_block(&mut got);
            assert_eq!(got[..], want[..]);
            let mut got = block;
            ours.encrypt_block_compact(&mut got);
            assert_eq!(got[..], want[..]);

            let mut want = GenericArray::from(block);
            oracle.decrypt_block(&mut want);
            let mut got = block;
            ours.decrypt_block(&mut got);
            assert_eq!(got[..], want[..]);
        }
    }

    #[test]
    fn debug_hides_the_key() {
        extern crate std;
        let shown = std::format!("{:?}", Aes128::new(&[0x42; 16]));
        assert_eq!(shown, "Aes128(<redacted>)");
    }
}
