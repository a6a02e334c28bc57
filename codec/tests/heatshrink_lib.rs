//! Our streaming heatshrink decoder reads what the `heatshrink-lib` crate's encoder (a port
//! of the C library, default window 2^8, lookahead 2^4) writes, in output chunks of any size.

use fuota_codec::patch::heatshrink::{Decoder, Params};

#[test]
fn decodes_heatshrink_lib_streams() {
    let mut data = Vec::new();
    for i in 0..20_000u32 {
        data.push((i % 251) as u8 ^ (i / 1000) as u8);
        if i % 97 == 0 {
            data.extend_from_slice(&[0; 40]);
        }
    }
    let mut compressed = vec![0u8; data.len() * 2];
    let compressed = heatshrink::encoder::encode(&data, &mut compressed).unwrap();
    assert!(compressed.len() < data.len());
    for out_chunk in [1, 5, 256] {
        let mut d = Decoder::<256>::new(Params::new(8, 4).unwrap()).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; out_chunk];
        for piece in compressed.chunks(13) {
            let mut input = piece;
            loop {
                let (used, n) = d.decode(input, &mut buf);
                input = &input[used..];
                out.extend_from_slice(&buf[..n]);
                if input.is_empty() && n < buf.len() {
                    break;
                }
            }
        }
        d.finish().unwrap();
        assert!(out == data, "output chunk {out_chunk}");
    }
    // Straight out of the window, without an output buffer: the same bytes.
    for piece_len in [1, 13, compressed.len()] {
        let mut d = Decoder::<256>::new(Params::new(8, 4).unwrap()).unwrap();
        let mut out = Vec::new();
        for piece in compressed.chunks(piece_len) {
            d.decode_in_window(piece, |bytes| {
                assert!(!bytes.is_empty() && bytes.len() <= 256);
                out.extend_from_slice(bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        d.finish().unwrap();
        assert!(out == data, "input pieces of {piece_len}");
    }
}
