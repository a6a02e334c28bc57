//! The TS004 decoder: fragments in, one at a time, in any order; the data block out, as soon
//! as it can be rebuilt.
//!
//! Received data fragments go straight to their slot in the [`FragmentStore`]. When the first
//! coded fragment arrives, the L data fragments still missing become the unknowns of a GF(2)
//! system. Each coded fragment is reduced on arrival: the data fragments it covers that are
//! already here are XOR-ed out of its payload, what remains is a row over the L unknowns,
//! which is eliminated against the rows kept so far. A row that reduces to nothing is
//! redundant and dropped; otherwise it is kept, with its first unknown as pivot, and its
//! reduced payload is written to that unknown's slot (free, since the fragment is missing).
//! Kept rows only have bits at or right of their pivot, so the matrix is upper triangular and
//! takes L(L+1)/2 bits. When L rows are kept, back-substitution from the last pivot up turns
//! each slot into its data fragment. A data fragment that arrives after the first coded one
//! is a row with a single bit, treated the same way.
//!
//! # RAM
//! Only bits and indexes live in RAM, in a workspace the caller provides (no heap), sized by
//! [`Decoder::workspace_len`] for M data fragments, at most `L` lost ones and fragment size F:
//!
//! | what | bytes |
//! |---|---|
//! | received data fragments, a bit each | ceil(M/8) |
//! | slot of each unknown, u16 per lost fragment, ascending | 2L |
//! | triangular bit matrix | ceil(L(L+1)/2 / 8) |
//! | pivot flags and the row being reduced | 2 ceil(L/8) |
//! | parity row being expanded | ceil(M/8) |
//! | two fragment buffers | 2F |
//!
//! about L²/16 + M/4 + 2.25L + 2F bytes: 1,576 + 2F bytes for M = 1024, L = 128 (a test
//! checks it). Once the unknowns are fixed, the received bits no longer change, so the
//! unknowns are exactly the clear bits, in ascending order: a column is found by counting
//! clear bits while scanning a parity row (a late data fragment is scanned as a parity row
//! with its one bit). If more than `L` data fragments are lost when the first coded fragment
//! arrives, [`DecodeError::NotEnoughMatrixMemory`] says so (the TS004 status bit of that name) and the
//! coded fragment is dropped; data fragments are still taken, and a later coded fragment tries
//! again.

use core::fmt;

use super::parity::{self, bit, bitmap_len, set_bit};
use super::{FragmentStore, Progress};
use crate::Version;

/// Largest M a DataFragment's 14-bit N can number.
pub const MAX_NB_FRAG: usize = 0x3fff;

/// Why a decoder cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderError {
    /// M is 0 or above [`MAX_NB_FRAG`].
    NbFrag(usize),
    /// Fragment size 0.
    FragSize,
    /// The workspace is smaller than [`Decoder::workspace_len`].
    Workspace { needed: usize, got: usize },
}

impl fmt::Display for DecoderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecoderError::NbFrag(m) => write!(f, "{m} data fragments: must be 1..={MAX_NB_FRAG}"),
            DecoderError::FragSize => f.write_str("fragment size is 0"),
            DecoderError::Workspace { needed, got } => {
                write!(f, "workspace of {got} bytes where {needed} are needed")
            }
        }
    }
}

impl core::error::Error for DecoderError {}

/// Why a fragment was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError<E> {
    /// The store failed; the decoder's state is unchanged only if the failure was on a read.
    Store(E),
    /// The payload is not one fragment long.
    PayloadLength { expected: usize, got: usize },
    /// N is 0 or beyond what a DataFragment can number.
    FragmentNumber { n: usize },
    /// More data fragments are lost than the workspace has rows for.
    NotEnoughMatrixMemory { lost: usize, max_lost: usize },
    /// [`DecoderState::push`] got a workspace shorter than the one it was created in.
    Workspace { needed: usize, got: usize },
}

impl<E: fmt::Debug> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Store(e) => write!(f, "fragment store: {e:?}"),
            DecodeError::PayloadLength { expected, got } => {
                write!(f, "fragment of {got} bytes where {expected} are expected")
            }
            DecodeError::FragmentNumber { n } => write!(f, "fragment number {n} is out of range"),
            DecodeError::NotEnoughMatrixMemory { lost, max_lost } => write!(
                f,
                "{lost} data fragments lost, more than the {max_lost} the decoder has room for"
            ),
            DecodeError::Workspace { needed, got } => {
                write!(f, "workspace of {got} bytes, {needed} needed")
            }
        }
    }
}

