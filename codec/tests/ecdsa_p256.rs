//! The codec's P-256 verifier against the `p256` crate as oracle: random keys and digests,
//! tampered signatures and keys, out-of-range scalars, SEC1 encodings, published vectors,
//! and the rare cases (a digest above n, x(R) above n, R at infinity) built on purpose.

use fuota_codec::patch::{KeyError, SignatureCheck, VerifyingKey};
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, EncodedPoint, ProjectivePoint, Scalar};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// n, the group order, big-endian.
const N: [u8; 32] = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
/// p, the field prime, big-endian.
const P: [u8; 32] = hex32("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");

const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not hex"),
        }
    }
    let s = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// Big-endian a + b (mod 2²⁵⁶) and whether it carried.
fn add_be(a: &[u8; 32], b: &[u8; 32]) -> ([u8; 32], bool) {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    (out, carry != 0)
}

fn small(v: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[31] = v;
    out
}

fn uncompressed(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn compressed(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(true)
        .as_bytes()
        .to_vec()
}

fn ours(sec1: &[u8]) -> VerifyingKey {
    VerifyingKey::from_sec1_bytes(sec1).expect("the oracle's key parses")
}

fn sig_bytes(r: &[u8; 32], s: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(r);
    out[32..].copy_from_slice(s);
    out
}

/// The oracle's verdict on a (digest, r || s) pair; false where it refuses the encoding.
fn oracle_verifies(key: &[u8], digest: &[u8; 32], sig: &[u8; 64]) -> bool {
    let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(key) else {
        return false;
    };
    Signature::from_slice(sig).is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
}

fn sign(key: &SigningKey, digest: &[u8; 32]) -> [u8; 64] {
    let sig: Signature = key.sign_prehash(digest).expect("signing a prehash");
    sig.to_bytes().into()
}

#[test]
fn random_signatures_verify_and_any_flipped_bit_fails() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed_2560);
    for case in 0..300 {
        let sk = SigningKey::random(&mut rng);
        let digest: [u8; 32] = rng.gen();
        let sig = sign(&sk, &digest);
        let (full, short) = (uncompressed(&sk), compressed(&sk));
        let key = ours(&full);
        assert_eq!(
            key,
            ours(&short),
            "case {case}: compressed and uncompressed differ"
        );
        assert!(key.verify_prehash(&digest, &sig), "case {case}");
        assert!(key.verify_digest(&digest, &sig), "case {case}");

        // ECDSA's other valid s: n - s.
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        let mut n_minus_s = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
            n_minus_s[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        let mut r = [0u8; 32];
        r.copy_from_slice(&sig[..32]);
        let other = sig_bytes(&r, &n_minus_s);
        assert!(oracle_verifies(&full, &digest, &other));
        assert!(key.verify_prehash(&digest, &other), "case {case}: n - s");

        let bit = rng.gen_range(0..256);
        let mut d = digest;
        d[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !key.verify_prehash(&d, &sig),
            "case {case}: digest bit {bit}"
        );

        let bit = rng.gen_range(0..512);
        let mut tampered = sig;
        tampered[bit / 8] ^= 1 << (bit % 8);
        assert!(!oracle_verifies(&full, &digest, &tampered));
        assert!(
            !key.verify_prehash(&digest, &tampered),
            "case {case}: signature bit {bit}"
        );

        // A flipped coordinate bit: the same parse verdict as the oracle's, and when the key
        // is still a point (a compressed x often is), a key that refuses the signature.
        for enc in [&full, &short] {
            let bit = rng.gen_range(8..enc.len() * 8);
            let mut k = enc.clone();
            k[bit / 8] ^= 1 << (bit % 8);
            let theirs = p256::ecdsa::VerifyingKey::from_sec1_bytes(&k);
            match VerifyingKey::from_sec1_bytes(&k) {
                Ok(other) => {
                    assert!(
                        theirs.is_ok(),
                        "case {case}: we accept what the oracle refuses"
                    );
                    assert!(
                        !other.verify_prehash(&digest, &sig),
                        "case {case}: key bit {bit}"
                    );
                }
                Err(e) => {
                    assert!(theirs.is_err(), "case {case}: we refuse the oracle's key");
                    assert_eq!(e, KeyError::NotOnCurve);
                }
            }
        }
    }
}

