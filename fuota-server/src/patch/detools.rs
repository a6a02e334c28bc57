//! detools sequential patches from qbsdiff's matches.
//!
//! qbsdiff writes BSDIFF40: a 32-byte header, then bzip2 blocks of control triples
//! `(add, copy, seek)` as 8-byte sign-magnitude integers, diff bytes and extra bytes. The
//! same triples, with the diff and extra bytes interleaved and detools size integers, are the
//! decompressed stream of a detools sequential patch.

use std::io::Read;

use fuota_codec::patch::detools::{encode_size, COMPRESSION_HEATSHRINK, COMPRESSION_NONE};
use fuota_codec::patch::heatshrink::Params;

use super::PatchError;

/// One bsdiff step: add `diff.len()` bytes to the source, copy `extra`, move the source by `seek`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub add: u64,
    pub copy: u64,
    pub seek: i64,
}

/// qbsdiff's controls with the diff and extra data they consume.
#[derive(Debug, Clone, Default)]
pub struct Bsdiff {
    pub controls: Vec<Control>,
    pub diff: Vec<u8>,
    pub extra: Vec<u8>,
}

fn offtin(b: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[..8]);
    let x = u64::from_le_bytes(raw);
    let magnitude = (x & !(1 << 63)) as i64;
    if x >> 63 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

fn bunzip(block: &[u8]) -> Result<Vec<u8>, PatchError> {
    let mut out = Vec::new();
    bzip2::read::BzDecoder::new(block)
        .read_to_end(&mut out)
        .map_err(|e| PatchError::Internal(format!("qbsdiff output: {e}")))?;
    Ok(out)
}

/// Finds matches between `source` and `target` with qbsdiff.
pub fn diff(source: &[u8], target: &[u8], small_match: usize) -> Result<Bsdiff, PatchError> {
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(source, target)
        .compression_level(1)
        .small_match(small_match)
        .parallel_scheme(qbsdiff::ParallelScheme::Never)
        .compare(std::io::Cursor::new(&mut patch))
        .map_err(|e| PatchError::Internal(format!("qbsdiff: {e}")))?;
    if patch.len() < 32 || &patch[..8] != b"BSDIFF40" {
        return Err(PatchError::Internal(
            "qbsdiff output is not BSDIFF40".into(),
        ));
    }
    let ctrl_len = usize::try_from(offtin(&patch[8..]))
        .map_err(|_| PatchError::Internal("qbsdiff control length".into()))?;
    let diff_len = usize::try_from(offtin(&patch[16..]))
        .map_err(|_| PatchError::Internal("qbsdiff diff length".into()))?;
    let body = &patch[32..];
    if ctrl_len + diff_len > body.len() {
        return Err(PatchError::Internal("qbsdiff block lengths".into()));
    }
    let ctrl = bunzip(&body[..ctrl_len])?;
    let diff = bunzip(&body[ctrl_len..ctrl_len + diff_len])?;
    let extra = bunzip(&body[ctrl_len + diff_len..])?;
    let controls = ctrl
        .chunks_exact(24)
        .map(|c| Control {
            add: offtin(&c[0..]) as u64,
            copy: offtin(&c[8..]) as u64,
            seek: offtin(&c[16..]),
        })
        .collect();
    Ok(Bsdiff {
        controls,
        diff,
        extra,
    })
}

/// The decompressed stream of a sequential patch: data-format size 0, then the controls.
/// Steps after the target is complete are dropped (detools stops reading there).
pub fn sequential_stream(b: &Bsdiff, target_len: usize) -> Result<Vec<u8>, PatchError> {
    let mut out = Vec::with_capacity(target_len + target_len / 8);
    let mut size = [0u8; 10];
    out.extend_from_slice(encode_size(0, &mut size));
    let (mut d, mut e, mut produced) = (0usize, 0usize, 0usize);
    for c in &b.controls {
        if produced == target_len {
            break;
        }
        let (add, copy) = (c.add as usize, c.copy as usize);
        if d + add > b.diff.len() || e + copy > b.extra.len() {
            return Err(PatchError::Internal("qbsdiff controls overrun data".into()));
        }
        out.extend_from_slice(encode_size(add as i64, &mut size));
        out.extend_from_slice(&b.diff[d..d + add]);
        out.extend_from_slice(encode_size(copy as i64, &mut size));
        out.extend_from_slice(&b.extra[e..e + copy]);
        out.extend_from_slice(encode_size(c.seek, &mut size));
        d += add;
        e += copy;
        produced += add + copy;
    }
    if produced != target_len {
        return Err(PatchError::Internal(format!(
            "qbsdiff controls cover {produced} of {target_len} target bytes"
        )));
    }
    Ok(out)
}

/// A complete detools sequential patch around an already compressed stream.
pub fn frame(target_len: usize, params: Option<Params>, compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(compressed.len() + 8);
    let compression = if params.is_some() {
        COMPRESSION_HEATSHRINK
    } else {
        COMPRESSION_NONE
    };
    out.push(compression);
    let mut size = [0u8; 10];
    out.extend_from_slice(encode_size(target_len as i64, &mut size));
    if let Some(p) = params {
        out.push(p.detools_byte());
    }
    out.extend_from_slice(compressed);
    out
}