impl<E: fmt::Debug> core::error::Error for DecodeError<E> {}

/// Upper-triangular bit matrix over `l` unknowns: row `c` holds columns `c..l`.
#[derive(Debug)]
struct Triangle<'w> {
    bits: &'w mut [u8],
    l: usize,
}

impl Triangle<'_> {
    /// Where row `row` would hold column 0: its bits are consecutive, so column `col >= row`
    /// is bit `start(row) + col`. (Rows before `row` hold l, l-1, ..., l-row+1 bits, that is
    /// row·l - row(row-1)/2, less `row`; never negative for `row < l`.) A row's loop adds to
    /// this instead of working out each index.
    fn start(&self, row: usize) -> usize {
        row * self.l - row * (row + 1) / 2
    }

    /// Row `row` takes the bits of `from`. Only set bits are written: the matrix is cleared
    /// when the unknowns are fixed, and each row is stored once (when its pivot is taken).
    fn store_row(&mut self, row: usize, from: &[u8]) {
        let start = self.start(row);
        for col in row..self.l {
            if bit(from, col) {
                set_bit(self.bits, start + col);
            }
        }
    }

    /// `into ^= row`.
    fn xor_row_into(&self, row: usize, into: &mut [u8]) {
        let start = self.start(row);
        for col in row..self.l {
            if bit(self.bits, start + col) {
                if let Some(b) = into.get_mut(col / 8) {
                    *b ^= 1 << (col % 8);
                }
            }
        }
    }
}

fn get_u16(bytes: &[u8], i: usize) -> u16 {
    match bytes.get(2 * i..2 * i + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => u16::MAX,
    }
}

fn put_u16(bytes: &mut [u8], i: usize, v: u16) {
    if let Some(b) = bytes.get_mut(2 * i..2 * i + 2) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// Decoder of one fragmented data block. See the module docs for the method and its RAM.
///
/// Call [`Decoder::push`] with every DataFragment of the session; when it returns
/// [`Progress::Complete`], slots `0..M` of the store hold the block.
#[derive(Debug)]
pub struct Decoder<'w> {
    state: DecoderState,
    workspace: &'w mut [u8],
}

/// A decoder's state without its workspace: plain data that an owner keeps next to a buffer
/// it owns (no borrow to tie them), passing the buffer to each [`DecoderState::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderState {
    version: Version,
    m: usize,
    frag_size: usize,
    max_lost: usize,
    /// Unknowns in the matrix: 0 until the first coded fragment fixes them, never 0 after
    /// (a coded fragment is only taken while data fragments are missing), so it also says
    /// whether they are fixed.
    l: usize,
    received_data: usize,
    kept_rows: usize,
    complete: bool,
}

/// The workspace cut into its parts, with the state, for one call. The state is borrowed,
/// not copied in and out.
struct Work<'w> {
    s: &'w mut DecoderState,
    /// A bit per data fragment taken as such: before the first coded fragment every data
    /// fragment that arrived, after it only those (late arrivals are rows of the system).
    received: &'w mut [u8],
    /// Per unknown, in ascending order: the data fragment (slot) it stands for.
    column_slot: &'w mut [u8],
    matrix: Triangle<'w>,
    pivots: &'w mut [u8],
    row: &'w mut [u8],
    parity: &'w mut [u8],
    buf_a: &'w mut [u8],
    buf_b: &'w mut [u8],
}

impl DecoderState {
    /// Workspace bytes for `m` data fragments, at most `max_lost` of them lost, fragment size
    /// `frag_size`. See the module docs.
    pub const fn workspace_len(m: usize, max_lost: usize, frag_size: usize) -> usize {
        let l = if max_lost < m { max_lost } else { m };
        bitmap_len(m)
            + 2 * l
            + bitmap_len(l * (l + 1) / 2)
            + 2 * bitmap_len(l)
            + bitmap_len(m)
            + 2 * frag_size
    }

