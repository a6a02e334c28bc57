//! The detools *sequential* patch: its header, its size integers, and a streaming bspatch.
//!
//! Layout (detools 0.53, patch type 0):
//! - one byte `patch_type << 4 | compression` (bit 7 zero; sequential is 0, heatshrink 4,
//!   none 0);
//! - the target size as a size integer;
//! - the compressed stream (for heatshrink, one byte `(W - 4) << 4 | (L - 3)` first), which
//!   decompresses to: the data-format patch size (0: none), then until the target is complete
//!   `diff size, diff bytes, extra size, extra bytes, adjustment`.
//!
//! A diff byte is added (mod 256) to the source byte at the current source position, which
//! then advances; extra bytes are copied; the adjustment moves the source position.
//!
//! Size integers: first byte `more:1 negative:1 bits[5:0]`, then `more:1 bits:7` groups,
//! least significant first.

/// Compression of a detools patch, as its header numbers it.
pub const COMPRESSION_NONE: u8 = 0;
pub const COMPRESSION_HEATSHRINK: u8 = 4;
/// Patch type in the header's upper nibble.
pub const PATCH_TYPE_SEQUENTIAL: u8 = 0;

/// Longest size integer we accept: 6 + 4 * 7 = 34 bits, enough for +-2^32.
const MAX_SIZE_BYTES: u8 = 5;

/// Writes `value` as a detools size integer; returns the bytes used (at most 10).
pub fn encode_size(value: i64, buf: &mut [u8; 10]) -> &[u8] {
    let mut magnitude = value.unsigned_abs();
    let mut first = (magnitude & 0x3f) as u8;
    if value < 0 {
        first |= 0x40;
    }
    magnitude >>= 6;
    let mut len = 1;
    if magnitude != 0 {
        first |= 0x80;
    }
    buf[0] = first;
    while magnitude != 0 {
        let mut byte = (magnitude & 0x7f) as u8;
        magnitude >>= 7;
        if magnitude != 0 {
            byte |= 0x80;
        }
        buf[len] = byte;
        len += 1;
    }
    &buf[..len]
}

/// Incremental reader of one size integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeReader {
    value: u64,
    count: u8,
    negative: bool,
}

impl SizeReader {
    /// Feeds one byte; `Ok(Some(value))` when the integer is complete.
    pub fn push(&mut self, byte: u8) -> Result<Option<i64>, PayloadError> {
        if self.count == 0 {
            self.negative = byte & 0x40 != 0;
            self.value = u64::from(byte & 0x3f);
        } else {
            // At most 27 (the fifth byte's: a sixth is an error); masked, the shift is seen
            // to be under 32, done inline, not through the 64-bit shift's library call.
            let shift = 6 + 7 * (u32::from(self.count) - 1);
            self.value |= u64::from(byte & 0x7f) << (shift & 31);
        }
        self.count += 1;
        if byte & 0x80 != 0 {
            if self.count >= MAX_SIZE_BYTES {
                return Err(PayloadError::SizeTooLong);
            }
            return Ok(None);
        }
        let magnitude = self.value as i64;
        let value = if self.negative { -magnitude } else { magnitude };
        *self = Self::default();
        Ok(Some(value))
    }
}

/// Why a payload (detools patch or compressed image) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// The first byte's patch type is not sequential (in-place and hdiffpatch are not streamable).
    NotSequential(u8),
    /// The compression is neither none nor heatshrink.
    UnsupportedCompression(u8),
    /// The compression in the payload differs from the one the manifest announces.
    CompressionMismatch,
    /// The heatshrink window/lookahead byte differs from the manifest's, or is invalid.
    HeatshrinkParamsMismatch,
    /// The target size in the detools header differs from the manifest's.
    TargetSizeMismatch,
    /// A size integer is longer than 5 bytes.
    SizeTooLong,
    /// The patch uses a detools data format (ARM/Xtensa address rewriting); not supported.
    DataFormatUnsupported,
    /// A diff or extra block is negative or runs past the target size.
    BlockTooLong,
    /// Diff bytes refer to source bytes outside the source image.
    SourceOutOfRange,
    /// Decompressed bytes continue after the patch is complete.
    TrailingData,
    /// The payload ended before the target was complete.
    Truncated,
    /// The heatshrink stream is cut or its window is too large for this device.
    Heatshrink(super::heatshrink::HeatshrinkError),
}

