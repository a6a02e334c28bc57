//! Round trips and robustness of the TS004 codec, both versions, both directions.

mod support_fragmentation;

use fuota_codec::fragmentation::*;
use fuota_codec::{ErrorKind, Version};
use proptest::prelude::*;
use support_fragmentation::{data_fragment_parts, downlink_fixed, uplink, version};

fn build_downlink(version: Version, cmd: &Downlink<'_>) -> Vec<u8> {
    let mut buf = [0u8; 300];
    cmd.build_into(version, &mut buf).unwrap().to_vec()
}

fn build_uplink(version: Version, cmd: &Uplink) -> Vec<u8> {
    let mut buf = [0u8; 16];
    cmd.build_into(version, &mut buf).unwrap().to_vec()
}

proptest! {
    #[test]
    fn uplink_round_trips((version, cmd) in version().prop_flat_map(|v| (Just(v), uplink(v)))) {
        let bytes = build_uplink(version, &cmd);
        prop_assert_eq!(bytes.len(), cmd.len(version));
        prop_assert_eq!(bytes[0], cmd.cid());
        prop_assert_eq!(Uplink::parse(version, &bytes), Ok((cmd, bytes.len())));
        // A buffer one byte short is refused, not half-written.
        let mut short = vec![0u8; bytes.len() - 1];
        prop_assert_eq!(
            cmd.build_into(version, &mut short).unwrap_err().kind,
            ErrorKind::BufferTooSmall { needed: bytes.len() }
        );
        // The device's quiet build writes the same bytes, and fails where build_into does.
        let mut buf = [0u8; 16];
        prop_assert_eq!(cmd.write_into(version, &mut buf), Some(&bytes[..]));
        prop_assert_eq!(cmd.write_into(version, &mut short), None);
    }

    #[test]
    fn fixed_downlink_round_trips(
        (version, cmd) in version().prop_flat_map(|v| (Just(v), downlink_fixed(v)))
    ) {
        let bytes = build_downlink(version, &cmd);
        prop_assert_eq!(bytes.len(), cmd.len(version));
        prop_assert_eq!(bytes[0], cmd.cid());
        prop_assert_eq!(Downlink::parse(version, &bytes), Ok((cmd, bytes.len())));
        // Parsing a command must not look past its own length.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xff, 0xff]);
        prop_assert_eq!(Downlink::parse(version, &longer), Ok((cmd, bytes.len())));
    }

    #[test]
    fn data_fragment_round_trips(version in version(), (frag_index, n, payload) in data_fragment_parts()) {
        let cmd = Downlink::DataFragment(DataFragment { frag_index, n, payload: &payload });
        let bytes = build_downlink(version, &cmd);
        prop_assert_eq!(bytes.len(), 3 + payload.len());
        prop_assert_eq!(bytes.len(), cmd.len(version));
        prop_assert_eq!(Downlink::parse(version, &bytes), Ok((cmd, bytes.len())));
        let all: Vec<_> = downlinks(version, &bytes).collect();
        prop_assert_eq!(all, vec![Ok(cmd)]);
    }

    #[test]
    fn parse_never_panics_and_rebuilds_what_it_accepted(
        version in version(),
        // Mostly real CIDs, so the bodies get exercised and not just the CID check.
        cid in prop_oneof![0u8..=4, Just(0x08), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..40),
        empty in any::<bool>(),
    ) {
        let bytes: Vec<u8> = if empty { Vec::new() } else { [vec![cid], body].concat() };
        // RFU bits are rejected, so whatever parses must build back to the same bytes.
        if let Ok((cmd, used)) = Downlink::parse(version, &bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(build_downlink(version, &cmd), bytes[..used].to_vec());
        }
        if let Ok((cmd, used)) = Uplink::parse(version, &bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(build_uplink(version, &cmd), bytes[..used].to_vec());
        }
        prop_assert!(downlinks(version, &bytes).count() <= bytes.len());
        prop_assert!(uplinks(version, &bytes).count() <= bytes.len());
    }

    #[test]
    fn truncated_commands_are_reported(
        (version, up, down) in version().prop_flat_map(|v| (Just(v), uplink(v), downlink_fixed(v))),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = build_uplink(version, &up);
        let e = Uplink::parse(version, &bytes[..cut.index(bytes.len())]).unwrap_err();
        let is_truncated = matches!(e.kind, ErrorKind::Truncated { .. });
        prop_assert!(is_truncated, "{:?}", e);
        let bytes = build_downlink(version, &down);
        let e = Downlink::parse(version, &bytes[..cut.index(bytes.len())]).unwrap_err();
        let is_truncated = matches!(e.kind, ErrorKind::Truncated { .. });
        prop_assert!(is_truncated, "{:?}", e);
    }

    #[test]
    fn concatenated_uplinks_iterate_back(
        (version, cmds) in version().prop_flat_map(|v| {
            (Just(v), proptest::collection::vec(uplink(v), 0..8))
        })
    ) {
        let payload: Vec<u8> = cmds.iter().flat_map(|c| build_uplink(version, c)).collect();
        let parsed: Result<Vec<_>, _> = uplinks(version, &payload).collect();
        prop_assert_eq!(parsed, Ok(cmds));
    }

    #[test]
    fn concatenated_downlinks_iterate_back(
        (version, cmds) in version().prop_flat_map(|v| {
            (Just(v), proptest::collection::vec(downlink_fixed(v), 0..8))
        })
    ) {
        let payload: Vec<u8> = cmds.iter().flat_map(|c| build_downlink(version, c)).collect();
        let parsed: Result<Vec<_>, _> = downlinks(version, &payload).collect();
        prop_assert_eq!(parsed, Ok(cmds));
    }

    #[test]
    fn data_fragment_after_other_commands_is_refused(
        (version, cmds) in version().prop_flat_map(|v| {
            (Just(v), proptest::collection::vec(downlink_fixed(v), 1..4))
        }),
        (frag_index, n, payload) in data_fragment_parts(),
    ) {
        let fragment = Downlink::DataFragment(DataFragment { frag_index, n, payload: &payload });
        let mut frame: Vec<u8> = cmds.iter().flat_map(|c| build_downlink(version, c)).collect();
        frame.extend(build_downlink(version, &fragment));
        let parsed: Vec<_> = downlinks(version, &frame).collect();
        prop_assert_eq!(parsed.len(), cmds.len() + 1);
        for (got, want) in parsed.iter().zip(&cmds) {
            prop_assert_eq!(got, &Ok(*want));
        }
        let last = parsed.last().unwrap().as_ref().unwrap_err();
        prop_assert_eq!((last.command, last.field, last.kind), ("DataFragment", "CID", ErrorKind::TrailingBytes));
    }

    #[test]
    fn out_of_range_frag_index_is_refused(
        (version, cmd) in version().prop_flat_map(|v| (Just(v), uplink(v))),
        bad in 4u8..=255,
    ) {
        let bad_cmd = match cmd {
            Uplink::PackageVersionAns(_) => return Ok(()),
            Uplink::FragSessionStatusAns(c) => Uplink::FragSessionStatusAns(FragSessionStatusAns { frag_index: bad, ..c }),
            Uplink::FragSessionSetupAns(c) => Uplink::FragSessionSetupAns(FragSessionSetupAns { frag_index: bad, ..c }),
            Uplink::FragSessionDeleteAns(c) => Uplink::FragSessionDeleteAns(FragSessionDeleteAns { frag_index: bad, ..c }),
            Uplink::FragDataBlockReceivedReq(c) => Uplink::FragDataBlockReceivedReq(FragDataBlockReceivedReq { frag_index: bad, ..c }),
        };
        let e = bad_cmd.build_into(version, &mut [0u8; 16]).unwrap_err();
        prop_assert_eq!((e.field, e.kind), ("FragIndex", ErrorKind::InvalidValue));
        let mut buf = [0u8; 16];
        prop_assert_eq!(bad_cmd.write_into(version, &mut buf), None);
    }
}

