//! The TS004 code: byte-exact agreement with lrwn's encoder, and decoding under loss.

use fuota_codec::fec::decoder::{DecodeError, Decoder, DecoderError};
use fuota_codec::fec::encoder::{encode, Encoder};
use fuota_codec::fec::{Progress, RamStore};
use fuota_codec::Version;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_block(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

#[test]
fn coded_fragments_match_lrwn_byte_for_byte() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ms = [1usize, 2, 3, 7, 8, 16, 64, 100, 128, 255, 1000, 1024];
    for (k, &m) in ms.iter().enumerate() {
        let frag_size = [1usize, 5, 16, 50, 115, 242][k % 6];
        let redundancy = [0usize, 1, 5, 30][k % 4] + m / 10;
        let data = random_block(&mut rng, m * frag_size);
        let ours_v1 = encode(Version::V1, &data, frag_size, redundancy).unwrap();
        let ours_v2 = encode(Version::V2, &data, frag_size, redundancy).unwrap();
        let lrwn_v1 =
            lrwn::applayer::fragmentation::v1::encode(&data, frag_size, redundancy).unwrap();
        let lrwn_v2 =
            lrwn::applayer::fragmentation::v2::encode(&data, frag_size, redundancy).unwrap();
        assert_eq!(ours_v1, lrwn_v1, "v1, M={m}, R={redundancy}, F={frag_size}");
        assert_eq!(ours_v2, lrwn_v2, "v2, M={m}, R={redundancy}, F={frag_size}");
    }
}

#[test]
fn rows_far_into_the_sequence_match_lrwn() {
    // Seeds 1 + 1001 n pass 2^23 for n > 8380: the shift register's high bits matter there.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (m, frag_size, redundancy) = (20, 2, 8400);
    let data = random_block(&mut rng, m * frag_size);
    for (ours, theirs) in [
        (
            encode(Version::V1, &data, frag_size, redundancy).unwrap(),
            lrwn::applayer::fragmentation::v1::encode(&data, frag_size, redundancy).unwrap(),
        ),
        (
            encode(Version::V2, &data, frag_size, redundancy).unwrap(),
            lrwn::applayer::fragmentation::v2::encode(&data, frag_size, redundancy).unwrap(),
        ),
    ] {
        assert_eq!(ours[8390..], theirs[8390..]);
    }
}

#[test]
fn short_last_fragment_is_zero_padded() {
    let data = [1u8, 2, 3, 4, 5];
    let enc = Encoder::new(Version::V2, &data, 4).unwrap();
    assert_eq!((enc.nb_frag(), enc.padding()), (2, 3));
    let all = enc.encode_all(2).unwrap();
    assert_eq!(all[1], vec![5, 0, 0, 0]);
    let padded = [1u8, 2, 3, 4, 5, 0, 0, 0];
    assert_eq!(all, encode(Version::V2, &padded, 4, 2).unwrap());
}

/// Sends `fragments` through a decoder in the given order; returns the data if it completed.
fn decode(
    version: Version,
    m: usize,
    frag_size: usize,
    max_lost: usize,
    arrivals: &[(usize, Vec<u8>)],
) -> (Progress, Vec<u8>) {
    let mut workspace = vec![0u8; Decoder::workspace_len(m, max_lost, frag_size)];
    let mut slots = vec![0u8; m * frag_size];
    let mut store = RamStore::new(&mut slots, frag_size);
    let mut decoder = Decoder::new(version, m, frag_size, max_lost, &mut workspace).unwrap();
    let mut progress = decoder.progress();
    for (n, payload) in arrivals {
        progress = decoder.push(&mut store, *n, payload).unwrap();
    }
    (progress, slots)
}

