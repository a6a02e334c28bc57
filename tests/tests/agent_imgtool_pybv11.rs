//! The end-to-end check, with the real tools (FUOTA_VENV): the pybv11 pair signed by
//! `imgtool sign` (ECDSA P-256, header 0x200) as v1.10.0 and v1.11.0; a patch from
//! `fuota patch create`; fragments from the server's encoder with 10 % random loss fed to the
//! agent. The secondary slot then holds the signed v1.11.0 image byte for byte,
//! `imgtool verify` accepts it, and the trailer equals what `imgtool sign --pad --test`
//! writes (but for swap_info, which MCUboot itself writes and imgtool leaves erased).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::fragmentation::{self, FragSessionSetupReq};
use fuota_codec::keys::{data_block_int_key, Key128};
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::Version;
use fuota_device_agent::agent::{Agent, AgentConfig, Event, Layout};
use fuota_device_agent::frag_session::{FragAreas, Via};
use fuota_device_agent::mcuboot::Trailer;
use fuota_device_agent::multicast::RadioLimits;
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;
use fuota_tests::{padded, ts004_session};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KB: u32 = 1024;
const SLOT: u32 = 0x60000;
const LAYOUT: Layout = Layout {
    primary: Region {
        offset: 0,
        len: SLOT,
    },
    secondary: Region {
        offset: SLOT,
        len: SLOT,
    },
    fragments: FragAreas {
        log: Region {
            offset: 2 * SLOT,
            len: 128 * KB,
        },
        block: Region {
            offset: 2 * SLOT + 128 * KB,
            len: 64 * KB,
        },
        spare: Region {
            offset: 2 * SLOT + 192 * KB,
            len: 16 * KB,
        },
    },
    journal: Region {
        offset: 2 * SLOT + 208 * KB,
        len: 8 * KB,
    },
};
const APP_KEY: [u8; 16] = [0x5a; 16];