#[test]
fn out_of_range_downlink_fields_are_refused() {
    let setup = FragSessionSetupReq {
        frag_index: 0,
        mc_group_bit_mask: 1,
        nb_frag: 10,
        frag_size: 50,
        frag_algo: 0,
        block_ack_delay: 0,
        ack_reception: false,
        padding: 0,
        descriptor: [0; 4],
        session_cnt: 0,
        mic: [0; 4],
    };
    let cases: [(FragSessionSetupReq, Version, &str); 6] = [
        (
            FragSessionSetupReq {
                mc_group_bit_mask: 0x10,
                ..setup
            },
            Version::V2,
            "McGroupBitMask",
        ),
        (
            FragSessionSetupReq {
                frag_algo: 8,
                ..setup
            },
            Version::V2,
            "FragAlgo",
        ),
        (
            FragSessionSetupReq {
                block_ack_delay: 8,
                ..setup
            },
            Version::V1,
            "BlockAckDelay",
        ),
        (
            FragSessionSetupReq {
                frag_index: 4,
                ..setup
            },
            Version::V1,
            "FragIndex",
        ),
        (
            FragSessionSetupReq {
                session_cnt: 1,
                ..setup
            },
            Version::V1,
            "SessionCnt",
        ),
        (
            FragSessionSetupReq {
                mic: [0, 0, 0, 1],
                ..setup
            },
            Version::V1,
            "MIC",
        ),
    ];
    for (req, version, field) in cases {
        let e = Downlink::FragSessionSetupReq(req)
            .build_into(version, &mut [0u8; 32])
            .unwrap_err();
        assert_eq!(
            (e.command, e.field, e.kind),
            ("FragSessionSetupReq", field, ErrorKind::InvalidValue)
        );
    }
    let big_n = Downlink::DataFragment(DataFragment {
        frag_index: 0,
        n: 0x4000,
        payload: &[1],
    });
    assert_eq!(
        big_n
            .build_into(Version::V1, &mut [0u8; 8])
            .unwrap_err()
            .field,
        "N"
    );
    let v1_status = Uplink::FragSessionStatusAns(FragSessionStatusAns {
        frag_index: 0,
        nb_frag_received: 0,
        missing_frag: 0,
        memory_error: false,
        mic_error: true,
        session_does_not_exist: false,
    });
    assert_eq!(
        v1_status
            .build_into(Version::V1, &mut [0u8; 8])
            .unwrap_err()
            .field,
        "MICError"
    );
}
