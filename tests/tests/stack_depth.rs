//! The device agent's worst stack depth on a Cortex-M4F: the server's update (simba-programmer
//! pair as MCUboot images, signed patch, TS004 fragments at 51-byte payloads with a fifth of
//! them lost) goes to the bare-metal `stack-probe` example, built for thumbv7em-none-eabihf
//! with the size profile and with release, and run under QEMU (mps2-an386). The probe paints
//! its stack, drives the whole update through the agent and reports how deep each kind of call
//! went.
//!
//! Needs `qemu-system-arm`, found through FUOTA_QEMU (scripts/test sets it when installed,
//! .ci/run always; scripts/setup installs it). Without FUOTA_QEMU the test says so and passes;
//! with it set, a missing QEMU is a failure. `scripts/stack-depth` runs only this and shows
//! the figures. They are printed, not held to the 2 KiB budget: only a run that fails or a
//! depth past a generous ceiling fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fuota_codec::clock_sync::{self, AppTimeAns};
use fuota_codec::fragmentation;
use fuota_codec::keys::{
    data_block_int_key, encrypt_mc_key, mc_ke_key, mc_root_key_lorawan_1_1, Key128,
};
use fuota_codec::multicast_setup::{self, DlFrequ, McClassCSessionReq, McGroupSetupReq};
use fuota_codec::Version;
use fuota_tests::rig::{build, fragment_block, APP_KEY};
use fuota_tests::simba_update;
use sha2::{Digest, Sha256};

/// A regression guard far above the budget (2 KiB): the figure itself is reported.
const CEILING: usize = 16 * 1024;
const TARGET: &str = "thumbv7em-none-eabihf";
/// TS004 fragment size at EU868 DR0-2 (51-byte payload less the 3-byte DataFragment header).
const FRAG_SIZE: usize = 48;
const UNICAST: u8 = 0xff;

