//! Parse and build errors. Each names the command and the field it is about, so a log line
//! says exactly what was wrong with a frame that came from the air.

use core::fmt;

/// What went wrong with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The payload ended inside this field: `needed` bytes from the command's start, `got` left.
    Truncated { needed: usize, got: usize },
    /// Bits the spec marks RFU are set.
    ReservedBits,
    /// The CID is not a command of this package, version and direction.
    UnknownCid(u8),
    /// The field holds a value the spec does not allow (or, when building, does not fit).
    InvalidValue,
    /// A command that must stand alone in its frame (DataFragment) was followed by more bytes,
    /// or bytes follow a command whose length is fixed.
    TrailingBytes,
    /// The caller's output buffer is too small: `needed` bytes.
    BufferTooSmall { needed: usize },
}

/// A parse or build error: which command, which field, what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Command name as in the spec (`"FragSessionSetupReq"`), or `"payload"` before the CID is known.
    pub command: &'static str,
    /// Field name as in the spec (`"Control"`), or `"CID"`.
    pub field: &'static str,
    pub kind: ErrorKind,
}

impl Error {
    pub const fn new(command: &'static str, field: &'static str, kind: ErrorKind) -> Self {
        Self {
            command,
            field,
            kind,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Truncated { needed, got } => {
                write!(f, "truncated: needs {needed} bytes, got {got}")
            }
            ErrorKind::ReservedBits => f.write_str("reserved bits set"),
            ErrorKind::UnknownCid(cid) => write!(f, "unknown CID 0x{cid:02x}"),
            ErrorKind::InvalidValue => f.write_str("invalid value"),
            ErrorKind::TrailingBytes => f.write_str("unexpected trailing bytes"),
            ErrorKind::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: needs {needed} bytes")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.command, self.field, self.kind)
    }
}

impl core::error::Error for Error {}
