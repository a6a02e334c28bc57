//! ECDSA P-256 signature verification, written for code size first and stack second: the
//! device checks one signature per install, so flash and RAM matter more than milliseconds
//! (about 2.2 KiB of Cortex-M4 code and constants, 1 KiB of stack; twice the `p256` crate's
//! time on a PC).
//!
//! Numbers are eight 32-bit limbs, least significant first. One Montgomery multiplication,
//! parameterised by its modulus, does the arithmetic mod p (coordinates) and mod n (scalars);
//! inverses and the square root are powers through it. Points are Jacobian (x = X/Z²,
//! y = Y/Z³, Z = 0 at infinity); the doubling (a = -3) and the general addition (equal and
//! opposite points, infinity) are tables of field operations run over a small register file.
//! u1·G + u2·Q is one pass of doublings over both scalars (Shamir's trick) with a table of G,
//! Q and G + Q. Everything verified is public, so nothing here tries to be constant time.

use core::fmt;

type Limbs = [u32; 8];

const ZERO: Limbs = [0; 8];
const ONE: Limbs = [1, 0, 0, 0, 0, 0, 0, 0];

/// A modulus with `inv` = -m⁻¹ mod 2³² for the Montgomery reduction (R = 2²⁵⁶). Values handed
/// to its methods are below `m`, and so are the results.
struct Modulus {
    m: Limbs,
    inv: u32,
}

/// The field prime p = 2²⁵⁶ - 2²²⁴ + 2¹⁹² + 2⁹⁶ - 1.
const P: Modulus = Modulus {
    m: [
        0xffff_ffff,
        0xffff_ffff,
        0xffff_ffff,
        0,
        0,
        0,
        1,
        0xffff_ffff,
    ],
    inv: 1,
};

/// The group order n.
const N: Modulus = Modulus {
    m: [
        0xfc63_2551,
        0xf3b9_cac2,
        0xa717_9e84,
        0xbce6_faad,
        0xffff_ffff,
        0xffff_ffff,
        0,
        0xffff_ffff,
    ],
    inv: 0xee00_bc4f,
};

/// The curve's b (y² = x³ - 3x + b) in Montgomery form (b·2²⁵⁶ mod p), as the curve
/// equation uses it: a constant rather than a conversion. The tests check it against b.
const B_MONTGOMERY: Limbs = [
    0x29c4_bddf,
    0xd89c_df62,
    0x7884_3090,
    0xacf0_05cd,
    0xf721_2ed6,
    0xe5a2_20ab,
    0x0487_4834,
    0xdc30_061d,
];

/// The generator in Jacobian coordinates, Montgomery form (each coordinate times 2²⁵⁶ mod p;
/// Z = 1): a constant in flash rather than a copy on the stack. The tests check it against the
/// standard coordinates.
const G: Point = [
    [
        0x18a9_143c,
        0x79e7_30d4,
        0x5fed_b601,
        0x75ba_95fc,
        0x7762_2510,
        0x79fb_732b,
        0xa537_55c6,
        0x1890_5f76,
    ],
    [
        0xce95_560a,
        0xddf2_5357,
        0xba19_e45c,
        0x8b4a_b8e4,
        0xdd21_f325,
        0xd2e8_8688,
        0x2588_5d85,
        0x8571_ff18,
    ],
    ONE_MONTGOMERY,
];

/// 1 in Montgomery form mod p: 2²⁵⁶ mod p.
const ONE_MONTGOMERY: Limbs = [
    1,
    0,
    0,
    0xffff_ffff,
    0xffff_ffff,
    0xffff_ffff,
    0xffff_fffe,
    0,
];

/// R² mod p (R = 2²⁵⁶): a coordinate times it, through the Montgomery product, is in
/// Montgomery form. The tests check it against 256 doublings of R.
const R2_P: Limbs = [
    3,
    0,
    0xffff_ffff,
    0xffff_fffb,
    0xffff_fffe,
    0xffff_ffff,
    0xffff_fffd,
    4,
];

