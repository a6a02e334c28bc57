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
use super::heatshrink::DecoderState;

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
    let mut digest = [0u8; 32];
    signed_digest(preamble, &mut digest)?;
    let Ok(signature) = <&[u8; 64]>::try_from(&preamble[SIGNED_LEN..PREAMBLE_LEN]) else {
        return Err(ApplyError::BadSignature);
    };
    if !key.verify_digest(&digest, signature) {
        return Err(ApplyError::BadSignature);
    }
    // Parsed again rather than kept: the manifest is not on the stack during the signature
    // check (the deepest stack of a device's install), and goes straight into the result.
    Ok(Verified(Manifest::parse(preamble)?))
}

/// The digest of the signed bytes into `digest`, once the header and manifest parse. Out of
/// line: the signature check that follows does not carry the parser's and hash's frames. An
/// out-parameter, not in the result: a digest inside a `Result` lies unaligned and costs
/// code to move out.
#[inline(never)]
fn signed_digest(preamble: &[u8], digest: &mut [u8; 32]) -> Result<(), ContainerError> {
    // Structure first, so a garbled file says "bad magic", not "bad signature". The parse's
    // error handed on as it is, not through `?` (whose conversion copies it twice).
    Manifest::parse(preamble).map(|_| {
        *digest = Sha256::digest(&preamble[..SIGNED_LEN]);
    })
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
enum DetoolsPhase {
    /// Reading the header (outside the compressed stream).
    Header(HeaderReader),
    /// The (decompressed) body; `None`: uncompressed.
    Body {
        decoder: Option<DecoderState>,
        bspatch: Bspatch,
    },
}

/// A detools apply without its heatshrink window, which each call is lent.
#[derive(Clone)]
struct Detools {
    source_len: u32,
    expect: Option<Expect>,
    phase: DetoolsPhase,
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
        // The error handed on, not through `?` (whose conversion copies it).
        self.target
            .write(self.pos, bytes)
            .map(|()| self.pos += bytes.len() as u32)
            .map_err(ApplyError::Target)
    }
}

fn from_bspatch<E>(e: BspatchError<ApplyError<E>>) -> ApplyError<E> {
    match e {
        BspatchError::Payload(e) => ApplyError::Payload(e),
        BspatchError::Io(e) => e,
    }
}

/// Where the payload's bytes go, for both kinds of payload: one type, so that the
/// heatshrink loop and its call of the sink are in the code once, not once per kind.
struct Out<'a, S: ?Sized, T: ?Sized> {
    io: Io<'a, S, T>,
    to: To<'a>,
}

enum To<'a> {
    /// Through bspatch, which writes through `io`.
    Delta(&'a mut Bspatch),
    /// Straight to `io`, up to the manifest's target length; `written` follows `io.pos`.
    Full {
        written: &'a mut u32,
        target_len: u32,
    },
}

impl<S, T> Out<'_, S, T>
where
    S: SourceImage + ?Sized,
    T: TargetImage<Error = S::Error> + ?Sized,
{
    fn emit(&mut self, bytes: &[u8]) -> Result<(), ApplyError<S::Error>> {
        match &mut self.to {
            To::Delta(bspatch) => bspatch.push(bytes, &mut self.io).map_err(from_bspatch),
            To::Full {
                written,
                target_len,
            } => {
                // `bytes` is at most the payload's length, a u32: the sum saturates where
                // the u64 one went past u32::MAX.
                let end = self.io.pos.saturating_add(bytes.len() as u32);
                if end > *target_len {
                    return Err(ApplyError::TargetLength {
                        expected: *target_len,
                        got: end,
                    });
                }
                // The error handed on as it is, not through `?` (whose conversion copies it).
                self.io.emit(bytes).map(|()| **written = self.io.pos)
            }
        }
    }

    /// Decodes `input` (if compressed) into [`Out::emit`].
    fn stream(
        mut self,
        decoder: Option<&mut DecoderState>,
        window: &mut [u8],
        input: &[u8],
    ) -> Result<(), ApplyError<S::Error>> {
        match decoder {
            None => self.emit(input),
            Some(decoder) => decoder.decode_in_window(window, input, |bytes| self.emit(bytes)),
        }
    }
}

impl Detools {
    fn new(source_len: u32, expect: Option<Expect>) -> Self {
        Self {
            source_len,
            expect,
            phase: DetoolsPhase::Header(HeaderReader::default()),
        }
    }

