//! Data blocks to TS004 DataFragment payloads and back, over either fragment code.
//!
//! The server sends fragments N = 1..M (the data, zero-padded to whole fragments) then
//! N = M+1..M+R (coded). Rebuilding is what a device does; the server uses it to check its
//! own output and for the `fuota frag decode` command.

use std::fmt;

use fuota_codec::fec::{self, FragAlgo, Progress, RamStore};
use fuota_codec::fragmentation::{DataFragment, Downlink};
use fuota_codec::Version;

/// Largest fragment count the 14-bit N field can number, coded fragments included.
pub const MAX_FRAGMENT_NUMBER: usize = 0x3fff;

/// Which code makes the redundant fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The TS004 parity code; its rows differ between v1 and v2.
    Ts004(Version),
    /// Reed-Solomon over GF(2^8) (FragAlgo 1, a vendor value).
    ReedSolomon,
}

impl Code {
    pub fn algo(self) -> FragAlgo {
        match self {
            Code::Ts004(_) => FragAlgo::Ts004,
            Code::ReedSolomon => FragAlgo::ReedSolomon,
        }
    }
}

/// How a block is cut: fragment size, data fragment count M, zero padding at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub frag_size: usize,
    pub nb_frag: usize,
    pub padding: usize,
}

impl Layout {
    /// The layout of `len` bytes cut into `frag_size`-byte fragments.
    pub fn for_len(len: usize, frag_size: usize) -> Result<Self, FragmentationError> {
        if frag_size == 0 || frag_size > 255 {
            return Err(FragmentationError::FragSize(frag_size));
        }
        if len == 0 {
            return Err(FragmentationError::Empty);
        }
        let nb_frag = len.div_ceil(frag_size);
        Ok(Self {
            frag_size,
            nb_frag,
            padding: nb_frag * frag_size - len,
        })
    }

    /// Length of the data without its padding.
    pub fn data_len(&self) -> usize {
        (self.nb_frag * self.frag_size).saturating_sub(self.padding)
    }
}

/// Why a block cannot be cut or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentationError {
    FragSize(usize),
    Empty,
    TooManyFragments { total: usize, max: usize },
    Padding { padding: usize, frag_size: usize },
    FragIndex(u8),
    Codec(String),
}

impl fmt::Display for FragmentationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FragmentationError::FragSize(n) => {
                write!(f, "fragment size {n} is out of range (1..=255)")
            }
            FragmentationError::Empty => f.write_str("the data block is empty"),
            FragmentationError::TooManyFragments { total, max } => {
                write!(
                    f,
                    "{total} fragments in all, more than the {max} this code can number"
                )
            }
            FragmentationError::Padding { padding, frag_size } => {
                write!(
                    f,
                    "padding {padding} is not smaller than the fragment size {frag_size}"
                )
            }
            FragmentationError::FragIndex(i) => write!(f, "fragmentation index {i} is not 0..=3"),
            FragmentationError::Codec(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for FragmentationError {}

fn codec_err(e: impl fmt::Display) -> FragmentationError {
    FragmentationError::Codec(e.to_string())
}

/// One DataFragment as read back from the air or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFragment {
    pub frag_index: u8,
    pub n: usize,
    pub payload: Vec<u8>,
}

