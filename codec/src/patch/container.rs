//! The signed patch container: header, manifest, signature, then the payload.
//! `docs/patch-format.md` is the byte-by-byte specification; this module is its code.

use super::heatshrink::Params;

/// "LWFP": LoRaWAN firmware patch.
pub const MAGIC: [u8; 4] = *b"LWFP";
/// Container layout this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const MANIFEST_LEN: usize = 128;
/// ECDSA P-256 signature, `r || s`, 32 bytes each, big-endian.
pub const SIGNATURE_LEN: usize = 64;
/// Everything before the payload: what the signature covers, plus the signature.
pub const PREAMBLE_LEN: usize = HEADER_LEN + MANIFEST_LEN + SIGNATURE_LEN;
/// The bytes the signature covers.
pub const SIGNED_LEN: usize = HEADER_LEN + MANIFEST_LEN;

/// What the payload rebuilds the target from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A detools sequential patch against the source image.
    Delta,
    /// The whole target image, compressed.
    Full,
}

impl Kind {
    pub const fn code(self) -> u8 {
        match self {
            Kind::Delta => 0,
            Kind::Full => 1,
        }
    }
}

/// How the payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Heatshrink(Params),
}

/// Target version, MCUboot style: `major.minor.revision+build`. Ordered field by field,
/// major first.
// In memory least significant field first (C layout): the comparison key is then the
// version's eight bytes as one little-endian number, loaded as they are. `Debug` by hand,
// major first as before.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct ImageVersion {
    pub build: u32,
    pub revision: u16,
    pub minor: u8,
    pub major: u8,
}

impl ImageVersion {
    /// The fields in one number, major in the top bits: its order is the fields' order, in
    /// one comparison (the derived one compares field by field, in more code).
    #[inline(always)]
    fn key(&self) -> u64 {
        (u64::from(self.major) << 56)
            | (u64::from(self.minor) << 48)
            | (u64::from(self.revision) << 32)
            | u64::from(self.build)
    }
}

impl core::fmt::Debug for ImageVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImageVersion")
            .field("major", &self.major)
            .field("minor", &self.minor)
            .field("revision", &self.revision)
            .field("build", &self.build)
            .finish()
    }
}

// Equal and hashed through the same key as the order: one compare of the packed fields, not
// one per field.
impl PartialEq for ImageVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ImageVersion {}

impl core::hash::Hash for ImageVersion {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl Ord for ImageVersion {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for ImageVersion {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl core::fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

/// The signed description of a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Manifest {
    pub kind: Kind,
    /// Source image size and SHA-256; zero for [`Kind::Full`].
    pub source_len: u32,
    pub source_sha256: [u8; 32],
    pub target_len: u32,
    pub target_sha256: [u8; 32],
    pub version: ImageVersion,
    /// Anti-rollback counter (MCUboot's security counter).
    pub security_counter: u32,
    pub payload_len: u32,
    /// SHA-256 of the payload, so that damage to the (unsigned) payload is told apart from
    /// a wrong rebuild.
    pub payload_sha256: [u8; 32],
    pub compression: Compression,
}

/// Why a container was rejected before its payload was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerError {
    /// Fewer bytes than the header, manifest and signature need.
    Truncated { needed: usize, got: usize },
    /// The first four bytes are not "LWFP".
    BadMagic,
    /// A container format version this code does not know.
    UnsupportedFormatVersion(u8),
    /// The manifest length in the header is not the one of this format version.
    ManifestLength(u16),
    /// A field holds a value the format does not allow.
    InvalidField(Field),
    /// Reserved manifest bytes are not zero.
    ReservedBytes,
    /// The payload is not exactly `payload_len` bytes.
    PayloadLength { expected: u32, got: usize },
}

/// A manifest field (or the signature) that [`ContainerError::InvalidField`] names. A code,
/// not the name itself: a device that never prints the error carries no names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Kind,
    SourceSize,
    SourceSha256,
    TargetSize,
    HeatshrinkWindow,
    Compression,
    PayloadSize,
    Signature,
}

