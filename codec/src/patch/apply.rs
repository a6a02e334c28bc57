//! The streaming patch applier the device runs (and `fuota patch apply` too).
//!
//! Bytes of a patch go in, in chunks of any size. The first [`PREAMBLE_LEN`] are the header,
//! manifest and signature: the signature is checked, then the source image's SHA-256 (read
//! through [`SourceImage`]) before a single byte is written. The payload then streams through
//! the heatshrink decoder into bspatch (or straight out, for a full image), and the target
//! bytes leave in order through [`TargetImage`]. [`Applier::finish`] checks the target length
//! and SHA-256.
//!
//! Resuming after power loss: [`Applier::checkpoint`] records how many target bytes were
//! written. [`Applier::resume`] starts over on the same patch, verifies it all again, and
//! re-derives the target bytes without writing those below the checkpoint. The bytes it
//! derives are a function of the verified patch and source alone, and the SHA-256 at the end
//! covers all of them, so an interrupted apply either completes with the right image or
//! fails; it never completes with a wrong one.

use super::{SignatureCheck, VerifyingKey};
use crate::sha256::Sha256;

use super::container::{Compression, ContainerError, Kind, Manifest, PREAMBLE_LEN, SIGNED_LEN};
use super::detools::{
    Bspatch, BspatchError, BspatchIo, HeaderReader, PayloadError, SequentialHeader,
    COMPRESSION_HEATSHRINK, COMPRESSION_NONE,
};
use super::heatshrink::Decoder;

/// The old image, read at random.
pub trait SourceImage {
    type Error;
    /// Fills `buf` with the bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
}

/// The new image, written once, in order (offsets only grow, except when a resumed apply
/// starts again at its checkpoint).
pub trait TargetImage {
    type Error;
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
}

/// An access outside an in-memory image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub offset: u32,
    pub len: usize,
}

impl core::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} are outside the image",
            self.len, self.offset
        )
    }
}

fn range(offset: u32, len: usize, size: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
    let start = offset as usize;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(OutOfRange { offset, len }),
    }
}

impl SourceImage for [u8] {
    type Error = OutOfRange;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), OutOfRange> {
        buf.copy_from_slice(&self[range(offset, buf.len(), self.len())?]);
        Ok(())
    }
}

impl SourceImage for &[u8] {
    type Error = OutOfRange;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), OutOfRange> {
        buf.copy_from_slice(&self[range(offset, buf.len(), self.len())?]);
        Ok(())
    }
}

impl TargetImage for [u8] {
    type Error = OutOfRange;
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), OutOfRange> {
        let r = range(offset, data.len(), self.len())?;
        self[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl TargetImage for alloc::vec::Vec<u8> {
    type Error = OutOfRange;
    /// Writes anywhere up to the current end (resumes overwrite the tail).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), OutOfRange> {
        let start = offset as usize;
        if start > self.len() {
            return Err(OutOfRange {
                offset,
                len: data.len(),
            });
        }
        self.truncate(start);
        self.extend_from_slice(data);
        Ok(())
    }
}

/// Why an apply failed. `E` is the error type of the image traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError<E> {
    /// Header or manifest malformed.
    Container(ContainerError),
    /// The signature does not verify with this public key (or is not a valid signature).
    BadSignature,
    /// The source image's SHA-256 differs from the manifest's: wrong or damaged old image.
    SourceMismatch,
    /// The payload is malformed.
    Payload(PayloadError),
    /// More bytes were pushed than the manifest's payload size.
    TrailingBytes,
    /// [`Applier::finish`] came before the whole payload was pushed, or the payload ended
    /// before the target was complete.
    Truncated,
    /// The payload produced a target of another length than the manifest's.
    TargetLength { expected: u32, got: u32 },
    /// The payload's SHA-256 differs from the manifest's: damaged after signing.
    PayloadMismatch,
    /// The rebuilt target's SHA-256 differs from the manifest's.
    TargetMismatch,
    /// The checkpoint given to [`Applier::resume`] belongs to another patch.
    CheckpointMismatch,
    /// An earlier call failed; the applier accepts nothing more.
    Failed,
    /// Reading the source image failed.
    Source(E),
    /// Writing the target image failed.
    Target(E),
}

