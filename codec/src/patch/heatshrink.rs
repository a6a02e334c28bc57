//! Streaming heatshrink (LZSS) decoder with the window and lookahead chosen at run time.
//!
//! The bit stream is the one of the heatshrink C library (and of `heatshrink2` and detools):
//! MSB first; a `1` tag bit is followed by an 8-bit literal; a `0` tag bit by `W` bits of
//! `offset - 1` and `L` bits of `count - 1`; the last byte is padded with zero bits. A
//! back-reference that reaches before the start of the output reads zeros, as in C.
//!
//! [`Decoder<N>`] holds its window as `[u8; N]`; any stream with `2^W <= N` decodes, so a
//! device picks `N` from its RAM budget once and accepts every pair the patch maker may choose.
//! [`DecoderState`] is the same decoder without the window, which the caller lends to each
//! call (a buffer idle at the time, instead of RAM of its own). The state is plain data (no
//! pointers), so it can be copied out and back.

/// Smallest and largest window exponents heatshrink defines.
pub const MIN_WINDOW_BITS: u8 = 4;
pub const MAX_WINDOW_BITS: u8 = 15;
/// Smallest lookahead exponent heatshrink defines; the largest is `window - 1`.
pub const MIN_LOOKAHEAD_BITS: u8 = 3;

/// Window and lookahead exponents of a heatshrink stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    pub window_bits: u8,
    pub lookahead_bits: u8,
}

impl Params {
    /// `None` unless `4 <= window <= 15` and `3 <= lookahead < window`, the ranges the C
    /// library accepts.
    pub const fn new(window_bits: u8, lookahead_bits: u8) -> Option<Self> {
        // Each range in one unsigned compare: a value below its lower end wraps around
        // past the upper one. `window - 3` does not wrap once the window is checked.
        if window_bits.wrapping_sub(MIN_WINDOW_BITS) > MAX_WINDOW_BITS - MIN_WINDOW_BITS
            || lookahead_bits.wrapping_sub(MIN_LOOKAHEAD_BITS) >= window_bits - MIN_LOOKAHEAD_BITS
        {
            return None;
        }
        Some(Self {
            window_bits,
            lookahead_bits,
        })
    }

    /// Window size in bytes (`2^W`): what the decoder must hold.
    pub const fn window_len(&self) -> usize {
        1 << self.window_bits
    }

    /// detools' one-byte form: `(W - 4) << 4 | (L - 3)`.
    pub const fn detools_byte(&self) -> u8 {
        ((self.window_bits - MIN_WINDOW_BITS) << 4) | (self.lookahead_bits - MIN_LOOKAHEAD_BITS)
    }

    /// Inverse of [`Params::detools_byte`]; `None` for pairs heatshrink does not allow.
    pub const fn from_detools_byte(byte: u8) -> Option<Self> {
        Self::new(
            (byte >> 4) + MIN_WINDOW_BITS,
            (byte & 0x0f) + MIN_LOOKAHEAD_BITS,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tag,
    Literal,
    Offset,
    Count { offset: u16 },
    Copy { offset: u16, remaining: u16 },
}

/// Why a heatshrink stream was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatshrinkError {
    /// The stream's window (`2^W` bytes) is larger than this decoder's buffer.
    WindowTooLarge { window_bits: u8, capacity: usize },
    /// The stream ended inside a literal or back-reference, or its padding is not zero bits.
    Truncated,
}

impl core::fmt::Display for HeatshrinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeatshrinkError::WindowTooLarge {
                window_bits,
                capacity,
            } => write!(
                f,
                "heatshrink window 2^{window_bits} bytes does not fit the decoder's {capacity} bytes"
            ),
            HeatshrinkError::Truncated => {
                f.write_str("heatshrink stream ends inside a literal or back-reference")
            }
        }
    }
}

/// A streaming decoder's state without its window: plain data (no pointers) that an owner
/// keeps next to a buffer it lends to every call, e.g. RAM that is idle while a patch is
/// applied. [`Decoder`] pairs it with a window of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderState {
    /// Bytes produced so far (wrapping); `head % 2^W` is the next window slot.
    head: u32,
    /// Input bits, the low `nbits` not yet used; those above are spent and ignored (masked
    /// off where read, not cleared after every take).
    bits: u32,
    nbits: u8,
    window_bits: u8,
    lookahead_bits: u8,
    state: State,
}

