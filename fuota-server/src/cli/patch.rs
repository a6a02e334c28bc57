//! `fuota patch create|inspect|apply|bench`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fuota_codec::patch::apply::{verify_preamble, DetoolsApplier, OutOfRange};
use fuota_codec::patch::container::{Compression, Container, ImageVersion, Kind};
use fuota_codec::patch::Applier;
use fuota_server::patch::{self, keys, CreateOptions, DEFAULT_MAX_WINDOW, HOST_WINDOW};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Make a signed patch from OLD to NEW (or, with --format detools, a bare detools patch).
    Create(CreateArgs),
    /// Print a patch's header and manifest; with --pubkey, check its signature too.
    Inspect(InspectArgs),
    /// Rebuild NEW from OLD and a patch, with the same streaming code the device runs.
    Apply(ApplyArgs),
    /// For each old/new pair in the directories: sizes, chosen parameters, times.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Signed container (header, manifest, signature, payload).
    Container,
    /// Bare detools sequential patch (heatshrink), no container, no signature.
    Detools,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    old: PathBuf,
    new: PathBuf,
    /// Private key (PKCS#8 or SEC1 PEM); needed for the container format.
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
    /// Target version, X.Y.Z or X.Y.Z+BUILD.
    #[arg(long, default_value = "0.0.0", value_parser = parse_version)]
    version: ImageVersion,
    #[arg(long, default_value_t = 0)]
    security_counter: u32,
    /// Largest heatshrink window the device can hold, in bytes (power of two, 16..=32768).
    #[arg(long, default_value_t = DEFAULT_MAX_WINDOW)]
    max_window: usize,
    #[arg(long, value_enum, default_value_t = Format::Container)]
    format: Format,
    /// Print what was made as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    patch: PathBuf,
    /// Public key to check the signature with.
    #[arg(long)]
    pubkey: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    old: PathBuf,
    patch: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    /// Public key (PEM) the container's signature must verify with.
    #[arg(long)]
    pubkey: Option<PathBuf>,
    /// The patch is a bare detools sequential patch (nothing to verify).
    #[arg(long, value_enum, default_value_t = Format::Container)]
    format: Format,
    /// Feed the patch in chunks of this many bytes (as fragments would arrive).
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directories holding one old/new pair each, or directories of such directories.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_MAX_WINDOW)]
    max_window: usize,
    /// detools executable, to measure its bsdiff+heatshrink 8/7 patch for comparison.
    #[arg(long)]
    detools: Option<PathBuf>,
    /// Apply runs per pair (the fastest is reported).
    #[arg(long, default_value_t = 5)]
    apply_runs: u32,
    #[arg(long)]
    json: bool,
}

fn parse_version(s: &str) -> Result<ImageVersion, String> {
    let (main, build) = match s.split_once('+') {
        Some((m, b)) => (m, Some(b)),
        None => (s, None),
    };
    let parts: Vec<&str> = main.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("version {s:?}: expected X.Y.Z or X.Y.Z+BUILD"));
    }
    let err = |what: &str| format!("version {s:?}: bad {what}");
    Ok(ImageVersion {
        major: parts[0].parse().map_err(|_| err("major (0..=255)"))?,
        minor: parts[1].parse().map_err(|_| err("minor (0..=255)"))?,
        revision: parts[2].parse().map_err(|_| err("revision (0..=65535)"))?,
        build: build
            .map(|b| b.parse().map_err(|_| err("build")))
            .transpose()?
            .unwrap_or(0),
    })
}

