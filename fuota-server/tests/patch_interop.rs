//! Interop with the reference tools from PyPI (installed in the venv by scripts/setup and
//! found through FUOTA_VENV): detools applies our bare detools patches; our applier applies
//! detools' heatshrink patches (default 8/7 and other window/lookahead pairs); heatshrink2
//! (the C library) decodes our heatshrink streams and we decode its.
//!
//! Without FUOTA_VENV the tests say so and pass; with it set, a missing tool is a failure.

use std::path::{Path, PathBuf};

mod firmware;
use firmware::PAIRS;
use std::process::Command;

use fuota_codec::patch::heatshrink::Params;
use fuota_server::patch::heatshrink;

fn venv() -> Option<PathBuf> {
    match std::env::var_os("FUOTA_VENV") {
        None => {
            eprintln!("FUOTA_VENV not set: interop test skipped (scripts/test sets it)");
            None
        }
        Some(v) => {
            let v = PathBuf::from(v);
            for tool in ["python", "detools"] {
                assert!(
                    v.join("bin").join(tool).exists(),
                    "FUOTA_VENV={} has no bin/{tool}: run scripts/setup",
                    v.display()
                );
            }
            Some(v)
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fuota-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn fuota() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fuota"))
}

#[test]
fn detools_applies_our_bare_detools_patches() {
    let Some(venv) = venv() else { return };
    for (name, old, new) in PAIRS {
        let (old, new) = firmware::paths(name, old, new);
        let patch = tmp(&format!("{name}.ours.detools"));
        let out = tmp(&format!("{name}.by-detools.bin"));
        run(fuota()
            .args(["patch", "create"])
            .arg(&old)
            .arg(&new)
            .args(["--format", "detools", "-o"])
            .arg(&patch));
        run(Command::new(venv.join("bin/detools"))
            .arg("apply_patch")
            .arg(&old)
            .arg(&patch)
            .arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&new).unwrap(),
            "{name}: detools rebuilt another image from our patch"
        );
    }
}

#[test]
fn we_apply_detools_heatshrink_patches() {
    let Some(venv) = venv() else { return };
    for (name, old, new) in PAIRS {
        let (old, new) = firmware::paths(name, old, new);
        // detools' default pair everywhere; other pairs (one beyond the device budget, which
        // the host applier still takes) on the smaller images.
        let mut settings: Vec<Option<(u8, u8)>> = vec![None];
        if name.starts_with("simba") {
            settings.extend([Some((9, 8)), Some((11, 10)), Some((4, 3))]);
        }
        for setting in settings {
            let patch = tmp(&format!("{name}.{setting:?}.detools"));
            let out = tmp(&format!("{name}.{setting:?}.by-us.bin"));
            let mut cmd = Command::new(venv.join("bin/detools"));
            cmd.args(["create_patch", "-c", "heatshrink"]);
            if let Some((w, l)) = setting {
                cmd.args([
                    "--heatshrink-window-sz2",
                    &w.to_string(),
                    "--heatshrink-lookahead-sz2",
                    &l.to_string(),
                ]);
            }
            run(cmd.arg(&old).arg(&new).arg(&patch));
            for chunk in ["1", "242"] {
                run(fuota()
                    .args(["patch", "apply"])
                    .arg(&old)
                    .arg(&patch)
                    .args(["--format", "detools", "--chunk", chunk, "-o"])
                    .arg(&out));
                assert!(
                    std::fs::read(&out).unwrap() == std::fs::read(&new).unwrap(),
                    "{name} {setting:?} chunk {chunk}: wrong image from detools' patch"
                );
            }
        }
    }
}

fn python(venv: &Path, script: &str, args: &[&Path]) {
    run(Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(script)
        .args(args));
}

#[test]
fn heatshrink_streams_interoperate_with_the_c_library() {
    let Some(venv) = venv() else { return };
    let (_, new) = firmware::paths(PAIRS[1].0, PAIRS[1].1, PAIRS[1].2);
    let image = std::fs::read(&new).unwrap();
    let data = &image[..60_000];
    let input = tmp("hs-input.bin");
    std::fs::write(&input, data).unwrap();
    for (w, l) in [(4, 3), (8, 4), (8, 7), (9, 8), (11, 4), (13, 12)] {
        let params = Params::new(w, l).unwrap();
        // Ours -> heatshrink2.
        let ours = tmp(&format!("hs-ours-{w}-{l}.bin"));
        let decoded = tmp(&format!("hs-ours-{w}-{l}.out"));
        std::fs::write(&ours, heatshrink::compress(data, params)).unwrap();
        python(
            &venv,
            &format!(
                "import sys, heatshrink2\n\
                 d = open(sys.argv[1], 'rb').read()\n\
                 open(sys.argv[2], 'wb').write(heatshrink2.decompress(d, window_sz2={w}, lookahead_sz2={l}))"
            ),
            &[&ours, &decoded],
        );
        assert!(
            std::fs::read(&decoded).unwrap() == data,
            "heatshrink2 decoded our {w}/{l} stream differently"
        );
        // heatshrink2 -> ours.
        let theirs = tmp(&format!("hs-theirs-{w}-{l}.bin"));
        python(
            &venv,
            &format!(
                "import sys, heatshrink2\n\
                 d = open(sys.argv[1], 'rb').read()\n\
                 open(sys.argv[2], 'wb').write(heatshrink2.compress(d, window_sz2={w}, lookahead_sz2={l}))"
            ),
            &[&input, &theirs],
        );
        let theirs = std::fs::read(&theirs).unwrap();
        assert!(
            heatshrink::decompress(&theirs, params).unwrap() == data,
            "we decoded heatshrink2's {w}/{l} stream differently"
        );
        // The optimal parse is never larger than the C library's greedy one.
        let ours_len = std::fs::metadata(&ours).unwrap().len() as usize;
        assert!(
            ours_len <= theirs.len(),
            "{w}/{l}: ours {ours_len} > C {}",
            theirs.len()
        );
    }
}