impl DecoderState {
    /// A decoder for a stream with these parameters over `window`, whose first `2^W` bytes
    /// it clears; an error if the stream's window is larger than `window`.
    pub fn new(params: Params, window: &mut [u8]) -> Result<Self, HeatshrinkError> {
        let Some(used) = window.get_mut(..params.window_len()) else {
            return Err(HeatshrinkError::WindowTooLarge {
                window_bits: params.window_bits,
                capacity: window.len(),
            });
        };
        // Back-references before the start of the output read zeros, as in C.
        used.fill(0);
        Ok(Self {
            head: 0,
            bits: 0,
            nbits: 0,
            window_bits: params.window_bits,
            lookahead_bits: params.lookahead_bits,
            state: State::Tag,
        })
    }

    /// Parameters of the stream being decoded.
    pub fn params(&self) -> Params {
        Params {
            window_bits: self.window_bits,
            lookahead_bits: self.lookahead_bits,
        }
    }

    /// Bytes produced so far (modulo 2^32).
    pub fn produced(&self) -> u32 {
        self.head
    }

    /// Takes `n` bits (n <= 16), pulling whole bytes off the front of `input` as needed.
    fn take(&mut self, n: u8, input: &mut &[u8]) -> Option<u16> {
        while self.nbits < n {
            let (&byte, rest) = input.split_first()?;
            *input = rest;
            self.bits = (self.bits << 8) | u32::from(byte);
            self.nbits += 8;
        }
        self.nbits -= n;
        // The bits taken are spent: left in place above `nbits`, shifted out by later bytes.
        let value = (self.bits >> self.nbits) & ((1u32 << n) - 1);
        Some(value as u16)
    }

    /// Decodes from `input` into the window alone: at most `limit` bytes, and never past the
    /// window's end, so that they are one slice, `window[from..from + produced]`. Returns
    /// `(from, produced)` and leaves in `input` what it did not consume (its callers then
    /// slice nothing); it stops early only at the window's end or when the input is used
    /// up. `window` is exactly the stream's window.
    fn run(&mut self, window: &mut [u8], input: &mut &[u8], limit: usize) -> (usize, usize) {
        // The mask from the window's length (2^W), so that indices masked with it are seen
        // to be in the window: no bounds checks.
        let Some(mask) = window.len().checked_sub(1) else {
            return (0, 0);
        };
        // The head and state in locals, stored once at the end: not after every step.
        let (mut head, mut state) = (self.head, self.state);
        let from = head as usize & mask;
        let limit = limit.min(window.len() - from);
        let mut produced = 0;
        while produced < limit {
            // One `take` for the four bit fields: its loop is then in the code once.
            let n = match state {
                State::Tag => 1,
                State::Literal => 8,
                State::Offset => self.window_bits,
                State::Count { .. } => self.lookahead_bits,
                State::Copy { offset, remaining } => {
                    let n = usize::from(remaining).min(limit - produced);
                    let offset = u32::from(offset);
                    for _ in 0..n {
                        // Before the start of the output the C window holds zeros; so does
                        // ours, since slots past `head` are still unwritten when head < offset.
                        let byte = window[head.wrapping_sub(offset) as usize & mask];
                        window[head as usize & mask] = byte;
                        head = head.wrapping_add(1);
                    }
                    produced += n;
                    let left = remaining - n as u16;
                    state = if left == 0 {
                        State::Tag
                    } else {
                        State::Copy {
                            offset: offset as u16,
                            remaining: left,
                        }
                    };
                    continue;
                }
            };
            let Some(value) = self.take(n, input) else {
                break;
            };
            state = match state {
                State::Tag if value == 1 => State::Literal,
                State::Tag => State::Offset,
                State::Literal => {
                    window[head as usize & mask] = value as u8;
                    head = head.wrapping_add(1);
                    produced += 1;
                    State::Tag
                }
                State::Offset => State::Count { offset: value + 1 },
                State::Count { offset } => State::Copy {
                    offset,
                    remaining: value + 1,
                },
                copy @ State::Copy { .. } => copy,
            };
        }
        (self.head, self.state) = (head, state);
        (from, produced)
    }

