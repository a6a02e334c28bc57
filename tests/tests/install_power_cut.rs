//! The device's install path under power cuts: a patch made by `fuota_server::patch::create`
//! between two MCUboot images (built from the simba-programmer pair) sits in the fragment
//! store; the agent installs it into the secondary slot, journaling checkpoints. The power is
//! cut after the k-th flash write or erase, for every k over the whole install; after each
//! cut the device reboots and installs again from its journal. Every run must end with the
//! new image in the secondary slot, a test-swap trailer, and the primary slot untouched.

use std::cell::{Cell, RefCell};

use embedded_storage::nor_flash::NorFlash;
use fuota_codec::patch::apply::Checkpoint;
use fuota_codec::patch::container::ImageVersion;
use fuota_codec::patch::{SignatureCheck, VerifyingKey};
use fuota_device_agent::frag_store::StoreError;
use fuota_device_agent::install::{install, InstallConfig, InstallError, RegionPatch};
use fuota_device_agent::journal::Journal;
use fuota_device_agent::mcuboot::{read_trailer, Trailer, SWAP_TYPE_TEST};
use fuota_device_agent::sim_flash::{SimFlash, SimFlashError};
use fuota_device_agent::slot::Region;
use fuota_tests::{firmware, mcuboot_image, padded, simba_update, SimbaUpdate};
use p256::ecdsa::SigningKey;

const SECTOR: usize = 1024;
type Flash = SimFlash<8, SECTOR>;
const PRIMARY: Region = Region {
    offset: 0,
    len: 32 * 1024,
};
const SECONDARY: Region = Region {
    offset: 32 * 1024,
    len: 32 * 1024,
};
const STORE: Region = Region {
    offset: 64 * 1024,
    len: 8 * 1024,
};
const JOURNAL: Region = Region {
    offset: 72 * 1024,
    len: 2 * 1024,
};

fn fresh_flash(w: &SimbaUpdate) -> Flash {
    let mut f = Flash::new(74);
    f.write(PRIMARY.offset, &padded(&w.old)).unwrap();
    f.write(STORE.offset, &padded(&w.patch)).unwrap();
    f
}

fn config(w: &SimbaUpdate) -> InstallConfig {
    InstallConfig {
        primary: PRIMARY,
        secondary: SECONDARY,
        trailer: Trailer::new(SECONDARY.len, 8).unwrap(),
        key: w.device_key(),
        permanent: false,
    }
}

/// One boot: open the journal, install from its checkpoint. `Err(())` on a power cut.
fn boot(flash: &RefCell<Flash>, w: &SimbaUpdate) -> Result<(), ()> {
    let cut = |e: SimFlashError| {
        assert_eq!(e, SimFlashError::PowerCut, "only power cuts may fail here");
    };
    let mut journal =
        Journal::<64>::open(&mut *flash.borrow_mut(), JOURNAL).map_err(|e| match e {
            fuota_device_agent::journal::JournalError::Flash(e) => cut(e),
            e => panic!("{e:?}"),
        })?;
    let mut out = [0u8; 64];
    let resume = journal
        .read(&mut *flash.borrow_mut(), &mut out)
        .map_err(|_| ())?
        .map(|p| Checkpoint::from_bytes(p.try_into().unwrap()));
    let result = install(
        flash,
        &mut RegionPatch {
            flash,
            region: STORE,
        },
        w.patch.len() as u32,
        &config(w),
        &mut [0u8; 512],
        resume,
        |cp| {
            // A failed save shows up as the next flash operation failing.
            let _ = journal.append(&mut *flash.borrow_mut(), &cp.to_bytes());
        },
    );
    match result {
        Ok(_) => Ok(()),
        Err(InstallError::Patch(StoreError::Flash(e))) => {
            cut(e);
            Err(())
        }
        Err(InstallError::Apply(fuota_codec::patch::ApplyError::Source(
            fuota_device_agent::slot::SlotError::Flash(e),
        )))
        | Err(InstallError::Apply(fuota_codec::patch::ApplyError::Target(
            fuota_device_agent::slot::SlotError::Flash(e),
        )))
        | Err(InstallError::Image(fuota_device_agent::mcuboot::McubootError::Flash(e))) => {
            cut(e);
            Err(())
        }
        Err(e) => panic!("install failed for another reason than the power: {e:?}"),
    }
}

fn check_done(flash: &RefCell<Flash>, w: &SimbaUpdate, k: u64) {
    let f = flash.borrow();
    let bytes = f.as_bytes();
    let s = SECONDARY.offset as usize;
    assert!(
        bytes[s..s + w.new.len()] == w.new[..],
        "cut after {k}: secondary differs"
    );
    assert!(
        bytes[..w.old.len()] == w.old[..],
        "cut after {k}: primary touched"
    );
    drop(f);
    let state = read_trailer(
        &mut *flash.borrow_mut(),
        SECONDARY,
        Trailer::new(SECONDARY.len, 8).unwrap(),
    )
    .unwrap();
    assert!(
        state.magic_good && !state.image_ok && state.swap_info == SWAP_TYPE_TEST,
        "cut after {k}"
    );
}