    fn target_len(&self) -> Option<u32> {
        match &self.phase {
            DetoolsPhase::Header(_) => None,
            DetoolsPhase::Body { bspatch, .. } => Some(bspatch.target_len()),
        }
    }

    fn written(&self) -> u32 {
        match &self.phase {
            DetoolsPhase::Header(_) => 0,
            DetoolsPhase::Body { bspatch, .. } => bspatch.target_pos(),
        }
    }

    fn start_body(
        &mut self,
        header: SequentialHeader,
        window: &mut [u8],
    ) -> Result<(), PayloadError> {
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
            Some(params) => Some(DecoderState::new(params, window)?),
            None => None,
        };
        self.phase = DetoolsPhase::Body {
            decoder,
            bspatch: Bspatch::new(self.source_len, header.target_len),
        };
        Ok(())
    }

    /// Takes the header bytes at the front of `input` (dropping them from it); then gives the
    /// body's decoder (`None`: uncompressed) and bspatch, or `None` while the header is short.
    fn body<'s>(
        &'s mut self,
        window: &mut [u8],
        input: &mut &[u8],
    ) -> Result<Option<(Option<&'s mut DecoderState>, &'s mut Bspatch)>, PayloadError> {
        while let DetoolsPhase::Header(reader) = &mut self.phase {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(None);
            };
            *input = rest;
            if let Some(header) = reader.push(byte)? {
                self.start_body(header, window)?;
            }
        }
        match &mut self.phase {
            DetoolsPhase::Body { decoder, bspatch } => Ok(Some((decoder.as_mut(), bspatch))),
            DetoolsPhase::Header(_) => Ok(None),
        }
    }

    fn push<S, T>(
        &mut self,
        window: &mut [u8],
        mut input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let Some((decoder, bspatch)) = self.body(window, &mut input)? else {
            return Ok(());
        };
        let pos = bspatch.target_pos();
        let io = Io {
            source,
            target,
            pos,
        };
        Out {
            io,
            to: To::Delta(bspatch),
        }
        .stream(decoder, window, input)
    }

    fn finish<E>(&self) -> Result<u32, ApplyError<E>> {
        let (decoder, bspatch) = self.ending()?;
        check_stream_end(decoder, bspatch.is_done())?;
        Ok(bspatch.target_len())
    }

    /// The body's decoder (`None`: uncompressed) and bspatch, for the end checks; `Truncated`
    /// while the header is still short.
    fn ending<E>(&self) -> Result<(Option<&DecoderState>, &Bspatch), ApplyError<E>> {
        match &self.phase {
            DetoolsPhase::Header(_) => Err(ApplyError::Truncated),
            DetoolsPhase::Body { decoder, bspatch } => Ok((decoder.as_ref(), bspatch)),
        }
    }
}

/// The end of a payload stream, delta or full: the decoder holds no partial input, and the
/// body is whole (`done`).
fn check_stream_end<E>(decoder: Option<&DecoderState>, done: bool) -> Result<(), ApplyError<E>> {
    if let Some(d) = decoder {
        d.finish().map_err(|e| ApplyError::Payload(e.into()))?;
    }
    if !done {
        return Err(PayloadError::Truncated.into());
    }
    Ok(())
}

/// Streaming applier of a bare detools sequential patch (none or heatshrink compression),
/// with a heatshrink window of `N` bytes of its own.
/// No signature and no hashes: [`Applier`] adds those around it.
#[derive(Clone)]
pub struct DetoolsApplier<const N: usize = 512> {
    detools: Detools,
    window: [u8; N],
}

impl<const N: usize> core::fmt::Debug for DetoolsApplier<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DetoolsApplier")
            .field("source_len", &self.detools.source_len)
            .field("target_len", &self.target_len())
            .finish_non_exhaustive()
    }
}

impl<const N: usize> DetoolsApplier<N> {
    /// An applier against a source of `source_len` bytes; `expect` pins compression and
    /// target size (a container's manifest), checked as soon as the header is read.
    pub fn new(source_len: u32, expect: Option<Expect>) -> Self {
        Self {
            detools: Detools::new(source_len, expect),
            window: [0; N],
        }
    }

    /// The target size, once the header has been read.
    pub fn target_len(&self) -> Option<u32> {
        self.detools.target_len()
    }