impl core::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PayloadError::NotSequential(t) => {
                write!(f, "detools patch type {t} is not sequential")
            }
            PayloadError::UnsupportedCompression(c) => {
                write!(
                    f,
                    "detools compression {c} is not supported (none or heatshrink)"
                )
            }
            PayloadError::CompressionMismatch => {
                f.write_str("payload compression differs from the manifest")
            }
            PayloadError::HeatshrinkParamsMismatch => {
                f.write_str("payload heatshrink window/lookahead differ from the manifest")
            }
            PayloadError::TargetSizeMismatch => {
                f.write_str("detools target size differs from the manifest")
            }
            PayloadError::SizeTooLong => f.write_str("detools size integer longer than 5 bytes"),
            PayloadError::DataFormatUnsupported => {
                f.write_str("detools data-format patches are not supported")
            }
            PayloadError::BlockTooLong => {
                f.write_str("diff or extra block is negative or runs past the target size")
            }
            PayloadError::SourceOutOfRange => {
                f.write_str("diff block reads outside the source image")
            }
            PayloadError::TrailingData => f.write_str("data after the end of the patch"),
            PayloadError::Truncated => f.write_str("payload ends before the target is complete"),
            PayloadError::Heatshrink(e) => e.fmt(f),
        }
    }
}

impl From<super::heatshrink::HeatshrinkError> for PayloadError {
    fn from(e: super::heatshrink::HeatshrinkError) -> Self {
        PayloadError::Heatshrink(e)
    }
}

