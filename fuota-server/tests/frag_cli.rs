//! `fuota frag encode | (drop 10 % of lines, shuffle) | fuota frag decode` returns the file.

use std::io::Write;
use std::process::{Command, Stdio};

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FUOTA: &str = env!("CARGO_BIN_EXE_fuota");

struct Encoded {
    lines: Vec<String>,
    padding: usize,
}

fn encode(input: &std::path::Path, frag_size: usize, redundancy: usize, extra: &[&str]) -> Encoded {
    let out = Command::new(FUOTA)
        .args(["frag", "encode", "--input"])
        .arg(input)
        .args([
            "--frag-size",
            &frag_size.to_string(),
            "--redundancy",
            &redundancy.to_string(),
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let padding = stderr
        .lines()
        .find_map(|l| l.strip_prefix("padding: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    Encoded { lines, padding }
}

fn decode(lines: &[String], args: &[String], output: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(FUOTA)
        .args(["frag", "decode", "-o"])
        .arg(output)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn encode_lose_decode_round_trip() {
    let dir = tempdir();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (version, algo, len, frag_size) in [
        ("1", "ts004", 5000usize, 48usize),
        ("2", "ts004", 20_000, 112),
        ("2", "rs", 6000, 50),
    ] {
        let input = dir.join(format!("in-{version}-{algo}"));
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        std::fs::write(&input, &data).unwrap();
        let m = len.div_ceil(frag_size);
        let redundancy = m / 4 + 10;
        let enc = encode(
            &input,
            frag_size,
            redundancy,
            &["--version", version, "--algo", algo],
        );
        assert_eq!(enc.lines.len(), m + redundancy);
        assert_eq!(enc.padding, m * frag_size - len);
        assert!(
            enc.lines.iter().all(|l| l.starts_with("08")),
            "CID 0x08 first"
        );

        let mut kept: Vec<String> = enc
            .lines
            .into_iter()
            .filter(|_| rng.gen_bool(0.9))
            .collect();
        kept.shuffle(&mut rng);
        let output = dir.join(format!("out-{version}-{algo}"));
        let args: Vec<String> = [
            "--frag-size",
            &frag_size.to_string(),
            "--nb-frag",
            &m.to_string(),
            "--padding",
            &enc.padding.to_string(),
            "--version",
            version,
            "--algo",
            algo,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = decode(&kept, &args, &output);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&output).unwrap(), data, "{version} {algo}");

        // Too few: says how many more, and writes nothing.
        let output_few = dir.join(format!("few-{version}-{algo}"));
        let out = decode(&kept[..m / 2], &args, &output_few);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("more needed"), "{stderr}");
        assert!(!output_few.exists());
    }
}

#[test]
fn malformed_lines_name_their_line_number() {
    let dir = tempdir();
    let input = dir.join("in");
    std::fs::write(&input, vec![9u8; 100]).unwrap();
    let enc = encode(&input, 10, 2, &[]);
    let args: Vec<String> = ["--frag-size", "10", "--nb-frag", "10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (bad, expect) in [
        ("zz", "line 3: not a hex"),
        ("0801", "line 3: not a DataFragment"),
        ("0a0100", "line 3: not a DataFragment"),
        ("080100aabb", "line 3: fragment 1 carries 2 bytes"),
    ] {
        let mut lines = enc.lines[..2].to_vec();
        lines.push(bad.to_owned());
        let out = decode(&lines, &args, &dir.join("out"));
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{bad}: {stderr}");
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fuota-frag-cli-{}-{}",
        std::process::id(),
        ChaCha8Rng::from_entropy().next_u32()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