pub fn run(cmd: PatchCommand) -> Result<ExitCode> {
    match cmd {
        PatchCommand::Create(a) => create(&a),
        PatchCommand::Inspect(a) => inspect(&a),
        PatchCommand::Apply(a) => apply(&a),
        PatchCommand::Bench(a) => bench(&a),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes through a temporary file and a rename, so a failure leaves no half file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct CreateReport {
    format: &'static str,
    kind: &'static str,
    old_size: usize,
    new_size: usize,
    patch_size: usize,
    delta_payload: usize,
    full_payload: usize,
    window_bits: u8,
    lookahead_bits: u8,
}

fn create(a: &CreateArgs) -> Result<ExitCode> {
    let old = read(&a.old)?;
    let new = read(&a.new)?;
    let bits = patch::window_bits(a.max_window)?;
    let report = match a.format {
        Format::Detools => {
            let payload = patch::delta(&old, &new, bits)?;
            write_atomic(&a.output, &payload.bytes)?;
            CreateReport {
                format: "detools",
                kind: "delta",
                old_size: old.len(),
                new_size: new.len(),
                patch_size: payload.bytes.len(),
                delta_payload: payload.bytes.len(),
                full_payload: 0,
                window_bits: payload.params.window_bits,
                lookahead_bits: payload.params.lookahead_bits,
            }
        }
        Format::Container => {
            let key_path = a
                .key
                .as_ref()
                .ok_or_else(|| anyhow!("--key is needed to sign a container patch"))?;
            let pem = fs::read_to_string(key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let key = keys::signing_key_from_pem(&pem)?;
            let created = patch::create(
                &old,
                &new,
                &key,
                &CreateOptions {
                    version: a.version,
                    security_counter: a.security_counter,
                    max_window: a.max_window,
                },
            )?;
            write_atomic(&a.output, &created.bytes)?;
            let (w, l) = match created.manifest.compression {
                Compression::Heatshrink(p) => (p.window_bits, p.lookahead_bits),
                Compression::None => (0, 0),
            };
            CreateReport {
                format: "container",
                kind: kind_name(created.manifest.kind),
                old_size: old.len(),
                new_size: new.len(),
                patch_size: created.bytes.len(),
                delta_payload: created.delta_len,
                full_payload: created.full_len,
                window_bits: w,
                lookahead_bits: l,
            }
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "wrote {} ({} bytes, {} {}, heatshrink {}/{})",
            a.output.display(),
            report.patch_size,
            report.format,
            report.kind,
            report.window_bits,
            report.lookahead_bits
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Delta => "delta",
        Kind::Full => "full",
    }
}

#[derive(Debug, Serialize)]
struct InspectReport {
    kind: &'static str,
    format_version: u8,
    source_size: u32,
    source_sha256: String,
    target_size: u32,
    target_sha256: String,
    version: String,
    security_counter: u32,
    payload_size: u32,
    payload_sha256: String,
    /// Whether the payload matches its SHA-256 in the manifest.
    payload_intact: bool,
    compression: String,
    signature: String,
    /// `None` without --pubkey.
    signature_valid: Option<bool>,
}

fn inspect(a: &InspectArgs) -> Result<ExitCode> {
    let bytes = read(&a.patch)?;
    let c = Container::parse(&bytes).map_err(|e| anyhow!("{}: {e}", a.patch.display()))?;
    let m = c.manifest;
    let signature_valid = match &a.pubkey {
        None => None,
        Some(path) => {
            let key = keys::verifying_key_from_pem(
                &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            Some(verify_preamble::<()>(&bytes, &key).is_ok())
        }
    };
    let compression = match m.compression {
        Compression::None => "none".to_string(),
        Compression::Heatshrink(p) => {
            format!("heatshrink {}/{}", p.window_bits, p.lookahead_bits)
        }
    };
    let report = InspectReport {
        kind: kind_name(m.kind),
        format_version: bytes[4],
        source_size: m.source_len,
        source_sha256: hex::encode(m.source_sha256),
        target_size: m.target_len,
        target_sha256: hex::encode(m.target_sha256),
        version: m.version.to_string(),
        security_counter: m.security_counter,
        payload_size: m.payload_len,
        payload_sha256: hex::encode(m.payload_sha256),
        payload_intact: <sha2::Sha256 as sha2::Digest>::digest(c.payload).as_slice()
            == m.payload_sha256,
        compression,
        signature: hex::encode(c.signature),
        signature_valid,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kind              {}", report.kind);
        println!("format version    {}", report.format_version);
        if m.kind == Kind::Delta {
            println!("source size       {}", report.source_size);
            println!("source sha256     {}", report.source_sha256);
        }
        println!("target size       {}", report.target_size);
        println!("target sha256     {}", report.target_sha256);
        println!("version           {}", report.version);
        println!("security counter  {}", report.security_counter);
        println!("payload size      {}", report.payload_size);
        println!(
            "payload sha256    {} ({})",
            report.payload_sha256,
            if report.payload_intact {
                "intact"
            } else {
                "DAMAGED"
            }
        );
        println!("compression       {}", report.compression);
        println!("signature         {}", report.signature);
        match signature_valid {
            Some(true) => println!("signature check   valid"),
            Some(false) => println!("signature check   INVALID"),
            None => {}
        }
    }
    Ok(
        if signature_valid == Some(false) || !report.payload_intact {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn apply(a: &ApplyArgs) -> Result<ExitCode> {
    let old = read(&a.old)?;
    let patch_bytes = read(&a.patch)?;
    let chunk = a.chunk.max(1);
    let new = match a.format {
        Format::Container => {
            let path = a
                .pubkey
                .as_ref()
                .ok_or_else(|| anyhow!("--pubkey is needed to verify a container patch"))?;
            let key = keys::verifying_key_from_pem(
                &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            let (new, m) = patch::apply(&old, &patch_bytes, &key, chunk)
                .map_err(|e| anyhow!("{}: {e}", a.patch.display()))?;
            eprintln!(
                "{} {} bytes, version {}, SHA-256 verified",
                kind_name(m.kind),
                m.target_len,
                m.version
            );
            new
        }
        Format::Detools => {
            let old_len = u32::try_from(old.len()).context("old image larger than 4 GiB")?;
            let mut applier = DetoolsApplier::<HOST_WINDOW>::new(old_len, None);
            let mut source = old.as_slice();
            let mut target = Vec::new();
            for piece in patch_bytes.chunks(chunk) {
                applier
                    .push(piece, &mut source, &mut target)
                    .map_err(|e| anyhow!("{}: {e}", a.patch.display()))?;
            }
            applier
                .finish::<OutOfRange>()
                .map_err(|e| anyhow!("{}: {e}", a.patch.display()))?;
            target
        }
    };
    write_atomic(&a.output, &new)?;
    Ok(ExitCode::SUCCESS)
}

/// Finds old/new pairs: a directory with exactly two files is a pair; other directories are
/// searched one level down.
fn find_pairs(dir: &Path, out: &mut Vec<(String, PathBuf, PathBuf)>) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        } else if path
            .extension()
            .is_some_and(|e| e == "bin" || e == "img" || e == "hex")
            || path.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("old") || n.to_string_lossy().starts_with("new")
            })
        {
            files.push(path);
        }
    }
    if files.len() == 2 {
        let (old, new) = order_pair(dir, &files[0], &files[1])?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        out.push((name, old, new));
        return Ok(());
    }
    dirs.sort();
    for d in dirs {
        find_pairs(&d, out)?;
    }
    Ok(())
}

/// Which of two files is the old one: a README line "A -> B" (in the directory or its parent)
/// decides; else names starting with "old"/"new"; else the older modification time.
fn order_pair(dir: &Path, a: &Path, b: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (na, nb) = (name(a), name(b));
    for readme_dir in [Some(dir), dir.parent()].into_iter().flatten() {
        let Ok(entries) = fs::read_dir(readme_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if !p.extension().is_some_and(|e| e == "md" || e == "txt") {
                continue;
            }
            let Ok(text) = fs::read_to_string(&p) else {
                continue;
            };
            if text.contains(&format!("{na} -> {nb}")) {
                return Ok((a.to_path_buf(), b.to_path_buf()));
            }
            if text.contains(&format!("{nb} -> {na}")) {
                return Ok((b.to_path_buf(), a.to_path_buf()));
            }
        }
    }
    if na.starts_with("old") && nb.starts_with("new") {
        return Ok((a.to_path_buf(), b.to_path_buf()));
    }
    if nb.starts_with("old") && na.starts_with("new") {
        return Ok((b.to_path_buf(), a.to_path_buf()));
    }
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(a), mtime(b)) {
        (Some(x), Some(y)) if x != y => Ok(if x < y {
            (a.to_path_buf(), b.to_path_buf())
        } else {
            (b.to_path_buf(), a.to_path_buf())
        }),
        _ => bail!(
            "{}: cannot tell old from new (name them old*/new*, or add a README line \"OLD -> NEW\")",
            dir.display()
        ),
    }
}

#[derive(Debug, Serialize)]
struct BenchRow {
    pair: String,
    old_size: usize,
    new_size: usize,
    kind: &'static str,
    patch_size: usize,
    payload_size: usize,
    window_bits: u8,
    lookahead_bits: u8,
    create_ms: f64,
    apply_ms: f64,
    /// Target bytes per second over the whole apply.
    apply_mb_s: f64,
    /// Of `apply_ms`, the signature check (a fixed cost per patch).
    verify_ms: f64,
    /// Target bytes per second once the signature is checked (hashing, decoding, bspatch).
    stream_mb_s: f64,
    /// detools bsdiff + heatshrink 8/7 patch size, when measured.
    detools_size: Option<usize>,
    /// patch size (container included) / detools size.
    ratio: Option<f64>,
}

fn detools_size(exe: &Path, old: &Path, new: &Path) -> Result<usize> {
    let out = std::env::temp_dir().join(format!("fuota-bench-{}.patch", std::process::id()));
    let status = std::process::Command::new(exe)
        .args(["create_patch", "-c", "heatshrink"])
        .arg(old)
        .arg(new)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!("{} create_patch failed: {status}", exe.display());
    }
    let len = fs::metadata(&out)?.len() as usize;
    let _ = fs::remove_file(&out);
    Ok(len)
}

// A benchmark driver: reading the clock is its job.
#[allow(clippy::disallowed_methods)]
fn bench(a: &BenchArgs) -> Result<ExitCode> {
    let mut pairs = Vec::new();
    for d in &a.dirs {
        find_pairs(d, &mut pairs)?;
    }
    if pairs.is_empty() {
        bail!("no old/new pairs found");
    }
    let key = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).context("bench key")?;
    let verifying = keys::device_key(key.verifying_key())?;
    let bar = indicatif::ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for (name, old_path, new_path) in &pairs {
        bar.set_message(name.clone());
        let old = read(old_path)?;
        let new = read(new_path)?;
        let options = CreateOptions {
            max_window: a.max_window,
            ..CreateOptions::default()
        };
        let started = Instant::now();
        let created = patch::create(&old, &new, &key, &options)?;
        let create_time = started.elapsed();
        let mut best = Duration::MAX;
        for _ in 0..a.apply_runs.max(1) {
            let started = Instant::now();
            let mut applier = Applier::<HOST_WINDOW>::new(verifying);
            let mut source = old.as_slice();
            let mut target = Vec::with_capacity(new.len());
            for piece in created.bytes.chunks(4096) {
                applier
                    .push(piece, &mut source, &mut target)
                    .map_err(|e| anyhow!("{name}: {e}"))?;
            }
            applier
                .finish::<OutOfRange>()
                .map_err(|e| anyhow!("{name}: {e}"))?;
            best = best.min(started.elapsed());
            if target != new {
                bail!("{name}: applied image differs from the new image");
            }
        }
        let mut verify = Duration::MAX;
        for _ in 0..a.apply_runs.max(1) {
            let started = Instant::now();
            verify_preamble::<()>(&created.bytes, &verifying)
                .map_err(|e| anyhow!("{name}: {e:?}"))?;
            verify = verify.min(started.elapsed());
        }
        let stream = best.saturating_sub(verify).max(Duration::from_nanos(1));
        let detools = match &a.detools {
            Some(exe) => Some(detools_size(exe, old_path, new_path)?),
            None => None,
        };
        let payload = created.manifest.payload_len as usize;
        let (w, l) = match created.manifest.compression {
            Compression::Heatshrink(p) => (p.window_bits, p.lookahead_bits),
            Compression::None => (0, 0),
        };
        rows.push(BenchRow {
            pair: name.clone(),
            old_size: old.len(),
            new_size: new.len(),
            kind: kind_name(created.manifest.kind),
            patch_size: created.bytes.len(),
            payload_size: payload,
            window_bits: w,
            lookahead_bits: l,
            create_ms: create_time.as_secs_f64() * 1e3,
            apply_ms: best.as_secs_f64() * 1e3,
            apply_mb_s: new.len() as f64 / best.as_secs_f64() / 1e6,
            verify_ms: verify.as_secs_f64() * 1e3,
            stream_mb_s: new.len() as f64 / stream.as_secs_f64() / 1e6,
            detools_size: detools,
            ratio: detools.map(|d| created.bytes.len() as f64 / d as f64),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ratios: Vec<f64> = rows.iter().filter_map(|r| r.ratio).collect();
    let geomean = (!ratios.is_empty() && ratios.len() == rows.len())
        .then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp());
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            max_window: usize,
            pairs: &'a [BenchRow],
            geomean_ratio: Option<f64>,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                max_window: a.max_window,
                pairs: &rows,
                geomean_ratio: geomean
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>7} {:>7} {:>5} {:>6} {:>6} {:>4} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6}",
        "pair",
        "old",
        "new",
        "kind",
        "patch",
        "paylo",
        "W/L",
        "crt ms",
        "app ms",
        "app MB/s",
        "sig ms",
        "str MB/s",
        "detools",
        "ratio"
    );
    for r in &rows {
        println!(
            "{:<20} {:>7} {:>7} {:>5} {:>6} {:>6} {:>4} {:>7.0} {:>7.2} {:>8.0} {:>6.2} {:>8.0} {:>7} {:>6}",
            r.pair,
            r.old_size,
            r.new_size,
            r.kind,
            r.patch_size,
            r.payload_size,
            format!("{}/{}", r.window_bits, r.lookahead_bits),
            r.create_ms,
            r.apply_ms,
            r.apply_mb_s,
            r.verify_ms,
            r.stream_mb_s,
            r.detools_size.map_or("-".into(), |d| d.to_string()),
            r.ratio.map_or("-".into(), |x| format!("{x:.3}")),
        );
    }
    println!("app: whole apply; sig: of which the signature check; str: target bytes/s after it");
    if let Some(g) = geomean {
        println!("geometric mean of patch / detools 8/7: {g:.3}");
    }
    println!("max window {} bytes", a.max_window);
    Ok(ExitCode::SUCCESS)
}