/// (p + 1) / 4: since p ≡ 3 mod 4, a^((p+1)/4) is a square root of a when a has one.
const SQRT_EXP: Limbs = [
    0,
    0,
    0x4000_0000,
    0,
    0,
    0x4000_0000,
    0xc000_0000,
    0x3fff_ffff,
];

/// `a += b`; whether it carried out.
fn adc(a: &mut Limbs, b: &Limbs) -> bool {
    let mut carry = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let s = u64::from(*x) + u64::from(*y) + carry;
        *x = s as u32;
        carry = s >> 32;
    }
    carry != 0
}

/// `a -= b`; whether it borrowed (b > a).
fn sbb(a: &mut Limbs, b: &Limbs) -> bool {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x).wrapping_sub(u64::from(*y) + borrow);
        *x = d as u32;
        borrow = d >> 63;
    }
    borrow != 0
}

/// Whether a < b.
fn less(a: &Limbs, b: &Limbs) -> bool {
    let mut t = *a;
    sbb(&mut t, b)
}

/// Bit `i` of `x` (0 to 255): a scalar walked bit by bit in one loop, not one per limb and bit.
fn bit(x: &Limbs, i: usize) -> u32 {
    // The limb index masked to the eight limbs (i is below 256): no bounds check, no panic.
    x[i / 32 % 8] >> (i % 32) & 1
}

/// Whether `x` is 0: its limbs ORed together, not a comparison with a zero constant in
/// flash through the memory functions.
fn is_zero(x: &Limbs) -> bool {
    x.iter().fold(0, |acc, &w| acc | w) == 0
}

/// Whether `x` is in [1, n-1], as a signature's r and s must be.
fn is_scalar(x: &Limbs) -> bool {
    !is_zero(x) && less(x, &N.m)
}

/// A big-endian 32-byte string as limbs: a word per four bytes, the last four the lowest.
fn from_be(bytes: &[u8; 32]) -> Limbs {
    core::array::from_fn(|i| {
        bytes
            .get(28 - 4 * i..)
            .and_then(<[u8]>::first_chunk)
            .map_or(0, |w| u32::from_be_bytes(*w))
    })
}

impl Modulus {
    /// `r` (plus 2²⁵⁶ if `carry`), known to be below 2m, reduced below m in place.
    fn reduce(&self, r: &mut Limbs, carry: bool) {
        // r - m is negative only if r < m and nothing carried: then add m back.
        if sbb(r, &self.m) && !carry {
            adc(r, &self.m);
        }
    }

    fn add(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let mut r = *a;
        let carry = adc(&mut r, b);
        self.reduce(&mut r, carry);
        r
    }

    fn sub(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let mut r = *a;
        if sbb(&mut r, b) {
            adc(&mut r, &self.m);
        }
        r
    }

    /// a·b·R⁻¹ mod m (CIOS: each word of b is multiplied in and one word reduced away in the
    /// same pass). `a` may be any 256-bit number as long as `b` < m: the result is below 2m
    /// before the last subtraction either way.
    fn mul(&self, a: &Limbs, b: &Limbs) -> Limbs {
        // t + 2²⁵⁶·top < a + m < 2²⁵⁷ throughout, so `top` is 0 or 1. The result is built
        // in `t` itself: no copy at the end.
        let mut t = ZERO;
        let mut top = 0u32;
        for &bi in b {
            let mut carry_ab = 0u64;
            let mut carry_qm = 0u64;
            let mut q = 0u32;
            for j in 0..8 {
                let s = u64::from(t[j]) + u64::from(a[j]) * u64::from(bi) + carry_ab;
                carry_ab = s >> 32;
                if j == 0 {
                    // The multiple of m that clears the lowest word.
                    q = (s as u32).wrapping_mul(self.inv);
                }
                let s = (s & 0xffff_ffff) + u64::from(q) * u64::from(self.m[j]) + carry_qm;
                carry_qm = s >> 32;
                if j > 0 {
                    t[j - 1] = s as u32;
                }
            }
            let s = u64::from(top) + carry_ab + carry_qm;
            t[7] = s as u32;
            top = (s >> 32) as u32;
        }
        self.reduce(&mut t, top != 0);
        t
    }

