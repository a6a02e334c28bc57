//! P-256 on the host: the codec's verifier (the device's code) and the `p256` crate's, on the
//! same key, digest and signature; and making the codec's key from SEC1 bytes (a compressed
//! key needs a square root). Only a relative figure for the device, whose code is built for
//! size: one check per install.

use criterion::{criterion_group, criterion_main, Criterion};
use fuota_codec::patch::VerifyingKey;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ecdsa(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let sk = SigningKey::random(&mut rng);
    let digest: [u8; 32] = rng.gen();
    let sig: Signature = sk.sign_prehash(&digest).unwrap();
    let sig_bytes: [u8; 64] = sig.to_bytes().into();
    let vk = sk.verifying_key();
    let full = vk.to_encoded_point(false);
    let short = vk.to_encoded_point(true);
    let ours = VerifyingKey::from_sec1_bytes(full.as_bytes()).unwrap();
    assert!(ours.verify_prehash(&digest, &sig_bytes));

    let mut group = c.benchmark_group("p256");
    group.sample_size(20);
    group.bench_function("verify codec", |b| {
        b.iter(|| ours.verify_prehash(std::hint::black_box(&digest), &sig_bytes))
    });
    group.bench_function("verify p256 crate", |b| {
        b.iter(|| {
            vk.verify_prehash(std::hint::black_box(&digest), &sig)
                .is_ok()
        })
    });
    group.bench_function("key from SEC1 uncompressed", |b| {
        b.iter(|| VerifyingKey::from_sec1_bytes(std::hint::black_box(full.as_bytes())))
    });
    group.bench_function("key from SEC1 compressed", |b| {
        b.iter(|| VerifyingKey::from_sec1_bytes(std::hint::black_box(short.as_bytes())))
    });
    group.finish();
}

criterion_group!(benches, ecdsa);
criterion_main!(benches);
