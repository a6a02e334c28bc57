//! Where the shared firmware pairs are: `$FUOTA_FIRMWARE_DIR`, else the first
//! `shared/firmware` beside the project or one of its parents (the project's README says
//! `../shared/firmware` from the project root).

use std::path::PathBuf;

// Not every test file uses every item.
#[allow(dead_code)]
pub const PAIRS: [(&str, &str, &str); 5] = [
    (
        "pybv11",
        "v1.10-firmware1.bin",
        "1f5d945af-dirty-firmware1.bin",
    ),
    ("simba-shell", "old.bin", "new.bin"),
    ("simba-synthesizer", "1.bin", "2.bin"),
    ("simba-programmer", "0.8.0.bin", "0.9.0.bin"),
    (
        "micropython-esp8266",
        "esp8266-20180511-v1.9.4.bin",
        "esp8266-20190125-v1.10.bin",
    ),
];

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FUOTA_FIRMWARE_DIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("README.md").exists(),
            "FUOTA_FIRMWARE_DIR={} holds no firmware README",
            d.display()
        );
        return d;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    root.ancestors()
        .map(|a| a.join("shared/firmware"))
        .find(|d| d.join("README.md").exists())
        .unwrap_or_else(|| {
            panic!(
                "no shared/firmware beside {} or its parents; set FUOTA_FIRMWARE_DIR",
                root.display()
            )
        })
}

pub fn paths(name: &str, old: &str, new: &str) -> (PathBuf, PathBuf) {
    let d = dir().join(name);
    (d.join(old), d.join(new))
}
