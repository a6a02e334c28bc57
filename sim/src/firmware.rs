//! Firmware for runs that name none: a synthetic but realistic MCUboot image pair.
//!
//! The old body looks like Thumb code: functions of 16- and 32-bit instruction words drawn
//! from a small vocabulary, literal pools of addresses into the image, and a table of
//! strings. The new body is the old one edited as a release would: some functions changed,
//! a few inserted and deleted (so every later address shifts), the literal pools rewritten
//! with the shifted addresses, and new strings. Both are wrapped as MCUboot images (0x200
//! header, protected TLV with the security counter, SHA256, KEYHASH and ECDSA-P256
//! signature TLVs) signed with a generated key.

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use fuota_codec::patch::container::ImageVersion;

/// Where the image is linked (the primary slot of a Cortex-M part).
const LOAD_BASE: u32 = 0x0800_8000;
const HEADER: usize = 0x200;

/// A function: a run of instruction words and a literal pool of addresses.
#[derive(Debug, Clone)]
struct Function {
    code: Vec<u8>,
    /// Indices of functions whose address the pool holds.
    calls: Vec<usize>,
}

fn function(rng: &mut ChaCha8Rng, nb_functions: usize) -> Function {
    // A vocabulary of common instruction words, so the code compresses as real code does.
    const WORDS: [u16; 24] = [
        0xb580, 0xaf00, 0x4618, 0x6878, 0x687b, 0x2300, 0x2b00, 0xd101, 0x4770, 0xbd80, 0x3708,
        0x46bd, 0xf7ff, 0xb082, 0x9001, 0x9b01, 0x4a03, 0x6013, 0x3301, 0x2201, 0xe7fe, 0x1c5a,
        0x0052, 0x4293,
    ];
    let words = rng.gen_range(12..120);
    let mut code = Vec::with_capacity(words * 2);
    for _ in 0..words {
        let w = if rng.gen_range(0..10) == 0 {
            rng.gen::<u16>()
        } else {
            WORDS[rng.gen_range(0..WORDS.len())]
        };
        code.extend_from_slice(&w.to_le_bytes());
    }
    let calls = (0..rng.gen_range(0..6))
        .map(|_| rng.gen_range(0..nb_functions.max(1)))
        .collect();
    Function { code, calls }
}

/// Lays functions out, literal pools after each with the callees' addresses.
fn link(functions: &[Function], strings: &[Vec<u8>]) -> Vec<u8> {
    let mut addr = Vec::with_capacity(functions.len());
    let mut at = LOAD_BASE + HEADER as u32;
    for f in functions {
        addr.push(at);
        at += (f.code.len() + 4 * f.calls.len()) as u32;
    }
    let mut out = Vec::new();
    for f in functions {
        out.extend_from_slice(&f.code);
        for &c in &f.calls {
            let a = addr.get(c).copied().unwrap_or(LOAD_BASE) | 1;
            out.extend_from_slice(&a.to_le_bytes());
        }
    }
    for s in strings {
        out.extend_from_slice(s);
        out.push(0);
    }
    out
}

fn string(rng: &mut ChaCha8Rng) -> Vec<u8> {
    const PARTS: [&str; 12] = [
        "meter", "error", "flash", "radio", "timeout", "reading", "valve", "battery", "index",
        "config", " %d", ": ",
    ];
    (0..rng.gen_range(2..6))
        .flat_map(|_| PARTS[rng.gen_range(0..PARTS.len())].bytes())
        .collect()
}

/// Bodies of an old and a new firmware, about `size` bytes each.
pub fn bodies(seed: u64, size: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut functions: Vec<Function> = Vec::new();
    let mut strings: Vec<Vec<u8>> = Vec::new();
    while link(&functions, &strings).len() < size * 9 / 10 {
        let n = functions.len() + 1;
        functions.push(function(&mut rng, n + 50));
    }
    while link(&functions, &strings).len() < size {
        strings.push(string(&mut rng));
    }
    let old = link(&functions, &strings);
    // The release: edits, insertions, deletions, new strings.
    let n = functions.len();
    for _ in 0..(n / 20).max(1) {
        let i = rng.gen_range(0..functions.len());
        let nb = functions.len();
        functions[i] = function(&mut rng, nb);
    }
    for _ in 0..(n / 40).max(1) {
        let i = rng.gen_range(0..functions.len());
        let nb = functions.len();
        functions.insert(i, function(&mut rng, nb));
    }
    for _ in 0..(n / 60).max(1) {
        let i = rng.gen_range(0..functions.len());
        functions.remove(i);
    }
    for _ in 0..(strings.len() / 10).max(1) {
        let i = rng.gen_range(0..strings.len());
        strings[i] = string(&mut rng);
    }
    let new = link(&functions, &strings);
    (old, new)
}

