//! The TS004 decoder fed from the fuzzer: a block encoded by our encoder, then fragments that
//! the input chooses (order, repeats, losses, corrupted numbers and lengths). It must never
//! panic, and whenever it says Complete the store must hold exactly the block.
#![no_main]

use fuota_codec::fec::decoder::Decoder;
use fuota_codec::fec::encoder::encode;
use fuota_codec::fec::{Progress, RamStore};
use fuota_codec::Version;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [flags, m, frag_size, max_lost, rest @ ..] = input else { return };
    let version = if flags & 1 == 0 { Version::V1 } else { Version::V2 };
    let m = usize::from(*m % 64) + 1;
    let frag_size = usize::from(*frag_size % 8) + 1;
    let max_lost = usize::from(*max_lost) % (m + 1);
    let redundancy = m + 8;
    let data: Vec<u8> = (0..m * frag_size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(*flags))
        .collect();
    let Ok(fragments) = encode(version, &data, frag_size, redundancy) else { return };
    let mut workspace = vec![0u8; Decoder::workspace_len(m, max_lost, frag_size)];
    let mut slots = vec![0u8; m * frag_size];
    let mut store = RamStore::new(&mut slots, frag_size);
    let Ok(mut decoder) = Decoder::new(version, m, frag_size, max_lost, &mut workspace) else {
        return;
    };
    for pick in rest.chunks(2) {
        let choice = usize::from(pick[0]) | usize::from(*pick.get(1).unwrap_or(&0)) << 8;
        let result = if choice & 0x8000 != 0 {
            // Garbage: any number, a payload of the wrong length or wrong content.
            let n = choice & 0x3fff;
            let junk = vec![pick[0]; (choice >> 4) % (frag_size + 2)];
            decoder.push(&mut store, n, &junk)
        } else {
            let n = choice % fragments.len() + 1;
            decoder.push(&mut store, n, &fragments[n - 1])
        };
        if choice & 0x8000 != 0 {
            // Wrong content with the right length may legitimately poison the block; stop
            // checking the data from here on.
            if result.is_ok() && (choice >> 4) % (frag_size + 2) == frag_size {
                return;
            }
            continue;
        }
        if let Ok(Progress::Complete) = result {
            assert_eq!(store.as_bytes(), &data[..], "complete with wrong data");
            return;
        }
    }
});
