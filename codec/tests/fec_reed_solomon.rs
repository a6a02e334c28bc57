//! Reed-Solomon mode: any M of the M + R fragments rebuild the block.

use fuota_codec::fec::reed_solomon::{encode, ReedSolomonDecoder, ReedSolomonError, MAX_SHARDS};
use fuota_codec::fec::{Progress, RamStore};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn any_m_fragments_rebuild_the_block() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for trial in 0..80 {
        let m = rng.gen_range(1..200);
        let redundancy = rng.gen_range(0..=(MAX_SHARDS - m).min(60));
        let frag_size = rng.gen_range(1..64);
        let len = (m - 1) * frag_size + rng.gen_range(1..=frag_size);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let fragments = encode(&data, frag_size, redundancy).unwrap();
        assert_eq!(fragments.len(), m + redundancy);

        let mut order: Vec<usize> = (1..=m + redundancy).collect();
        order.shuffle(&mut rng);
        order.truncate(m);
        // Duplicates before the block completes must not count.
        let dup = order[0];
        order.insert(1.min(order.len()), dup);

        let mut slots = vec![0u8; (m + redundancy) * frag_size];
        let mut store = RamStore::new(&mut slots, frag_size);
        let mut decoder = ReedSolomonDecoder::new(m, redundancy, frag_size).unwrap();
        let mut progress = decoder.progress();
        for (k, &n) in order.iter().enumerate() {
            progress = decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
            if k + 1 < order.len() {
                assert!(
                    matches!(progress, Progress::NeedMore { .. }),
                    "trial {trial}: early"
                );
            }
        }
        assert_eq!(
            progress,
            Progress::Complete,
            "trial {trial}: M={m} R={redundancy}"
        );
        assert_eq!(&store.as_bytes()[..len], &data[..], "trial {trial}");
        assert!(store.as_bytes()[len..m * frag_size].iter().all(|b| *b == 0));
    }
}

#[test]
fn fewer_than_m_says_how_many_more() {
    let data = vec![3u8; 100];
    let fragments = encode(&data, 10, 5).unwrap();
    let mut slots = vec![0u8; 150];
    let mut store = RamStore::new(&mut slots, 10);
    let mut decoder = ReedSolomonDecoder::new(10, 5, 10).unwrap();
    for (k, n) in [15usize, 3, 12, 7].into_iter().enumerate() {
        let progress = decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
        assert_eq!(
            progress,
            Progress::NeedMore {
                missing: 10 - (k + 1)
            }
        );
    }
    assert_eq!(
        decoder.push(&mut store, 3, &fragments[2]).unwrap(),
        Progress::NeedMore { missing: 6 }
    );
}

#[test]
fn limits_and_bad_input_are_errors() {
    assert_eq!(
        encode(&[0; 2560], 10, 1),
        Err(ReedSolomonError::TooManyShards { total: 257 })
    );
    assert!(encode(&[0; 2550], 10, 1).is_ok());
    assert!(matches!(
        ReedSolomonDecoder::new(200, 57, 10),
        Err(ReedSolomonError::TooManyShards { .. })
    ));
    assert_eq!(encode(&[], 10, 1), Err(ReedSolomonError::EmptyData));
    assert_eq!(encode(&[1], 0, 1), Err(ReedSolomonError::ZeroFragSize));

    let mut slots = vec![0u8; 40];
    let mut store = RamStore::new(&mut slots, 10);
    let mut decoder = ReedSolomonDecoder::new(3, 1, 10).unwrap();
    assert!(matches!(
        decoder.push(&mut store, 1, &[0; 9]),
        Err(ReedSolomonError::PayloadLength { .. })
    ));
    assert!(matches!(
        decoder.push(&mut store, 0, &[0; 10]),
        Err(ReedSolomonError::FragmentNumber { n: 0 })
    ));
    assert!(matches!(
        decoder.push(&mut store, 5, &[0; 10]),
        Err(ReedSolomonError::FragmentNumber { n: 5 })
    ));
}

#[test]
fn a_decoder_for_more_redundancy_decodes_less() {
    // Parity fragment M + i does not depend on R: the CLI relies on it.
    let mut data = vec![0u8; 400];
    ChaCha8Rng::seed_from_u64(32).fill_bytes(&mut data);
    let small = encode(&data, 20, 5).unwrap();
    let large = encode(&data, 20, 30).unwrap();
    assert_eq!(small[..], large[..25]);
}