    /// Decodes from `input` into `out` until the input is used up or `out` is full.
    /// Returns `(consumed, produced)`. Bytes consumed are remembered (partially used bits
    /// included), so the next call continues where this one stopped. `window` is the buffer
    /// given to [`DecoderState::new`], as the last call left it; one shorter than the
    /// stream's window decodes nothing.
    pub fn decode(&mut self, window: &mut [u8], input: &[u8], out: &mut [u8]) -> (usize, usize) {
        let Some(window) = window.get_mut(..1usize << self.window_bits) else {
            return (0, 0);
        };
        let (mut rest, mut produced) = (input, 0);
        while produced < out.len() {
            let (from, n) = self.run(window, &mut rest, out.len() - produced);
            out[produced..produced + n].copy_from_slice(&window[from..from + n]);
            produced += n;
            // Short of the window's end, only the input runs out.
            if n == 0 {
                break;
            }
        }
        (input.len() - rest.len(), produced)
    }

    /// Decodes all of `input`, handing the output to `sink` in pieces of at most `out.len()`
    /// bytes, until the input is used up and the decoder has nothing left to give. Does
    /// nothing when `out` is empty, or `window` is shorter than the stream's.
    pub fn decode_into<E>(
        &mut self,
        window: &mut [u8],
        mut input: &[u8],
        out: &mut [u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if out.is_empty() {
            return Ok(());
        }
        loop {
            let (used, produced) = self.decode(window, input, out);
            input = &input[used..];
            sink(&out[..produced])?;
            // With input left, a call always uses some or fills `out`; (0, 0) is a window
            // too short, where looping would never end.
            if (input.is_empty() || used == 0) && produced < out.len() {
                return Ok(());
            }
        }
    }

    /// [`DecoderState::decode_into`] without an output buffer: `sink` gets the new bytes
    /// where they are written, in the window (at most up to its end at a time). For a device
    /// that has no RAM to spare for a buffer. Does nothing when `window` is shorter than the
    /// stream's.
    pub fn decode_in_window<E>(
        &mut self,
        window: &mut [u8],
        mut input: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(window) = window.get_mut(..1usize << self.window_bits) else {
            return Ok(());
        };
        loop {
            let (from, n) = self.run(window, &mut input, usize::MAX);
            // Short of the window's end, only the input runs out.
            if n == 0 {
                return Ok(());
            }
            // The sink's error handed on as it is, not through `?` (whose conversion copies
            // it).
            if let e @ Err(_) = sink(&window[from..from + n]) {
                return e;
            }
        }
    }

    /// Whether everything decoded so far forms a complete stream: no literal or
    /// back-reference is cut, and the leftover bits are the zero padding of the last byte.
    pub fn finish(&self) -> Result<(), HeatshrinkError> {
        // Zero padding (under 8 bits) may already have been read as a tag, or a tag and an
        // offset, of a back-reference that never comes.
        let unused = self.bits & ((1u32 << self.nbits) - 1);
        let clean = unused == 0
            && match self.state {
                State::Tag => self.nbits < 8,
                State::Offset => 1 + self.nbits < 8,
                State::Count { offset: 1 } => 1 + self.window_bits + self.nbits < 8,
                _ => false,
            };
        if clean {
            Ok(())
        } else {
            Err(HeatshrinkError::Truncated)
        }
    }
}

/// Streaming decoder with a window of its own; `N` bounds the window it accepts.
#[derive(Clone)]
pub struct Decoder<const N: usize> {
    state: DecoderState,
    window: [u8; N],
}

impl<const N: usize> core::fmt::Debug for Decoder<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Decoder")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Decoder<N> {
    /// A decoder for a stream with these parameters, or an error if its window exceeds `N`.
    pub fn new(params: Params) -> Result<Self, HeatshrinkError> {
        let mut window = [0; N];
        let state = DecoderState::new(params, &mut window)?;
        Ok(Self { state, window })
    }