/// `body` as an MCUboot image of version `v`, signed by `key`.
pub fn mcuboot_image(
    body: &[u8],
    v: ImageVersion,
    security_counter: u32,
    key: &SigningKey,
) -> Vec<u8> {
    let mut img = vec![0u8; HEADER];
    img[..4].copy_from_slice(&0x96f3_b83du32.to_le_bytes());
    img[4..8].copy_from_slice(&LOAD_BASE.to_le_bytes());
    img[8..10].copy_from_slice(&(HEADER as u16).to_le_bytes());
    // Protected TLV area: info header and the security counter.
    img[10..12].copy_from_slice(&12u16.to_le_bytes());
    img[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
    img[20] = v.major;
    img[21] = v.minor;
    img[22..24].copy_from_slice(&v.revision.to_le_bytes());
    img[24..28].copy_from_slice(&v.build.to_le_bytes());
    img.extend_from_slice(body);
    for field in [0x6908u16, 12, 0x50, 4] {
        img.extend_from_slice(&field.to_le_bytes());
    }
    img.extend_from_slice(&security_counter.to_le_bytes());
    let hash: [u8; 32] = Sha256::digest(&img).into();
    let public = key
        .verifying_key()
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    let key_hash: [u8; 32] = Sha256::digest(&public).into();
    let signature: Signature = key
        .sign_prehash(&hash)
        .unwrap_or_else(|_| Signature::from_slice(&[1; 64]).expect("a fixed valid signature"));
    let der = signature.to_der();
    let tlvs: [(u16, &[u8]); 3] = [(0x10, &hash), (0x01, &key_hash), (0x22, der.as_bytes())];
    let total = 4 + tlvs.iter().map(|(_, v)| 4 + v.len()).sum::<usize>();
    img.extend_from_slice(&0x6907u16.to_le_bytes());
    img.extend_from_slice(&(total as u16).to_le_bytes());
    for (t, v) in tlvs {
        img.extend_from_slice(&t.to_le_bytes());
        img.extend_from_slice(&(v.len() as u16).to_le_bytes());
        img.extend_from_slice(v);
    }
    img
}

/// An update ready for a campaign: both images, the signed patch, and the keys.
#[derive(Debug, Clone)]
pub struct Update {
    pub old: Vec<u8>,
    pub new: Vec<u8>,
    pub old_version: ImageVersion,
    pub new_version: ImageVersion,
    pub patch: Vec<u8>,
    pub patch_key: SigningKey,
}

/// Makes the images of about `size` bytes and the patch between them.
pub fn synthetic_update(seed: u64, size: usize) -> anyhow::Result<Update> {
    let (old_body, new_body) = bodies(seed, size);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let image_key = SigningKey::random(&mut rng);
    let patch_key = SigningKey::random(&mut rng);
    let v = |minor| ImageVersion {
        major: 1,
        minor,
        revision: 0,
        build: 0,
    };
    let old = mcuboot_image(&old_body, v(0), 1, &image_key);
    let new = mcuboot_image(&new_body, v(1), 1, &image_key);
    update_from_images(old, new, patch_key)
}

/// The patch between two MCUboot images, signed with `patch_key`.
pub fn update_from_images(
    old: Vec<u8>,
    new: Vec<u8>,
    patch_key: SigningKey,
) -> anyhow::Result<Update> {
    let version = |img: &[u8]| -> anyhow::Result<ImageVersion> {
        let h: [u8; 32] = img
            .get(..32)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("image shorter than an MCUboot header"))?;
        let header = fuota_device_agent::mcuboot::ImageHeader::parse(&h)
            .ok_or_else(|| anyhow::anyhow!("not an MCUboot image (bad magic)"))?;
        Ok(header.version)
    };
    let (old_version, new_version) = (version(&old)?, version(&new)?);
    let created = fuota_server::patch::create(
        &old,
        &new,
        &patch_key,
        &fuota_server::patch::CreateOptions {
            version: new_version,
            security_counter: 1,
            ..Default::default()
        },
    )?;
    Ok(Update {
        old,
        new,
        old_version,
        new_version,
        patch: created.bytes,
        patch_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_that_patches_like_real_firmware() {
        let u = synthetic_update(1, 48 * 1024).unwrap();
        assert!(u.old.len() > 48 * 1024 && u.new.len() > 48 * 1024);
        assert_ne!(u.old, u.new);
        // A release diff: much smaller than the image, far from nothing.
        let ratio = u.patch.len() as f64 / u.new.len() as f64;
        assert!(
            (0.03..0.6).contains(&ratio),
            "{} / {}",
            u.patch.len(),
            u.new.len()
        );
        // The images pass the agent's MCUboot checks.
        let mut f = crate::flash::CowFlash::new(64);
        f.program(0, &u.new).unwrap();
        let slot = fuota_device_agent::slot::Region {
            offset: 0,
            len: 64 * 2048,
        };
        let info = fuota_device_agent::mcuboot::verify_image(&mut f, slot).unwrap();
        assert_eq!(info.header.version, u.new_version);
        assert_eq!(info.security_counter, Some(1));
        // Same seed, same pair.
        assert_eq!(synthetic_update(1, 48 * 1024).unwrap().patch, u.patch);
    }
}