    /// a·R mod m (into Montgomery form), by doubling 256 times: the tests' conversion, which
    /// checks the constants the device converts with ([`R2_P`]).
    #[cfg(test)]
    fn to_montgomery(&self, a: &Limbs) -> Limbs {
        let mut r = *a;
        for _ in 0..256 {
            r = self.add(&r, &r);
        }
        r
    }

    /// a^e, a and the result in Montgomery form (square and multiply from the top bit).
    fn pow(&self, a: &Limbs, e: &Limbs) -> Limbs {
        // 1 in Montgomery form: 2²⁵⁶ mod m = 2²⁵⁶ - m (m > 2²⁵⁵), by wrapping around.
        let mut r = ZERO;
        sbb(&mut r, &self.m);
        // Two half-steps a bit, the square (odd j) and the product with a (even j, where
        // the bit is set), through one call of the product.
        for j in (0..512).rev() {
            let b = if j % 2 == 1 {
                r
            } else if bit(e, j / 2) == 1 {
                *a
            } else {
                continue;
            };
            r = self.mul(&r, &b);
        }
        r
    }

    /// a⁻¹ = a^(m-2) (Fermat; m is prime), in Montgomery form; 0 for 0.
    fn invert(&self, a: &Limbs) -> Limbs {
        self.pow_below_m(a, 2)
    }

    /// a^(m-k) = a^(1-k) (Fermat; m is prime), in Montgomery form: a⁻¹ for k = 2, a⁻² for
    /// k = 3; 0 for 0.
    fn pow_below_m(&self, a: &Limbs, k: u32) -> Limbs {
        let mut e = self.m;
        // The lowest word of p and of n is above 3: no borrow.
        e[0] = e[0].wrapping_sub(k);
        self.pow(a, &e)
    }
}

/// A point in Jacobian coordinates [X, Y, Z] (x = X/Z², y = Y/Z³), Montgomery form mod p;
/// Z = 0 is the point at infinity.
type Point = [Limbs; 3];

// The point formulas are short programs over registers: the accumulator A, temporaries and
// the addend B in one register file (B copied in by the addition, so that an operand is one
// index into the file, not a choice between the file and the addend). A step in a table
// takes less flash than a call with four arguments in code, and the file bounds the stack.
const AX: u8 = 0;
const AY: u8 = 1;
const AZ: u8 = 2;
const T0: u8 = 3;
const T1: u8 = 4;
const T2: u8 = 5;
/// B's coordinates, copied in by the addition.
const BX: u8 = 6;
const BY: u8 = 7;
const BZ: u8 = 8;
type Regs = [Limbs; 9];

/// A step's operation, in its top nibble.
const OP_ADD: u16 = 0;
const OP_SUB: u16 = 1;
const OP_MUL: u16 = 2;

/// `dst = a op b`, mod p: the op and the three registers in the nibbles of a half-word (two
/// bytes a step in the tables, not four).
#[derive(Clone, Copy)]
struct Step(u16);

impl Step {
    const fn new(op: u16, dst: u8, a: u8, b: u8) -> Self {
        Step(op << 12 | (dst as u16) << 8 | (a as u16) << 4 | b as u16)
    }

    fn op(self) -> u16 {
        self.0 >> 12
    }

    fn dst(self) -> usize {
        usize::from(self.0 >> 8 & 0xf)
    }

    fn a(self) -> usize {
        usize::from(self.0 >> 4 & 0xf)
    }

    fn b(self) -> usize {
        usize::from(self.0 & 0xf)
    }
}

const fn add(dst: u8, a: u8, b: u8) -> Step {
    Step::new(OP_ADD, dst, a, b)
}

const fn sub(dst: u8, a: u8, b: u8) -> Step {
    Step::new(OP_SUB, dst, a, b)
}