impl<E: core::fmt::Display> core::fmt::Display for ApplyError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApplyError::Container(e) => e.fmt(f),
            ApplyError::BadSignature => {
                f.write_str("signature does not verify with the given public key")
            }
            ApplyError::SourceMismatch => {
                f.write_str("source image SHA-256 differs from the manifest: wrong old image")
            }
            ApplyError::Payload(e) => write!(f, "bad payload: {e}"),
            ApplyError::TrailingBytes => f.write_str("bytes after the end of the payload"),
            ApplyError::Truncated => f.write_str("patch truncated: payload incomplete"),
            ApplyError::TargetLength { expected, got } => {
                write!(f, "target is {got} bytes, manifest says {expected}")
            }
            ApplyError::PayloadMismatch => {
                f.write_str("payload SHA-256 differs from the manifest: patch damaged")
            }
            ApplyError::TargetMismatch => {
                f.write_str("rebuilt image SHA-256 differs from the manifest")
            }
            ApplyError::CheckpointMismatch => f.write_str("checkpoint belongs to another patch"),
            ApplyError::Failed => f.write_str("applier already failed"),
            ApplyError::Source(e) => write!(f, "reading the source image: {e}"),
            ApplyError::Target(e) => write!(f, "writing the target image: {e}"),
        }
    }
}

impl<E> From<PayloadError> for ApplyError<E> {
    fn from(e: PayloadError) -> Self {
        ApplyError::Payload(e)
    }
}

impl<E> From<ContainerError> for ApplyError<E> {
    fn from(e: ContainerError) -> Self {
        ApplyError::Container(e)
    }
}

/// Parses header and manifest and checks the signature over them.
pub fn verify_preamble<E>(
    preamble: &[u8],
    key: &impl SignatureCheck,
) -> Result<Manifest, ApplyError<E>> {
    check_preamble(preamble, key).map(|v| v.0)
}

/// A manifest whose signature has been checked: only [`check_preamble`] makes one, and
/// [`Applier::verified`] takes one, so a caller can check the preamble in one place (and
/// read the manifest, e.g. for anti-rollback) and apply in another, without a second check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified(Manifest);

impl Verified {
    pub fn manifest(&self) -> &Manifest {
        &self.0
    }
}

/// [`verify_preamble`], returning the proof of the check.
pub fn check_preamble<E>(
    preamble: &[u8],
    key: &impl SignatureCheck,
) -> Result<Verified, ApplyError<E>> {
    if preamble.len() < PREAMBLE_LEN {
        return Err(ContainerError::Truncated {
            needed: PREAMBLE_LEN,
            got: preamble.len(),
        }
        .into());
    }
    // Structure first, so a garbled file says "bad magic", not "bad signature".
    let manifest = Manifest::parse(preamble)?;
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&preamble[SIGNED_LEN..PREAMBLE_LEN]);
    let digest = Sha256::digest(&preamble[..SIGNED_LEN]);
    if !key.verify_digest(&digest, &signature) {
        return Err(ApplyError::BadSignature);
    }
    Ok(Verified(manifest))
}

/// Where an apply stands, saved by the device so that it can resume after power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the patch (its manifest's target SHA-256).
    pub target_sha256: [u8; 32],
    /// Target bytes written (and durable) so far.
    pub written: u32,
}

impl Checkpoint {
    pub const LEN: usize = 36;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.target_sha256);
        out[32..].copy_from_slice(&self.written.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Self {
        let mut target_sha256 = [0u8; 32];
        target_sha256.copy_from_slice(&bytes[..32]);
        Self {
            target_sha256,
            written: u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]),
        }
    }
}

/// What a container's manifest says the detools payload must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub compression: Compression,
    pub target_len: u32,
}

#[derive(Clone)]
enum DetoolsState<const N: usize> {
    /// Reading the header (outside the compressed stream).
    Header(HeaderReader),
    /// The (decompressed) body; `None`: uncompressed.
    Body {
        decoder: Option<Decoder<N>>,
        bspatch: Bspatch,
    },
}

