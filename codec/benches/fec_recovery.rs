//! Prints P(decoded | M + k received), k = 0..=8, for M = 100 at 10 % loss: fragments
//! 1..M+R are sent in order, each lost with probability 0.1, and each trial records how many
//! had arrived when the decoder completed. TS004 v1, v2 and Reed-Solomon.
//!
//! `cargo bench -p fuota-codec --features alloc,reed-solomon --bench fec_recovery [-- TRIALS]`

use fuota_codec::fec::decoder::Decoder;
use fuota_codec::fec::encoder::encode;
use fuota_codec::fec::reed_solomon::{self, ReedSolomonDecoder};
use fuota_codec::fec::{Progress, RamStore};
use fuota_codec::Version;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const M: usize = 100;
const R: usize = 60;
const FRAG_SIZE: usize = 4;
const LOSS: f64 = 0.1;
const KS: usize = 9;

#[derive(Clone, Copy)]
enum Code {
    Ts004(Version),
    ReedSolomon,
}

/// Fragments received when decoding completed, or None if M + R were not enough.
fn trial(code: Code, rng: &mut ChaCha8Rng) -> Option<usize> {
    let mut data = vec![0u8; M * FRAG_SIZE];
    rng.fill_bytes(&mut data);
    let fragments = match code {
        Code::Ts004(v) => encode(v, &data, FRAG_SIZE, R).unwrap(),
        Code::ReedSolomon => reed_solomon::encode(&data, FRAG_SIZE, R).unwrap(),
    };
    let mut slots = vec![0u8; (M + R) * FRAG_SIZE];
    let mut workspace = vec![0u8; Decoder::workspace_len(M, M, FRAG_SIZE)];
    let mut store = RamStore::new(&mut slots, FRAG_SIZE);
    let mut ts004 = match code {
        Code::Ts004(v) => Some(Decoder::new(v, M, FRAG_SIZE, M, &mut workspace).unwrap()),
        Code::ReedSolomon => None,
    };
    let mut rs = ReedSolomonDecoder::new(M, R, FRAG_SIZE).unwrap();
    let mut received = 0;
    for (i, payload) in fragments.iter().enumerate() {
        if rng.gen_bool(LOSS) {
            continue;
        }
        received += 1;
        let progress = match ts004.as_mut() {
            Some(d) => d.push(&mut store, i + 1, payload).unwrap(),
            None => rs.push(&mut store, i + 1, payload).unwrap(),
        };
        if progress == Progress::Complete {
            assert_eq!(&store.as_bytes()[..M * FRAG_SIZE], &data[..], "wrong data");
            return Some(received);
        }
    }
    None
}

fn main() {
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    println!("P(decoded | M+k received), M = {M}, loss {LOSS}, {trials} trials per code");
    print!("{:<6}", "code");
    for k in 0..KS {
        print!(" {:>5}", format!("k={k}"));
    }
    println!(" {:>8}", "mean k");
    for (name, code) in [
        ("v1", Code::Ts004(Version::V1)),
        ("v2", Code::Ts004(Version::V2)),
        ("rs", Code::ReedSolomon),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(2026);
        let mut needed = Vec::with_capacity(trials);
        for _ in 0..trials {
            needed.push(trial(code, &mut rng));
        }
        print!("{name:<6}");
        for k in 0..KS {
            let ok = needed
                .iter()
                .filter(|n| n.is_some_and(|n| n <= M + k))
                .count();
            print!(" {:>5.2}", ok as f64 / trials as f64);
        }
        let done: Vec<usize> = needed.iter().flatten().map(|n| n - M).collect();
        let mean = done.iter().sum::<usize>() as f64 / done.len().max(1) as f64;
        println!(" {mean:>8.2}");
    }
}