const fn mul(dst: u8, a: u8, b: u8) -> Step {
    Step::new(OP_MUL, dst, a, b)
}

/// A = 2A, for a = -3 (dbl-2001-b). Infinity doubles to infinity (Z stays 0); no point of
/// P-256 has Y = 0, the group's order being odd.
const DOUBLE: [Step; 22] = [
    mul(T0, AZ, AZ), // delta = Z²
    sub(T1, AX, T0),
    add(T0, AX, T0),
    mul(T1, T1, T0), // (X - delta)(X + delta) = X² - Z⁴
    add(T0, T1, T1),
    add(T1, T0, T1), // alpha = 3X² - 3Z⁴, the tangent's slope with a = -3
    mul(AZ, AY, AZ),
    add(AZ, AZ, AZ), // Z3 = 2·Y·Z
    mul(AY, AY, AY), // gamma = Y²
    mul(T0, AX, AY), // beta = X·Y²
    add(T0, T0, T0),
    add(T0, T0, T0), // 4·beta
    mul(AX, T1, T1),
    add(T2, T0, T0),
    sub(AX, AX, T2), // X3 = alpha² - 8·beta
    sub(T0, T0, AX),
    mul(T0, T1, T0), // alpha(4·beta - X3)
    mul(AY, AY, AY),
    add(AY, AY, AY),
    add(AY, AY, AY),
    add(AY, AY, AY), // 8·gamma²
    sub(AY, T0, AY), // Y3 = alpha(4·beta - X3) - 8·gamma²
];

/// The first half of A + B (add-1998-cmo-2): U1 in AX, S1 in AY, H = U2 - U1 in T1,
/// R = S2 - S1 in T0. A's Z and B are left as they are.
const ADD_HEAD: [Step; 10] = [
    mul(T0, BZ, BZ),
    mul(AX, AX, T0), // U1 = Xa·Zb²
    mul(T0, T0, BZ),
    mul(AY, AY, T0), // S1 = Ya·Zb³
    mul(T0, AZ, AZ),
    mul(T1, BX, T0),
    sub(T1, T1, AX), // H = Xb·Za² - U1
    mul(T0, T0, AZ),
    mul(T0, BY, T0),
    sub(T0, T0, AY), // R = Yb·Za³ - S1
];

/// The second half, for H ≠ 0: A = A + B.
const ADD_TAIL: [Step; 13] = [
    mul(AZ, AZ, BZ),
    mul(AZ, AZ, T1), // Z3 = Za·Zb·H
    mul(T2, T1, T1), // H²
    mul(T1, T1, T2), // H³
    mul(T2, AX, T2), // V = U1·H²
    mul(AX, T0, T0),
    sub(AX, AX, T1),
    sub(AX, AX, T2),
    sub(AX, AX, T2), // X3 = R² - H³ - 2V
    sub(T2, T2, AX),
    mul(T2, T0, T2), // R(V - X3)
    mul(T1, AY, T1), // S1·H³
    sub(AY, T2, T1), // Y3 = R(V - X3) - S1·H³
];

fn run(r: &mut Regs, program: &[Step]) {
    for &step in program {
        let v = {
            // Every index in the tables is a register; `get` keeps the bounds checks from
            // being panics.
            let (Some(x), Some(y)) = (r.get(step.a()), r.get(step.b())) else {
                continue;
            };
            match step.op() {
                OP_ADD => P.add(x, y),
                OP_SUB => P.sub(x, y),
                _ => P.mul(x, y),
            }
        };
        if let Some(d) = r.get_mut(step.dst()) {
            *d = v;
        }
    }
}

/// A = p.
fn load(r: &mut Regs, p: &Point) {
    for (reg, c) in r.iter_mut().zip(p) {
        *reg = *c;
    }
}