#[test]
fn scalars_outside_one_to_n_minus_one_fail() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let sk = SigningKey::random(&mut rng);
    let full = uncompressed(&sk);
    let key = ours(&full);
    let digest: [u8; 32] = rng.gen();
    let sig = sign(&sk, &digest);
    let mut r = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    assert!(key.verify_prehash(&digest, &sig_bytes(&r, &s)));

    let zero = [0u8; 32];
    let ff = [0xff; 32];
    let (n_plus_1, _) = add_be(&N, &small(1));
    for bad in [zero, N, n_plus_1, P, ff] {
        for sig in [sig_bytes(&bad, &s), sig_bytes(&r, &bad)] {
            assert!(!oracle_verifies(&full, &digest, &sig));
            assert!(!key.verify_prehash(&digest, &sig));
        }
    }

    // s + n stands for the same residue as s, so it would verify if it were reduced rather
    // than refused. It fits in 256 bits only for s < 2²⁵⁶ - n: build signatures with a
    // small s (the key solved for; see key_for).
    for k in 1..=8u8 {
        let point =
            (ProjectivePoint::GENERATOR * Scalar::from(u64::from(k) * 1_000_003)).to_affine();
        let x: [u8; 32] = point.to_encoded_point(false).x().unwrap()[..]
            .try_into()
            .unwrap();
        let r = reduced(&x);
        let s = small(k);
        let key = key_for(&point, &r, &scalar(&s), &reduced(&digest));
        let r: [u8; 32] = r.to_repr().into();
        assert!(ours(&key).verify_prehash(&digest, &sig_bytes(&r, &s)));
        let (s_plus_n, carry) = add_be(&s, &N);
        assert!(!carry);
        let sig = sig_bytes(&r, &s_plus_n);
        assert!(!oracle_verifies(&key, &digest, &sig));
        assert!(!ours(&key).verify_prehash(&digest, &sig));
    }
}