#[test]
fn every_power_cut_point_ends_in_the_new_image() {
    let w = simba_update(11);
    // Count the operations of an uninterrupted install.
    let flash = RefCell::new(fresh_flash(&w));
    let before = flash.borrow().operations();
    boot(&flash, &w).unwrap();
    check_done(&flash, &w, u64::MAX);
    let total = flash.borrow().operations() - before;
    assert!(total > 20, "{total} operations");
    eprintln!("an uninterrupted install takes {total} flash writes and erases");
    for k in 0..total {
        let flash = RefCell::new(fresh_flash(&w));
        flash.borrow_mut().cut_power_after(k);
        let mut boots = 0;
        while boot(&flash, &w).is_err() {
            flash.borrow_mut().reboot();
            boots += 1;
            assert!(boots < 3, "cut after {k}: no progress");
        }
        check_done(&flash, &w, k);
    }
}

/// One install without a journal (the refusal cases).
fn install_once<K: SignatureCheck>(
    flash: &RefCell<Flash>,
    w: &SimbaUpdate,
    cfg: &InstallConfig<K>,
) -> Result<fuota_device_agent::install::Installed, InstallError<SimFlashError>> {
    install(
        flash,
        &mut RegionPatch {
            flash,
            region: STORE,
        },
        w.patch.len() as u32,
        cfg,
        &mut [0u8; 512],
        None,
        |_| {},
    )
}

/// The software key, counting how often it is asked.
struct Counting<'a> {
    key: VerifyingKey,
    calls: &'a Cell<u32>,
}

impl SignatureCheck for Counting<'_> {
    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8; 64]) -> bool {
        self.calls.set(self.calls.get() + 1);
        self.key.verify_digest(digest, signature)
    }
}

/// The signature is checked once per install (a P-256 check costs tens of milliseconds on
/// a Cortex-M4), through the integrator's own checker when one is given.
#[test]
fn an_install_checks_the_signature_once_with_the_given_checker() {
    let w = simba_update(11);
    let flash = RefCell::new(fresh_flash(&w));
    let calls = Cell::new(0);
    let c = config(&w);
    let cfg = InstallConfig {
        primary: c.primary,
        secondary: c.secondary,
        trailer: c.trailer,
        key: Counting {
            key: c.key,
            calls: &calls,
        },
        permanent: c.permanent,
    };
    install_once(&flash, &w, &cfg).unwrap();
    assert_eq!(calls.get(), 1);
    check_done(&flash, &w, 0);
}

#[test]
fn refusals_leave_the_primary_untouched() {
    let w = simba_update(11);
    // A patch signed by another key.
    let flash = RefCell::new(fresh_flash(&w));
    let mut cfg = config(&w);
    cfg.key = fuota_server::patch::keys::device_key(
        SigningKey::from_slice(&[12; 32]).unwrap().verifying_key(),
    )
    .unwrap();
    let r = install_once(&flash, &w, &cfg);
    assert!(
        matches!(
            r,
            Err(InstallError::Apply(
                fuota_codec::patch::ApplyError::BadSignature
            ))
        ),
        "{r:?}"
    );
    // A running image with another version or security counter than the old one.
    let run_on = |minor: u8, major: u8, counter: u32| {
        let running = mcuboot_image(
            &firmware("simba-programmer", "0.8.0.bin"),
            ImageVersion {
                major,
                minor,
                revision: 0,
                build: 0,
            },
            counter,
        );
        let mut f = Flash::new(74);
        f.write(PRIMARY.offset, &padded(&running)).unwrap();
        f.write(STORE.offset, &padded(&w.patch)).unwrap();
        let flash = RefCell::new(f);
        let r = install_once(&flash, &w, &config(&w));
        (flash, r)
    };
    // The running image is newer than the patch's: rollback refused.
    let (_, r) = run_on(0, 1, 1);
    assert!(matches!(r, Err(InstallError::Rollback { .. })), "{r:?}");
    // A higher security counter on the running image.
    let (flash, r) = run_on(8, 0, 7);
    assert!(
        matches!(
            r,
            Err(InstallError::SecurityCounter {
                running: 7,
                offered: 2
            })
        ),
        "{r:?}"
    );
    // Every refusal came before any write to the secondary slot.
    let f = flash.borrow();
    assert!(
        f.as_bytes()[SECONDARY.offset as usize..SECONDARY.end() as usize]
            .iter()
            .all(|&b| b == 0xff)
    );
}
