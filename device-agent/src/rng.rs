//! A small deterministic PRNG (xorshift64*) for protocol jitter: the BlockAckDelay before a
//! FragSessionStatusAns and the spread of AppTimeReq. Not for keys. Seed it per device (e.g.
//! from the DevEUI and a hardware random number) so that a fleet does not move in step.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0). In 32 bits: the jitters are far below that (49
    /// days in ms).
    pub fn below(&mut self, n: u32) -> u32 {
        let x = self.next_u64();
        // Multiply-shift, unbiased enough for jitter: `x * n >> 64`, in two 32x32-bit
        // products instead of a 64x64-bit one; below `n`, so it fits 32 bits.
        let n = u64::from(n);
        (((((x & 0xffff_ffff) * n) >> 32) + (x >> 32) * n) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_the_128_bit_multiply_shift() {
        for n in [0, 1, 7, 30_000, 2_048_000, u32::MAX] {
            let mut a = Rng::new(u64::from(n));
            let mut b = a.clone();
            for _ in 0..1000 {
                let want = (u128::from(b.next_u64()) * u128::from(n)) >> 64;
                assert_eq!(u128::from(a.below(n)), want);
            }
        }
    }
}
