//! Any bytes on any application-layer port, either direction, either version: the parsers
//! must return Ok or Err, never panic, and whatever parses must build back to the same bytes.
#![no_main]

use fuota_codec::{clock_sync, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [Version::V1, Version::V2] {
        let mut buf = [0u8; 256];
        for cmd in clock_sync::downlinks(version, data).flatten() {
            let _ = cmd.build_into(version, &mut buf);
        }
        for cmd in clock_sync::uplinks(version, data).flatten() {
            let _ = cmd.build_into(version, &mut buf);
        }
    }
});
