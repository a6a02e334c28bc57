//! Byte-exact agreement with ChirpStack's lrwn (the reference server) for every TS004 command
//! of v1.0.0 and v2.0.0: both encode the same value to the same bytes, and each parses the
//! other's bytes back to the same value.

mod support_fragmentation;

use fuota_codec::fragmentation::*;
use fuota_codec::Version;
use lrwn::applayer::fragmentation::{v1, v2};
use proptest::prelude::*;
use support_fragmentation::{data_fragment_parts, downlink_fixed, uplink, version};

fn group_mask(mask: u8) -> [bool; 4] {
    core::array::from_fn(|i| mask & (1 << i) != 0)
}

fn lrwn_v1(cmd: &Downlink<'_>) -> v1::Payload {
    match *cmd {
        Downlink::PackageVersionReq(_) => v1::Payload::PackageVersionReq,
        Downlink::FragSessionStatusReq(c) => {
            v1::Payload::FragSessionStatusReq(v1::FragSessionStatusReqPayload {
                participants: c.participants,
                frag_index: c.frag_index,
            })
        }
        Downlink::FragSessionSetupReq(c) => {
            v1::Payload::FragSessionSetupReq(v1::FragSessionSetupReqPayload {
                frag_session: v1::FragSessionSetuReqPayloadFragSession {
                    mc_group_bit_mask: group_mask(c.mc_group_bit_mask),
                    frag_index: c.frag_index,
                },
                nb_frag: c.nb_frag,
                frag_size: c.frag_size,
                control: v1::FragSessionSetuReqPayloadControl {
                    block_ack_delay: c.block_ack_delay,
                    fragmentation_matrix: c.frag_algo,
                },
                padding: c.padding,
                descriptor: c.descriptor,
            })
        }
        Downlink::FragSessionDeleteReq(c) => {
            v1::Payload::FragSessionDeleteReq(v1::FragSessionDeleteReqPayload {
                frag_index: c.frag_index,
            })
        }
        Downlink::DataFragment(c) => v1::Payload::DataFragment(v1::DataFragmentPayload {
            index_and_n: v1::DataFragmentPayloadIndexAndN {
                n: c.n,
                frag_index: c.frag_index,
            },
            data: c.payload.to_vec(),
        }),
        Downlink::FragDataBlockReceivedAns(_) => unreachable!("not a v1 command"),
    }
}

fn lrwn_v2(cmd: &Downlink<'_>) -> v2::Payload {
    match *cmd {
        Downlink::PackageVersionReq(_) => v2::Payload::PackageVersionReq,
        Downlink::FragSessionStatusReq(c) => {
            v2::Payload::FragSessionStatusReq(v2::FragSessionStatusReqPayload {
                participants: c.participants,
                frag_index: c.frag_index,
            })
        }
        Downlink::FragSessionSetupReq(c) => {
            v2::Payload::FragSessionSetupReq(v2::FragSessionSetupReqPayload {
                frag_session: v2::FragSessionSetuReqPayloadFragSession {
                    mc_group_bit_mask: group_mask(c.mc_group_bit_mask),
                    frag_index: c.frag_index,
                },
                nb_frag: c.nb_frag,
                frag_size: c.frag_size,
                control: v2::FragSessionSetuReqPayloadControl {
                    block_ack_delay: c.block_ack_delay,
                    frag_algo: c.frag_algo,
                    ack_reception: c.ack_reception,
                },
                padding: c.padding,
                descriptor: c.descriptor,
                session_cnt: c.session_cnt,
                mic: c.mic,
            })
        }
        Downlink::FragSessionDeleteReq(c) => {
            v2::Payload::FragSessionDeleteReq(v2::FragSessionDeleteReqPayload {
                frag_index: c.frag_index,
            })
        }
        Downlink::FragDataBlockReceivedAns(c) => {
            v2::Payload::FragDataBlockReceivedAns(v2::FragDataBlockReceivedAnsPayload {
                frag_index: c.frag_index,
            })
        }
        Downlink::DataFragment(c) => v2::Payload::DataFragment(v2::DataFragmentPayload {
            index_and_n: v2::DataFragmentPayloadIndexAndN {
                n: c.n,
                frag_index: c.frag_index,
            },
            data: c.payload.to_vec(),
        }),
    }
}

fn lrwn_up_v1(cmd: &Uplink) -> v1::Payload {
    match *cmd {
        Uplink::PackageVersionAns(c) => {
            v1::Payload::PackageVersionAns(v1::PackageVersionAnsPayload {
                package_identifier: c.package_identifier,
                package_version: c.package_version,
            })
        }
        Uplink::FragSessionStatusAns(c) => {
            v1::Payload::FragSessionStatusAns(v1::FragSessionStatusAnsPayload {
                received_and_index: v1::FragSessionStatusAnsPayloadReceivedAndIndex {
                    nb_frag_received: c.nb_frag_received,
                    frag_index: c.frag_index,
                },
                missing_frag: c.missing_frag,
                status: v1::FragSessionStatusAnsPayloadStatus {
                    not_enough_matrix_memory: c.memory_error,
                },
            })
        }
        Uplink::FragSessionSetupAns(c) => {
            v1::Payload::FragSessionSetupAns(v1::FragSessionSetupAnsPayload {
                encoding_unsupported: c.encoding_unsupported,
                not_enough_memory: c.not_enough_memory,
                frag_session_index_not_supported: c.frag_session_index_not_supported,
                wrong_descriptor: c.wrong_descriptor,
                frag_index: c.frag_index,
            })
        }
        Uplink::FragSessionDeleteAns(c) => {
            v1::Payload::FragSessionDeleteAns(v1::FragSessionDeleteAnsPayload {
                frag_index: c.frag_index,
                session_does_not_exist: c.session_does_not_exist,
            })
        }
        Uplink::FragDataBlockReceivedReq(_) => unreachable!("not a v1 command"),
    }
}

