//! Little-endian cursors over a command's bytes, shared by the package modules. They carry the
//! command name so every error they raise says where it happened.
//!
//! The first error of a command is kept in its cursor, and the field steps in between return
//! only [`Stop`], which holds nothing: a `?` after each field then moves no error value through
//! the parser (on a device that is most of a parser's code). The command's entry point takes
//! the error out at the end ([`Reader::into_error`], [`Writer::finish`]).

use crate::error::{Error, ErrorKind};

/// A command's parse or build stopped; the error is in its [`Reader`] or [`Writer`]. Only
/// they make one, as they record the error.
#[derive(Debug)]
pub(crate) struct Stop(());

/// Reads fields of one command. Positions count from the command's first byte (its CID
/// included), so `Truncated` says how long the command had to be. With `REPORT` false (a
/// device that drops malformed commands: [`crate::package::Commands::valid`]) it keeps no
/// error, and the code that would describe one is left out.
pub(crate) struct Reader<'a, const REPORT: bool = true> {
    command: &'static str,
    /// The bytes not read yet: a field read is then one length check.
    rest: &'a [u8],
    /// The length of the body, for `Truncated`.
    len: usize,
    /// The first error: field and kind.
    failed: Option<(&'static str, ErrorKind)>,
}

impl<'a, const REPORT: bool> Reader<'a, REPORT> {
    /// `bytes` starts right after the CID. `command` names the errors until
    /// [`Reader::command`] names the command.
    pub(crate) fn new(command: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            command: if REPORT { command } else { "" },
            rest: bytes,
            len: bytes.len(),
            failed: None,
        }
    }

    /// Names the command the fields belong to, once its CID is known.
    pub(crate) fn command(&mut self, command: &'static str) {
        if REPORT {
            self.command = command;
        }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// The bytes not read yet, all of them read now (a field that takes the rest).
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }

    /// Records the error and stops (the parse returns at its first).
    pub(crate) fn error(&mut self, field: &'static str, kind: ErrorKind) -> Stop {
        if REPORT {
            self.failed = Some((field, kind));
        }
        Stop(())
    }

    /// The error that stopped the parse.
    pub(crate) fn into_error(self) -> Error {
        // Only `error` makes a `Stop`, after recording; the fallback is never taken.
        let (field, kind) = self.failed.unwrap_or(("payload", ErrorKind::InvalidValue));
        Error::new(self.command, field, kind)
    }

    pub(crate) fn bytes<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Stop> {
        match self.rest.split_first_chunk::<N>() {
            Some((s, rest)) => {
                self.rest = rest;
                Ok(*s)
            }
            None => Err(self.truncated(field, N)),
        }
    }

    // Out of line: one copy serves every field of every command.
    #[inline(never)]
    fn truncated(&mut self, field: &'static str, n: usize) -> Stop {
        let kind = ErrorKind::Truncated {
            // +1 for the CID, which the caller already consumed.
            needed: self.len - self.rest.len() + n + 1,
            got: self.len + 1,
        };
        self.error(field, kind)
    }

    /// On a device (no error kept), fails at once when fewer than `n` bytes are left: the
    /// field reads after it then need no length checks of their own, the failure being the
    /// same. Reporting, it checks nothing, so that the error names the field that ran out.
    pub(crate) fn expect(&mut self, n: usize) -> Result<(), Stop> {
        if !REPORT && self.rest.len() < n {
            return Err(self.truncated("payload", n));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Stop> {
        Ok(self.bytes::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Stop> {
        Ok(u16::from_le_bytes(self.bytes(field)?))
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, Stop> {
        let b: [u8; 3] = self.bytes(field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.bytes(field)?))
    }

    /// Fails with `ReservedBits` on `field` when `value & rfu_mask != 0`.
    pub(crate) fn check_rfu(
        &mut self,
        field: &'static str,
        value: u8,
        rfu_mask: u8,
    ) -> Result<(), Stop> {
        if value & rfu_mask != 0 {
            Err(self.error(field, ErrorKind::ReservedBits))
        } else {
            Ok(())
        }
    }
}

/// Writes one command into a caller's buffer. [`Writer::new`] checks that the whole command
/// fits, so the writes after it cannot fail and return nothing; one that did not fit all the
/// same (a length that disagrees with the fields) is kept as the command's error. With
/// `REPORT` false (a device) only that there was an error is kept, as a position past the
/// buffer.
pub(crate) struct Writer<'a, const REPORT: bool = true> {
    command: &'static str,
    buf: &'a mut [u8],
    /// Bytes written; past the buffer after an unreported error.
    pos: usize,
    /// The first error: field and kind (reported only).
    failed: Option<(&'static str, ErrorKind)>,
}

impl<'a, const REPORT: bool> Writer<'a, REPORT> {
    /// Checks up front that `len` bytes fit, so a build either writes the whole command or
    /// nothing useful and says how much room it needs.
    pub(crate) fn new(command: &'static str, buf: &'a mut [u8], len: usize) -> Result<Self, Error> {
        // Unreported, the name is not kept (nor, once inlined, even looked up).
        let command = if REPORT { command } else { "" };
        if buf.len() < len {
            return Err(Error::new(
                command,
                "buffer",
                ErrorKind::BufferTooSmall { needed: len },
            ));
        }
        // Unreported, the buffer is cut to the command's length (split_at_mut: it fits): in
        // each command's arm the compiler then knows the length, and folds the writes'
        // checks. A write past it fails, as a length that disagrees with the fields would.
        let buf = if REPORT { buf } else { buf.split_at_mut(len).0 };
        Ok(Self {
            command,
            buf,
            pos: 0,
            failed: None,
        })
    }

    fn error(&mut self, field: &'static str, kind: ErrorKind) -> Stop {
        if !REPORT {
            // Unreported, a position past the buffer is the error: no write fits after it,
            // and finish finds no prefix that long. (A slice is at most isize::MAX long, so
            // the field ends worked out from it do not overflow.)
            self.pos = self.buf.len() + 1;
        } else if self.failed.is_none() {
            self.failed = Some((field, kind));
        }
        Stop(())
    }

    /// Records that `field` holds a value the command cannot carry, and stops.
    pub(crate) fn invalid(&mut self, field: &'static str) -> Stop {
        self.error(field, ErrorKind::InvalidValue)
    }

    /// On a device, fails when fewer than `n` more bytes fit. [`Writer::new`] has seen the
    /// whole command fit, so this never fails; it is there for the compiler, which cannot
    /// tell which command's length that was, and folds the checks of the `n` bytes of writes
    /// after it into this one. Reporting, it checks nothing.
    pub(crate) fn expect(&mut self, n: usize) -> Result<(), Stop> {
        let needed = self.pos + n;
        if !REPORT && self.buf.len() < needed {
            return Err(self.error("buffer", ErrorKind::BufferTooSmall { needed }));
        }
        Ok(())
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
            }
            None => {
                self.error("buffer", ErrorKind::BufferTooSmall { needed: end });
            }
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.put_array([v])
    }

    /// [`Writer::put`] for a fixed-size field: the same check and error, and the piece (N
    /// long, so never `None`) takes the array whole, in stores, not through a copy call.
    fn put_array<const N: usize>(&mut self, bytes: [u8; N]) {
        let end = self.pos + N;
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                if let Some(dst) = dst.first_chunk_mut() {
                    *dst = bytes;
                }
                self.pos = end;
            }
            None => {
                self.error("buffer", ErrorKind::BufferTooSmall { needed: end });
            }
        }
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put_array(v.to_le_bytes())
    }

    /// Fails with `InvalidValue` on `field` when `v` needs more than 24 bits.
    pub(crate) fn u24(&mut self, field: &'static str, v: u32) -> Result<(), Stop> {
        if v > 0x00ff_ffff {
            return Err(self.invalid(field));
        }
        let b = v.to_le_bytes();
        self.put(&b[..3]);
        Ok(())
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put_array(v.to_le_bytes())
    }

    /// The written prefix of the buffer, or the first error.
    pub(crate) fn finish(self) -> Result<&'a [u8], Error> {
        let Writer {
            command,
            buf,
            pos,
            failed,
        } = self;
        match failed {
            Some((field, kind)) => Err(Error::new(command, field, kind)),
            None => match buf.get(..pos) {
                Some(written) => Ok(written),
                // An unreported error.
                None => Err(Error::new(command, "buffer", ErrorKind::InvalidValue)),
            },
        }
    }
}

/// The CID and the body after it.
pub(crate) fn split_cid(bytes: &[u8]) -> Result<(u8, &[u8]), Error> {
    match bytes.split_first() {
        Some((&cid, body)) => Ok((cid, body)),
        None => Err(Error::new(
            "payload",
            "CID",
            ErrorKind::Truncated { needed: 1, got: 0 },
        )),
    }
}
