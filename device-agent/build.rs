//! For the bare-metal size-probe example only: the memory map of an STM32WL-class part
//! (256 KiB flash, 64 KiB RAM) for cortex-m-rt, and its linker script. Host builds and the
//! library are not affected.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(
        out.join("memory.x"),
        "MEMORY\n{\n  FLASH : ORIGIN = 0x08000000, LENGTH = 256K\n  RAM : ORIGIN = 0x20000000, LENGTH = 64K\n}\n",
    )
    .expect("write memory.x");
    // Only this package's examples see this memory.x: a `rustc-link-search` would also reach
    // every firmware that depends on the agent, where it could shadow the firmware's own.
    println!("cargo:rustc-link-arg-examples=-L{}", out.display());
    println!("cargo:rustc-link-arg-examples=-Tlink.x");
}
