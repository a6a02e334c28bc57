//! Every firmware pair in ../shared/firmware: signed patches round-trip byte for byte with
//! input chunks of 1, 7, 51 and 242 bytes; tampering, a wrong key, a wrong source and
//! truncation are each rejected with their own error, and nothing is written before the
//! source image checks out; an interrupted apply resumes from a checkpoint.

use std::sync::OnceLock;

use fuota_codec::patch::apply::{
    check_preamble, Applier, ApplyError, BorrowedApplier, Checkpoint, OutOfRange, TargetImage,
};
use fuota_codec::patch::container::{ContainerError, Kind, HEADER_LEN, PREAMBLE_LEN, SIGNED_LEN};
use fuota_codec::patch::detools::PayloadError;
use fuota_codec::patch::heatshrink::HeatshrinkError;
use fuota_codec::patch::ImageVersion;
use fuota_server::patch::{self, CreateOptions};
use p256::ecdsa::SigningKey;

mod firmware;
use firmware::PAIRS;

struct Pair {
    name: &'static str,
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

fn key() -> SigningKey {
    SigningKey::from_slice(&[7u8; 32]).unwrap()
}

/// A signing key's public half, as the device holds it.
fn device_key(key: &SigningKey) -> fuota_codec::patch::VerifyingKey {
    patch::keys::device_key(key.verifying_key()).unwrap()
}

fn pairs() -> &'static [Pair] {
    static PAIRS_MADE: OnceLock<Vec<Pair>> = OnceLock::new();
    PAIRS_MADE.get_or_init(|| {
        PAIRS
            .iter()
            .map(|&(name, old, new)| {
                let (old, new) = firmware::paths(name, old, new);
                let old = std::fs::read(&old).unwrap_or_else(|e| panic!("{}: {e}", old.display()));
                let new = std::fs::read(&new).unwrap_or_else(|e| panic!("{}: {e}", new.display()));
                let created = patch::create(
                    &old,
                    &new,
                    &key(),
                    &CreateOptions {
                        version: ImageVersion {
                            major: 1,
                            minor: 2,
                            revision: 3,
                            build: 0,
                        },
                        security_counter: 5,
                        ..CreateOptions::default()
                    },
                )
                .unwrap();
                assert_eq!(created.manifest.kind, Kind::Delta, "{name}");
                Pair {
                    name,
                    old,
                    new,
                    patch: created.bytes,
                }
            })
            .collect()
    })
}

/// A target that counts every byte written to it.
#[derive(Default)]
struct Recorder {
    image: Vec<u8>,
    writes: usize,
}

impl TargetImage for Recorder {
    type Error = OutOfRange;
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), OutOfRange> {
        self.writes += data.len();
        self.image.write(offset, data)
    }
}

fn apply_device(
    old: &[u8],
    patch: &[u8],
    chunk: usize,
    key: &SigningKey,
) -> (Result<(), ApplyError<OutOfRange>>, Recorder) {
    // The device's applier: a 512-byte heatshrink window.
    let mut applier = Applier::<512>::new(device_key(key));
    let mut source = old;
    let mut target = Recorder::default();
    for piece in patch.chunks(chunk) {
        if let Err(e) = applier.push(piece, &mut source, &mut target) {
            return (Err(e), target);
        }
    }
    (applier.finish().map(|_| ()), target)
}

#[test]
fn every_pair_round_trips_in_any_chunk_size() {
    for p in pairs() {
        for chunk in [1, 7, 51, 242] {
            let (result, target) = apply_device(&p.old, &p.patch, chunk, &key());
            result.unwrap_or_else(|e| panic!("{} chunk {chunk}: {e}", p.name));
            assert!(target.image == p.new, "{} chunk {chunk}", p.name);
        }
    }
}