fn venv() -> Option<PathBuf> {
    let Some(v) = std::env::var_os("FUOTA_VENV") else {
        eprintln!("FUOTA_VENV not set: imgtool end-to-end test skipped (scripts/test sets it)");
        return None;
    };
    let v = PathBuf::from(v);
    assert!(
        v.join("bin/imgtool").exists(),
        "FUOTA_VENV has no imgtool: run scripts/setup"
    );
    Some(v)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pybv11(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/firmware/pybv11").join(name))
        .find(|p| p.exists())
        .expect("shared/firmware beside the project")
}

fn sign(
    venv: &Path,
    key: &Path,
    input: &Path,
    version: &str,
    out: &Path,
    extra: &[&str],
) -> Vec<u8> {
    run(Command::new(venv.join("bin/imgtool"))
        .args(["sign", "-k"])
        .arg(key)
        .args([
            "--header-size",
            "0x200",
            "--pad-header",
            "--align",
            "8",
            "--max-align",
            "8",
        ])
        .args(["--version", version, "--security-counter", "3"])
        .args(["--slot-size", &SLOT.to_string()])
        .args(extra)
        .arg(input)
        .arg(out));
    std::fs::read(out).unwrap()
}

#[test]
fn pybv11_signed_by_imgtool_through_the_agent() {
    let Some(venv) = venv() else { return };
    let dir = std::env::temp_dir().join(format!("fuota-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img_key = dir.join("mcuboot.pem");
    run(Command::new(venv.join("bin/imgtool"))
        .args(["keygen", "-t", "ecdsa-p256", "-k"])
        .arg(&img_key));
    let old = sign(
        &venv,
        &img_key,
        &pybv11("v1.10-firmware1.bin"),
        "1.10.0",
        &dir.join("old.bin"),
        &[],
    );
    let new = sign(
        &venv,
        &img_key,
        &pybv11("1f5d945af-dirty-firmware1.bin"),
        "1.11.0",
        &dir.join("new.bin"),
        &[],
    );

    // The server: what `fuota patch create` runs, with a fresh key pair.
    let (private_pem, public_pem) = fuota_server::patch::keys::generate().unwrap();
    let signer = fuota_server::patch::keys::signing_key_from_pem(&private_pem).unwrap();
    let verifying = fuota_server::patch::keys::verifying_key_from_pem(&public_pem).unwrap();
    let created = fuota_server::patch::create(
        &old,
        &new,
        &signer,
        &fuota_server::patch::CreateOptions {
            version: ImageVersion {
                major: 1,
                minor: 11,
                revision: 0,
                build: 0,
            },
            security_counter: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let patch = created.bytes;

    let mut flash = SimFlash::<8, 4096>::new(((2 * SLOT + 216 * KB) / 4096) as usize);
    flash.write(0, &padded(&old)).unwrap();
    let flash = RefCell::new(flash);
    let config = AgentConfig {
        version: Version::V2,
        mc_ke_key: Key128::from_bytes([1; 16]),
        data_block_int_key: data_block_int_key(&Key128::from_bytes(APP_KEY)),
        limits: RadioLimits::EU868,
        patch_key: verifying,
        layout: LAYOUT,
        boot_max_align: 8,
        permanent: false,
        max_lost: 96,
        seed: 99,
    };
    let mut ws = vec![0u8; 16 * 1024];
    let mut agent = Agent::<_, 96>::new(&flash, config, &mut ws, 0).unwrap();

    let frag_size = 232;
    let (setup, frames) = ts004_session(
        &patch,
        frag_size,
        60,
        &data_block_int_key(&Key128::from_bytes(APP_KEY)),
        1,
        [0, 0, 0, 0],
    );
    let setup = fragmentation::Downlink::FragSessionSetupReq(FragSessionSetupReq {
        ack_reception: false,
        ..setup
    });
    let mut buf = [0u8; 64];
    let setup = setup.build_into(Version::V2, &mut buf).unwrap().to_vec();
    agent.handle_downlink(0, Via::Unicast, fragmentation::PORT, &setup);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut complete = false;
    for f in frames.iter().filter(|_| rng.gen_range(0..10) != 0) {
        agent.handle_downlink(1000, Via::Multicast(0), fragmentation::PORT, f);
        while let Some(e) = agent.poll_event() {
            complete |= matches!(e, Event::BlockComplete { .. });
        }
        if complete {
            break;
        }
    }
    assert!(complete, "block not complete after every fragment");
    agent.handle_timeout(2000);
    let mut events = Vec::new();
    while let Some(e) = agent.poll_event() {
        events.push(e);
    }
    let v = ImageVersion {
        major: 1,
        minor: 11,
        revision: 0,
        build: 0,
    };
    assert!(
        events.contains(&Event::RebootWanted { version: v }),
        "{events:?}"
    );

    // Byte for byte, and imgtool agrees.
    let f = flash.borrow();
    let secondary = &f.as_bytes()[SLOT as usize..2 * SLOT as usize];
    assert!(
        secondary[..new.len()] == new[..],
        "secondary differs from the signed image"
    );
    let extracted = dir.join("secondary.bin");
    std::fs::write(&extracted, &secondary[..new.len()]).unwrap();
    run(Command::new(venv.join("bin/imgtool"))
        .args(["verify", "-k"])
        .arg(&img_key)
        .arg(&extracted));
    // The trailer, against imgtool's --pad --test of the same input (its own signature
    // differs run to run, so only what follows both images is compared).
    let reference = sign(
        &venv,
        &img_key,
        &pybv11("1f5d945af-dirty-firmware1.bin"),
        "1.11.0",
        &dir.join("padded.bin"),
        &["--pad", "--test"],
    );
    let trailer = Trailer::new(SLOT, 8).unwrap();
    for i in trailer.swap_size_off() as usize..SLOT as usize {
        if i == trailer.swap_info_off() as usize {
            assert_eq!((secondary[i], reference[i]), (0x02, 0xff), "swap_info");
        } else {
            assert_eq!(secondary[i], reference[i], "trailer byte {i:#x}");
        }
    }
}