/// Streaming applier of a bare detools sequential patch (none or heatshrink compression).
/// No signature and no hashes: [`Applier`] adds those around it.
#[derive(Clone)]
pub struct DetoolsApplier<const N: usize = 512> {
    source_len: u32,
    expect: Option<Expect>,
    state: DetoolsState<N>,
}

impl<const N: usize> core::fmt::Debug for DetoolsApplier<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DetoolsApplier")
            .field("source_len", &self.source_len)
            .field("target_len", &self.target_len())
            .finish_non_exhaustive()
    }
}

/// Bridges bspatch to the images.
struct Io<'a, S: ?Sized, T: ?Sized> {
    source: &'a mut S,
    target: &'a mut T,
    pos: u32,
}

impl<S, T> BspatchIo for Io<'_, S, T>
where
    S: SourceImage + ?Sized,
    T: TargetImage<Error = S::Error> + ?Sized,
{
    type Error = ApplyError<S::Error>;
    fn read_source(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.source.read(offset, buf).map_err(ApplyError::Source)
    }
    fn emit(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.target
            .write(self.pos, bytes)
            .map_err(ApplyError::Target)?;
        self.pos += bytes.len() as u32;
        Ok(())
    }
}

/// Decompressed bytes handled at once (stack, not state).
const OUT_CHUNK: usize = 256;

fn from_bspatch<E>(e: BspatchError<ApplyError<E>>) -> ApplyError<E> {
    match e {
        BspatchError::Payload(e) => ApplyError::Payload(e),
        BspatchError::Io(e) => e,
    }
}

impl<const N: usize> DetoolsApplier<N> {
    /// An applier against a source of `source_len` bytes; `expect` pins compression and
    /// target size (a container's manifest), checked as soon as the header is read.
    pub fn new(source_len: u32, expect: Option<Expect>) -> Self {
        Self {
            source_len,
            expect,
            state: DetoolsState::Header(HeaderReader::default()),
        }
    }

    /// The target size, once the header has been read.
    pub fn target_len(&self) -> Option<u32> {
        match &self.state {
            DetoolsState::Header(_) => None,
            DetoolsState::Body { bspatch, .. } => Some(bspatch.target_len()),
        }
    }

    /// Target bytes written so far.
    pub fn written(&self) -> u32 {
        match &self.state {
            DetoolsState::Header(_) => 0,
            DetoolsState::Body { bspatch, .. } => bspatch.target_pos(),
        }
    }

    fn start_body(&mut self, header: SequentialHeader) -> Result<(), PayloadError> {
        if let Some(expect) = self.expect {
            if header.target_len != expect.target_len {
                return Err(PayloadError::TargetSizeMismatch);
            }
            match (expect.compression, header.compression, header.heatshrink) {
                (Compression::None, COMPRESSION_NONE, _) => {}
                (Compression::Heatshrink(want), COMPRESSION_HEATSHRINK, Some(got)) => {
                    if want != got {
                        return Err(PayloadError::HeatshrinkParamsMismatch);
                    }
                }
                _ => return Err(PayloadError::CompressionMismatch),
            }
        }
        let decoder = match header.heatshrink {
            Some(params) => Some(Decoder::new(params)?),
            None => None,
        };
        self.state = DetoolsState::Body {
            decoder,
            bspatch: Bspatch::new(self.source_len, header.target_len),
        };
        Ok(())
    }

