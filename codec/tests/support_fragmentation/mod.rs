//! Proptest strategies for valid TS004 commands, shared by the proptest and lrwn test files.
#![allow(dead_code)]

use fuota_codec::fragmentation::*;
use fuota_codec::Version;
use proptest::prelude::*;
use proptest::strategy::Union;

pub fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

fn frag_index() -> impl Strategy<Value = u8> {
    0..=MAX_FRAG_INDEX
}

/// Every uplink command valid in `version`, v2-only fields left at their defaults under v1.
pub fn uplink(version: Version) -> BoxedStrategy<Uplink> {
    let v2 = version == Version::V2;
    let mut options = vec![
        (any::<u8>(), any::<u8>())
            .prop_map(|(package_identifier, package_version)| {
                Uplink::PackageVersionAns(PackageVersionAns {
                    package_identifier,
                    package_version,
                })
            })
            .boxed(),
        (
            frag_index(),
            0..=MAX_FRAGMENT_NUMBER,
            any::<u8>(),
            any::<[bool; 3]>(),
        )
            .prop_map(move |(frag_index, nb_frag_received, missing_frag, flags)| {
                Uplink::FragSessionStatusAns(FragSessionStatusAns {
                    frag_index,
                    nb_frag_received,
                    missing_frag,
                    memory_error: flags[0],
                    mic_error: flags[1] && v2,
                    session_does_not_exist: flags[2] && v2,
                })
            })
            .boxed(),
        (frag_index(), any::<[bool; 5]>())
            .prop_map(move |(frag_index, flags)| {
                Uplink::FragSessionSetupAns(FragSessionSetupAns {
                    frag_index,
                    encoding_unsupported: flags[0],
                    not_enough_memory: flags[1],
                    frag_session_index_not_supported: flags[2],
                    wrong_descriptor: flags[3],
                    session_cnt_replay: flags[4] && v2,
                })
            })
            .boxed(),
        (frag_index(), any::<bool>())
            .prop_map(|(frag_index, session_does_not_exist)| {
                Uplink::FragSessionDeleteAns(FragSessionDeleteAns {
                    frag_index,
                    session_does_not_exist,
                })
            })
            .boxed(),
    ];
    if v2 {
        options.push(
            (frag_index(), any::<bool>())
                .prop_map(|(frag_index, mic_error)| {
                    Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq {
                        frag_index,
                        mic_error,
                    })
                })
                .boxed(),
        );
    }
    Union::new(options).boxed()
}

/// Every downlink command valid in `version` except DataFragment, which borrows its payload.
pub fn downlink_fixed(version: Version) -> BoxedStrategy<Downlink<'static>> {
    let v2 = version == Version::V2;
    let setup = (
        (frag_index(), 0..=0x0fu8, any::<u16>(), any::<u8>()),
        (0..=7u8, 0..=7u8, any::<bool>(), any::<u8>()),
        (any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>()),
    )
        .prop_map(
            move |(
                (frag_index, mc_group_bit_mask, nb_frag, frag_size),
                (frag_algo, block_ack_delay, ack_reception, padding),
                (descriptor, session_cnt, mic),
            )| {
                Downlink::FragSessionSetupReq(FragSessionSetupReq {
                    frag_index,
                    mc_group_bit_mask,
                    nb_frag,
                    frag_size,
                    frag_algo,
                    block_ack_delay,
                    ack_reception: ack_reception && v2,
                    padding,
                    descriptor,
                    session_cnt: if v2 { session_cnt } else { 0 },
                    mic: if v2 { mic } else { [0; 4] },
                })
            },
        );
    let mut options = vec![
        Just(Downlink::PackageVersionReq(PackageVersionReq)).boxed(),
        (frag_index(), any::<bool>())
            .prop_map(|(frag_index, participants)| {
                Downlink::FragSessionStatusReq(FragSessionStatusReq {
                    participants,
                    frag_index,
                })
            })
            .boxed(),
        setup.boxed(),
        frag_index()
            .prop_map(|frag_index| {
                Downlink::FragSessionDeleteReq(FragSessionDeleteReq { frag_index })
            })
            .boxed(),
    ];
    if v2 {
        options.push(
            frag_index()
                .prop_map(|frag_index| {
                    Downlink::FragDataBlockReceivedAns(FragDataBlockReceivedAns { frag_index })
                })
                .boxed(),
        );
    }
    Union::new(options).boxed()
}

/// FragIndex, N and payload of a valid DataFragment.
pub fn data_fragment_parts() -> impl Strategy<Value = (u8, u16, Vec<u8>)> {
    (
        frag_index(),
        1..=MAX_FRAGMENT_NUMBER,
        proptest::collection::vec(any::<u8>(), 0..=250),
    )
}