#[test]
fn decodes_after_ten_percent_loss_in_any_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for trial in 0..60 {
        let version = if trial % 2 == 0 {
            Version::V1
        } else {
            Version::V2
        };
        let m = [10usize, 33, 64, 100, 250][trial % 5];
        let frag_size = rng.gen_range(1..60);
        let redundancy = m / 2 + 10;
        let data = random_block(&mut rng, m * frag_size);
        let fragments = encode(version, &data, frag_size, redundancy).unwrap();
        let mut arrivals: Vec<(usize, Vec<u8>)> = fragments
            .into_iter()
            .enumerate()
            .filter(|_| rng.gen_bool(0.9))
            .map(|(i, f)| (i + 1, f))
            .collect();
        // Duplicates, as a repeated multicast would bring.
        let dups: Vec<_> = arrivals.iter().take(5).cloned().collect();
        arrivals.extend(dups);
        if trial % 3 != 0 {
            arrivals.shuffle(&mut rng);
        }
        let (progress, out) = decode(version, m, frag_size, m, &arrivals);
        assert_eq!(progress, Progress::Complete, "trial {trial}: M={m}");
        assert_eq!(out, data, "trial {trial}");
    }
}

#[test]
fn too_few_fragments_say_so_and_complete_is_always_right() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for trial in 0..200 {
        let version = if trial % 2 == 0 {
            Version::V1
        } else {
            Version::V2
        };
        let m = rng.gen_range(1..80);
        let frag_size = rng.gen_range(1..20);
        let data = random_block(&mut rng, m * frag_size);
        let fragments = encode(version, &data, frag_size, m).unwrap();
        let mut arrivals: Vec<(usize, Vec<u8>)> = fragments
            .into_iter()
            .enumerate()
            .filter(|_| rng.gen_bool(0.55))
            .map(|(i, f)| (i + 1, f))
            .collect();
        arrivals.shuffle(&mut rng);

        let mut workspace = vec![0u8; Decoder::workspace_len(m, m, frag_size)];
        let mut slots = vec![0u8; m * frag_size];
        let mut store = RamStore::new(&mut slots, frag_size);
        let mut decoder = Decoder::new(version, m, frag_size, m, &mut workspace).unwrap();
        let mut done = false;
        for (k, (n, payload)) in arrivals.iter().enumerate() {
            match decoder.push(&mut store, *n, payload).unwrap() {
                Progress::Complete => {
                    done = true;
                    break;
                }
                Progress::NeedMore { missing } => {
                    // Never claims to need fewer than the information-theoretic minimum.
                    assert!(missing >= m.saturating_sub(k + 1), "trial {trial}");
                    assert!(missing > 0);
                    assert_eq!(missing, decoder.missing());
                }
            }
        }
        if done {
            assert_eq!(
                store.as_bytes(),
                &data[..],
                "trial {trial}: complete with wrong data"
            );
        } else {
            assert!(
                decoder.received() < m,
                "trial {trial}: enough fragments but not complete"
            );
            assert!(decoder.missing() > 0);
        }
    }
}

#[test]
fn missing_count_before_any_coded_fragment() {
    let data = vec![7u8; 40];
    let fragments = encode(Version::V2, &data, 4, 4).unwrap();
    let arrivals: Vec<_> = (1..=6).map(|n| (n, fragments[n - 1].clone())).collect();
    let (progress, _) = decode(Version::V2, 10, 4, 10, &arrivals);
    assert_eq!(progress, Progress::NeedMore { missing: 4 });
}