    /// Feeds the next bytes of the patch; target bytes leave through `target` in order.
    pub fn push<S, T>(
        &mut self,
        mut input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        while let DetoolsState::Header(reader) = &mut self.state {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(());
            };
            input = rest;
            if let Some(header) = reader.push(byte)? {
                self.start_body(header)?;
            }
        }
        let DetoolsState::Body { decoder, bspatch } = &mut self.state else {
            return Ok(());
        };
        let mut io = Io {
            source,
            target,
            pos: bspatch.target_pos(),
        };
        let Some(decoder) = decoder else {
            return bspatch.push(input, &mut io).map_err(from_bspatch);
        };
        let mut out = [0u8; OUT_CHUNK];
        decoder.decode_into(input, &mut out, |bytes| {
            bspatch.push(bytes, &mut io).map_err(from_bspatch)
        })
    }

    /// Checks that the patch was complete: the whole target produced, the compressed stream
    /// ended cleanly. Returns the target size.
    pub fn finish<E>(&self) -> Result<u32, ApplyError<E>> {
        match &self.state {
            DetoolsState::Header(_) => Err(ApplyError::Truncated),
            DetoolsState::Body { decoder, bspatch } => {
                if let Some(d) = decoder {
                    d.finish().map_err(|e| ApplyError::Payload(e.into()))?;
                }
                if !bspatch.is_done() {
                    return Err(PayloadError::Truncated.into());
                }
                Ok(bspatch.target_len())
            }
        }
    }
}

/// Target bytes as they are produced: hashed, and written only past the resume point.
#[derive(Clone)]
struct Sink {
    resume_from: u32,
    sha: Sha256,
}

struct Hashing<'a, T: ?Sized> {
    target: &'a mut T,
    sink: &'a mut Sink,
}

impl<T: TargetImage + ?Sized> TargetImage for Hashing<'_, T> {
    type Error = T::Error;
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), T::Error> {
        self.sink.sha.update(data);
        let skip = (self.sink.resume_from.saturating_sub(offset) as usize).min(data.len());
        if skip < data.len() {
            self.target.write(offset + skip as u32, &data[skip..])?;
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Stream<const N: usize> {
    Delta(DetoolsApplier<N>),
    /// A full image; `None`: uncompressed. The count is bytes produced.
    Full(Option<Decoder<N>>, u32),
}

#[derive(Clone)]
struct Payload<const N: usize> {
    manifest: Manifest,
    received: u32,
    payload_sha: Sha256,
    stream: Stream<N>,
    sink: Sink,
}

impl<const N: usize> Payload<N> {
    fn written(&self) -> u32 {
        match &self.stream {
            Stream::Delta(d) => d.written(),
            Stream::Full(_, n) => *n,
        }
    }
}

// No heap on the device: the preamble buffer and the payload state share one allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Phase<const N: usize> {
    Preamble {
        buf: [u8; PREAMBLE_LEN],
        len: usize,
    },
    /// The caller checked the preamble ([`Applier::after_preamble`]); the payload is next.
    Verified(Manifest),
    Payload(Payload<N>),
    Failed,
}

/// Streaming, verifying patch applier. `N` is the largest heatshrink window accepted (and
/// the decoder's buffer): 512 bytes by default, the patch maker's default budget. `K`
/// checks the signature ([`VerifyingKey`] by default).
#[derive(Clone)]
pub struct Applier<const N: usize = 512, K = VerifyingKey> {
    key: K,
    resume: Option<Checkpoint>,
    phase: Phase<N>,
}

impl<const N: usize, K> core::fmt::Debug for Applier<N, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.phase {
            Phase::Preamble { len, .. } => write!(f, "Applier(preamble, {len} bytes)"),
            Phase::Verified(_) => f.write_str("Applier(verified)"),
            Phase::Payload(p) => write!(f, "Applier(payload, {} bytes in)", p.received),
            Phase::Failed => f.write_str("Applier(failed)"),
        }
    }
}

/// What a successful apply produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub manifest: Manifest,
}

impl<const N: usize, K: SignatureCheck> Applier<N, K> {
    /// A fresh apply, trusting patches signed by `key`.
    pub fn new(key: K) -> Self {
        Self {
            key,
            resume: None,
            phase: Phase::Preamble {
                buf: [0; PREAMBLE_LEN],
                len: 0,
            },
        }
    }

    /// Starts the same patch again from its first byte after an interruption; target bytes
    /// below `checkpoint.written` are re-derived and hashed but not written again.
    pub fn resume(key: K, checkpoint: Checkpoint) -> Self {
        let mut applier = Self::new(key);
        applier.resume = Some(checkpoint);
        applier
    }