    /// A decoder for `m` data fragments of `frag_size` bytes that can recover up to
    /// `max_lost` of them; prepares `workspace` (at least [`Self::workspace_len`] bytes),
    /// which every later call must be given again, unchanged.
    pub fn new(
        version: Version,
        m: usize,
        frag_size: usize,
        max_lost: usize,
        workspace: &mut [u8],
    ) -> Result<Self, DecoderError> {
        if m == 0 || m > MAX_NB_FRAG {
            return Err(DecoderError::NbFrag(m));
        }
        if frag_size == 0 {
            return Err(DecoderError::FragSize);
        }
        let max_lost = max_lost.min(m);
        let needed = Self::workspace_len(m, max_lost, frag_size);
        if workspace.len() < needed {
            return Err(DecoderError::Workspace {
                needed,
                got: workspace.len(),
            });
        }
        // Within the length checked above (`get`: an index would keep a panic path).
        if let Some(received) = workspace.get_mut(..bitmap_len(m)) {
            received.fill(0);
        }
        Ok(Self {
            version,
            m,
            frag_size,
            max_lost,
            l: 0,
            received_data: 0,
            kept_rows: 0,
            complete: false,
        })
    }

    /// The workspace cut into its parts; `None` if it is shorter than [`Self::workspace_len`]
    /// (the parts add up to exactly that).
    fn work<'w>(&'w mut self, workspace: &'w mut [u8]) -> Option<Work<'w>> {
        let (m, max_lost, frag_size) = (self.m, self.max_lost, self.frag_size);
        let (received, rest) = workspace.split_at_mut_checked(bitmap_len(m))?;
        let (column_slot, rest) = rest.split_at_mut_checked(2 * max_lost)?;
        let (matrix, rest) =
            rest.split_at_mut_checked(bitmap_len(max_lost * (max_lost + 1) / 2))?;
        let (pivots, rest) = rest.split_at_mut_checked(bitmap_len(max_lost))?;
        let (row, rest) = rest.split_at_mut_checked(bitmap_len(max_lost))?;
        let (parity, rest) = rest.split_at_mut_checked(bitmap_len(m))?;
        let (buf_a, rest) = rest.split_at_mut_checked(frag_size)?;
        let (buf_b, _) = rest.split_at_mut_checked(frag_size)?;
        let l = self.l;
        Some(Work {
            s: self,
            received,
            column_slot,
            matrix: Triangle { bits: matrix, l },
            pivots,
            row,
            parity,
            buf_a,
            buf_b,
        })
    }

    /// Takes fragment `n` (1-based: data for n <= M, coded above), with the workspace this
    /// state was created in.
    pub fn push<S: FragmentStore>(
        &mut self,
        workspace: &mut [u8],
        store: &mut S,
        n: usize,
        payload: &[u8],
    ) -> Result<Progress, DecodeError<S::Error>> {
        let got = workspace.len();
        let Some(mut work) = self.work(workspace) else {
            return Err(DecodeError::Workspace {
                needed: Self::workspace_len(self.m, self.max_lost, self.frag_size),
                got,
            });
        };
        work.push(store, n, payload)?;
        Ok(self.progress())
    }

    /// M.
    pub fn nb_frag(&self) -> usize {
        self.m
    }

    pub fn frag_size(&self) -> usize {
        self.frag_size
    }

    /// Fragments that carried new information (duplicates and redundant ones excluded).
    pub fn received(&self) -> usize {
        self.received_data + self.kept_rows
    }

    /// Useful fragments still needed before the block can be rebuilt (0 when complete).
    pub fn missing(&self) -> usize {
        if self.complete {
            return 0;
        }
        match self.l {
            0 => self.m - self.received_data,
            l => l - self.kept_rows,
        }
    }

    /// Data fragments lost when the first coded fragment arrived, if one has.
    pub fn lost(&self) -> Option<usize> {
        (self.l > 0).then_some(self.l)
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn progress(&self) -> Progress {
        if self.complete {
            Progress::Complete
        } else {
            Progress::NeedMore {
                missing: self.missing(),
            }
        }
    }
}

impl<'w> Decoder<'w> {
    /// Workspace bytes for `m` data fragments, at most `max_lost` of them lost, fragment size
    /// `frag_size`. See the module docs.
    pub const fn workspace_len(m: usize, max_lost: usize, frag_size: usize) -> usize {
        DecoderState::workspace_len(m, max_lost, frag_size)
    }