fn lrwn_up_v2(cmd: &Uplink) -> v2::Payload {
    match *cmd {
        Uplink::PackageVersionAns(c) => {
            v2::Payload::PackageVersionAns(v2::PackageVersionAnsPayload {
                package_identifier: c.package_identifier,
                package_version: c.package_version,
            })
        }
        Uplink::FragSessionStatusAns(c) => {
            v2::Payload::FragSessionStatusAns(v2::FragSessionStatusAnsPayload {
                status: v2::FragSessionStatusAnsPayloadStatus {
                    memory_error: c.memory_error,
                    mic_error: c.mic_error,
                    session_does_not_exist: c.session_does_not_exist,
                },
                received_and_index: v2::FragSessionStatusAnsPayloadReceivedAndIndex {
                    nb_frag_received: c.nb_frag_received,
                    frag_index: c.frag_index,
                },
                missing_frag: c.missing_frag,
            })
        }
        Uplink::FragSessionSetupAns(c) => {
            v2::Payload::FragSessionSetupAns(v2::FragSessionSetupAnsPayload {
                frag_algo_unsupported: c.encoding_unsupported,
                not_enough_memory: c.not_enough_memory,
                frag_index_unsupported: c.frag_session_index_not_supported,
                wrong_descriptor: c.wrong_descriptor,
                session_cnt_replay: c.session_cnt_replay,
                frag_index: c.frag_index,
            })
        }
        Uplink::FragSessionDeleteAns(c) => {
            v2::Payload::FragSessionDeleteAns(v2::FragSessionDeleteAnsPayload {
                frag_index: c.frag_index,
                session_does_not_exist: c.session_does_not_exist,
            })
        }
        Uplink::FragDataBlockReceivedReq(c) => {
            v2::Payload::FragDataBlockReceivedReq(v2::FragDataBlockReceivedReqPayload {
                frag_index: c.frag_index,
                mic_error: c.mic_error,
            })
        }
    }
}

/// Encodes `cmd` with both codecs, checks the bytes match and that each side parses them
/// back (lrwn from our bytes, ours from lrwn's).
fn agree_downlink(version: Version, cmd: Downlink<'_>) -> Result<(), TestCaseError> {
    let mut buf = [0u8; 300];
    let ours = cmd.build_into(version, &mut buf).unwrap().to_vec();
    let theirs = match version {
        Version::V1 => {
            let payload = lrwn_v1(&cmd);
            prop_assert_eq!(&v1::Payload::from_slice(false, &ours).unwrap(), &payload);
            payload.to_vec().unwrap()
        }
        Version::V2 => {
            let payload = lrwn_v2(&cmd);
            prop_assert_eq!(&v2::Payload::from_slice(false, &ours).unwrap(), &payload);
            payload.to_vec().unwrap()
        }
    };
    prop_assert_eq!(&ours, &theirs);
    prop_assert_eq!(Downlink::parse(version, &theirs), Ok((cmd, theirs.len())));
    Ok(())
}

fn agree_uplink(version: Version, cmd: Uplink) -> Result<(), TestCaseError> {
    let mut buf = [0u8; 16];
    let ours = cmd.build_into(version, &mut buf).unwrap().to_vec();
    let theirs = match version {
        Version::V1 => {
            let payload = lrwn_up_v1(&cmd);
            prop_assert_eq!(&v1::Payload::from_slice(true, &ours).unwrap(), &payload);
            payload.to_vec().unwrap()
        }
        Version::V2 => {
            let payload = lrwn_up_v2(&cmd);
            prop_assert_eq!(&v2::Payload::from_slice(true, &ours).unwrap(), &payload);
            payload.to_vec().unwrap()
        }
    };
    prop_assert_eq!(&ours, &theirs);
    prop_assert_eq!(Uplink::parse(version, &theirs), Ok((cmd, theirs.len())));
    Ok(())
}

proptest! {
    #[test]
    fn downlinks_match_lrwn((version, cmd) in version().prop_flat_map(|v| (Just(v), downlink_fixed(v)))) {
        agree_downlink(version, cmd)?;
    }

    #[test]
    fn data_fragments_match_lrwn(version in version(), (frag_index, n, payload) in data_fragment_parts()) {
        agree_downlink(version, Downlink::DataFragment(DataFragment { frag_index, n, payload: &payload }))?;
    }

    #[test]
    fn uplinks_match_lrwn((version, cmd) in version().prop_flat_map(|v| (Just(v), uplink(v)))) {
        agree_uplink(version, cmd)?;
    }
}

/// The strategies must reach every command of each version, or the agreement above would
/// silently skip one.
#[test]
fn every_command_is_compared() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    for (version, down_cids, up_cids) in [
        (Version::V1, vec![0, 1, 2, 3], vec![0, 1, 2, 3]),
        (Version::V2, vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]),
    ] {
        let mut runner = TestRunner::deterministic();
        let mut seen_down = std::collections::BTreeSet::new();
        let mut seen_up = std::collections::BTreeSet::new();
        for _ in 0..500 {
            seen_down.insert(
                downlink_fixed(version)
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
                    .cid(),
            );
            seen_up.insert(
                uplink(version)
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
                    .cid(),
            );
        }
        assert_eq!(seen_down.into_iter().collect::<Vec<_>>(), down_cids);
        assert_eq!(seen_up.into_iter().collect::<Vec<_>>(), up_cids);
    }
}