/// The device lends the applier a window from RAM that is idle during the install (the
/// decoder workspace of a complete block): whatever it held, the image comes out the same.
#[test]
fn a_lent_window_with_leftovers_applies_every_pair() {
    for p in pairs() {
        let mut window: Vec<u8> = (0..1144u32).map(|i| (i * 37 + 11) as u8).collect();
        let verified = check_preamble::<OutOfRange>(&p.patch, &device_key(&key())).unwrap();
        let mut applier =
            BorrowedApplier::verified(device_key(&key()), verified, None, &mut window);
        let mut source = p.old.as_slice();
        let mut target = Vec::new();
        for piece in p.patch[PREAMBLE_LEN..].chunks(242) {
            applier.push(piece, &mut source, &mut target).unwrap();
        }
        applier.finish::<OutOfRange>().unwrap();
        assert!(target == p.new, "{}", p.name);
    }
    // A window smaller than the patch's (512 bytes by default) is refused as such.
    let p = &pairs()[0];
    let mut window = [0u8; 256];
    let verified = check_preamble::<OutOfRange>(&p.patch, &device_key(&key())).unwrap();
    let mut applier = BorrowedApplier::verified(device_key(&key()), verified, None, &mut window);
    let mut source = p.old.as_slice();
    let r = applier.push(&p.patch[PREAMBLE_LEN..], &mut source, &mut Vec::new());
    assert_eq!(
        r,
        Err(ApplyError::Payload(PayloadError::Heatshrink(
            HeatshrinkError::WindowTooLarge {
                window_bits: 9,
                capacity: 256
            }
        )))
    );
}

#[test]
fn tampering_is_caught_with_its_own_error() {
    for p in pairs() {
        let name = p.name;
        // A flipped bit in the manifest (security counter): the signature fails.
        let mut bad = p.patch.clone();
        bad[HEADER_LEN + 80] ^= 0x01;
        let (r, t) = apply_device(&p.old, &bad, 242, &key());
        assert_eq!(r, Err(ApplyError::BadSignature), "{name}");
        assert_eq!(t.writes, 0, "{name}");
        // A flipped bit in the header's magic: not a patch at all.
        let mut bad = p.patch.clone();
        bad[0] ^= 0x80;
        let (r, t) = apply_device(&p.old, &bad, 242, &key());
        assert_eq!(
            r,
            Err(ApplyError::Container(ContainerError::BadMagic)),
            "{name}"
        );
        assert_eq!(t.writes, 0);
        // A flipped bit in the signature.
        let mut bad = p.patch.clone();
        bad[SIGNED_LEN + 40] ^= 0x04;
        let (r, t) = apply_device(&p.old, &bad, 242, &key());
        assert_eq!(r, Err(ApplyError::BadSignature), "{name}");
        assert_eq!(t.writes, 0);
        // Another key.
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let (r, t) = apply_device(&p.old, &p.patch, 242, &other);
        assert_eq!(r, Err(ApplyError::BadSignature), "{name}");
        assert_eq!(t.writes, 0);
        // A wrong source image (one byte changed): refused before any write.
        let mut old = p.old.clone();
        let mid = old.len() / 2;
        old[mid] ^= 0x10;
        let (r, t) = apply_device(&old, &p.patch, 242, &key());
        assert_eq!(r, Err(ApplyError::SourceMismatch), "{name}");
        assert_eq!(t.writes, 0, "{name}: bytes written before the source check");
        // Another pair's old image entirely.
        let other_old = &pairs()
            [(pairs().iter().position(|q| q.name == name).unwrap() + 1) % pairs().len()]
        .old;
        let (r, t) = apply_device(other_old, &p.patch, 242, &key());
        assert!(
            matches!(r, Err(ApplyError::SourceMismatch | ApplyError::Source(_))),
            "{name}: {r:?}"
        );
        assert_eq!(t.writes, 0);
        // Truncated: the last byte, or everything after the preamble, missing.
        for cut in [p.patch.len() - 1, PREAMBLE_LEN + 10, PREAMBLE_LEN - 1] {
            let (r, _) = apply_device(&p.old, &p.patch[..cut], 242, &key());
            assert_eq!(r, Err(ApplyError::Truncated), "{name} cut at {cut}");
        }
        // A byte too many.
        let mut long = p.patch.clone();
        long.push(0);
        let (r, _) = apply_device(&p.old, &long, 242, &key());
        assert_eq!(r, Err(ApplyError::TrailingBytes), "{name}");
        // Flipped bits in the payload: its own structure, or else its SHA-256 in the signed
        // manifest, catches every one.
        for at in [
            PREAMBLE_LEN + 3,
            (PREAMBLE_LEN + p.patch.len()) / 2,
            p.patch.len() - 2,
        ] {
            let mut bad = p.patch.clone();
            bad[at] ^= 0x20;
            let (r, _) = apply_device(&p.old, &bad, 242, &key());
            assert!(
                matches!(r, Err(ApplyError::PayloadMismatch | ApplyError::Payload(_))),
                "{name} payload bit at {at}: {r:?}"
            );
        }
    }
}