impl Field {
    /// The field's name in the format specification.
    pub const fn name(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::SourceSize => "source_size",
            Field::SourceSha256 => "source_sha256",
            Field::TargetSize => "target_size",
            Field::HeatshrinkWindow => "heatshrink_window",
            Field::Compression => "compression",
            Field::PayloadSize => "payload_size",
            Field::Signature => "signature",
        }
    }
}

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::fmt::Display for ContainerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ContainerError::Truncated { needed, got } => {
                write!(f, "patch truncated: needs {needed} bytes, got {got}")
            }
            ContainerError::BadMagic => f.write_str("not a patch: bad magic (expected \"LWFP\")"),
            ContainerError::UnsupportedFormatVersion(v) => {
                write!(
                    f,
                    "unsupported patch format version {v} (expected {FORMAT_VERSION})"
                )
            }
            ContainerError::ManifestLength(n) => {
                write!(f, "manifest length {n} (expected {MANIFEST_LEN})")
            }
            ContainerError::InvalidField(name) => write!(f, "invalid manifest field {name}"),
            ContainerError::ReservedBytes => f.write_str("reserved manifest bytes are not zero"),
            ContainerError::PayloadLength { expected, got } => {
                write!(f, "payload is {got} bytes, manifest says {expected}")
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn array32(b: &[u8], at: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[at..at + 32]);
    out
}

// Manifest offsets (from the manifest's start).
const M_SOURCE_LEN: usize = 0;
const M_SOURCE_SHA: usize = 4;
const M_TARGET_LEN: usize = 36;
const M_TARGET_SHA: usize = 40;
const M_VERSION: usize = 72;
const M_SECURITY_COUNTER: usize = 80;
const M_PAYLOAD_LEN: usize = 84;
const M_PAYLOAD_SHA: usize = 88;
const M_COMPRESSION: usize = 120;
const M_WINDOW: usize = 121;
const M_LOOKAHEAD: usize = 122;
const M_RESERVED: usize = 123;
// Read as a word and a byte by `Manifest::parse`.
const _: () = assert!(MANIFEST_LEN - M_RESERVED == 5);

impl Manifest {
    /// Parses the header and manifest (the first [`SIGNED_LEN`] bytes of a patch). The
    /// signature is not checked here: see [`super::apply::verify_preamble`].
    pub fn parse(signed: &[u8]) -> Result<Self, ContainerError> {
        let Some(signed) = signed.first_chunk::<SIGNED_LEN>() else {
            return Err(ContainerError::Truncated {
                needed: SIGNED_LEN,
                got: signed.len(),
            });
        };
        if signed[..4] != MAGIC {
            return Err(ContainerError::BadMagic);
        }
        if signed[4] != FORMAT_VERSION {
            return Err(ContainerError::UnsupportedFormatVersion(signed[4]));
        }
        let kind = match signed[5] {
            0 => Kind::Delta,
            1 => Kind::Full,
            _ => return Err(ContainerError::InvalidField(Field::Kind)),
        };
        let manifest_len = u16_at(signed, 6);
        if usize::from(manifest_len) != MANIFEST_LEN {
            return Err(ContainerError::ManifestLength(manifest_len));
        }
        // The manifest as an array, so that its field reads need no checks (always there:
        // the signed bytes are the header and the manifest).
        let Some(m) = signed.last_chunk::<MANIFEST_LEN>() else {
            return Err(ContainerError::ManifestLength(manifest_len));
        };
        // The five reserved bytes as one word and a byte: no loop.
        if u32_at(m, M_RESERVED) != 0 || m[M_RESERVED + 4] != 0 {
            return Err(ContainerError::ReservedBytes);
        }
        let source_len = u32_at(m, M_SOURCE_LEN);
        match kind {
            Kind::Full if source_len != 0 => {
                return Err(ContainerError::InvalidField(Field::SourceSize))
            }
            Kind::Full if m[M_SOURCE_SHA..M_SOURCE_SHA + 32].iter().any(|&b| b != 0) => {
                return Err(ContainerError::InvalidField(Field::SourceSha256))
            }
            Kind::Delta if source_len == 0 => {
                return Err(ContainerError::InvalidField(Field::SourceSize))
            }
            _ => {}
        }
        let target_len = u32_at(m, M_TARGET_LEN);
        if target_len == 0 {
            return Err(ContainerError::InvalidField(Field::TargetSize));
        }
        let compression = match (m[M_COMPRESSION], m[M_WINDOW], m[M_LOOKAHEAD]) {
            (0, 0, 0) => Compression::None,
            (1, w, l) => Compression::Heatshrink(
                Params::new(w, l).ok_or(ContainerError::InvalidField(Field::HeatshrinkWindow))?,
            ),
            (0, _, _) => return Err(ContainerError::InvalidField(Field::HeatshrinkWindow)),
            _ => return Err(ContainerError::InvalidField(Field::Compression)),
        };
        let payload_len = u32_at(m, M_PAYLOAD_LEN);
        if payload_len == 0 {
            return Err(ContainerError::InvalidField(Field::PayloadSize));
        }
        // The hashes copied in once the result is made, not in its struct expression, where
        // the three copies cost more code (the zeros are overwritten, not stored); and into
        // the result itself, not a manifest on the stack that is then copied whole.
        let mut parsed = Ok(Self {
            kind,
            source_len,
            source_sha256: [0; 32],
            target_len,
            target_sha256: [0; 32],
            version: ImageVersion::default(),
            security_counter: u32_at(m, M_SECURITY_COUNTER),
            payload_len,
            payload_sha256: [0; 32],
            compression,
        });
        if let Ok(manifest) = &mut parsed {
            manifest.source_sha256 = array32(m, M_SOURCE_SHA);
            manifest.target_sha256 = array32(m, M_TARGET_SHA);
            manifest.payload_sha256 = array32(m, M_PAYLOAD_SHA);
            // Read after the copies too: its fields are not kept on the stack across them.
            manifest.version = ImageVersion {
                major: m[M_VERSION],
                minor: m[M_VERSION + 1],
                revision: u16_at(m, M_VERSION + 2),
                build: u32_at(m, M_VERSION + 4),
            };
        }
        parsed
    }