    /// Target bytes written so far.
    pub fn written(&self) -> u32 {
        self.detools.written()
    }

    /// Feeds the next bytes of the patch; target bytes leave through `target` in order.
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
        self.detools.push(&mut self.window, input, source, target)
    }

    /// Checks that the patch was complete: the whole target produced, the compressed stream
    /// ended cleanly. Returns the target size.
    pub fn finish<E>(&self) -> Result<u32, ApplyError<E>> {
        self.detools.finish()
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
        // The bytes past the resume point, if any.
        let skip = self.sink.resume_from.saturating_sub(offset) as usize;
        // The write's result handed on as it is, not through `?` (whose conversion copies it).
        match data.get(skip..) {
            Some(rest @ [_, ..]) => self.target.write(offset + skip as u32, rest),
            _ => Ok(()),
        }
    }
}

#[derive(Clone)]
enum Stream {
    /// The preamble is verified; the resume point (the sink's) and the source are checked
    /// at the first push.
    Pending,
    Delta(Detools),
    /// A full image; `None`: uncompressed. The count is bytes produced.
    Full(Option<DecoderState>, u32),
}

#[derive(Clone)]
struct Payload {
    manifest: Manifest,
    received: u32,
    payload_sha: Sha256,
    stream: Stream,
    sink: Sink,
}

impl Payload {
    /// `resume` is for this manifest's target: its callers have checked that.
    fn new(manifest: Manifest, resume: Option<Checkpoint>) -> Self {
        Self {
            manifest,
            received: 0,
            payload_sha: Sha256::new(),
            stream: Stream::Pending,
            sink: Sink {
                resume_from: resume.map_or(0, |c| c.written),
                sha: Sha256::new(),
            },
        }
    }

    fn written(&self) -> u32 {
        match &self.stream {
            Stream::Pending => 0,
            Stream::Delta(d) => d.written(),
            Stream::Full(_, n) => *n,
        }
    }

    /// Sets up the stream of the verified payload, still [`Stream::Pending`]: the checkpoint
    /// and (for a delta) the source image checked. Out of line, so that its buffers are not
    /// in every push's frame. On the payload its caller has matched, not on the applier: the
    /// phase is not looked at again.
    #[inline(never)]
    fn start<S: SourceImage + ?Sized>(
        &mut self,
        window: &mut [u8],
        source: &mut S,
    ) -> Result<(), ApplyError<S::Error>> {
        let manifest = &self.manifest;
        // The checkpoint's target is this manifest's (checked when the payload state was
        // made); its count must fit that target.
        if self.sink.resume_from > manifest.target_len {
            return Err(ApplyError::CheckpointMismatch);
        }
        self.stream = match manifest.kind {
            Kind::Delta => {
                // Its error handed on as it is, not through `?` (whose conversion copies it).
                if let e @ Err(_) = check_source(manifest, source) {
                    return e;
                }
                Stream::Delta(Detools::new(
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
                    // The error made in place, not through `?` (whose conversion copies it).
                    Compression::Heatshrink(params) => match DecoderState::new(params, window) {
                        Ok(decoder) => Some(decoder),
                        Err(e) => return Err(ApplyError::Payload(e.into())),
                    },
                },
                0,
            ),
        };
        Ok(())
    }

    /// Takes payload bytes. Out of line, like the other steps (the preamble check, the
    /// source check, the end): its buffers come and go below the applier's owner, one
    /// step's at a time.
    #[inline(never)]
    fn push<S, T>(
        &mut self,
        window: &mut [u8],
        input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let room = (self.manifest.payload_len - self.received) as usize;
        if input.len() > room {
            return Err(ApplyError::TrailingBytes);
        }
        self.received += input.len() as u32;
        self.payload_sha.update(input);
        let mut hashing = Hashing {
            target,
            sink: &mut self.sink,
        };
        let mut input = input;
        let (decoder, to) = match &mut self.stream {
            Stream::Pending => return Err(ApplyError::Failed),
            Stream::Delta(d) => {
                let Some((decoder, bspatch)) = d.body(window, &mut input)? else {
                    return Ok(());
                };
                (decoder, To::Delta(bspatch))
            }
            Stream::Full(decoder, written) => (
                decoder.as_mut(),
                To::Full {
                    written,
                    target_len: self.manifest.target_len,
                },
            ),
        };
        let pos = match &to {
            To::Delta(bspatch) => bspatch.target_pos(),
            To::Full { written, .. } => **written,
        };
        let io = Io {
            source,
            target: &mut hashing,
            pos,
        };
        Out { io, to }.stream(decoder, window, input)
    }
}

// No heap on the device: the preamble buffer and the payload state share one allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Phase {
    Preamble {
        buf: [u8; PREAMBLE_LEN],
        len: usize,
        /// The checkpoint to resume from, checked once the manifest is known.
        resume: Option<Checkpoint>,
    },
    /// The preamble is verified (here, or by the caller: [`Applier::verified`]). The state
    /// stays in place from here on: the stream is set up at the first push.
    Payload(Payload),
    Failed,
}

