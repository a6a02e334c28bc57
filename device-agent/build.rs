//! For the bare-metal examples only: the memory map for cortex-m-rt, and its linker script.
//! By default an STM32WL-class part (256 KiB flash, 64 KiB RAM), what the size-probe figures
//! are for; with the feature `qemu-mps2`, QEMU's mps2-an386 board (Cortex-M4F, 4 MiB of code
//! RAM at 0, 4 MiB of RAM at 0x2000_0000), where the stack-probe example runs. A build script
//! cannot tell which example is being linked, hence a feature. Host builds and the library
//! are not affected.

use std::{env, fs, path::PathBuf};

const STM32WL: &str = "MEMORY\n{\n  FLASH : ORIGIN = 0x08000000, LENGTH = 256K\n  RAM : ORIGIN = 0x20000000, LENGTH = 64K\n}\n";
const MPS2_AN386: &str = "MEMORY\n{\n  FLASH : ORIGIN = 0x00000000, LENGTH = 4M\n  RAM : ORIGIN = 0x20000000, LENGTH = 4M\n}\n";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let memory = if env::var_os("CARGO_FEATURE_QEMU_MPS2").is_some() {
        MPS2_AN386
    } else {
        STM32WL
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), memory).expect("write memory.x");
    // Only this package's examples see this memory.x: a `rustc-link-search` would also reach
    // every firmware that depends on the agent, where it could shadow the firmware's own.
    println!("cargo:rustc-link-arg-examples=-L{}", out.display());
    println!("cargo:rustc-link-arg-examples=-Tlink.x");
}