#[test]
fn ram_for_m_1024_and_128_lost() {
    let (m, lost, frag_size) = (1024usize, 128usize, 50usize);
    // The documented formula: ceil(M/8) + 2L + ceil(L(L+1)/16) + 2 ceil(L/8) + ceil(M/8) + 2F.
    let formula = m.div_ceil(8)
        + 2 * lost
        + (lost * (lost + 1) / 2).div_ceil(8)
        + 2 * lost.div_ceil(8)
        + m.div_ceil(8)
        + 2 * frag_size;
    assert_eq!(Decoder::workspace_len(m, lost, frag_size), formula);
    assert_eq!(formula, 1576 + 2 * frag_size);

    let mut too_small = vec![0u8; formula - 1];
    assert!(matches!(
        Decoder::new(Version::V2, m, frag_size, lost, &mut too_small),
        Err(DecoderError::Workspace { .. })
    ));

    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let data = random_block(&mut rng, m * frag_size);
    let fragments = encode(Version::V2, &data, frag_size, 200).unwrap();
    let mut lost_set: Vec<usize> = (0..m).collect();
    lost_set.shuffle(&mut rng);
    lost_set.truncate(lost);
    let arrivals: Vec<_> = fragments
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !lost_set.contains(i))
        .map(|(i, f)| (i + 1, f))
        .collect();
    let mut workspace = vec![0u8; formula];
    let mut slots = vec![0u8; m * frag_size];
    let mut store = RamStore::new(&mut slots, frag_size);
    let mut decoder = Decoder::new(Version::V2, m, frag_size, lost, &mut workspace).unwrap();
    let mut progress = decoder.progress();
    for (n, payload) in &arrivals {
        progress = decoder.push(&mut store, *n, payload).unwrap();
        if progress == Progress::Complete {
            break;
        }
    }
    assert_eq!(progress, Progress::Complete);
    assert_eq!(decoder.lost(), Some(lost));
    assert_eq!(store.as_bytes(), &data[..]);
}

#[test]
fn more_lost_than_room_is_reported_not_guessed() {
    let (m, frag_size) = (40usize, 8usize);
    let data = vec![0x5au8; m * frag_size];
    let fragments = encode(Version::V2, &data, frag_size, 20).unwrap();
    let mut workspace = vec![0u8; Decoder::workspace_len(m, 5, frag_size)];
    let mut slots = vec![0u8; m * frag_size];
    let mut store = RamStore::new(&mut slots, frag_size);
    let mut decoder = Decoder::new(Version::V2, m, frag_size, 5, &mut workspace).unwrap();
    for n in 1..=30 {
        decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
    }
    assert_eq!(
        decoder.push(&mut store, 41, &fragments[40]),
        Err(DecodeError::NotEnoughMatrixMemory {
            lost: 10,
            max_lost: 5
        })
    );
    // Late data fragments bring the loss within reach; then coded ones are taken.
    for n in 31..=36 {
        decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
    }
    let mut progress = decoder.progress();
    for n in 41..=60 {
        progress = decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
        if progress == Progress::Complete {
            break;
        }
    }
    assert_eq!(progress, Progress::Complete);
    assert_eq!(store.as_bytes(), &data[..]);
}

#[test]
fn the_version_matters() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (m, frag_size) = (50usize, 10usize);
    let data = random_block(&mut rng, m * frag_size);
    let v1 = encode(Version::V1, &data, frag_size, 30).unwrap();
    // Lose ten data fragments, recover them from v1 coded fragments with the v2 rows.
    let arrivals: Vec<_> = v1
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i >= 10)
        .map(|(i, f)| (i + 1, f))
        .collect();
    let (progress, out) = decode(Version::V2, m, frag_size, m, &arrivals);
    if progress == Progress::Complete {
        assert_ne!(
            out, data,
            "v2 rows rebuilt v1 data: the versions would be interchangeable"
        );
    }
    let (progress, out) = decode(Version::V1, m, frag_size, m, &arrivals);
    assert_eq!(progress, Progress::Complete);
    assert_eq!(out, data);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut workspace = vec![0u8; Decoder::workspace_len(4, 4, 3)];
    let mut slots = vec![0u8; 12];
    let mut store = RamStore::new(&mut slots, 3);
    let mut decoder = Decoder::new(Version::V1, 4, 3, 4, &mut workspace).unwrap();
    assert!(matches!(
        decoder.push(&mut store, 1, &[1, 2]),
        Err(DecodeError::PayloadLength { .. })
    ));
    assert!(matches!(
        decoder.push(&mut store, 0, &[1, 2, 3]),
        Err(DecodeError::FragmentNumber { .. })
    ));
    assert!(matches!(
        decoder.push(&mut store, 0x4000, &[1, 2, 3]),
        Err(DecodeError::FragmentNumber { .. })
    ));
    assert_eq!(
        decoder.push(&mut store, 0x3fff, &[1, 2, 3]),
        Ok(Progress::NeedMore { missing: 3 })
    );
    assert!(matches!(
        Decoder::new(Version::V1, 0, 3, 4, &mut []),
        Err(DecoderError::NbFrag(0))
    ));
}