/// The verifying applier without its heatshrink window, which each call is lent:
/// [`Applier`] owns one, [`BorrowedApplier`] borrows one.
#[derive(Clone)]
struct Core<K> {
    key: K,
    phase: Phase,
}

impl<K> core::fmt::Debug for Core<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.phase {
            Phase::Preamble { len, .. } => write!(f, "Applier(preamble, {len} bytes)"),
            Phase::Payload(Payload {
                stream: Stream::Pending,
                ..
            }) => f.write_str("Applier(verified)"),
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

impl<K: SignatureCheck> Core<K> {
    fn new(key: K) -> Self {
        Self {
            key,
            phase: Phase::Preamble {
                buf: [0; PREAMBLE_LEN],
                len: 0,
                resume: None,
            },
        }
    }

    fn resume(key: K, checkpoint: Checkpoint) -> Self {
        Self {
            key,
            phase: Phase::Preamble {
                buf: [0; PREAMBLE_LEN],
                len: 0,
                resume: Some(checkpoint),
            },
        }
    }

    // Out of line: the payload state is put together in this frame, not the caller's, which
    // keeps only the result.
    #[inline(never)]
    fn verified(key: K, verified: Verified, resume: Option<Checkpoint>) -> Self {
        let manifest = verified.0;
        let resume = resume.filter(|c| c.target_sha256 == manifest.target_sha256);
        Self {
            key,
            phase: Phase::Payload(Payload::new(manifest, resume)),
        }
    }

    fn manifest(&self) -> Option<&Manifest> {
        match &self.phase {
            Phase::Payload(p) => Some(&p.manifest),
            _ => None,
        }
    }

    fn written(&self) -> u32 {
        match &self.phase {
            Phase::Payload(p) => p.written(),
            _ => 0,
        }
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        match &self.phase {
            Phase::Payload(Payload {
                stream: Stream::Pending,
                ..
            }) => None,
            Phase::Payload(p) => Some(Checkpoint {
                target_sha256: p.manifest.target_sha256,
                // Below the resume point the bytes are durable from the earlier run.
                written: p.written().max(p.sink.resume_from),
            }),
            _ => None,
        }
    }

    fn push<S, T>(
        &mut self,
        window: &mut [u8],
        input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let result = self.push_inner(window, input, source, target);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn push_inner<S, T>(
        &mut self,
        window: &mut [u8],
        mut input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        if let Phase::Preamble { .. } = self.phase {
            input = self.take_preamble(input)?;
            if let Phase::Preamble { .. } = self.phase {
                return Ok(());
            }
        }
        self.push_payload(window, input, source, target)
    }

    /// [`Core::push`] once the preamble is verified (the only way a [`BorrowedApplier`] is
    /// made): without the preamble's code.
    fn push_verified<S, T>(
        &mut self,
        window: &mut [u8],
        input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let result = self.push_payload(window, input, source, target);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn push_payload<S, T>(
        &mut self,
        window: &mut [u8],
        input: &[u8],
        source: &mut S,
        target: &mut T,
    ) -> Result<(), ApplyError<S::Error>>
    where
        S: SourceImage + ?Sized,
        T: TargetImage<Error = S::Error> + ?Sized,
    {
        let Phase::Payload(p) = &mut self.phase else {
            return Err(ApplyError::Failed);
        };
        if let Stream::Pending = p.stream {
            p.start(window, source)?;
        }
        if input.is_empty() {
            return Ok(());
        }
        p.push(window, input, source, target)
    }

    /// Buffers the preamble; once whole, checks it and goes to the verified phase. Returns
    /// the input after the preamble. Out of line: a caller that checked the preamble itself
    /// ([`Applier::verified`]) does not carry its frame.
    #[inline(never)]
    fn take_preamble<'i, E>(&mut self, input: &'i [u8]) -> Result<&'i [u8], ApplyError<E>> {
        let Phase::Preamble { buf, len, resume } = &mut self.phase else {
            return Ok(input);
        };
        let n = (PREAMBLE_LEN - *len).min(input.len());
        buf[*len..*len + n].copy_from_slice(&input[..n]);
        *len += n;
        if *len == PREAMBLE_LEN {
            let manifest = verify_preamble(&buf[..], &self.key)?;
            let resume = *resume;
            if resume.is_some_and(|c| c.target_sha256 != manifest.target_sha256) {
                return Err(ApplyError::CheckpointMismatch);
            }
            self.phase = Phase::Payload(Payload::new(manifest, resume));
        }
        Ok(&input[n..])
    }

