//! Patch parsing from the fuzzer: the container and manifest, a bare detools payload through
//! the streaming applier (heatshrink + bspatch), and the heatshrink decoder alone. Never a
//! panic; never more target bytes than the patch's header announces.
#![no_main]

use fuota_codec::patch::apply::{verify_preamble, DetoolsApplier, OutOfRange};
use fuota_codec::patch::container::Container;
use fuota_codec::patch::heatshrink::{Decoder, Params};
use fuota_codec::patch::VerifyingKey;
use libfuzzer_sys::fuzz_target;

fn key() -> VerifyingKey {
    // Any valid point: the generator's multiple from a fixed scalar.
    let sk = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("fixed scalar is valid");
    VerifyingKey::from_sec1_bytes(sk.verifying_key().to_encoded_point(false).as_bytes())
        .expect("the p256 crate's key is a valid point")
}

fuzz_target!(|input: &[u8]| {
    let [mode, chunk, rest @ ..] = input else { return };
    let chunk = usize::from(*chunk).max(1);
    match mode % 3 {
        0 => {
            let _ = Container::parse(rest);
            let _ = verify_preamble::<()>(rest, &key());
        }
        1 => {
            let source: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut applier = DetoolsApplier::<512>::new(source.len() as u32, None);
            let mut src = source.as_slice();
            let mut target: Vec<u8> = Vec::new();
            for piece in rest.chunks(chunk) {
                if applier.push(piece, &mut src, &mut target).is_err() {
                    break;
                }
                if let Some(len) = applier.target_len() {
                    assert!(target.len() <= len as usize);
                }
            }
            let _ = applier.finish::<OutOfRange>();
        }
        _ => {
            let Some((&p, data)) = rest.split_first() else { return };
            let Some(params) = Params::from_detools_byte(p) else { return };
            let Ok(mut d) = Decoder::<512>::new(params) else { return };
            let mut out = vec![0u8; chunk];
            let mut input = data;
            let mut total = 0usize;
            loop {
                let (used, n) = d.decode(input, &mut out);
                input = &input[used..];
                total += n;
                // Every input bit yields at most 2^L bytes; stop runaway output early.
                assert!(total <= data.len() * 8 * (1 << params.lookahead_bits) + 1);
                if n == 0 && input.is_empty() {
                    break;
                }
            }
            let _ = d.finish();
        }
    }
});