/// A `DecoderState` kept apart from its buffer (as a device agent holds it) decodes the same
/// as a `Decoder`, and the buffer is reused for a second block via `into_parts`.
#[test]
fn detached_state_decodes_and_the_workspace_is_reused() {
    use fuota_codec::fec::decoder::DecoderState;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (m, frag_size) = (40, 12);
    let mut workspace = vec![0u8; Decoder::workspace_len(m, 16, frag_size)];
    for round in 0..2 {
        let data = random_block(&mut rng, m * frag_size);
        let frags = encode(Version::V2, &data, frag_size, 20).unwrap();
        let mut slots = vec![0u8; m * frag_size];
        let mut store = RamStore::new(&mut slots, frag_size);
        let mut state = DecoderState::new(Version::V2, m, frag_size, 16, &mut workspace).unwrap();
        let mut progress = state.progress();
        for (i, f) in frags.iter().enumerate().filter(|(i, _)| i % 4 != 1) {
            progress = state.push(&mut workspace, &mut store, i + 1, f).unwrap();
            if progress == Progress::Complete {
                break;
            }
        }
        assert_eq!(progress, Progress::Complete, "round {round}");
        assert_eq!(store.as_bytes(), &data[..]);
        assert_eq!(
            state.push(&mut workspace[..10], &mut store, 1, &frags[0]),
            Err(DecodeError::Workspace {
                needed: Decoder::workspace_len(m, 16, frag_size),
                got: 10
            })
        );
    }
    let decoder = Decoder::new(Version::V1, 8, 4, 2, &mut workspace).unwrap();
    let (state, ws) = decoder.into_parts();
    assert_eq!(state.nb_frag(), 8);
    assert_eq!(ws.len(), Decoder::workspace_len(m, 16, frag_size));
}

#[test]
fn late_data_fragments_join_the_system_the_coded_ones_started() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for version in [Version::V1, Version::V2] {
        let (m, frag_size, max_lost) = (40usize, 9usize, 5usize);
        let data = random_block(&mut rng, m * frag_size);
        let fragments = encode(version, &data, frag_size, 30).unwrap();
        let mut workspace = vec![0u8; Decoder::workspace_len(m, max_lost, frag_size)];
        let mut slots = vec![0u8; m * frag_size];
        let mut store = RamStore::new(&mut slots, frag_size);
        let mut decoder = Decoder::new(version, m, frag_size, max_lost, &mut workspace).unwrap();
        let lost = [2usize, 6, 11, 30, 39];
        for i in (0..m).filter(|i| !lost.contains(i)) {
            decoder.push(&mut store, i + 1, &fragments[i]).unwrap();
        }
        // One coded fragment fixes the five unknowns.
        decoder.push(&mut store, m + 1, &fragments[m]).unwrap();
        assert_eq!(decoder.lost(), Some(5));
        let before = decoder.received();
        // Three of the lost data fragments arrive late, one of them twice: each is a row
        // with one bit, and the repeat tells nothing new.
        for i in [30usize, 6, 30, 39] {
            decoder.push(&mut store, i + 1, &fragments[i]).unwrap();
        }
        assert_eq!(decoder.received(), before + 3, "{version:?}");
        let mut n = m + 2;
        while !decoder.is_complete() {
            decoder.push(&mut store, n, &fragments[n - 1]).unwrap();
            n += 1;
        }
        assert!(
            n - m - 1 <= 20,
            "{version:?}: {} coded fragments",
            n - m - 1
        );
        assert_eq!(store.as_bytes(), &data[..], "{version:?}");
    }
}