/// The DataFragment command (CID 0x08 first) carrying fragment `n` of session `frag_index`.
pub fn data_fragment(
    frag_index: u8,
    n: usize,
    payload: &[u8],
) -> Result<Vec<u8>, FragmentationError> {
    if frag_index > 3 {
        return Err(FragmentationError::FragIndex(frag_index));
    }
    let n = u16::try_from(n).map_err(|_| FragmentationError::TooManyFragments {
        total: n,
        max: MAX_FRAGMENT_NUMBER,
    })?;
    let cmd = Downlink::DataFragment(DataFragment {
        frag_index,
        n,
        payload,
    });
    let mut buf = vec![0u8; 3 + payload.len()];
    let len = cmd
        .build_into(Version::V2, &mut buf)
        .map_err(codec_err)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Parses one DataFragment command (CID first, standing alone).
pub fn parse_data_fragment(bytes: &[u8]) -> Result<ParsedFragment, fuota_codec::Error> {
    match Downlink::parse(Version::V2, bytes)? {
        (Downlink::DataFragment(f), _) => Ok(ParsedFragment {
            frag_index: f.frag_index,
            n: usize::from(f.n),
            payload: f.payload.to_vec(),
        }),
        (other, _) => Err(fuota_codec::Error::new(
            other.name(Version::V2),
            "CID",
            fuota_codec::ErrorKind::InvalidValue,
        )),
    }
}

/// Cuts `data` into M data fragments and `redundancy` coded ones, each as a DataFragment
/// command for session `frag_index`.
pub fn encode_block(
    data: &[u8],
    frag_size: usize,
    redundancy: usize,
    code: Code,
    frag_index: u8,
) -> Result<(Layout, Vec<Vec<u8>>), FragmentationError> {
    let layout = Layout::for_len(data.len(), frag_size)?;
    let total = layout.nb_frag + redundancy;
    let max = match code {
        Code::Ts004(_) => MAX_FRAGMENT_NUMBER,
        Code::ReedSolomon => fec::reed_solomon::MAX_SHARDS,
    };
    if total > max {
        return Err(FragmentationError::TooManyFragments { total, max });
    }
    let fragments = match code {
        Code::Ts004(version) => {
            fec::encoder::encode(version, data, frag_size, redundancy).map_err(codec_err)?
        }
        Code::ReedSolomon => {
            fec::reed_solomon::encode(data, frag_size, redundancy).map_err(codec_err)?
        }
    };
    let commands = fragments
        .iter()
        .enumerate()
        .map(|(i, f)| data_fragment(frag_index, i + 1, f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((layout, commands))
}

/// What [`rebuild`] made of the fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// The data, padding removed.
    Complete(Vec<u8>),
    /// Not enough fragments: at least `missing` more are needed.
    NeedMore { missing: usize },
}

/// Decodes a block from fragments `(n, payload)` as a device would, one at a time in the
/// order given. Fragments numbered past what the code can carry are an error.
pub fn rebuild(
    layout: Layout,
    code: Code,
    fragments: &[(usize, Vec<u8>)],
) -> Result<Rebuilt, FragmentationError> {
    let Layout {
        frag_size,
        nb_frag: m,
        padding,
    } = layout;
    if frag_size == 0 {
        return Err(FragmentationError::FragSize(frag_size));
    }
    if padding >= frag_size {
        return Err(FragmentationError::Padding { padding, frag_size });
    }
    match code {
        Code::Ts004(version) => {
            let mut workspace = vec![0u8; fec::decoder::Decoder::workspace_len(m, m, frag_size)];
            let mut slots = vec![0u8; m * frag_size];
            let mut store = RamStore::new(&mut slots, frag_size);
            let mut decoder = fec::decoder::Decoder::new(version, m, frag_size, m, &mut workspace)
                .map_err(codec_err)?;
            let mut progress = decoder.progress();
            for (n, payload) in fragments {
                progress = decoder.push(&mut store, *n, payload).map_err(codec_err)?;
                if progress == Progress::Complete {
                    break;
                }
            }
            finish(progress, slots, layout)
        }
        Code::ReedSolomon => {
            let redundancy = fragments
                .iter()
                .map(|(n, _)| *n)
                .max()
                .unwrap_or(0)
                .saturating_sub(m);
            let mut slots = vec![0u8; (m + redundancy) * frag_size];
            let mut store = RamStore::new(&mut slots, frag_size);
            let mut decoder = fec::reed_solomon::ReedSolomonDecoder::new(m, redundancy, frag_size)
                .map_err(codec_err)?;
            let mut progress = Progress::NeedMore { missing: m };
            for (n, payload) in fragments {
                progress = decoder.push(&mut store, *n, payload).map_err(codec_err)?;
                if progress == Progress::Complete {
                    break;
                }
            }
            slots.truncate(m * frag_size);
            finish(progress, slots, layout)
        }
    }
}

fn finish(
    progress: Progress,
    mut slots: Vec<u8>,
    layout: Layout,
) -> Result<Rebuilt, FragmentationError> {
    Ok(match progress {
        Progress::Complete => {
            slots.truncate(layout.data_len());
            Rebuilt::Complete(slots)
        }
        Progress::NeedMore { missing } => Rebuilt::NeedMore { missing },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_rebuild_with_losses() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for code in [
            Code::Ts004(Version::V1),
            Code::Ts004(Version::V2),
            Code::ReedSolomon,
        ] {
            let (layout, commands) = encode_block(&data, 48, 10, code, 2).unwrap();
            assert_eq!((layout.nb_frag, layout.padding), (21, 8));
            let fragments: Vec<_> = commands
                .iter()
                .map(|c| parse_data_fragment(c).unwrap())
                .filter(|f| f.n % 7 != 3)
                .map(|f| {
                    assert_eq!(f.frag_index, 2);
                    (f.n, f.payload)
                })
                .collect();
            assert_eq!(
                rebuild(layout, code, &fragments).unwrap(),
                Rebuilt::Complete(data.clone())
            );
            let few = &fragments[..15];
            assert!(
                matches!(rebuild(layout, code, few).unwrap(), Rebuilt::NeedMore { missing } if missing >= 6)
            );
        }
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert_eq!(Layout::for_len(10, 0), Err(FragmentationError::FragSize(0)));
        assert_eq!(Layout::for_len(0, 10), Err(FragmentationError::Empty));
        let layout = Layout {
            frag_size: 4,
            nb_frag: 2,
            padding: 4,
        };
        assert!(rebuild(layout, Code::Ts004(Version::V2), &[]).is_err());
        assert!(encode_block(&[1; 300], 1, 0, Code::ReedSolomon, 0).is_err());
    }
}