    /// A decoder for `m` data fragments of `frag_size` bytes that can recover up to
    /// `max_lost` of them, in `workspace` (at least [`Self::workspace_len`] bytes).
    pub fn new(
        version: Version,
        m: usize,
        frag_size: usize,
        max_lost: usize,
        workspace: &'w mut [u8],
    ) -> Result<Self, DecoderError> {
        let state = DecoderState::new(version, m, frag_size, max_lost, workspace)?;
        Ok(Self { state, workspace })
    }

    /// The state and the workspace, apart (to keep the state and reuse the buffer).
    pub fn into_parts(self) -> (DecoderState, &'w mut [u8]) {
        (self.state, self.workspace)
    }

    /// The state, for the accessors ([`DecoderState::missing`] and the rest).
    pub fn state(&self) -> &DecoderState {
        &self.state
    }

    /// M.
    pub fn nb_frag(&self) -> usize {
        self.state.nb_frag()
    }

    pub fn frag_size(&self) -> usize {
        self.state.frag_size()
    }

    /// Fragments that carried new information (duplicates and redundant ones excluded).
    pub fn received(&self) -> usize {
        self.state.received()
    }

    /// Useful fragments still needed before the block can be rebuilt (0 when complete).
    pub fn missing(&self) -> usize {
        self.state.missing()
    }

    /// Data fragments lost when the first coded fragment arrived, if one has.
    pub fn lost(&self) -> Option<usize> {
        self.state.lost()
    }

    pub fn is_complete(&self) -> bool {
        self.state.is_complete()
    }

    pub fn progress(&self) -> Progress {
        self.state.progress()
    }

    /// Takes fragment `n` (1-based: data for n <= M, coded above).
    pub fn push<S: FragmentStore>(
        &mut self,
        store: &mut S,
        n: usize,
        payload: &[u8],
    ) -> Result<Progress, DecodeError<S::Error>> {
        self.state.push(self.workspace, store, n, payload)
    }
}

impl Work<'_> {
    /// Takes fragment `n` (1-based: data for n <= M, coded above).
    fn push<S: FragmentStore>(
        &mut self,
        store: &mut S,
        n: usize,
        payload: &[u8],
    ) -> Result<(), DecodeError<S::Error>> {
        if payload.len() != self.s.frag_size {
            return Err(DecodeError::PayloadLength {
                expected: self.s.frag_size,
                got: payload.len(),
            });
        }
        if n == 0 || n > MAX_NB_FRAG {
            return Err(DecodeError::FragmentNumber { n });
        }
        if self.s.complete {
            return Ok(());
        }
        if n <= self.s.m {
            self.push_data(store, n - 1, payload)
        } else {
            self.push_coded(store, n - self.s.m, payload)
        }
    }

    fn push_data<S: FragmentStore>(
        &mut self,
        store: &mut S,
        i: usize,
        payload: &[u8],
    ) -> Result<(), DecodeError<S::Error>> {
        if bit(self.received, i) {
            return Ok(());
        }
        match self.s.l {
            0 => {
                store.write_slot(i, payload).map_err(DecodeError::Store)?;
                set_bit(self.received, i);
                self.s.received_data += 1;
                if self.s.received_data == self.s.m {
                    self.s.complete = true;
                }
                Ok(())
            }
            _ => {
                // A late data fragment: a row with one bit, its own, taken as a coded one
                // (its slot is an unknown, since it was not received when they were fixed).
                self.parity.fill(0);
                set_bit(self.parity, i);
                self.push_row(store, payload)
            }
        }
    }

    /// Fixes the unknowns: every data fragment not received so far.
    fn fix_unknowns<S: FragmentStore>(&mut self) -> Result<(), DecodeError<S::Error>> {
        let lost = self.s.m - self.s.received_data;
        if lost > self.s.max_lost {
            return Err(DecodeError::NotEnoughMatrixMemory {
                lost,
                max_lost: self.s.max_lost,
            });
        }
        let mut column = 0;
        for i in 0..self.s.m {
            if !bit(self.received, i) {
                put_u16(self.column_slot, column, i as u16);
                column += 1;
            }
        }
        self.matrix.l = lost;
        self.s.l = lost;
        self.matrix.bits.fill(0);
        self.pivots.fill(0);
        Ok(())
    }

