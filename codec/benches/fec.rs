//! FEC throughput: encoding and decoding a block of M = 1000 fragments of 50 bytes, TS004 v1
//! and v2 and Reed-Solomon (RS capped at M + R = 256 by GF(2^8), so it runs on M = 200).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fuota_codec::fec::decoder::Decoder;
use fuota_codec::fec::encoder::encode;
use fuota_codec::fec::reed_solomon::{self, ReedSolomonDecoder};
use fuota_codec::fec::{Progress, RamStore};
use fuota_codec::Version;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FRAG_SIZE: usize = 50;

fn block(m: usize) -> Vec<u8> {
    let mut data = vec![0u8; m * FRAG_SIZE];
    ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut data);
    data
}

/// The fragments that survive 10 % loss, in sending order.
fn survivors(fragments: &[Vec<u8>]) -> Vec<(usize, Vec<u8>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    fragments
        .iter()
        .enumerate()
        .filter(|_| rng.gen_bool(0.9))
        .map(|(i, f)| (i + 1, f.clone()))
        .collect()
}

fn ts004(c: &mut Criterion) {
    let m = 1000;
    let redundancy = 200;
    let data = block(m);
    let mut group = c.benchmark_group("ts004_m1000_f50");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    for version in [Version::V1, Version::V2] {
        group.bench_with_input(
            BenchmarkId::new("encode", format!("{version:?}")),
            &version,
            |b, &v| b.iter(|| encode(v, &data, FRAG_SIZE, redundancy).unwrap()),
        );
        let arrivals = survivors(&encode(version, &data, FRAG_SIZE, redundancy).unwrap());
        group.bench_with_input(
            BenchmarkId::new("decode_10pct_loss", format!("{version:?}")),
            &version,
            |b, &v| {
                let mut workspace = vec![0u8; Decoder::workspace_len(m, m, FRAG_SIZE)];
                let mut slots = vec![0u8; m * FRAG_SIZE];
                b.iter(|| {
                    let mut store = RamStore::new(&mut slots, FRAG_SIZE);
                    let mut decoder = Decoder::new(v, m, FRAG_SIZE, m, &mut workspace).unwrap();
                    for (n, payload) in &arrivals {
                        if decoder.push(&mut store, *n, payload).unwrap() == Progress::Complete {
                            break;
                        }
                    }
                    assert!(decoder.is_complete());
                })
            },
        );
    }
    group.finish();
}

fn rs(c: &mut Criterion) {
    let m = 200;
    let redundancy = 56;
    let data = block(m);
    let mut group = c.benchmark_group("reed_solomon_m200_f50");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("encode", |b| {
        b.iter(|| reed_solomon::encode(&data, FRAG_SIZE, redundancy).unwrap())
    });
    let arrivals = survivors(&reed_solomon::encode(&data, FRAG_SIZE, redundancy).unwrap());
    group.bench_function("decode_10pct_loss", |b| {
        let mut slots = vec![0u8; (m + redundancy) * FRAG_SIZE];
        b.iter(|| {
            let mut store = RamStore::new(&mut slots, FRAG_SIZE);
            let mut decoder = ReedSolomonDecoder::new(m, redundancy, FRAG_SIZE).unwrap();
            for (n, payload) in &arrivals {
                if decoder.push(&mut store, *n, payload).unwrap() == Progress::Complete {
                    break;
                }
            }
            assert!(decoder.is_complete());
        })
    });
    group.finish();
}

criterion_group!(benches, ts004, rs);
criterion_main!(benches);
