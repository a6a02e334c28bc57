//! Tests that cross crates live in `tests/tests/`; this library holds what they share.

pub mod rig;

use fuota_codec::patch::container::ImageVersion;
use sha2::{Digest, Sha256};

/// A minimal MCUboot image: 0x200-byte header area, `body`, a protected TLV area with the
/// security counter, a TLV area with the SHA256 (no signature: the agent checks the hash,
/// MCUboot the signature).
pub fn mcuboot_image(body: &[u8], v: ImageVersion, security_counter: u32) -> Vec<u8> {
    let mut img = vec![0u8; 0x200];
    img[..4].copy_from_slice(&0x96f3_b83du32.to_le_bytes());
    img[8..10].copy_from_slice(&0x200u16.to_le_bytes());
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
    let hash = Sha256::digest(&img);
    for field in [0x6907u16, 40, 0x10, 32] {
        img.extend_from_slice(&field.to_le_bytes());
    }
    img.extend_from_slice(&hash);
    img
}

/// A file of a shared firmware pair, found beside the project or one of its parents.
pub fn firmware(pair: &str, name: &str) -> Vec<u8> {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = here
        .ancestors()
        .map(|a| a.join("shared/firmware").join(pair).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("shared/firmware/{pair}/{name} beside the project"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `bytes` padded with 0xFF to a multiple of 8 (a flash write unit).
pub fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(8) * 8, 0xff);
    v
}

/// An update as the server makes it: the simba-programmer pair as MCUboot images (0.8.0,
/// security counter 1 -> 0.9.0, counter 2) and the signed patch between them.
#[derive(Debug)]
pub struct SimbaUpdate {
    pub old: Vec<u8>,
    pub new: Vec<u8>,
    pub patch: Vec<u8>,
    pub key: p256::ecdsa::SigningKey,
}

impl SimbaUpdate {
    /// The public half of `key`, as the device holds it.
    pub fn device_key(&self) -> fuota_codec::patch::VerifyingKey {
        fuota_server::patch::keys::device_key(self.key.verifying_key()).expect("a P-256 key")
    }
}

pub fn simba_update(key_seed: u8) -> SimbaUpdate {
    let v = |minor| ImageVersion {
        major: 0,
        minor,
        revision: 0,
        build: 0,
    };
    let old = mcuboot_image(&firmware("simba-programmer", "0.8.0.bin"), v(8), 1);
    let new = mcuboot_image(&firmware("simba-programmer", "0.9.0.bin"), v(9), 2);
    let key = p256::ecdsa::SigningKey::from_slice(&[key_seed; 32]).expect("a valid scalar");
    let created = fuota_server::patch::create(
        &old,
        &new,
        &key,
        &fuota_server::patch::CreateOptions {
            version: v(9),
            security_counter: 2,
            ..Default::default()
        },
    )
    .expect("patch");
    SimbaUpdate {
        old,
        new,
        patch: created.bytes,
        key,
    }
}