    fn finish<E>(&mut self) -> Result<Applied, ApplyError<E>> {
        let manifest = *self.check_end()?;
        Ok(Applied { manifest })
    }

    /// The checks of [`Core::finish`], giving the manifest they passed (so that the phase
    /// is not looked at again). Out of line, and with a reference, not the manifest, in its
    /// result: a caller that drops the [`Applied`] has no room for one in its frame.
    #[inline(never)]
    fn check_end<E>(&mut self) -> Result<&Manifest, ApplyError<E>> {
        let p = match &mut self.phase {
            Phase::Failed => return Err(ApplyError::Failed),
            Phase::Preamble { .. } => return Err(ApplyError::Truncated),
            Phase::Payload(p) => p,
        };
        // Also a stream still pending: it has received nothing, and a payload is never
        // empty (the manifest says so).
        if p.received != p.manifest.payload_len {
            return Err(ApplyError::Truncated);
        }
        // The hashes are spent here: the apply is over either way.
        if !digest_is(&mut p.payload_sha, &p.manifest.payload_sha256) {
            return Err(ApplyError::PayloadMismatch);
        }
        // One call of the end checks for both kinds of payload: one copy of the decoder's.
        // The bytes written come from the same match: one look at the stream.
        let (decoder, done, written) = match &p.stream {
            Stream::Pending => (None, true, 0),
            Stream::Delta(d) => {
                let (decoder, bspatch) = d.ending()?;
                (decoder, bspatch.is_done(), bspatch.target_pos())
            }
            Stream::Full(decoder, n) => (decoder.as_ref(), true, *n),
        };
        check_stream_end(decoder, done)?;
        if written != p.manifest.target_len {
            return Err(ApplyError::TargetLength {
                expected: p.manifest.target_len,
                got: written,
            });
        }
        if !digest_is(&mut p.sink.sha, &p.manifest.target_sha256) {
            return Err(ApplyError::TargetMismatch);
        }
        Ok(&p.manifest)
    }
}

/// Streaming, verifying patch applier. `N` is the largest heatshrink window accepted (the
/// decoder's buffer, part of the applier): 512 bytes by default, the patch maker's default
/// budget. `K` checks the signature ([`VerifyingKey`] by default). [`BorrowedApplier`] is
/// the same applier over a window the caller lends.
#[derive(Clone)]
pub struct Applier<const N: usize = 512, K = VerifyingKey> {
    core: Core<K>,
    window: [u8; N],
}

impl<const N: usize, K> core::fmt::Debug for Applier<N, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.core.fmt(f)
    }
}

impl<const N: usize, K: SignatureCheck> Applier<N, K> {
    /// A fresh apply, trusting patches signed by `key`.
    pub fn new(key: K) -> Self {
        Self {
            core: Core::new(key),
            window: [0; N],
        }
    }

    /// Starts the same patch again from its first byte after an interruption; target bytes
    /// below `checkpoint.written` are re-derived and hashed but not written again.
    pub fn resume(key: K, checkpoint: Checkpoint) -> Self {
        Self {
            core: Core::resume(key, checkpoint),
            window: [0; N],
        }
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
        Self {
            core: Core::verified(key, verified, resume),
            window: [0; N],
        }
    }

    /// The verified manifest, once the preamble has been checked.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.core.manifest()
    }

    /// Target bytes produced so far.
    pub fn written(&self) -> u32 {
        self.core.written()
    }

    /// A checkpoint for the bytes written so far; the caller saves it only once those bytes
    /// are durable (flushed to flash).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.core.checkpoint()
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
        self.core.push(&mut self.window, input, source, target)
    }

    /// Ends the apply: the whole payload must have been pushed, and the target must have the
    /// manifest's length and SHA-256.
    pub fn finish<E>(mut self) -> Result<Applied, ApplyError<E>> {
        self.core.finish()
    }
}