/// One downlink record of the probe's input (format in examples/stack_probe.rs).
fn record(out: &mut Vec<u8>, phase: u8, now_ms: u32, port: u8, via: u8, bytes: &[u8]) {
    out.push(phase);
    out.extend_from_slice(&now_ms.to_le_bytes());
    out.extend_from_slice(&[port, via]);
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The probe's input and how many data fragments the decoder has to recover.
fn probe_input() -> (Vec<u8>, usize) {
    let s = simba_update(21);
    let app_key = Key128::from_bytes(APP_KEY);
    let mc_ke = mc_ke_key(&mc_root_key_lorawan_1_1(&app_key));
    let int_key = data_block_int_key(&app_key);

    let mut out = b"FUOTASTK".to_vec();
    out.extend_from_slice(s.key.verifying_key().to_encoded_point(false).as_bytes());
    out.extend_from_slice(mc_ke.as_bytes());
    out.extend_from_slice(int_key.as_bytes());
    out.extend_from_slice(&[0, 9]); // the new image's version: 0.9.0+0
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&u32::try_from(s.new.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&s.new));
    out.extend_from_slice(&u32::try_from(s.old.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&s.old);

    // Setup, as in agent_end_to_end: clock sync, multicast group 0, a class C session 60 s
    // ahead, the fragmentation session; all unicast.
    let gps0: i64 = 1_400_000_000;
    let v2 = Version::V2;
    let (setup, frames) = fragment_block(&s.patch, FRAG_SIZE, 40, 3);
    let clock = clock_sync::Downlink::AppTimeAns(AppTimeAns {
        time_correction: gps0 as i32,
        token_ans: 0,
    });
    let group = multicast_setup::Downlink::McGroupSetupReq(McGroupSetupReq {
        mc_group_id: 0,
        mc_addr: 0x00ab_cdef,
        mc_key_encrypted: encrypt_mc_key(&mc_ke, &Key128::from_bytes([0x33; 16])),
        min_mc_fcount: 0,
        max_mc_fcount: 0xffff,
    });
    let class_c = multicast_setup::Downlink::McClassCSessionReq(McClassCSessionReq {
        mc_group_id: 0,
        session_time: (gps0 + 2 + 60) as u32,
        time_out: 12,
        dl_frequ: DlFrequ::from_hz(869_525_000).unwrap(),
        dr: 0,
    });
    let session = fragmentation::Downlink::FragSessionSetupReq(setup);
    for (now_ms, port, bytes) in [
        (1000, clock_sync::PORT, build(|b| clock.build_into(v2, b))),
        (
            2000,
            multicast_setup::PORT,
            build(|b| group.build_into(v2, b)),
        ),
        (
            2000,
            multicast_setup::PORT,
            build(|b| class_c.build_into(v2, b)),
        ),
        (
            3000,
            fragmentation::PORT,
            build(|b| session.build_into(v2, b)),
        ),
    ] {
        record(&mut out, 0, now_ms, port, UNICAST, &bytes);
    }

    // The fragments on the multicast group once class C is open; every fifth one lost.
    let mut lost_data = 0;
    let mut now = 70_000;
    for (i, f) in frames.iter().enumerate() {
        if i % 5 == 2 {
            lost_data += usize::from(i < usize::from(setup.nb_frag));
            continue;
        }
        record(&mut out, 1, now, fragmentation::PORT, 0, f);
        now += 1000;
    }
    (out, lost_data)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the probe with a cargo profile; the ELF's path.
fn build_probe(profile: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--profile", profile, "-p", "fuota-device-agent"])
        .args(["--features", "qemu-mps2", "--example", "stack-probe"])
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building stack-probe ({profile}) failed"
    );
    // The example's artifact message names its executable.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "stack-probe")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the stack-probe executable")
}

/// Runs the probe under QEMU: its exit status and what it printed (stdout, stderr).
fn run_probe(qemu: &std::ffi::OsStr, elf: &Path, input: &Path) -> (bool, String, String) {
    // QEMU's option syntax doubles commas inside a value.
    let arg = input.to_str().expect("UTF-8 path").replace(',', ",,");
    let mut child = Command::new(qemu)
        .args(["-M", "mps2-an386", "-nodefaults", "-display", "none"])
        .arg("-semihosting-config")
        .arg(format!("enable=on,target=native,arg=stack-probe,arg={arg}"))
        .arg("-kernel")
        .arg(elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "FUOTA_QEMU={} does not run ({e}): install qemu-system-arm (scripts/setup does)",
                qemu.to_string_lossy()
            )
        });
    // The probe always exits through semihosting; a hang is a failure, not a stuck CI
    // (2,400 polls 50 ms apart: about two minutes, where a run takes about one second).
    let mut polls = 0;
    while child.try_wait().unwrap().is_none() {
        polls += 1;
        if polls > 2400 {
            let _ = child.kill();
            panic!("stack-probe under QEMU did not finish in two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `(kind, call, total)` from the probe's `stack-probe: stack KIND call=N total=M` lines.
fn depths(report: &str) -> Vec<(String, usize, usize)> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("stack-probe: stack "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let kind = words.next().unwrap().to_string();
            let mut field = |name: &str| -> usize {
                words
                    .next()
                    .and_then(|w| w.strip_prefix(name))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("malformed probe line: {l}"))
            };
            let call = field("call=");
            let total = field("total=");
            (kind, call, total)
        })
        .collect()
}

#[test]
fn agent_stack_depth_under_qemu() {
    let Some(qemu) = std::env::var_os("FUOTA_QEMU") else {
        eprintln!("FUOTA_QEMU not set: stack-depth test skipped (scripts/test sets it with QEMU)");
        return;
    };
    let (input, lost_data) = probe_input();
    assert!(lost_data > 0, "the decoder must have fragments to recover");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stack-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let input_path = dir.join("input.bin");
    std::fs::write(&input_path, &input).unwrap();

    for profile in ["size", "release"] {
        let elf = build_probe(profile);
        let (ok, report, stderr) = run_probe(&qemu, &elf, &input_path);
        println!("stack-probe, profile {profile}, {lost_data} data fragments lost:\n{report}");
        assert!(ok, "stack-probe ({profile}) failed:\n{report}\n{stderr}");
        assert!(
            report.contains("stack-probe: update ok"),
            "stack-probe ({profile}) did not confirm the update:\n{report}"
        );
        let depths = depths(&report);
        let kinds: Vec<&str> = depths.iter().map(|(k, ..)| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["new", "setup", "fragment", "complete", "timeout", "install", "poll", "max"],
            "{report}"
        );
        let (_, max_call, max_total) = depths[depths.len() - 1];
        println!("stack depth ({profile}): {max_call} bytes below the caller, {max_total} in all");
        assert!(
            max_call < CEILING,
            "stack depth {max_call} B ({profile}) is past the {CEILING} B ceiling"
        );
    }
}