#[test]
fn sec1_encodings_that_are_not_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let sk = SigningKey::random(&mut rng);
    let full = uncompressed(&sk);
    let short = compressed(&sk);

    let mut cases: Vec<(Vec<u8>, KeyError)> = Vec::new();
    for len in [0, 1, 2, 32, 34, 64, 66, 97] {
        cases.push((
            std::iter::once(4)
                .chain(full[1..].iter().copied().cycle())
                .take(len)
                .collect(),
            KeyError::Encoding,
        ));
    }
    for tag in [0x00, 0x01, 0x05, 0x06, 0x07, 0x44, 0xff] {
        let mut k = full.clone();
        k[0] = tag;
        cases.push((k, KeyError::Encoding));
        let mut k = short.clone();
        k[0] = tag;
        cases.push((k, KeyError::Encoding));
    }
    // The right tags with the other form's length; the point at infinity's one byte.
    let mut k = short.clone();
    k[0] = 4;
    cases.push((k, KeyError::Encoding));
    let mut k = full.clone();
    k[0] = 2;
    cases.push((k, KeyError::Encoding));
    cases.push((vec![0], KeyError::Encoding));
    // Off the curve: y + 1; coordinates at or above p.
    let mut k = full.clone();
    let (y1, _) = add_be(k[33..].try_into().unwrap(), &small(1));
    k[33..].copy_from_slice(&y1);
    cases.push((k, KeyError::NotOnCurve));
    for big in [P, add_be(&P, &small(1)).0, [0xff; 32]] {
        let mut k = full.clone();
        k[1..33].copy_from_slice(&big);
        cases.push((k, KeyError::NotOnCurve));
        let mut k = full.clone();
        k[33..].copy_from_slice(&big);
        cases.push((k, KeyError::NotOnCurve));
        let mut k = short.clone();
        k[1..].copy_from_slice(&big);
        cases.push((k, KeyError::NotOnCurve));
    }
    // y replaced by p - y is still a key (the negative point), not a refusal; it is the
    // compressed key with the other parity tag.
    let mut neg = full.clone();
    let mut y = [0u8; 32];
    y.copy_from_slice(&full[33..]);
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P[i]) - i16::from(y[i]) - borrow;
        neg[33 + i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    let neg_key = ours(&neg);
    let mut flipped = short.clone();
    flipped[0] ^= 1;
    assert_eq!(neg_key, ours(&flipped));
    assert_ne!(neg_key, ours(&full));

    // Compressed x values with no point: x³ - 3x + b not a square.
    let mut found = 0;
    for v in 0..=255u8 {
        let mut k = vec![2];
        k.extend_from_slice(&small(v));
        if p256::ecdsa::VerifyingKey::from_sec1_bytes(&k).is_err() {
            cases.push((k.clone(), KeyError::NotOnCurve));
            k[0] = 3;
            cases.push((k, KeyError::NotOnCurve));
            found += 1;
        } else {
            // The oracle's point, the same key from both encodings.
            let theirs = p256::ecdsa::VerifyingKey::from_sec1_bytes(&k).unwrap();
            assert_eq!(
                ours(&k),
                ours(theirs.to_encoded_point(false).as_bytes()),
                "x = {v}"
            );
        }
    }
    assert!(found > 50, "about half of all x have no point");

    for (bytes, want) in &cases {
        // The oracle takes 0x05 and 33 bytes as a "compact" point (an IETF draft, not SEC1);
        // the device refuses it.
        let compact = bytes.len() == 33 && bytes[0] == 5;
        assert!(
            compact || p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).is_err(),
            "the oracle accepts {bytes:02x?}"
        );
        assert_eq!(
            VerifyingKey::from_sec1_bytes(bytes),
            Err(*want),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn digests_at_and_above_n_are_reduced() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let (n_plus_1, _) = add_be(&N, &small(1));
    let (n_plus_big, carry) = add_be(
        &N,
        &hex32("00000000ffffffff00000000000000004319055258e8617b0c46353d039cdaae"),
    );
    assert!(!carry);
    for digest in [N, n_plus_1, n_plus_big, [0xff; 32], [0; 32], small(1)] {
        for _ in 0..4 {
            let sk = SigningKey::random(&mut rng);
            let full = uncompressed(&sk);
            let sig = sign(&sk, &digest);
            assert!(oracle_verifies(&full, &digest, &sig));
            assert!(ours(&full).verify_prehash(&digest, &sig), "{digest:02x?}");
        }
    }
    // The digest is an integer mod n: 1 and n + 1 are the same message, 0 and n too.
    let sk = SigningKey::random(&mut rng);
    let key = ours(&uncompressed(&sk));
    let sig = sign(&sk, &small(1));
    assert!(key.verify_prehash(&n_plus_1, &sig));
    assert!(!key.verify_prehash(&small(2), &sig));
    let sig = sign(&sk, &[0; 32]);
    assert!(key.verify_prehash(&N, &sig));
}

/// NIST FIPS 186-4 SigGen (P-256, SHA-256) vectors: d, Qx, Qy, the SHA-256 of Msg, r, s.
const NIST: [[&str; 6]; 2] = [
    [
        "519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464",
        "1ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83",
        "ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca9",
        "44acf6b7e36c1342c2c5897204fe09504e1e2efb1a900377dbc4e7a6a133ec56",
        "f3ac8061b514795b8843e3d6629527ed2afd6b1f6a555a7acabb5e6f79c8c2ac",
        "8bf77819ca05a6b2786c76262bf7371cef97b218e96f175a3ccdda2acc058903",
    ],
    [
        "0f56db78ca460b055c500064824bed999a25aaf48ebb519ac201537b85479813",
        "e266ddfdc12668db30d4ca3e8f7749432c416044f2d2b8c10bf3d4012aeffa8a",
        "bfa86404a2e9ffe67d47c587ef7a97a7f456b863b4d02cfc6928973ab5b1cb39",
        "9b2db89cb0e8fa3cc7608b4d6cc1dec0114e0b9ff4080bea12b134f489ab2bbc",
        "976d3a4e9d23326dc0baa9fa560b7c4e53f42864f508483a6473b6a11079b2db",
        "1b766e9ceb71ba6c01dcd46e0af462cd4cfa652ae5017d4555b8eeefe36e1932",
    ],
];

#[test]
fn published_vectors() {
    for [d, qx, qy, m, r, s] in NIST {
        let mut sec1 = vec![4];
        sec1.extend_from_slice(&hex32(qx));
        sec1.extend_from_slice(&hex32(qy));
        // The vector's Q is its d·G, by the oracle.
        let sk = SigningKey::from_slice(&hex32(d)).unwrap();
        assert_eq!(sec1, uncompressed(&sk));
        let sig = sig_bytes(&hex32(r), &hex32(s));
        assert!(oracle_verifies(&sec1, &hex32(m), &sig));
        assert!(ours(&sec1).verify_prehash(&hex32(m), &sig));
        assert!(!ours(&sec1).verify_prehash(&hex32(r), &sig));
    }
    // RFC 6979 A.2.5 (P-256, SHA-256, "sample"), which the oracle's deterministic signing
    // must reproduce.
    let sk = SigningKey::from_slice(&hex32(
        "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721",
    ))
    .unwrap();
    let digest: [u8; 32] = Sha256::digest(b"sample").into();
    let sig = sig_bytes(
        &hex32("efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"),
        &hex32("f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"),
    );
    assert_eq!(sign(&sk, &digest), sig);
    assert_eq!(
        &uncompressed(&sk)[1..33],
        &hex32("60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6")
    );
    assert!(ours(&uncompressed(&sk)).verify_prehash(&digest, &sig));
    assert!(ours(&compressed(&sk)).verify_prehash(&digest, &sig));
}

/// A scalar from big-endian bytes below n.
fn scalar(bytes: &[u8; 32]) -> Scalar {
    Scalar::from_repr((*bytes).into()).unwrap()
}

/// Big-endian bytes (a digest, an x coordinate) mod n, as ECDSA takes them.
fn reduced(bytes: &[u8; 32]) -> Scalar {
    <Scalar as p256::elliptic_curve::ops::Reduce<p256::U256>>::reduce_bytes(&(*bytes).into())
}

/// The key Q for which (r, s) signs `digest` with R as the nonce point: from
/// R = (e/s)·G + (r/s)·Q, Q = (s·R - e·G) / r. No discrete logarithm needed.
fn key_for(point: &AffinePoint, r: &Scalar, s: &Scalar, e: &Scalar) -> Vec<u8> {
    let q =
        (ProjectivePoint::from(*point) * s - ProjectivePoint::GENERATOR * e) * r.invert().unwrap();
    q.to_affine().to_encoded_point(false).as_bytes().to_vec()
}

#[test]
fn x_of_r_at_or_above_n_is_reduced() {
    // Points whose x lies in [n, p) (a chance of 2⁻¹²⁸ for a random nonce): the first x from
    // n up that is on the curve.
    let mut x = N;
    let point = loop {
        let mut enc = vec![2];
        enc.extend_from_slice(&x);
        let p = AffinePoint::from_encoded_point(&EncodedPoint::from_bytes(&enc).unwrap());
        if let Some(p) = Option::<AffinePoint>::from(p) {
            break p;
        }
        x = add_be(&x, &small(1)).0;
    };
    // r = x - n.
    let mut r = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(x[i]) - i16::from(N[i]) - borrow;
        r[i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    for _ in 0..8 {
        let s = Scalar::random(&mut rng);
        let digest: [u8; 32] = rng.gen();
        let key = key_for(&point, &scalar(&r), &s, &reduced(&digest));
        let sig = sig_bytes(&r, &s.to_repr().into());
        assert!(oracle_verifies(&key, &digest, &sig));
        assert!(ours(&key).verify_prehash(&digest, &sig));
        // x itself is above n: not a scalar, refused.
        let unreduced = sig_bytes(&x, &s.to_repr().into());
        assert!(!oracle_verifies(&key, &digest, &unreduced));
        assert!(!ours(&key).verify_prehash(&digest, &unreduced));
    }
}

#[test]
fn sums_at_infinity_and_keys_at_plus_or_minus_g_are_handled() {
    let mut rng = ChaCha20Rng::seed_from_u64(19);
    // e + r·d ≡ 0 (mod n) makes u1·G + u2·Q the point at infinity: no x, refused.
    for _ in 0..8 {
        let sk = SigningKey::random(&mut rng);
        let d: Scalar = *sk.as_nonzero_scalar().as_ref();
        let r = Scalar::random(&mut rng);
        let s = Scalar::random(&mut rng);
        let e = -(r * d);
        let digest: [u8; 32] = e.to_repr().into();
        let sig = sig_bytes(&r.to_repr().into(), &s.to_repr().into());
        assert!(!oracle_verifies(&uncompressed(&sk), &digest, &sig));
        assert!(!ours(&uncompressed(&sk)).verify_prehash(&digest, &sig));
    }
    // Q = G (G + Q is a doubling) and Q = -G (G + Q is infinity), Q = 2G.
    let mut n_minus_1 = N;
    n_minus_1[31] -= 1;
    for d in [small(1), n_minus_1, small(2)] {
        let sk = SigningKey::from_slice(&d).unwrap();
        for _ in 0..16 {
            let digest: [u8; 32] = rng.gen();
            let sig = sign(&sk, &digest);
            let key = ours(&uncompressed(&sk));
            assert!(key.verify_prehash(&digest, &sig));
            let mut other = digest;
            other[0] ^= 0x80;
            assert!(!key.verify_prehash(&other, &sig));
        }
    }
    // A signature whose u1 is 0 (digest ≡ 0): R = u2·Q alone.
    let sk = SigningKey::random(&mut rng);
    let sig = sign(&sk, &[0; 32]);
    assert!(ours(&uncompressed(&sk)).verify_prehash(&[0; 32], &sig));
}
