//! `valid()`, the device's way through a payload, yields exactly the commands before the
//! first error of the reporting iterator, for every package, on arbitrary bytes and on
//! payloads of well-formed commands with a bad one among them.

use fuota_codec::{clock_sync, firmware_management, fragmentation, multicast_setup, Version};
use proptest::prelude::*;

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

/// Payloads that often parse: CIDs of the downlinks, bodies of plausible lengths.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (0u8..=9, prop::collection::vec(any::<u8>(), 0..32)).prop_map(|(cid, body)| {
            let mut v = vec![cid];
            v.extend(body);
            v
        }),
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

/// The commands before the first error.
fn ok_prefix<T>(all: impl Iterator<Item = Result<T, fuota_codec::Error>>) -> Vec<T> {
    all.map_while(Result::ok).collect()
}

fn check(version: Version, bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        clock_sync::downlinks(version, bytes)
            .valid()
            .collect::<Vec<_>>(),
        ok_prefix(clock_sync::downlinks(version, bytes))
    );
    prop_assert_eq!(
        multicast_setup::downlinks(version, bytes)
            .valid()
            .collect::<Vec<_>>(),
        ok_prefix(multicast_setup::downlinks(version, bytes))
    );
    prop_assert_eq!(
        firmware_management::downlinks(version, bytes)
            .valid()
            .collect::<Vec<_>>(),
        ok_prefix(firmware_management::downlinks(version, bytes))
    );
    prop_assert_eq!(
        fragmentation::downlinks(version, bytes)
            .valid()
            .collect::<Vec<_>>(),
        ok_prefix(fragmentation::downlinks(version, bytes))
    );
    Ok(())
}

proptest! {
    #[test]
    fn valid_is_the_prefix_before_the_first_error(
        version in version(),
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), payload()],
    ) {
        check(version, &bytes)?;
    }
}

#[test]
fn a_data_fragment_after_another_command_ends_both() {
    // PackageVersionReq, then a DataFragment (CID 8, IndexAndN = 1) with a payload byte.
    let bytes = [0x00, 0x08, 0x01, 0x00, 0xaa];
    let valid: Vec<_> = fragmentation::downlinks(Version::V2, &bytes)
        .valid()
        .collect();
    assert_eq!(
        valid,
        [fragmentation::Downlink::PackageVersionReq(
            fragmentation::PackageVersionReq
        )]
    );
    check(Version::V2, &bytes).unwrap();
}
