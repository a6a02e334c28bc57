//! `fuota frag encode|decode`: DataFragment payloads as hex lines, for checks against outside
//! tools and for the demo pipeline `encode | lose some | decode`.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fuota_codec::Version;
use fuota_server::fragmentation::{self, Code, Layout, Rebuilt};

#[derive(Debug, Subcommand)]
pub enum FragCommand {
    /// Print the DataFragment payloads of a file (CID 0x08 first), one hex line per fragment,
    /// N = 1..M+R. The zero padding of the last data fragment is reported on stderr.
    Encode(EncodeArgs),
    /// Rebuild a file from DataFragment hex lines on stdin (any subset, any order).
    Decode(DecodeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgoArg {
    /// The TS004 parity code (FragAlgo 0).
    Ts004,
    /// Reed-Solomon (FragAlgo 1, a vendor value).
    Rs,
}

#[derive(Debug, Args)]
pub struct CodeArgs {
    /// Package version, which selects the TS004 parity rows.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    version: u8,
    /// Fragment code.
    #[arg(long, value_enum, default_value_t = AlgoArg::Ts004)]
    algo: AlgoArg,
}

impl CodeArgs {
    fn code(&self) -> Code {
        match self.algo {
            AlgoArg::Ts004 => Code::Ts004(if self.version == 1 {
                Version::V1
            } else {
                Version::V2
            }),
            AlgoArg::Rs => Code::ReedSolomon,
        }
    }
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The data block to fragment.
    #[arg(long)]
    input: PathBuf,
    /// Fragment payload size in bytes (the max downlink payload minus 3).
    #[arg(long)]
    frag_size: usize,
    /// Number of coded fragments after the M data fragments.
    #[arg(long)]
    redundancy: usize,
    #[command(flatten)]
    code: CodeArgs,
    /// Fragmentation session index (0..=3), carried in every DataFragment.
    #[arg(long, default_value_t = 0)]
    index: u8,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Fragment payload size in bytes.
    #[arg(long)]
    frag_size: usize,
    /// Number of data fragments M.
    #[arg(long)]
    nb_frag: usize,
    /// Zero bytes that padded the last data fragment, dropped from the output.
    #[arg(long, default_value_t = 0)]
    padding: usize,
    #[command(flatten)]
    code: CodeArgs,
    /// Only accept fragments of this session index (by default, that of the first line).
    #[arg(long)]
    index: Option<u8>,
    /// Where to write the rebuilt data.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run(cmd: FragCommand) -> Result<ExitCode> {
    match cmd {
        FragCommand::Encode(args) => encode(args),
        FragCommand::Decode(args) => decode(args),
    }
}

fn encode(args: EncodeArgs) -> Result<ExitCode> {
    let data =
        fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let (layout, fragments) = fragmentation::encode_block(
        &data,
        args.frag_size,
        args.redundancy,
        args.code.code(),
        args.index,
    )?;
    eprintln!(
        "padding: {} bytes (M={}, R={}, fragment size {})",
        layout.padding, layout.nb_frag, args.redundancy, layout.frag_size
    );
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    for fragment in &fragments {
        writeln!(out, "{}", hex::encode(fragment))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn decode(args: DecodeArgs) -> Result<ExitCode> {
    if args.padding >= args.frag_size.max(1) {
        bail!(
            "--padding {} must be smaller than --frag-size {}",
            args.padding,
            args.frag_size
        );
    }
    let layout = Layout {
        frag_size: args.frag_size,
        nb_frag: args.nb_frag,
        padding: args.padding,
    };
    let mut index = args.index;
    let mut fragments = Vec::new();
    for (i, line) in io::stdin().lock().lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("reading line {line_no} of stdin"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let bytes = hex::decode(text)
            .with_context(|| format!("line {line_no}: not a hex DataFragment payload"))?;
        let fragment = fragmentation::parse_data_fragment(&bytes)
            .with_context(|| format!("line {line_no}: not a DataFragment"))?;
        if fragment.payload.len() != args.frag_size {
            bail!(
                "line {line_no}: fragment {} carries {} bytes, expected --frag-size {}",
                fragment.n,
                fragment.payload.len(),
                args.frag_size
            );
        }
        match index {
            None => index = Some(fragment.frag_index),
            Some(want) if want != fragment.frag_index => bail!(
                "line {line_no}: fragment of session index {}, expected {want}",
                fragment.frag_index
            ),
            Some(_) => {}
        }
        fragments.push((fragment.n, fragment.payload));
    }
    match fragmentation::rebuild(layout, args.code.code(), &fragments)? {
        Rebuilt::Complete(data) => {
            fs::write(&args.output, &data)
                .with_context(|| format!("writing {}", args.output.display()))?;
            eprintln!(
                "rebuilt {} bytes from {} fragments",
                data.len(),
                fragments.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Rebuilt::NeedMore { missing } => {
            eprintln!(
                "error: cannot rebuild the data yet: {} fragments read, at least {missing} more needed",
                fragments.len()
            );
            Ok(ExitCode::from(3))
        }
    }
}