    /// Checks the preamble (the first [`PREAMBLE_LEN`] bytes of the patch: signature first)
    /// and returns an applier that takes the rest of the patch, with the verified manifest,
    /// for callers that must read the manifest before applying (anti-rollback) without
    /// paying for a second signature check. `resume` as in [`Applier::resume`]; a checkpoint
    /// of another target than this manifest's is dropped (the apply starts over).
    pub fn after_preamble<E>(
        preamble: &[u8],
        key: K,
        resume: Option<Checkpoint>,
    ) -> Result<(Self, Manifest), ApplyError<E>> {
        let verified = check_preamble(preamble, &key)?;
        Ok((Self::verified(key, verified, resume), verified.0))
    }

    /// An applier that takes the patch after its preamble, which [`check_preamble`] checked.
    /// `resume` as in [`Applier::after_preamble`].
    pub fn verified(key: K, verified: Verified, resume: Option<Checkpoint>) -> Self {
        let manifest = verified.0;
        let mut applier = Self::new(key);
        applier.resume = resume.filter(|c| c.target_sha256 == manifest.target_sha256);
        applier.phase = Phase::Verified(manifest);
        applier
    }

    /// The verified manifest, once the preamble has been checked.
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.phase {
            Phase::Verified(m) => Some(m),
            Phase::Payload(p) => Some(&p.manifest),
            _ => None,
        }
    }

    /// Target bytes produced so far.
    pub fn written(&self) -> u32 {
        match &self.phase {
            Phase::Payload(p) => p.written(),
            _ => 0,
        }
    }

    /// A checkpoint for the bytes written so far; the caller saves it only once those bytes
    /// are durable (flushed to flash).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        match &self.phase {
            Phase::Payload(p) => Some(Checkpoint {
                target_sha256: p.manifest.target_sha256,
                // Below the resume point the bytes are durable from the earlier run.
                written: p.written().max(p.sink.resume_from),
            }),
            _ => None,
        }
    }

    /// Feeds the next bytes of the patch.
    pub fn push<S, T>(
        &mut self,
        input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let result = self.push_inner(input, source, target);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn push_inner<S, T>(
        &mut self,
        mut input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        if let Phase::Preamble { buf, len } = &mut self.phase {
            let n = (PREAMBLE_LEN - *len).min(input.len());
            buf[*len..*len + n].copy_from_slice(&input[..n]);
            *len += n;
            input = &input[n..];
            if *len < PREAMBLE_LEN {
                return Ok(());
            }
            let manifest = verify_preamble(&buf[..], &self.key)?;
            self.phase = Phase::Payload(self.start_payload(manifest, source)?);
        }
        if let Phase::Verified(manifest) = self.phase {
            self.phase = Phase::Payload(self.start_payload(manifest, source)?);
        }
        let Phase::Payload(p) = &mut self.phase else {
            return Err(ApplyError::Failed);
        };
        if input.is_empty() {
            return Ok(());
        }
        let room = (p.manifest.payload_len - p.received) as usize;
        if input.len() > room {
            return Err(ApplyError::TrailingBytes);
        }
        p.received += input.len() as u32;
        p.payload_sha.update(input);
        let mut hashing = Hashing {
            target,
            sink: &mut p.sink,
        };
        match &mut p.stream {
            Stream::Delta(d) => d.push(input, source, &mut hashing),
            Stream::Full(decoder, written) => {
                let target_len = p.manifest.target_len;
                let mut emit = |bytes: &[u8], written: &mut u32| {
                    let end = u64::from(*written) + bytes.len() as u64;
                    if end > u64::from(target_len) {
                        return Err(ApplyError::TargetLength {
                            expected: target_len,
                            got: end.min(u64::from(u32::MAX)) as u32,
                        });
                    }
                    hashing.write(*written, bytes).map_err(ApplyError::Target)?;
                    *written = end as u32;
                    Ok(())
                };
                let Some(decoder) = decoder else {
                    return emit(input, written);
                };
                let mut out = [0u8; OUT_CHUNK];
                decoder.decode_into(input, &mut out, |bytes| emit(bytes, written))
            }
        }
    }

    fn start_payload<S: SourceImage + ?Sized>(
        &self,
        manifest: Manifest,
        source: &mut S,
    ) -> Result<Payload<N>, ApplyError<S::Error>> {
        if let Some(cp) = &self.resume {
            if cp.target_sha256 != manifest.target_sha256 || cp.written > manifest.target_len {
                return Err(ApplyError::CheckpointMismatch);
            }
        }
        let stream = match manifest.kind {
            Kind::Delta => {
                check_source(&manifest, source)?;
                Stream::Delta(DetoolsApplier::new(
                    manifest.source_len,
                    Some(Expect {
                        compression: manifest.compression,
                        target_len: manifest.target_len,
                    }),
                ))
            }
            Kind::Full => Stream::Full(
                match manifest.compression {
                    Compression::None => None,
                    Compression::Heatshrink(params) => {
                        Some(Decoder::new(params).map_err(|e| ApplyError::Payload(e.into()))?)
                    }
                },
                0,
            ),
        };
        Ok(Payload {
            manifest,
            received: 0,
            payload_sha: Sha256::new(),
            stream,
            sink: Sink {
                resume_from: self.resume.map_or(0, |c| c.written),
                sha: Sha256::new(),
            },
        })
    }

    /// Ends the apply: the whole payload must have been pushed, and the target must have the
    /// manifest's length and SHA-256.
    pub fn finish<E>(self) -> Result<Applied, ApplyError<E>> {
        let p = match self.phase {
            Phase::Payload(p) => p,
            Phase::Failed => return Err(ApplyError::Failed),
            Phase::Preamble { .. } | Phase::Verified(_) => return Err(ApplyError::Truncated),
        };
        if p.received != p.manifest.payload_len {
            return Err(ApplyError::Truncated);
        }
        if p.payload_sha.clone().finalize() != p.manifest.payload_sha256 {
            return Err(ApplyError::PayloadMismatch);
        }
        match &p.stream {
            Stream::Delta(d) => {
                d.finish()?;
            }
            Stream::Full(decoder, _) => {
                if let Some(d) = decoder {
                    d.finish().map_err(|e| ApplyError::Payload(e.into()))?;
                }
            }
        }
        let written = p.written();
        if written != p.manifest.target_len {
            return Err(ApplyError::TargetLength {
                expected: p.manifest.target_len,
                got: written,
            });
        }
        if p.sink.sha.finalize() != p.manifest.target_sha256 {
            return Err(ApplyError::TargetMismatch);
        }
        Ok(Applied {
            manifest: p.manifest,
        })
    }
}

