//! Any bytes on any application-layer port, either direction, either version: the parsers
//! must return Ok or Err, never panic, and what parses must build back to the same bytes.
#![no_main]

use fuota_codec::agent_report::UpdateReport;
use fuota_codec::{clock_sync, firmware_management, fragmentation, multicast_setup, Version};
use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($iter:expr, $version:expr, $data:expr) => {{
        let mut at = 0usize;
        for cmd in $iter {
            let Ok(cmd) = cmd else { break };
            let len = cmd.len($version);
            let mut buf = vec![0u8; len];
            let built = cmd.build_into($version, &mut buf).expect("a parsed command builds");
            assert_eq!(built, &$data[at..at + len], "rebuilt bytes differ");
            at += len;
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    for version in [Version::V1, Version::V2] {
        round_trip!(clock_sync::downlinks(version, data), version, data);
        round_trip!(clock_sync::uplinks(version, data), version, data);
        round_trip!(fragmentation::downlinks(version, data), version, data);
        round_trip!(fragmentation::uplinks(version, data), version, data);
        round_trip!(multicast_setup::downlinks(version, data), version, data);
        round_trip!(multicast_setup::uplinks(version, data), version, data);
    }
    // TS006 has one version and requests of a CID alone.
    let mut at = 0usize;
    for cmd in firmware_management::uplinks(Version::V1, data) {
        let Ok(cmd) = cmd else { break };
        let mut buf = [0u8; 16];
        let built = cmd.build_into(&mut buf).expect("a parsed command builds");
        assert_eq!(built, &data[at..at + cmd.wire_len()], "rebuilt bytes differ");
        at += cmd.wire_len();
    }
    for cmd in firmware_management::downlinks(Version::V1, data).flatten() {
        let mut buf = [0u8; 1];
        assert!(cmd.build_into(&mut buf).is_ok());
    }
    // The agent's UpdateReport (port 204).
    if let Ok(report) = UpdateReport::parse(data) {
        assert_eq!(report.to_bytes()[..], data[..], "rebuilt bytes differ");
    }
});