    fn push_coded<S: FragmentStore>(
        &mut self,
        store: &mut S,
        row_number: usize,
        payload: &[u8],
    ) -> Result<(), DecodeError<S::Error>> {
        // The unknowns are fixed at the first coded fragment.
        if self.s.l == 0 {
            self.fix_unknowns::<S>()?;
        }
        parity::fill_row(self.s.version, row_number as u32, self.s.m, self.parity).ok_or(
            DecodeError::FragmentNumber {
                n: row_number + self.s.m,
            },
        )?;
        self.push_row(store, payload)
    }

    /// Takes the fragment whose data fragments `parity` selects: those received are XOR-ed
    /// out of its payload, the unknowns left make its row, reduced next.
    fn push_row<S: FragmentStore>(
        &mut self,
        store: &mut S,
        payload: &[u8],
    ) -> Result<(), DecodeError<S::Error>> {
        self.row.fill(0);
        self.buf_a.copy_from_slice(payload);
        // The unknowns are the clear received bits, in order: count them on the way.
        let mut column = 0;
        for i in 0..self.s.m {
            let received = bit(self.received, i);
            if bit(self.parity, i) {
                if received {
                    store.read_slot(i, self.buf_b).map_err(DecodeError::Store)?;
                    xor_into(self.buf_a, self.buf_b);
                } else {
                    set_bit(self.row, column);
                }
            }
            if !received {
                column += 1;
            }
        }
        self.reduce(store)
    }

    /// Eliminates `row` (payload in `buf_a`) against the kept rows; keeps it if anything is
    /// left, and finishes the block when the system is full.
    fn reduce<S: FragmentStore>(&mut self, store: &mut S) -> Result<(), DecodeError<S::Error>> {
        let l = self.matrix.l;
        for c in 0..l {
            if !bit(self.row, c) {
                continue;
            }
            let slot = get_u16(self.column_slot, c) as usize;
            if bit(self.pivots, c) {
                self.matrix.xor_row_into(c, self.row);
                store
                    .read_slot(slot, self.buf_b)
                    .map_err(DecodeError::Store)?;
                xor_into(self.buf_a, self.buf_b);
            } else {
                store
                    .write_slot(slot, self.buf_a)
                    .map_err(DecodeError::Store)?;
                self.matrix.store_row(c, self.row);
                set_bit(self.pivots, c);
                self.s.kept_rows += 1;
                if self.s.kept_rows == l {
                    self.back_substitute(store)?;
                }
                return Ok(());
            }
        }
        // Nothing left: the fragment told us nothing new.
        Ok(())
    }

    /// Solves the full triangular system in place: each slot becomes its data fragment.
    fn back_substitute<S: FragmentStore>(
        &mut self,
        store: &mut S,
    ) -> Result<(), DecodeError<S::Error>> {
        let l = self.matrix.l;
        // Where row c's pivot is: the rows from c on hold l - c, ..., 1 bits, the last
        // ending the matrix, so each row up starts l - c bits before the one below. (One
        // running position, not start(c) worked out for each row.)
        let mut pivot_at = l * (l + 1) / 2;
        for c in (0..l).rev() {
            let slot = get_u16(self.column_slot, c) as usize;
            pivot_at -= l - c;
            let mut at = pivot_at;
            let mut dirty = false;
            for j in c + 1..l {
                at += 1;
                if bit(self.matrix.bits, at) {
                    if !dirty {
                        store
                            .read_slot(slot, self.buf_a)
                            .map_err(DecodeError::Store)?;
                        dirty = true;
                    }
                    let other = get_u16(self.column_slot, j) as usize;
                    store
                        .read_slot(other, self.buf_b)
                        .map_err(DecodeError::Store)?;
                    xor_into(self.buf_a, self.buf_b);
                }
            }
            if dirty {
                store
                    .write_slot(slot, self.buf_a)
                    .map_err(DecodeError::Store)?;
            }
        }
        self.s.complete = true;
        Ok(())
    }
}