    /// Writes header and manifest (the signed bytes) into `out`.
    pub fn build_into(&self, out: &mut [u8; SIGNED_LEN]) {
        out.fill(0);
        out[..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[5] = self.kind.code();
        out[6..8].copy_from_slice(&(MANIFEST_LEN as u16).to_le_bytes());
        let m = &mut out[HEADER_LEN..];
        m[M_SOURCE_LEN..M_SOURCE_LEN + 4].copy_from_slice(&self.source_len.to_le_bytes());
        m[M_SOURCE_SHA..M_SOURCE_SHA + 32].copy_from_slice(&self.source_sha256);
        m[M_TARGET_LEN..M_TARGET_LEN + 4].copy_from_slice(&self.target_len.to_le_bytes());
        m[M_TARGET_SHA..M_TARGET_SHA + 32].copy_from_slice(&self.target_sha256);
        m[M_VERSION] = self.version.major;
        m[M_VERSION + 1] = self.version.minor;
        m[M_VERSION + 2..M_VERSION + 4].copy_from_slice(&self.version.revision.to_le_bytes());
        m[M_VERSION + 4..M_VERSION + 8].copy_from_slice(&self.version.build.to_le_bytes());
        m[M_SECURITY_COUNTER..M_SECURITY_COUNTER + 4]
            .copy_from_slice(&self.security_counter.to_le_bytes());
        m[M_PAYLOAD_LEN..M_PAYLOAD_LEN + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        m[M_PAYLOAD_SHA..M_PAYLOAD_SHA + 32].copy_from_slice(&self.payload_sha256);
        if let Compression::Heatshrink(p) = self.compression {
            m[M_COMPRESSION] = 1;
            m[M_WINDOW] = p.window_bits;
            m[M_LOOKAHEAD] = p.lookahead_bits;
        }
    }
}

/// A whole patch in memory, split into its parts (nothing verified yet).
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    pub manifest: Manifest,
    pub signed: &'a [u8],
    pub signature: &'a [u8; SIGNATURE_LEN],
    pub payload: &'a [u8],
}

impl<'a> Container<'a> {
    /// Splits a complete patch; checks lengths and the manifest, not the signature.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ContainerError> {
        if bytes.len() < PREAMBLE_LEN {
            return Err(ContainerError::Truncated {
                needed: PREAMBLE_LEN,
                got: bytes.len(),
            });
        }
        let manifest = Manifest::parse(bytes)?;
        let (signed, rest) = bytes.split_at(SIGNED_LEN);
        let (signature, payload) = rest.split_at(SIGNATURE_LEN);
        let signature = signature
            .try_into()
            .map_err(|_| ContainerError::InvalidField(Field::Signature))?;
        if payload.len() != manifest.payload_len as usize {
            return Err(ContainerError::PayloadLength {
                expected: manifest.payload_len,
                got: payload.len(),
            });
        }
        Ok(Self {
            manifest,
            signed,
            signature,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            kind: Kind::Delta,
            source_len: 1000,
            source_sha256: [1; 32],
            target_len: 1200,
            target_sha256: [2; 32],
            version: ImageVersion {
                major: 1,
                minor: 2,
                revision: 300,
                build: 7,
            },
            security_counter: 9,
            payload_len: 77,
            payload_sha256: [3; 32],
            compression: Compression::Heatshrink(Params::new(9, 8).unwrap()),
        }
    }