/// What bspatch needs from the outside: the old image at random, and a place for new bytes.
pub trait BspatchIo {
    type Error;
    /// Fills `buf` from the source image at `offset` (always in range).
    fn read_source(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Takes the next bytes of the target image, in order.
    fn emit(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// An error from bspatch: the patch is bad, or the outside said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BspatchError<E> {
    Payload(PayloadError),
    Io(E),
}

impl<E> From<PayloadError> for BspatchError<E> {
    fn from(e: PayloadError) -> Self {
        BspatchError::Payload(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    DataFormatSize,
    DiffSize,
    Diff { left: u32 },
    ExtraSize,
    Extra { left: u32 },
    Adjustment,
    Done,
}

/// Source bytes read at once while adding a diff block (on the stack, not in the state;
/// under the device's deepest stack, where 64 more bytes count).
const SOURCE_CHUNK: usize = 64;

/// Streaming bspatch over the *decompressed* sequential stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bspatch {
    source_len: u32,
    target_len: u32,
    target_pos: u32,
    source_pos: i64,
    size: SizeReader,
    step: Step,
}

impl Bspatch {
    pub fn new(source_len: u32, target_len: u32) -> Self {
        Self {
            source_len,
            target_len,
            target_pos: 0,
            source_pos: 0,
            size: SizeReader::default(),
            step: if target_len == 0 {
                Step::Done
            } else {
                Step::DataFormatSize
            },
        }
    }

    /// True once the last adjustment of a complete target has been read.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Target bytes produced so far.
    pub fn target_pos(&self) -> u32 {
        self.target_pos
    }

    /// Target size from the patch header.
    pub fn target_len(&self) -> u32 {
        self.target_len
    }

    fn block_len(&self, size: i64) -> Result<u32, PayloadError> {
        let room = self.target_len - self.target_pos;
        // In u64: a negative size wraps past any room there, one compare for both ends.
        if size as u64 > u64::from(room) {
            return Err(PayloadError::BlockTooLong);
        }
        Ok(size as u32)
    }

    /// Consumes all of `data`.
    pub fn push<IO: BspatchIo>(
        &mut self,
        mut data: &[u8],
        io: &mut IO,
    ) -> Result<(), BspatchError<IO::Error>> {
        while let Some((&first, rest)) = data.split_first() {
            match self.step {
                Step::Done => return Err(PayloadError::TrailingData.into()),
                // Diff and extra blocks share the emit and the bookkeeping.
                step @ (Step::Diff { left } | Step::Extra { left }) => {
                    let diff = matches!(step, Step::Diff { .. });
                    let mut n = (left as usize).min(data.len());
                    let mut buf = [0u8; SOURCE_CHUNK];
                    let out = if diff {
                        n = n.min(SOURCE_CHUNK);
                        // Split off, not sliced: n fits, and a slice would be a checked call.
                        let (buf, _) = buf.split_at_mut(n);
                        // In u32, as the source's length: a position outside that range
                        // does not fit it.
                        // Through u64: a negative position wraps past u32 there, one check
                        // for both ends.
                        let start = match u32::try_from(self.source_pos as u64) {
                            Ok(start)
                                if start <= self.source_len
                                    && n as u32 <= self.source_len - start =>
                            {
                                start
                            }
                            _ => return Err(PayloadError::SourceOutOfRange.into()),
                        };
                        io.read_source(start, buf).map_err(BspatchError::Io)?;
                        for (b, d) in buf.iter_mut().zip(data) {
                            *b = b.wrapping_add(*d);
                        }
                        self.source_pos += n as i64;
                        &buf[..]
                    } else {
                        &data[..n]
                    };
                    io.emit(out).map_err(BspatchError::Io)?;
                    self.target_pos += n as u32;
                    let left = left - n as u32;
                    self.step = match (diff, left) {
                        (true, 0) => Step::ExtraSize,
                        (true, left) => Step::Diff { left },
                        (false, 0) => Step::Adjustment,
                        (false, left) => Step::Extra { left },
                    };
                    // Split inline (n is at most data's length), not through the range
                    // index's out-of-line call.
                    data = data.split_at(n).1;
                }
                step => {
                    data = rest;
                    let Some(value) = self.size.push(first)? else {
                        continue;
                    };
                    self.step = match step {
                        Step::DataFormatSize if value != 0 => {
                            return Err(PayloadError::DataFormatUnsupported.into())
                        }
                        Step::DataFormatSize => Step::DiffSize,
                        // Diff and extra sizes share the check (one copy of it).
                        Step::DiffSize | Step::ExtraSize => {
                            match (step == Step::DiffSize, self.block_len(value)?) {
                                (true, 0) => Step::ExtraSize,
                                (true, left) => Step::Diff { left },
                                (false, 0) => Step::Adjustment,
                                (false, left) => Step::Extra { left },
                            }
                        }
                        _ => {
                            // Adjustment: any i64 is fine until a diff reads with it.
                            self.source_pos = self.source_pos.saturating_add(value);
                            if self.target_pos == self.target_len {
                                Step::Done
                            } else {
                                Step::DiffSize
                            }
                        }
                    };
                }
            }
        }
        Ok(())
    }
}

/// The fixed part of a sequential patch before its compressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequentialHeader {
    /// [`COMPRESSION_NONE`] or [`COMPRESSION_HEATSHRINK`].
    pub compression: u8,
    pub target_len: u32,
    /// Present for heatshrink.
    pub heatshrink: Option<super::heatshrink::Params>,
}

/// Incremental reader of a [`SequentialHeader`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderReader {
    compression: Option<u8>,
    target_len: Option<u32>,
    size: SizeReader,
}

impl HeaderReader {
    /// Feeds one byte; `Ok(Some(header))` when complete.
    pub fn push(&mut self, byte: u8) -> Result<Option<SequentialHeader>, PayloadError> {
        let Some(compression) = self.compression else {
            let patch_type = byte >> 4;
            if patch_type != PATCH_TYPE_SEQUENTIAL {
                return Err(PayloadError::NotSequential(patch_type));
            }
            let compression = byte & 0x0f;
            if compression != COMPRESSION_NONE && compression != COMPRESSION_HEATSHRINK {
                return Err(PayloadError::UnsupportedCompression(compression));
            }
            self.compression = Some(compression);
            return Ok(None);
        };
        let Some(target_len) = self.target_len else {
            let Some(size) = self.size.push(byte)? else {
                return Ok(None);
            };
            // Through u64: a negative size wraps past u32 there, one check for both ends.
            let target_len =
                u32::try_from(size as u64).map_err(|_| PayloadError::TargetSizeMismatch)?;
            self.target_len = Some(target_len);
            if compression == COMPRESSION_NONE {
                return Ok(Some(SequentialHeader {
                    compression,
                    target_len,
                    heatshrink: None,
                }));
            }
            return Ok(None);
        };
        let params = super::heatshrink::Params::from_detools_byte(byte)
            .ok_or(PayloadError::HeatshrinkParamsMismatch)?;
        Ok(Some(SequentialHeader {
            compression,
            target_len,
            heatshrink: Some(params),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_detools_pack_size() {
        // Values and bytes printed by detools.bsdiff.pack_size (detools 0.53).
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (63, &[0x3f]),
            (64, &[0x80, 0x01]),
            (-1, &[0x41]),
            (-64, &[0xc0, 0x01]),
            (8191, &[0xbf, 0x7f]),
            (8192, &[0x80, 0x80, 0x01]),
            (-8192, &[0xc0, 0x80, 0x01]),
            (1 << 31, &[0x80, 0x80, 0x80, 0x80, 0x10]),
            (-(1 << 31), &[0xc0, 0x80, 0x80, 0x80, 0x10]),
        ];
        for &(value, bytes) in cases {
            let mut buf = [0u8; 10];
            assert_eq!(encode_size(value, &mut buf), bytes, "{value}");
            let mut r = SizeReader::default();
            let (last, init) = bytes.split_last().unwrap();
            for &b in init {
                assert_eq!(r.push(b), Ok(None));
            }
            assert_eq!(r.push(*last), Ok(Some(value)));
        }
        // The largest five-byte size: its fifth byte's bits reach past 32.
        let mut r = SizeReader::default();
        for b in [0xbf, 0xff, 0xff, 0xff] {
            assert_eq!(r.push(b), Ok(None));
        }
        assert_eq!(r.push(0x7f), Ok(Some((1 << 34) - 1)));
        let mut r = SizeReader::default();
        for _ in 0..4 {
            r.push(0x80).unwrap();
        }
        assert_eq!(r.push(0x80), Err(PayloadError::SizeTooLong));
    }

    struct Mem<'a> {
        source: &'a [u8],
        out: [u8; 64],
        len: usize,
    }

    impl BspatchIo for Mem<'_> {
        type Error = ();
        fn read_source(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
            buf.copy_from_slice(&self.source[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn emit(&mut self, bytes: &[u8]) -> Result<(), ()> {
            self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            Ok(())
        }
    }

    #[test]
    fn bspatch_adds_copies_and_seeks() {
        let source = b"abcdefgh";
        // df=0; diff 3 (+1 each) -> "bcd"; extra "XY"; adjust +2;
        // diff 2 (+0) from source[5..7] -> "fg"; extra 0; adjust 0.
        let stream = [0, 3, 1, 1, 1, 2, b'X', b'Y', 2, 2, 0, 0, 0, 0];
        let mut io = Mem {
            source,
            out: [0; 64],
            len: 0,
        };
        let mut p = Bspatch::new(8, 7);
        for b in stream {
            p.push(&[b], &mut io).unwrap();
        }
        assert!(p.is_done());
        assert_eq!(&io.out[..io.len], b"bcdXYfg");
        assert_eq!(
            p.push(&[0], &mut io),
            Err(BspatchError::Payload(PayloadError::TrailingData))
        );
        // A diff past the source's end is caught before reading.
        let mut p = Bspatch::new(8, 20);
        assert_eq!(
            p.push(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut io),
            Err(BspatchError::Payload(PayloadError::SourceOutOfRange))
        );
        let mut p = Bspatch::new(8, 2);
        assert_eq!(
            p.push(&[0, 0, 3], &mut io),
            Err(BspatchError::Payload(PayloadError::BlockTooLong))
        );
    }
}
