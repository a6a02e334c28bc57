//! SHA-256 throughput: the codec's compact implementation against the `sha2` crate (which on
//! x86_64 uses the SHA extensions when the CPU has them), for a short message, a flash
//! sector's worth and a whole firmware image (the patch applier hashes source, target and
//! payload). Also AES-CMAC over a data block (the TS004 v2 MIC), against the `cmac` crate
//! (AES-NI where the CPU has it).

use cmac::Mac;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fuota_codec::aes_cmac::Cmac;
use fuota_codec::sha256::Sha256;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::Digest;

fn data(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(256).fill_bytes(&mut data);
    data
}

fn sha256(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256");
    for len in [64usize, 4096, 600 * 1024] {
        let input = data(len);
        group.throughput(Throughput::Bytes(len as u64));
        if len > 4096 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::new("fuota_codec", len), &input, |b, input| {
            b.iter(|| Sha256::digest(input))
        });
        group.bench_with_input(BenchmarkId::new("sha2", len), &input, |b, input| {
            b.iter(|| sha2::Sha256::digest(input))
        });
    }
    group.finish();
}

fn cmac(c: &mut Criterion) {
    let mut group = c.benchmark_group("aes_cmac");
    let len = 16 * 1024;
    let input = data(len);
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_with_input(BenchmarkId::new("fuota_codec", len), &input, |b, input| {
        b.iter(|| Cmac::mac(&[7; 16], input))
    });
    group.bench_with_input(BenchmarkId::new("cmac", len), &input, |b, input| {
        b.iter(|| {
            let mut mac = <cmac::Cmac<aes::Aes128> as Mac>::new_from_slice(&[7; 16]).unwrap();
            mac.update(input);
            mac.finalize()
        })
    });
    group.finish();
}

criterion_group!(benches, sha256, cmac);
criterion_main!(benches);