/// [`Applier`] over a heatshrink window the caller lends for the whole apply (RAM idle at
/// the time, such as a decoder workspace whose block is complete): it accepts streams whose
/// window (`2^W` bytes) fits in `window`, and is the size of [`Applier`] less its window.
/// The window's contents before the apply do not matter. It is made only from a preamble
/// checked by [`check_preamble`] ([`BorrowedApplier::verified`]), which a device needs apart
/// anyway (anti-rollback), so it carries no preamble code.
pub struct BorrowedApplier<'w, K = VerifyingKey> {
    core: Core<K>,
    window: &'w mut [u8],
}

impl<K> core::fmt::Debug for BorrowedApplier<'_, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.core.fmt(f)
    }
}

impl<'w, K: SignatureCheck> BorrowedApplier<'w, K> {
    /// [`Applier::verified`], over `window`.
    pub fn verified(
        key: K,
        verified: Verified,
        resume: Option<Checkpoint>,
        window: &'w mut [u8],
    ) -> Self {
        Self {
            core: Core::verified(key, verified, resume),
            window,
        }
    }

    /// See [`Applier::manifest`].
    pub fn manifest(&self) -> Option<&Manifest> {
        self.core.manifest()
    }

    /// See [`Applier::written`].
    pub fn written(&self) -> u32 {
        self.core.written()
    }

    /// See [`Applier::checkpoint`].
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.core.checkpoint()
    }

    /// See [`Applier::push`].
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
        self.core.push_verified(self.window, input, source, target)
    }

    /// See [`Applier::finish`]. It borrows the applier (on a device, moving one into the
    /// call would copy it on the stack) and spends its hashes: call it once, at the end.
    pub fn finish<E>(&mut self) -> Result<Applied, ApplyError<E>> {
        self.core.finish()
    }
}

/// Hashes the source image through the read trait and compares with the manifest. Out of
/// line: its buffer is needed once, not in every push.
#[inline(never)]
fn check_source<S: SourceImage + ?Sized>(
    manifest: &Manifest,
    source: &mut S,
) -> Result<(), ApplyError<S::Error>> {
    let mut sha = Sha256::new();
    let mut buf = [0u8; 64];
    let mut offset = 0u32;
    while offset < manifest.source_len {
        let n = ((manifest.source_len - offset) as usize).min(buf.len());
        // One piece for the read and the hash, split off (n fits: no checked index call).
        let (chunk, _) = buf.split_at_mut(n);
        source.read(offset, chunk).map_err(ApplyError::Source)?;
        sha.update(chunk);
        offset += n as u32;
    }
    if !digest_is(&mut sha, &manifest.source_sha256) {
        return Err(ApplyError::SourceMismatch);
    }
    Ok(())
}

/// Whether the hash of the bytes so far is `want` (the hash is spent). One function for the
/// three checks: each call site passes two pointers, not the digest's buffer and the compare.
#[inline(never)]
fn digest_is(sha: &mut Sha256, want: &[u8; 32]) -> bool {
    sha.finalize_reset() == *want
}

// The device budget, checked on every target the crate is built for (thumbv7em in CI).
const _: () = assert!(core::mem::size_of::<Applier<512>>() < 1024 + 512);
const _: () = assert!(core::mem::size_of::<BorrowedApplier<'_>>() < 1024);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::heatshrink::Decoder;

    /// The device's RAM for an apply: the state must stay under 1 KiB plus the window.
    /// (The figures are quoted in the crate README.)
    #[test]
    fn applier_state_fits_the_budget() {
        let applier = core::mem::size_of::<Applier<512>>();
        let window = 512;
        assert!(applier - window < 1024, "Applier<512> is {applier} bytes");
        assert!(core::mem::size_of::<DetoolsApplier<512>>() - window < 128);
        assert!(core::mem::size_of::<Decoder<512>>() - window < 32);
        // Less the window, which it borrows.
        let borrowed = core::mem::size_of::<BorrowedApplier<'_>>();
        assert!(
            borrowed + window <= applier + 16,
            "BorrowedApplier is {borrowed} bytes"
        );
    }
}
