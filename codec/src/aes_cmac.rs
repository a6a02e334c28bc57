//! AES-CMAC (RFC 4493, NIST SP 800-38B) over [`Aes128`], fed in pieces.
//!
//! The running value holds the previous cipher block XORed with the bytes of the current
//! message block seen so far, so no separate block buffer is kept; a full block is only
//! encrypted once more bytes arrive, because the last block is treated differently. The
//! subkeys K1 and K2 are derived in [`Cmac::finalize`], which costs one more block encryption
//! and keeps the state at 33 bytes.

use core::fmt;

use crate::aes128::Aes128;

/// A CMAC computation under one AES-128 key.
#[derive(Clone)]
pub struct Cmac {
    cipher: Aes128,
    /// C_(i-1) XOR the first `fill` bytes of M_i.
    x: [u8; 16],
    /// Bytes of the current block absorbed into `x`, 0..=16.
    fill: u8,
}

impl Cmac {
    pub fn new(key: &[u8; 16]) -> Self {
        Self {
            cipher: Aes128::new(key),
            x: [0; 16],
            fill: 0,
        }
    }

    /// A CMAC whose message starts with the 16-byte `block`: the block taken in whole as the
    /// running value (0 XOR block), not fed byte by byte.
    pub(crate) fn with_first_block(key: &[u8; 16], block: [u8; 16]) -> Self {
        Self {
            cipher: Aes128::new(key),
            x: block,
            fill: 16,
        }
    }

    /// The tag of `message` in one call.
    pub fn mac(key: &[u8; 16], message: &[u8]) -> [u8; 16] {
        let mut cmac = Self::new(key);
        cmac.update(message);
        cmac.finalize()
    }

    /// Feeds the next piece of the message.
    pub fn update(&mut self, data: &[u8]) {
        // A byte at a time: the block encryption dominates, and this is the smallest code.
        let mut fill = usize::from(self.fill);
        for &byte in data {
            if fill >= 16 {
                self.cipher.encrypt_block(&mut self.x);
                fill = 0;
            }
            self.x[fill] ^= byte;
            fill += 1;
        }
        self.fill = fill as u8;
    }

    /// The 16-byte tag (RFC 4493, 2.4). A complete last block is masked with K1; a partial or
    /// empty one is padded with 10..0 and masked with K2.
    pub fn finalize(mut self) -> [u8; 16] {
        let mut subkey = [0u8; 16];
        self.cipher.encrypt_block(&mut subkey);
        double(&mut subkey);
        let fill = usize::from(self.fill);
        if fill < 16 {
            self.x[fill] ^= 0x80;
            double(&mut subkey);
        }
        for (x, k) in self.x.iter_mut().zip(&subkey) {
            *x ^= k;
        }
        self.cipher.encrypt_block(&mut self.x);
        self.x
    }
}

impl fmt::Debug for Cmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmac")
            .field("fill", &self.fill)
            .finish_non_exhaustive()
    }
}

/// Multiplication by x in GF(2^128) with the polynomial x^128 + x^7 + x^2 + x + 1: a shift
/// left by one bit, and R_128 = 0x87 folded into the last byte when the top bit fell off
/// (RFC 4493, 2.3). No branch on the key-dependent bit.
fn double(block: &mut [u8; 16]) {
    // From the last byte up, each passing its top bit on to the one before: one load and
    // one store a byte, no index to check.
    let mut carry = 0;
    for b in block.iter_mut().rev() {
        let top = *b >> 7;
        *b = (*b << 1) | carry;
        carry = top;
    }
    block[15] ^= carry * 0x87;
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmac::Mac;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    extern crate std;
    use std::vec;

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    const RFC_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const RFC_MESSAGE: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                               30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    /// RFC 4493, 4: the subkeys of the example key.
    #[test]
    fn rfc_4493_subkeys() {
        let cipher = Aes128::new(&hex16(RFC_KEY));
        let mut l = [0u8; 16];
        cipher.encrypt_block(&mut l);
        assert_eq!(l, hex16("7df76b0c1ab899b33e42f047b91b546f"));
        double(&mut l);
        assert_eq!(l, hex16("fbeed618357133667c85e08f7236a8de"));
        double(&mut l);
        assert_eq!(l, hex16("f7ddac306ae266ccf90bc11ee46d513b"));
    }

    /// RFC 4493, 4: examples 1 to 4 (lengths 0, 16, 40 and 64).
    #[test]
    fn rfc_4493_examples() {
        let key = hex16(RFC_KEY);
        let message = hex::decode(RFC_MESSAGE).unwrap();
        let cases = [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ];
        for (len, tag) in cases {
            assert_eq!(Cmac::mac(&key, &message[..len]), hex16(tag), "length {len}");
            let mut streamed = Cmac::new(&key);
            for byte in &message[..len] {
                streamed.update(core::slice::from_ref(byte));
            }
            assert_eq!(
                streamed.finalize(),
                hex16(tag),
                "length {len}, byte by byte"
            );
        }
    }

    #[test]
    fn matches_the_cmac_crate_for_random_lengths_and_chunkings() {
        let mut rng = ChaCha8Rng::seed_from_u64(4493);
        for round in 0..600 {
            let len = if round < 100 {
                round
            } else {
                rng.gen_range(0..1000)
            };
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            let mut message = vec![0u8; len];
            rng.fill_bytes(&mut message);

            let mut oracle = <cmac::Cmac<aes::Aes128> as Mac>::new_from_slice(&key).unwrap();
            oracle.update(&message);
            let want: [u8; 16] = oracle.finalize().into_bytes().into();

            assert_eq!(Cmac::mac(&key, &message), want, "length {len}");
            let mut ours = Cmac::new(&key);
            let mut rest = &message[..];
            while !rest.is_empty() {
                let n = rng.gen_range(0..=40).min(rest.len());
                let (head, tail) = rest.split_at(n);
                ours.update(head);
                rest = tail;
            }
            assert_eq!(ours.clone().finalize(), want, "length {len}, chunked");
            // Empty updates and a clone taken mid-stream change nothing.
            ours.update(&[]);
            assert_eq!(ours.finalize(), want);
        }
    }
}
