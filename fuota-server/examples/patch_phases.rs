//! Times the phases of making a patch for one pair: qbsdiff per small-match threshold, and
//! heatshrink per window. `cargo run --release -p fuota-server --example patch_phases OLD NEW`
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use fuota_server::patch::{detools, heatshrink};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (old, new) = (
        std::fs::read(&args[1]).unwrap(),
        std::fs::read(&args[2]).unwrap(),
    );
    for small in [0, 2, 4, 8, 16] {
        let t = Instant::now();
        let b = detools::diff(&old, &new, small).unwrap();
        let stream = detools::sequential_stream(&b, new.len()).unwrap();
        let diff = t.elapsed();
        let t = Instant::now();
        let (p, c) = heatshrink::compress_best(&stream, &heatshrink::candidate_params(9)).unwrap();
        println!(
            "small_match {small:>2}: bsdiff {:>6.0} ms, stream {:>7} B, best {}/{} {:>6} B in {:>6.0} ms",
            diff.as_secs_f64() * 1e3,
            stream.len(),
            p.window_bits,
            p.lookahead_bits,
            c.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    {
        let key = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let created = fuota_server::patch::create(&old, &new, &key, &Default::default()).unwrap();
        let vk = fuota_server::patch::keys::device_key(key.verifying_key()).unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            fuota_codec::patch::apply::verify_preamble::<()>(&created.bytes, &vk).unwrap();
        }
        println!("verify: {:.0} us", t.elapsed().as_secs_f64() * 1e4);
        let t = Instant::now();
        for _ in 0..100 {
            let _ = <sha2::Sha256 as sha2::Digest>::digest(&new);
        }
        println!(
            "sha256 of new: {:.0} MB/s",
            new.len() as f64 * 100.0 / t.elapsed().as_secs_f64() / 1e6
        );
        let t = Instant::now();
        for _ in 0..20 {
            fuota_server::patch::apply(&old, &created.bytes, &vk, 4096).unwrap();
        }
        println!("apply: {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
    }
    let b = detools::diff(&old, &new, 0).unwrap();
    let stream = detools::sequential_stream(&b, new.len()).unwrap();
    for w in 4..=9u8 {
        let t = Instant::now();
        let m = heatshrink::longest_matches(&stream, w, 1 << (w - 1));
        let mt = t.elapsed();
        let t = Instant::now();
        for l in 3..w {
            let p = fuota_codec::patch::heatshrink::Params::new(w, l).unwrap();
            let _ = heatshrink::compress_with(&stream, &m, p);
        }
        println!(
            "stream W={w}: matches {:.0} ms, {} parses {:.0} ms",
            mt.as_secs_f64() * 1e3,
            w - 3,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    for w in 4..=9u8 {
        let t = Instant::now();
        let m = heatshrink::longest_matches(&new, w, 1 << (w - 1));
        println!(
            "matches W={w}: {:.0} ms ({} positions)",
            t.elapsed().as_secs_f64() * 1e3,
            m.len()
        );
    }
}
