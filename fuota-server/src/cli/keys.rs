//! `fuota keys generate`: an ECDSA P-256 key pair for signing patches.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fuota_server::patch::keys;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new private key (PKCS#8 PEM) and, next to it, its public key (`*.pub.pem`).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Private key file to write, e.g. KEY.pem; the public key goes to KEY.pub.pem.
    #[arg(short, long)]
    output: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// KEY.pem -> KEY.pub.pem; other names get `.pub.pem` appended to the stem.
pub fn public_path(private: &Path) -> PathBuf {
    let stem = private
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    private.with_file_name(format!("{stem}.pub.pem"))
}

pub fn run(cmd: KeysCommand) -> Result<ExitCode> {
    match cmd {
        KeysCommand::Generate(args) => generate(&args),
    }
}

fn write_new(path: &Path, text: &str, private: bool, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite", path.display());
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<ExitCode> {
    let public = public_path(&args.output);
    if !args.force {
        for p in [&args.output, &public] {
            if p.exists() {
                bail!("{} exists; pass --force to overwrite", p.display());
            }
        }
    }
    let (private_pem, public_pem) = keys::generate()?;
    write_new(&args.output, &private_pem, true, args.force)?;
    write_new(&public, &public_pem, false, args.force)?;
    eprintln!(
        "wrote {} (private) and {} (public)",
        args.output.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}