    #[test]
    fn an_image_version_prints_major_first() {
        // Its fields are declared least significant first (for the compare), but it prints as
        // it reads: major, minor, revision, build.
        extern crate std;
        let v = ImageVersion {
            major: 1,
            minor: 2,
            revision: 3,
            build: 4,
        };
        assert_eq!(
            std::format!("{v:?}"),
            "ImageVersion { major: 1, minor: 2, revision: 3, build: 4 }"
        );
    }

    #[test]
    fn versions_order_field_by_field_major_first() {
        let v = |major, minor, revision, build| ImageVersion {
            major,
            minor,
            revision,
            build,
        };
        let ascending = [
            v(0, 0, 0, 0),
            v(0, 0, 0, u32::MAX),
            v(0, 0, 1, 0),
            v(0, 0, u16::MAX, u32::MAX),
            v(0, 1, 0, 0),
            v(0, 255, 65535, 7),
            v(1, 0, 0, 0),
            v(255, 255, 65535, u32::MAX),
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                let fields = (a.major, a.minor, a.revision, a.build);
                let other = (b.major, b.minor, b.revision, b.build);
                assert_eq!(a.cmp(b), i.cmp(&j));
                assert_eq!(a.cmp(b), fields.cmp(&other));
                // Equality goes through the same key: it agrees with the fields'.
                assert_eq!(a == b, fields == other);
            }
        }
    }

    #[test]
    fn manifest_round_trips_and_each_bad_field_is_named() {
        let m = sample();
        let mut b = [0u8; SIGNED_LEN];
        m.build_into(&mut b);
        assert_eq!(&b[..8], b"LWFP\x01\x00\x80\x00");
        assert_eq!(Manifest::parse(&b), Ok(m));

        let bad = |at: usize, value: u8| {
            let mut c = b;
            c[at] = value;
            Manifest::parse(&c).unwrap_err()
        };
        assert_eq!(bad(0, b'X'), ContainerError::BadMagic);
        assert_eq!(bad(4, 2), ContainerError::UnsupportedFormatVersion(2));
        assert_eq!(bad(5, 7), ContainerError::InvalidField(Field::Kind));
        assert_eq!(bad(6, 95), ContainerError::ManifestLength(95));
        assert_eq!(
            bad(HEADER_LEN + M_RESERVED, 1),
            ContainerError::ReservedBytes
        );
        assert_eq!(bad(HEADER_LEN + 127, 1), ContainerError::ReservedBytes);
        assert_eq!(
            bad(HEADER_LEN + M_COMPRESSION, 5),
            ContainerError::InvalidField(Field::Compression)
        );
        assert_eq!(
            bad(HEADER_LEN + M_LOOKAHEAD, 9),
            ContainerError::InvalidField(Field::HeatshrinkWindow)
        );
        // A full image must not name a source.
        assert_eq!(bad(5, 1), ContainerError::InvalidField(Field::SourceSize));
        let mut zero_target = b;
        zero_target[HEADER_LEN + M_TARGET_LEN..HEADER_LEN + M_TARGET_LEN + 4].fill(0);
        assert_eq!(
            Manifest::parse(&zero_target),
            Err(ContainerError::InvalidField(Field::TargetSize))
        );
        assert_eq!(
            Manifest::parse(&b[..100]),
            Err(ContainerError::Truncated {
                needed: SIGNED_LEN,
                got: 100
            })
        );
    }

    #[test]
    fn container_checks_payload_length() {
        let m = sample();
        let mut b = [0u8; SIGNED_LEN];
        m.build_into(&mut b);
        let mut file = b.to_vec();
        file.extend_from_slice(&[0; SIGNATURE_LEN]);
        file.extend_from_slice(&[0; 76]);
        assert_eq!(
            Container::parse(&file).unwrap_err(),
            ContainerError::PayloadLength {
                expected: 77,
                got: 76
            }
        );
        file.push(0);
        assert_eq!(Container::parse(&file).unwrap().payload.len(), 77);
    }
}
