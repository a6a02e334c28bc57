//! Little-endian cursors over a command's bytes, shared by the package modules. They carry the
//! command name so every error they raise says where it happened.

use crate::error::{Error, ErrorKind};

/// Reads fields of one command. `start` is the command's length so far (its CID included), so
/// `Truncated` counts from the command's first byte.
pub(crate) struct Reader<'a> {
    command: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// `bytes` starts right after the CID.
    pub(crate) fn new(command: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            command,
            bytes,
            pos: 0,
        }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn error(&self, field: &'static str, kind: ErrorKind) -> Error {
        Error::new(self.command, field, kind)
    }

    pub(crate) fn bytes<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        let end = self.pos + N;
        match self.bytes.get(self.pos..end) {
            Some(s) => {
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                self.pos = end;
                Ok(out)
            }
            None => Err(self.error(
                field,
                ErrorKind::Truncated {
                    // +1 for the CID, which the caller already consumed.
                    needed: end + 1,
                    got: self.bytes.len() + 1,
                },
            )),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Error> {
        Ok(self.bytes::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.bytes(field)?))
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, Error> {
        let b: [u8; 3] = self.bytes(field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bytes(field)?))
    }

    /// Fails with `ReservedBits` on `field` when `value & rfu_mask != 0`.
    pub(crate) fn check_rfu(
        &self,
        field: &'static str,
        value: u8,
        rfu_mask: u8,
    ) -> Result<(), Error> {
        if value & rfu_mask != 0 {
            Err(self.error(field, ErrorKind::ReservedBits))
        } else {
            Ok(())
        }
    }
}

/// Writes one command into a caller's buffer.
pub(crate) struct Writer<'a> {
    command: &'static str,
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Checks up front that `len` bytes fit, so a build either writes the whole command or
    /// nothing useful and says how much room it needs.
    pub(crate) fn new(command: &'static str, buf: &'a mut [u8], len: usize) -> Result<Self, Error> {
        if buf.len() < len {
            return Err(Error::new(
                command,
                "buffer",
                ErrorKind::BufferTooSmall { needed: len },
            ));
        }
        Ok(Self {
            command,
            buf,
            pos: 0,
        })
    }

    pub(crate) fn invalid(&self, field: &'static str) -> Error {
        Error::new(self.command, field, ErrorKind::InvalidValue)
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(Error::new(
                self.command,
                "buffer",
                ErrorKind::BufferTooSmall { needed: end },
            )),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), Error> {
        self.put(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), Error> {
        self.put(&v.to_le_bytes())
    }

    /// Fails with `InvalidValue` on `field` when `v` needs more than 24 bits.
    pub(crate) fn u24(&mut self, field: &'static str, v: u32) -> Result<(), Error> {
        if v > 0x00ff_ffff {
            return Err(self.invalid(field));
        }
        let b = v.to_le_bytes();
        self.put(&b[..3])
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), Error> {
        self.put(&v.to_le_bytes())
    }

    /// The written prefix of the buffer.
    pub(crate) fn finish(self) -> &'a [u8] {
        let Writer { buf, pos, .. } = self;
        &buf[..pos.min(buf.len())]
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