/// A = A + B for any two points: infinity on either side, A = B (a doubling), A = -B
/// (infinity).
fn add_points(r: &mut Regs, b: &Point) {
    if is_zero(&r[2]) {
        load(r, b);
        return;
    }
    if is_zero(&b[2]) {
        return;
    }
    for (reg, c) in r.iter_mut().skip(usize::from(BX)).zip(b) {
        *reg = *c;
    }
    run(r, &ADD_HEAD);
    if is_zero(&r[usize::from(T1)]) {
        // The same x: the same point, or its negative (the sum is infinity). The head has
        // overwritten A's X and Y, but A is B then.
        if is_zero(&r[usize::from(T0)]) {
            load(r, b);
            run(r, &DOUBLE);
        } else {
            r[2] = ZERO;
        }
        return;
    }
    run(r, &ADD_TAIL);
}

/// A = u1·G + u2·q in one pass over the bits of both scalars (Shamir's trick): a doubling
/// per bit, then an addition of G, q or G + q where the bits say so.
fn mul_add(r: &mut Regs, u1: &Limbs, u2: &Limbs, q: &Point) {
    load(r, &G);
    add_points(r, q);
    // A's coordinates, one at a time (a loop of copies is smaller than three of them).
    let gq: Point = core::array::from_fn(|i| r[i]);
    r[2] = ZERO;
    for i in (0..256).rev() {
        run(r, &DOUBLE);
        // The two bits as one number: one jump on it, not a compare of each.
        let term = match bit(u1, i) | bit(u2, i) << 1 {
            0 => continue,
            1 => &G,
            2 => q,
            _ => &gq,
        };
        add_points(r, term);
    }
}

/// x³ - 3x + b for x in Montgomery form: y² on the curve.
fn curve_rhs(x: &Limbs) -> Limbs {
    let mut rhs = P.mul(&P.mul(x, x), x);
    // -3x as three subtractions in a loop: one call in the code, not three.
    for _ in 0..3 {
        rhs = P.sub(&rhs, x);
    }
    P.add(&rhs, &B_MONTGOMERY)
}

/// Why bytes are not a P-256 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Neither 65 bytes starting 0x04 (uncompressed) nor 33 bytes starting 0x02 or 0x03
    /// (compressed), the SEC1 encodings.
    Encoding,
    /// A coordinate is not below p, or the point is not on the curve.
    NotOnCurve,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Encoding => "not a SEC1 P-256 public key encoding",
            KeyError::NotOnCurve => "not a point on the P-256 curve",
        })
    }
}

/// A P-256 public key that checks ECDSA signatures over a SHA-256 digest: the software
/// [`SignatureCheck`](super::SignatureCheck). Held as its affine coordinates (Montgomery form),
/// 64 bytes; validated once, when it is made from its SEC1 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    x: Limbs,
    y: Limbs,
}

