//! The Reed-Solomon decoder fed from the fuzzer: never a panic, and Complete means the data.
#![no_main]

use fuota_codec::fec::reed_solomon::{encode, ReedSolomonDecoder};
use fuota_codec::fec::{Progress, RamStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [m, r, frag_size, rest @ ..] = input else { return };
    let m = usize::from(*m % 40) + 1;
    let redundancy = usize::from(*r % 20);
    let frag_size = usize::from(*frag_size % 8) + 1;
    let data: Vec<u8> = (0..m * frag_size).map(|i| (i as u8).wrapping_mul(29)).collect();
    let Ok(fragments) = encode(&data, frag_size, redundancy) else { return };
    let mut slots = vec![0u8; (m + redundancy) * frag_size];
    let mut store = RamStore::new(&mut slots, frag_size);
    let Ok(mut decoder) = ReedSolomonDecoder::new(m, redundancy, frag_size) else { return };
    for &pick in rest {
        let (n, payload): (usize, Vec<u8>) = if pick & 0x80 != 0 {
            (usize::from(pick & 0x7f) * 3, vec![pick; usize::from(pick) % (frag_size + 2)])
        } else {
            let n = usize::from(pick) % fragments.len() + 1;
            (n, fragments[n - 1].clone())
        };
        let garbage = pick & 0x80 != 0;
        let result = decoder.push(&mut store, n, &payload);
        if garbage {
            if result.is_ok() && payload.len() == frag_size {
                return;
            }
            continue;
        }
        if let Ok(Progress::Complete) = result {
            assert_eq!(&store.as_bytes()[..m * frag_size], &data[..], "complete with wrong data");
            return;
        }
    }
});
