//! Making signed patches: bsdiff matches (qbsdiff) framed as a detools sequential patch,
//! compressed with heatshrink at the window/lookahead pair that gives the smallest result
//! within the device's RAM budget, or the whole image when that is smaller; then the manifest
//! and an ECDSA P-256 signature. Applying is the codec's streaming [`Applier`], the code the
//! device runs.

pub mod detools;
pub mod heatshrink;
pub mod keys;

use std::fmt;

use fuota_codec::patch::apply::{Applier, ApplyError, OutOfRange};
use fuota_codec::patch::container::{Compression, ImageVersion, Kind, Manifest, SIGNED_LEN};
use fuota_codec::patch::heatshrink::Params;
use fuota_codec::patch::VerifyingKey;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

/// Heatshrink window the CLI's applier accepts (the largest heatshrink defines), so that it
/// can apply patches made for any device.
pub const HOST_WINDOW: usize = 1 << 15;
/// Default device budget for the heatshrink window (2^9 bytes).
pub const DEFAULT_MAX_WINDOW: usize = 512;

/// Why a patch could not be made or read.
#[derive(Debug)]
pub enum PatchError {
    /// An image is larger than 4 GiB or the target is empty.
    BadImage(String),
    /// `--max-window` is not a power of two between 16 and 32768.
    BadWindow(usize),
    /// A key file could not be read.
    Key(String),
    /// qbsdiff returned something unexpected (a bug, not bad input).
    Internal(String),
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::BadImage(m) => f.write_str(m),
            PatchError::BadWindow(w) => write!(
                f,
                "max window {w} bytes: must be a power of two from 16 to 32768"
            ),
            PatchError::Key(m) => write!(f, "key: {m}"),
            PatchError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for PatchError {}

/// What `create` is asked for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub version: ImageVersion,
    pub security_counter: u32,
    /// Largest heatshrink window the device can hold, in bytes (a power of two).
    pub max_window: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            version: ImageVersion::default(),
            security_counter: 0,
            max_window: DEFAULT_MAX_WINDOW,
        }
    }
}

/// The window exponent for a byte budget.
pub fn window_bits(max_window: usize) -> Result<u8, PatchError> {
    if !max_window.is_power_of_two() || !(16..=1 << 15).contains(&max_window) {
        return Err(PatchError::BadWindow(max_window));
    }
    Ok(max_window.trailing_zeros() as u8)
}

/// A compressed payload candidate.
#[derive(Debug, Clone)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub params: Params,
}

/// A signed patch and how it was made.
#[derive(Debug, Clone)]
pub struct Created {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Payload size of the delta (detools sequential, heatshrink), whether chosen or not.
    pub delta_len: usize,
    /// Payload size of the compressed full image, whether chosen or not.
    pub full_len: usize,
}

fn check_len(name: &str, image: &[u8]) -> Result<u32, PatchError> {
    u32::try_from(image.len())
        .map_err(|_| PatchError::BadImage(format!("{name} image is larger than 4 GiB")))
}

/// qbsdiff's small-match thresholds tried; the smallest patch wins. (Skipping short matches
/// keeps long runs of zeros in the diff stream, which heatshrink codes cheaply; how short is
/// best depends on the image.)
const SMALL_MATCHES: [usize; 2] = [0, 16];

/// The smallest detools sequential patch (heatshrink) with a window of at most
/// `2^max_window_bits`, framed.
pub fn delta(old: &[u8], new: &[u8], max_window_bits: u8) -> Result<Payload, PatchError> {
    use rayon::prelude::*;
    check_len("old", old)?;
    check_len("new", new)?;
    if new.is_empty() {
        return Err(PatchError::BadImage("new image is empty".into()));
    }
    let candidates = heatshrink::candidate_params(max_window_bits);
    let streams: Vec<Vec<u8>> = SMALL_MATCHES
        .par_iter()
        .map(|&small| {
            let b = detools::diff(old, new, small)?;
            detools::sequential_stream(&b, new.len())
        })
        .collect::<Result<_, _>>()?;
    let best = streams
        .par_iter()
        .filter_map(|s| heatshrink::compress_best(s, &candidates))
        .min_by_key(|(_, c)| c.len())
        .ok_or_else(|| PatchError::Internal("no heatshrink candidate".into()))?;
    let (params, compressed) = best;
    Ok(Payload {
        bytes: detools::frame(new.len(), Some(params), &compressed),
        params,
    })
}

/// The whole image, heatshrink-compressed at its best pair.
pub fn full(new: &[u8], max_window_bits: u8) -> Result<Payload, PatchError> {
    check_len("new", new)?;
    if new.is_empty() {
        return Err(PatchError::BadImage("new image is empty".into()));
    }
    let candidates = heatshrink::candidate_params(max_window_bits);
    let (params, bytes) = heatshrink::compress_best(new, &candidates)
        .ok_or_else(|| PatchError::Internal("no heatshrink candidate".into()))?;
    Ok(Payload { bytes, params })
}

/// Makes a signed patch from `old` to `new`: a delta, or the full image when the delta is
/// not smaller.
pub fn create(
    old: &[u8],
    new: &[u8],
    key: &SigningKey,
    options: &CreateOptions,
) -> Result<Created, PatchError> {
    let bits = window_bits(options.max_window)?;
    let (delta, full) = rayon::join(|| delta(old, new, bits), || full(new, bits));
    let delta = delta?;
    let full = full?;
    let (kind, payload) = if delta.bytes.len() < full.bytes.len() {
        (Kind::Delta, &delta)
    } else {
        (Kind::Full, &full)
    };
    let (source_len, source_sha256) = match kind {
        Kind::Delta => (check_len("old", old)?, Sha256::digest(old).into()),
        Kind::Full => (0, [0u8; 32]),
    };
    let manifest = Manifest {
        kind,
        source_len,
        source_sha256,
        target_len: check_len("new", new)?,
        target_sha256: Sha256::digest(new).into(),
        version: options.version,
        security_counter: options.security_counter,
        payload_len: u32::try_from(payload.bytes.len())
            .map_err(|_| PatchError::BadImage("payload larger than 4 GiB".into()))?,
        payload_sha256: Sha256::digest(&payload.bytes).into(),
        compression: Compression::Heatshrink(payload.params),
    };
    Ok(Created {
        bytes: seal(&manifest, &payload.bytes, key),
        manifest,
        delta_len: delta.bytes.len(),
        full_len: full.bytes.len(),
    })
}

/// Header, manifest, signature and payload, as one patch file.
pub fn seal(manifest: &Manifest, payload: &[u8], key: &SigningKey) -> Vec<u8> {
    use p256::ecdsa::signature::Signer;
    let mut signed = [0u8; SIGNED_LEN];
    manifest.build_into(&mut signed);
    let signature: Signature = key.sign(&signed);
    let mut out = Vec::with_capacity(signed.len() + 64 + payload.len());
    out.extend_from_slice(&signed);
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// Applies a patch in memory with the device's streaming code, in chunks of `chunk` bytes
/// (the key: [`keys::verifying_key_from_pem`] or [`keys::device_key`]).
pub fn apply(
    old: &[u8],
    patch: &[u8],
    key: &VerifyingKey,
    chunk: usize,
) -> Result<(Vec<u8>, Manifest), ApplyError<OutOfRange>> {
    let mut applier = Applier::<HOST_WINDOW>::new(*key);
    let mut source = old;
    let mut target = Vec::new();
    for piece in patch.chunks(chunk.max(1)) {
        applier.push(piece, &mut source, &mut target)?;
    }
    let applied = applier.finish()?;
    Ok((target, applied.manifest))
}
