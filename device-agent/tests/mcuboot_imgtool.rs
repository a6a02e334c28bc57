//! MCUboot images signed by imgtool (PyPI, found through FUOTA_VENV): the agent checks their
//! SHA256 TLV and reads version and security counter; a damaged image is refused; the
//! trailer the agent writes for a swap matches what `imgtool sign --pad --test|--confirm`
//! writes, for BOOT_MAX_ALIGN 8 and 32.

use std::path::{Path, PathBuf};
use std::process::Command;

use embedded_storage::nor_flash::NorFlash;
use fuota_device_agent::mcuboot::{
    read_image, read_trailer, request_swap, verify_image, Malformation, McubootError, Trailer,
    SWAP_TYPE_PERM, SWAP_TYPE_TEST,
};
use fuota_device_agent::sim_flash::SimFlash;
use fuota_device_agent::slot::Region;

const SLOT: u32 = 0x60000;
const SECTOR: usize = 4096;

fn venv() -> Option<PathBuf> {
    let v = PathBuf::from(std::env::var_os("FUOTA_VENV").or_else(|| {
        eprintln!("FUOTA_VENV not set: imgtool test skipped (scripts/test sets it)");
        None
    })?);
    assert!(
        v.join("bin/imgtool").exists(),
        "FUOTA_VENV={} has no bin/imgtool: run scripts/setup",
        v.display()
    );
    Some(v)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn firmware() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/firmware/pybv11/v1.10-firmware1.bin"))
        .find(|p| p.exists())
        .expect("shared/firmware beside the project")
}

fn sign(venv: &Path, dir: &Path, max_align: u32, extra: &[&str]) -> Vec<u8> {
    let key = dir.join("key.pem");
    if !key.exists() {
        run(Command::new(venv.join("bin/imgtool"))
            .args(["keygen", "-t", "ecdsa-p256", "-k"])
            .arg(&key));
    }
    let out = dir.join(format!("signed-{max_align}-{}.bin", extra.join("")));
    run(Command::new(venv.join("bin/imgtool"))
        .args(["sign", "-k"])
        .arg(&key)
        .args(["--header-size", "0x200", "--pad-header", "--align", "8"])
        .args(["--max-align", &max_align.to_string()])
        .args(["--version", "1.10.3+7", "--security-counter", "12"])
        .args(["--slot-size", &SLOT.to_string()])
        .args(extra)
        .arg(firmware())
        .arg(&out));
    std::fs::read(out).unwrap()
}

fn load(image: &[u8]) -> (SimFlash<8, SECTOR>, Region) {
    let mut flash = SimFlash::<8, SECTOR>::new(SLOT as usize / SECTOR);
    let padded_len = image.len().div_ceil(8) * 8;
    let mut padded = image.to_vec();
    padded.resize(padded_len, 0xff);
    flash.write(0, &padded).unwrap();
    (
        flash,
        Region {
            offset: 0,
            len: SLOT,
        },
    )
}

#[test]
fn imgtool_images_verify_and_damage_is_caught() {
    let Some(venv) = venv() else { return };
    let dir = std::env::temp_dir().join(format!("fuota-imgtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = sign(&venv, &dir, 8, &[]);
    let (mut flash, slot) = load(&image);
    let info = verify_image(&mut flash, slot).unwrap();
    assert_eq!(info.header.hdr_size, 0x200);
    assert_eq!(
        (
            info.header.version.major,
            info.header.version.minor,
            info.header.version.revision,
            info.header.version.build
        ),
        (1, 10, 3, 7)
    );
    assert_eq!(info.security_counter, Some(12));
    assert_eq!(info.len as usize, image.len());

    let mut damaged = image.clone();
    damaged[0x200 + 1000] ^= 1;
    let (mut flash, slot) = load(&damaged);
    assert_eq!(
        verify_image(&mut flash, slot),
        Err(McubootError::HashMismatch)
    );
    // Without the hash (the running image): the same header and TLV facts, damage unseen.
    assert_eq!(read_image(&mut flash, slot), Ok(info));
    let (mut flash, slot) = load(&[0u8; 64]);
    assert_eq!(verify_image(&mut flash, slot), Err(McubootError::NoImage));
    assert_eq!(read_image(&mut flash, slot), Err(McubootError::NoImage));
    // A broken TLV area is refused by both: the unprotected area's magic, damaged.
    let h = info.header;
    let tlvs = usize::from(h.hdr_size) + h.img_size as usize + usize::from(h.protect_tlv_size);
    let mut broken = image.clone();
    broken[tlvs] ^= 0x40;
    let (mut flash, slot) = load(&broken);
    assert_eq!(
        read_image(&mut flash, slot),
        Err(McubootError::Malformed(Malformation::TlvInfoMagic))
    );
}

#[test]
fn swap_trailer_matches_imgtool_pad() {
    let Some(venv) = venv() else { return };
    let dir = std::env::temp_dir().join(format!("fuota-imgtool-pad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for max_align in [8u32, 32] {
        let plain = sign(&venv, &dir, max_align, &[]);
        let trailer = Trailer::new(SLOT, max_align).unwrap();
        for (flag, permanent, swap) in [
            ("--test", false, SWAP_TYPE_TEST),
            ("--confirm", true, SWAP_TYPE_PERM),
        ] {
            let reference = sign(&venv, &dir, max_align, &[flag]);
            assert_eq!(reference.len(), SLOT as usize);
            let (mut flash, slot) = load(&plain);
            request_swap(&mut flash, slot, trailer, plain.len() as u32, permanent).unwrap();
            let ours = flash.as_bytes();
            // The image itself is untouched (imgtool's ECDSA signatures differ from run to
            // run, in value and length, so only what follows both images is compared).
            assert!(ours[..plain.len()] == plain[..]);
            // After it, everything equal to imgtool's padding and trailer, but for swap_info,
            // which MCUboot's own boot_set_pending writes and imgtool leaves erased.
            let si = trailer.swap_info_off() as usize;
            let (mut rf, rs) = load(&reference);
            let reference_image = verify_image(&mut rf, rs).unwrap().len as usize;
            let from = plain.len().max(reference_image);
            for (i, (a, b)) in ours.iter().zip(&reference).enumerate().skip(from) {
                if i == si {
                    assert_eq!(
                        (*a, *b),
                        (swap, 0xff),
                        "swap_info, align {max_align} {flag}"
                    );
                } else {
                    assert_eq!(a, b, "byte {i:#x}, align {max_align} {flag}");
                }
            }
            let state = read_trailer(&mut flash, slot, trailer).unwrap();
            assert!(state.magic_good);
            assert_eq!(state.image_ok, permanent);
        }
    }
}
