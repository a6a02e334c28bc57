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

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for jitter.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}