#[test]
fn interrupted_apply_resumes_from_its_checkpoint() {
    let p = &pairs()[0];
    let key = key();
    // First run: power is lost after ~40% of the patch; the last durable checkpoint was
    // taken a little before that.
    let mut applier = Applier::<512>::new(device_key(&key));
    let mut source = p.old.as_slice();
    let mut target = Recorder::default();
    let mut saved: Option<[u8; Checkpoint::LEN]> = None;
    for (i, piece) in p.patch.chunks(51).enumerate() {
        applier.push(piece, &mut source, &mut target).unwrap();
        if i % 100 == 0 {
            saved = applier.checkpoint().map(|c| c.to_bytes());
        }
        if i * 51 > p.patch.len() * 2 / 5 {
            break;
        }
    }
    let checkpoint = Checkpoint::from_bytes(&saved.unwrap());
    assert!(checkpoint.written > 0 && checkpoint.written < p.new.len() as u32);
    // Garbage beyond the checkpoint (a torn write) must be overwritten.
    target.image.truncate(checkpoint.written as usize);
    target.image.extend_from_slice(&[0xff; 100]);
    let before = target.writes;
    let mut resumed = Applier::<512>::resume(device_key(&key), checkpoint);
    for piece in p.patch.chunks(242) {
        resumed.push(piece, &mut source, &mut target).unwrap();
    }
    resumed.finish::<OutOfRange>().unwrap();
    assert!(target.image == p.new);
    assert_eq!(
        target.writes - before,
        p.new.len() - checkpoint.written as usize,
        "bytes below the checkpoint are not written again"
    );
    // A checkpoint of another patch is refused.
    let other = Checkpoint {
        target_sha256: [1; 32],
        written: 10,
    };
    let mut wrong = Applier::<512>::resume(device_key(&key), other);
    assert_eq!(
        wrong.push(&p.patch, &mut source, &mut target),
        Err(ApplyError::CheckpointMismatch)
    );
}

#[test]
fn full_image_patch_when_delta_does_not_pay() {
    // Unrelated images: the delta is no smaller than the compressed image.
    let p = &pairs()[3];
    let unrelated: Vec<u8> = (0..p.new.len() as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let created = patch::create(&unrelated, &p.new, &key(), &CreateOptions::default()).unwrap();
    assert_eq!(created.manifest.kind, Kind::Full);
    assert_eq!(created.manifest.source_len, 0);
    for chunk in [1, 242] {
        // Any source (even empty) works for a full image.
        let (r, t) = apply_device(&[], &created.bytes, chunk, &key());
        r.unwrap();
        assert!(t.image == p.new);
    }
}

#[test]
fn window_budget_is_respected() {
    let p = &pairs()[1];
    for max_window in [16, 64, 256] {
        let created = patch::create(
            &p.old,
            &p.new,
            &key(),
            &CreateOptions {
                max_window,
                ..CreateOptions::default()
            },
        )
        .unwrap();
        let fuota_codec::patch::Compression::Heatshrink(params) = created.manifest.compression
        else {
            panic!("uncompressed");
        };
        assert!(params.window_len() <= max_window);
        // A device with exactly that window applies it.
        let mut applier = Applier::<16>::new(device_key(&key()));
        let mut source = p.old.as_slice();
        let mut target = Vec::new();
        let r = applier.push(&created.bytes, &mut source, &mut target);
        if max_window == 16 {
            r.unwrap();
            applier.finish::<OutOfRange>().unwrap();
            assert!(target == p.new);
        } else if params.window_len() > 16 {
            assert!(matches!(r, Err(ApplyError::Payload(_))), "{r:?}");
        }
    }
    assert!(patch::window_bits(1000).is_err());
}