/// Hashes the source image through the read trait and compares with the manifest.
fn check_source<S: SourceImage + ?Sized>(
    manifest: &Manifest,
    source: &mut S,
) -> Result<(), ApplyError<S::Error>> {
    let mut sha = Sha256::new();
    let mut buf = [0u8; 256];
    let mut offset = 0u32;
    while offset < manifest.source_len {
        let n = ((manifest.source_len - offset) as usize).min(buf.len());
        source
            .read(offset, &mut buf[..n])
            .map_err(ApplyError::Source)?;
        sha.update(&buf[..n]);
        offset += n as u32;
    }
    if sha.finalize() != manifest.source_sha256 {
        return Err(ApplyError::SourceMismatch);
    }
    Ok(())
}

// The device budget, checked on every target the crate is built for (thumbv7em in CI).
const _: () = assert!(core::mem::size_of::<Applier<512>>() < 1024 + 512);

#[cfg(test)]
mod tests {
    use super::*;

    /// The device's RAM for an apply: the state must stay under 1 KiB plus the window.
    /// (The figures are quoted in the crate README.)
    #[test]
    fn applier_state_fits_the_budget() {
        let applier = core::mem::size_of::<Applier<512>>();
        let window = 512;
        assert!(applier - window < 1024, "Applier<512> is {applier} bytes");
        assert!(core::mem::size_of::<DetoolsApplier<512>>() - window < 128);
        assert!(core::mem::size_of::<Decoder<512>>() - window < 32);
    }
}