impl VerifyingKey {
    /// A key from its SEC1 encoding: `04 || x || y` (65 bytes) or `02/03 || x` (33 bytes, the
    /// tag giving y's parity). Refuses coordinates not below p and points off the curve (every
    /// point on it is in the group: the cofactor is 1).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(KeyError::Encoding);
        };
        let compressed = match (tag, rest.len()) {
            (0x04, 64) => false,
            (0x02 | 0x03, 32) => true,
            _ => return Err(KeyError::Encoding),
        };
        let Some((xb, yb)) = rest.split_first_chunk() else {
            return Err(KeyError::Encoding);
        };
        let x = from_be(xb);
        // A compressed key has no y bytes: 0 until y is worked out.
        let y = yb.first_chunk().map_or(ZERO, from_be);
        if !less(&x, &P.m) || !less(&y, &P.m) {
            return Err(KeyError::NotOnCurve);
        }
        let x = P.mul(&x, &R2_P);
        let rhs = curve_rhs(&x);
        let y = if compressed {
            let y = P.pow(&rhs, &SQRT_EXP);
            // y or p - y: the one whose parity the tag gives (y = 0 has no solution here).
            if P.mul(&y, &ONE)[0] & 1 == u32::from(tag & 1) {
                y
            } else {
                P.sub(&ZERO, &y)
            }
        } else {
            P.mul(&y, &R2_P)
        };
        // For a compressed key this also refuses an x whose rhs has no square root.
        if P.mul(&y, &y) != rhs {
            return Err(KeyError::NotOnCurve);
        }
        Ok(VerifyingKey { x, y })
    }

    /// Whether `signature` (r || s, big-endian) is valid for the 32-byte `digest` under this
    /// key. r and s must be in [1, n-1].
    // Out of line: its frame then does not add to that of the caller's hashing.
    #[inline(never)]
    pub fn verify_prehash(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        let (Some(rb), Some(sb)) = (signature.first_chunk(), signature.last_chunk()) else {
            return false;
        };
        let r = from_be(rb);
        // In a block: s and w are not kept on the stack through the pass.
        let (u1, u2) = {
            let s = from_be(sb);
            if !is_scalar(&r) || !is_scalar(&s) {
                return false;
            }
            // w = s⁻¹ in Montgomery form, so that multiplying a plain number by it gives a
            // plain number: u1 = e·w mod n, u2 = r·w mod n. The digest is taken as an integer
            // (256 bits, n's length, so nothing is truncated); mul reduces it mod n along the
            // way. Inverted as it is, s stands for s·R⁻¹ in Montgomery form, whose inverse
            // there is s⁻¹·R² (R^(n-1) = 1); one product with 1 takes an R off.
            let w = N.mul(&N.invert(&s), &ONE);
            (N.mul(&from_be(digest), &w), N.mul(&r, &w))
        };

        let mut sum: Regs = [ZERO; 9];
        // Q with Z = 1 (G's Z).
        mul_add(&mut sum, &u1, &u2, &[self.x, self.y, G[2]]);
        let [x, _, z, ..] = &sum;
        if is_zero(z) {
            return false;
        }
        // x = X/Z², out of Montgomery form, then mod n: x < p < 2n, one subtraction at most.
        // Z⁻² straight from one power (Z^(p-3)), not the inverse squared.
        let mut x = P.mul(&P.mul(x, &P.pow_below_m(z, 3)), &ONE);
        N.reduce(&mut x, false);
        x == r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(a: &Limbs) -> Limbs {
        P.mul(a, &ONE)
    }

    const INFINITY: Point = [ZERO; 3];

    /// The curve's b (SEC 2, FIPS 186).
    const B: Limbs = [
        0x27d2_604b,
        0x3bce_3c3e,
        0xcc53_b0f6,
        0x651d_06b0,
        0x7698_86bc,
        0xb3eb_bd55,
        0xaa3a_93e7,
        0x5ac6_35d8,
    ];

    /// The generator's standard coordinates (SEC 2, FIPS 186).
    const GX: Limbs = [
        0xd898_c296,
        0xf4a1_3945,
        0x2deb_33a0,
        0x7703_7d81,
        0x63a4_40f2,
        0xf8bc_e6e5,
        0xe12c_4247,
        0x6b17_d1f2,
    ];
    const GY: Limbs = [
        0x37bf_51f5,
        0xcbb6_4068,
        0x6b31_5ece,
        0x2bce_3357,
        0x7c0f_9e16,
        0x8ee7_eb4a,
        0xfe1a_7f9b,
        0x4fe3_42e2,
    ];

    fn affine([x, y, z]: &Point) -> (Limbs, Limbs) {
        let zi = P.invert(z);
        let zi2 = P.mul(&zi, &zi);
        (plain(&P.mul(x, &zi2)), plain(&P.mul(y, &P.mul(&zi2, &zi))))
    }

    fn generator() -> Point {
        [
            P.to_montgomery(&GX),
            P.to_montgomery(&GY),
            P.to_montgomery(&ONE),
        ]
    }

    fn negate([x, y, z]: &Point) -> Point {
        [*x, P.sub(&ZERO, y), *z]
    }

    /// The same point with Z scaled by `l` (X by l², Y by l³).
    fn rescale([x, y, z]: &Point, l: &Limbs) -> Point {
        let l = P.to_montgomery(l);
        let l2 = P.mul(&l, &l);
        [P.mul(x, &l2), P.mul(y, &P.mul(&l2, &l)), P.mul(z, &l)]
    }

    fn double(a: &Point) -> Point {
        let mut r: Regs = [ZERO; 9];
        load(&mut r, a);
        run(&mut r, &DOUBLE);
        [r[0], r[1], r[2]]
    }

    fn shamir(u1: &Limbs, u2: &Limbs, q: &Point) -> Point {
        let mut r: Regs = [ZERO; 9];
        mul_add(&mut r, u1, u2, q);
        [r[0], r[1], r[2]]
    }

    fn sum(a: &Point, b: &Point) -> Point {
        let mut r: Regs = [ZERO; 9];
        load(&mut r, a);
        add_points(&mut r, b);
        [r[0], r[1], r[2]]
    }

    #[test]
    fn montgomery_constants() {
        for m in [&P, &N] {
            // inv · m ≡ -1 mod 2³².
            assert_eq!(m.inv.wrapping_mul(m.m[0]), u32::MAX);
            let two = m.to_montgomery(&[2, 0, 0, 0, 0, 0, 0, 0]);
            let x = m.to_montgomery(&[0x1234_5678, 9, 8, 7, 6, 5, 4, 3]);
            assert_eq!(m.mul(&m.invert(&x), &x), m.to_montgomery(&ONE));
            // The verifier's Z⁻², one power, is the inverse squared.
            let xi = m.invert(&x);
            assert_eq!(m.pow_below_m(&x, 3), m.mul(&xi, &xi));
            assert_eq!(
                m.mul(&two, &two),
                m.to_montgomery(&[4, 0, 0, 0, 0, 0, 0, 0])
            );
            assert_eq!(m.invert(&ZERO), ZERO);
        }
        // m - 1 squared is 1.
        let mut minus_one = P.m;
        minus_one[0] -= 1;
        let a = P.to_montgomery(&minus_one);
        assert_eq!(plain(&P.mul(&a, &a)), ONE);
    }

    #[test]
    fn generator_is_on_the_curve() {
        assert_eq!(generator(), G);
        assert_eq!(ONE_MONTGOMERY, P.to_montgomery(&ONE));
        assert_eq!(B_MONTGOMERY, P.to_montgomery(&B));
        assert_eq!(R2_P, P.to_montgomery(&ONE_MONTGOMERY));
        let x = [0x1234_5678, 9, 8, 7, 6, 5, 4, 3];
        assert_eq!(P.mul(&x, &R2_P), P.to_montgomery(&x));
        // The verifier's s⁻¹ in Montgomery form, from s as it is.
        assert_eq!(N.mul(&N.invert(&x), &ONE), N.invert(&N.to_montgomery(&x)));
        let g = generator();
        assert_eq!(P.mul(&g[1], &g[1]), curve_rhs(&g[0]));
    }

    #[test]
    fn additions_at_infinity_and_of_equal_or_opposite_points() {
        let g = generator();
        let g2 = double(&g);
        assert_eq!(sum(&INFINITY, &g)[2], g[2]);
        assert_eq!(affine(&sum(&INFINITY, &g)), affine(&g));
        assert_eq!(affine(&sum(&g, &INFINITY)), affine(&g));
        assert_eq!(sum(&INFINITY, &INFINITY)[2], ZERO);
        assert_eq!(double(&INFINITY)[2], ZERO);
        assert_eq!(sum(&g, &negate(&g))[2], ZERO);
        // The same point in other coordinates still counts as equal, or opposite.
        let g_other = rescale(&g, &[5, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(affine(&sum(&g, &g_other)), affine(&g2));
        assert_eq!(sum(&g_other, &negate(&g))[2], ZERO);
        let g3 = sum(&g2, &g);
        assert_eq!(affine(&sum(&g, &g2)), affine(&g3));
        assert_eq!(affine(&sum(&g2, &g2)), affine(&double(&g2)));
        assert_eq!(
            sum(&g3, &negate(&rescale(&g3, &[7, 0, 0, 0, 0, 0, 0, 0])))[2],
            ZERO
        );
        // 2G, from the p256 crate's multiples of G.
        let g2_x = from_be(
            &hex::decode("7cf27b188d034f7e8a52380304b51ac3c08969e277f21b35a60b48fc47669978")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(affine(&g2).0, g2_x);
        // Every result stays on the curve.
        for pt in [g2, g3, sum(&g3, &g_other)] {
            let (x, y) = affine(&pt);
            let (x, y) = (P.to_montgomery(&x), P.to_montgomery(&y));
            assert_eq!(P.mul(&y, &y), curve_rhs(&x));
        }
    }

    /// x and y of k·G, from the p256 crate.
    fn oracle_multiple(k: &Limbs) -> (Limbs, Limbs) {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::elliptic_curve::PrimeField;
        let mut bytes = [0u8; 32];
        for (chunk, limb) in bytes.rchunks_exact_mut(4).zip(k) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        let k = p256::Scalar::from_repr(bytes.into()).unwrap();
        let point = (p256::ProjectivePoint::GENERATOR * k).to_affine();
        let encoded = point.to_encoded_point(false);
        let coordinate = |c: Option<&[u8]>| from_be(c.unwrap().try_into().unwrap());
        (
            coordinate(encoded.x().map(|x| x.as_slice())),
            coordinate(encoded.y().map(|y| y.as_slice())),
        )
    }

    #[test]
    fn shamir_pass_doubles_when_the_sum_meets_its_own_term() {
        // q = G, u1 = 0b11 << 254, u2 = 0b01 << 254: after the top bit the sum is G, doubled
        // 2G, and the next term is G + q = 2G, so the addition must double.
        let g = generator();
        let mut u1 = ZERO;
        u1[7] = 0xc000_0000;
        let mut u2 = ZERO;
        u2[7] = 0x4000_0000;
        let sum = shamir(&u1, &u2, &g);
        // (3 + 1)·2²⁵⁴ = 2²⁵⁶ ≡ 2²⁵⁶ - n (mod n).
        let mut k = ZERO;
        sbb(&mut k, &N.m);
        assert_eq!(affine(&sum), oracle_multiple(&k));
    }

    #[test]
    fn shamir_pass_reaches_infinity_and_leaves_it() {
        // q = -2G, u1 = 2²⁵⁵, u2 = 2²⁵⁴: G doubled is 2G, plus q is infinity, and stays there.
        let q = negate(&double(&generator()));
        let mut u1 = ZERO;
        u1[7] = 0x8000_0000;
        let mut u2 = ZERO;
        u2[7] = 0x4000_0000;
        assert_eq!(shamir(&u1, &u2, &q)[2], ZERO);
        // With u2 = 2²⁵⁴ + 1 it ends at q itself.
        u2[0] = 1;
        assert_eq!(affine(&shamir(&u1, &u2, &q)), affine(&q));
        // G + q = -G in the table; u1 = u2 = 1 picks it.
        let one_bit = ONE;
        let mut minus_one = N.m;
        minus_one[0] -= 1;
        assert_eq!(
            affine(&shamir(&one_bit, &one_bit, &q)),
            oracle_multiple(&minus_one)
        );
    }

    #[test]
    fn shamir_pass_matches_the_oracle() {
        let q = double(&double(&double(&generator()))); // 8G
        let u1 = [
            0x1357_9bdf,
            0x2468_ace0,
            7,
            0,
            0xffff_ffff,
            1,
            2,
            0x8000_0003,
        ];
        let u2 = [0xdead_beef, 0, 0, 0x0bad_f00d, 5, 0, 0, 0x0123_4567];
        // u1 + 8·u2 mod n, with the crate's own arithmetic.
        let mut k = ZERO;
        for _ in 0..8 {
            k = N.add(&k, &u2);
        }
        let mut u1_mod_n = u1;
        N.reduce(&mut u1_mod_n, false);
        let k = N.add(&k, &u1_mod_n);
        assert_eq!(affine(&shamir(&u1, &u2, &q)), oracle_multiple(&k));
    }
}
