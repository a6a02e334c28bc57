//! The `fuota keys` and `fuota patch` commands end to end on one firmware pair: generate keys,
//! create, inspect (text and JSON), apply; a damaged patch or another key fails with a clear
//! message and leaves no output file.

use std::path::PathBuf;
use std::process::{Command, Output};

mod firmware;

fn fuota(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fuota"))
        .args(args)
        .output()
        .expect("run fuota")
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("fuota-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keys_create_inspect_apply() {
    let d = tmpdir();
    let (old, new) = firmware::paths("simba-shell", "old.bin", "new.bin");
    let key = d.join("k.pem");
    let out = fuota(&["keys", "generate", "-o", s(&key)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = d.join("k.pub.pem");
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    // Not overwritten without --force.
    assert!(!fuota(&["keys", "generate", "-o", s(&key)]).status.success());

    let patch = d.join("p.bin");
    let out = fuota(&[
        "patch",
        "create",
        s(&old),
        s(&new),
        "--key",
        s(&key),
        "-o",
        s(&patch),
        "--version",
        "2.1.7+9",
        "--security-counter",
        "4",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "delta");
    assert_eq!(
        report["patch_size"].as_u64().unwrap(),
        std::fs::metadata(&patch).unwrap().len()
    );
    assert!(report["window_bits"].as_u64().unwrap() <= 9);

    let out = fuota(&[
        "patch",
        "inspect",
        s(&patch),
        "--pubkey",
        s(&public),
        "--json",
    ]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["version"], "2.1.7+9");
    assert_eq!(info["security_counter"], 4);
    assert_eq!(info["target_size"], 141_800);
    assert_eq!(info["signature_valid"], true);
    assert_eq!(info["payload_intact"], true);
    let out = fuota(&["patch", "inspect", s(&patch)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind              delta"));

    let rebuilt = d.join("new.bin");
    let out = fuota(&[
        "patch",
        "apply",
        s(&old),
        s(&patch),
        "-o",
        s(&rebuilt),
        "--pubkey",
        s(&public),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&rebuilt).unwrap() == std::fs::read(&new).unwrap());

    // Another key: refused, no output.
    let other = d.join("other.pem");
    assert!(fuota(&["keys", "generate", "-o", s(&other)])
        .status
        .success());
    let refused = d.join("refused.bin");
    let out = fuota(&[
        "patch",
        "apply",
        s(&old),
        s(&patch),
        "-o",
        s(&refused),
        "--pubkey",
        s(&d.join("other.pub.pem")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature does not verify"));
    assert!(!refused.exists());
    let out = fuota(&[
        "patch",
        "inspect",
        s(&patch),
        "--pubkey",
        s(&d.join("other.pub.pem")),
    ]);
    assert!(!out.status.success());

    // The new image as the source: the wrong old image.
    let out = fuota(&[
        "patch",
        "apply",
        s(&new),
        s(&patch),
        "-o",
        s(&refused),
        "--pubkey",
        s(&public),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong old image"));
    assert!(!refused.exists());

    // A damaged payload: inspect says so, apply refuses.
    let mut bytes = std::fs::read(&patch).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let damaged = d.join("damaged.bin");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = fuota(&["patch", "inspect", s(&damaged), "--json"]);
    assert!(!out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["payload_intact"], false);
    let out = fuota(&[
        "patch",
        "apply",
        s(&old),
        s(&damaged),
        "-o",
        s(&refused),
        "--pubkey",
        s(&public),
    ]);
    assert!(!out.status.success());
    assert!(!refused.exists());

    // Not a patch at all.
    let out = fuota(&["patch", "inspect", s(&old)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));

    // Bad arguments are explained.
    let out = fuota(&["patch", "create", s(&old), s(&new), "-o", s(&refused)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"));
    let out = fuota(&[
        "patch",
        "create",
        s(&old),
        s(&new),
        "--key",
        s(&key),
        "-o",
        s(&refused),
        "--max-window",
        "1000",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = fuota(&[
        "patch",
        "create",
        s(&old),
        s(&new),
        "--key",
        s(&key),
        "-o",
        s(&refused),
        "--version",
        "1.2",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("X.Y.Z"));
}

#[test]
fn bench_prints_a_row_per_pair() {
    let dir = firmware::dir().join("simba-programmer");
    let out = fuota(&["patch", "bench", s(&dir), "--json", "--apply-runs", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["pairs"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["pair"], "simba-programmer");
    // The README's "0.8.0.bin -> 0.9.0.bin" decides which is old.
    assert_eq!(rows[0]["kind"], "delta");
    assert!(rows[0]["patch_size"].as_u64().unwrap() < 3_000);
}