    /// Parameters of the stream being decoded.
    pub fn params(&self) -> Params {
        self.state.params()
    }

    /// Bytes produced so far (modulo 2^32).
    pub fn produced(&self) -> u32 {
        self.state.produced()
    }

    /// [`DecoderState::decode`] with this decoder's window.
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        self.state.decode(&mut self.window, input, out)
    }

    /// [`DecoderState::decode_into`] with this decoder's window.
    pub fn decode_into<E>(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.state.decode_into(&mut self.window, input, out, sink)
    }

    /// [`DecoderState::decode_in_window`] with this decoder's window.
    pub fn decode_in_window<E>(
        &mut self,
        input: &[u8],
        sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.state.decode_in_window(&mut self.window, input, sink)
    }

    /// See [`DecoderState::finish`].
    pub fn finish(&self) -> Result<(), HeatshrinkError> {
        self.state.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_through_detools_byte() {
        for w in 4..=15u8 {
            for l in 3..w {
                let p = Params::new(w, l).unwrap();
                assert_eq!(Params::from_detools_byte(p.detools_byte()), Some(p));
            }
        }
        assert_eq!(Params::new(8, 8), None);
        assert_eq!(Params::new(3, 2), None);
        assert_eq!(Params::new(16, 8), None);
        // detools' default 8/7 is 0x44.
        assert_eq!(Params::new(8, 7).unwrap().detools_byte(), 0x44);
    }

    #[test]
    fn literal_and_backref_decode() {
        // W=4, L=3: literal 'a' (1 01100001), backref offset 1 count 3 (0 0000 010).
        // Bits: 101100001 00000010, then 7 zero bits of padding.
        let stream = [0b1011_0000, 0b1000_0001, 0b0000_0000];
        let mut d = Decoder::<16>::new(Params::new(4, 3).unwrap()).unwrap();
        let mut out = [0u8; 8];
        let (used, n) = d.decode(&stream, &mut out);
        assert_eq!(used, 3);
        assert_eq!(&out[..n], b"aaaa");
        d.finish().unwrap();
    }

    #[test]
    fn a_lent_window_decodes_the_same_and_is_cleared_first() {
        let stream = [0b1011_0000, 0b1000_0001, 0b0000_0000];
        // Leftovers from whoever used the buffer before: the stream must not see them.
        let mut window = [0xa5u8; 40];
        let mut d = DecoderState::new(Params::new(4, 3).unwrap(), &mut window).unwrap();
        assert_eq!(&window[..16], &[0; 16]);
        let mut out = [0u8; 8];
        assert_eq!(d.decode(&mut window, &stream, &mut out), (3, 4));
        assert_eq!(&out[..4], b"aaaa");
        d.finish().unwrap();
        // A back-reference before the start reads zeros from the cleared window.
        let mut window = [0xa5u8; 16];
        let mut d = DecoderState::new(Params::new(4, 3).unwrap(), &mut window).unwrap();
        // Backref offset 16 count 2 (0 1111 001).
        let (used, n) = d.decode(&mut window, &[0b0111_1001], &mut out);
        assert_eq!((used, &out[..n]), (1, &[0u8, 0][..]));
        assert_eq!(
            DecoderState::new(Params::new(5, 3).unwrap(), &mut window).unwrap_err(),
            HeatshrinkError::WindowTooLarge {
                window_bits: 5,
                capacity: 16
            }
        );
        // Given a shorter window than its stream's, it decodes nothing and stops.
        let mut d = DecoderState::new(Params::new(4, 3).unwrap(), &mut window).unwrap();
        assert_eq!(d.decode(&mut window[..8], &stream, &mut out), (0, 0));
        let mut calls = 0;
        d.decode_into(&mut window[..8], &stream, &mut out, |_| {
            calls += 1;
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn window_larger_than_buffer_is_refused() {
        assert_eq!(
            Decoder::<256>::new(Params::new(9, 8).unwrap()).unwrap_err(),
            HeatshrinkError::WindowTooLarge {
                window_bits: 9,
                capacity: 256
            }
        );
    }
}
