//! TS005 and TS003 against ChirpStack's lrwn, byte for byte, both versions and directions;
//! and proptest round trips of our own codec.

use fuota_codec::multicast_setup::{self as ms, DlFrequ};
use fuota_codec::{clock_sync as cs, Version};
use lrwn::applayer::{clocksync, multicastsetup};
use lrwn::DevAddr;
use proptest::prelude::*;

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

/// Sub-GHz DLFrequ values (the 2.4 GHz steps are checked separately).
fn dl_frequ() -> impl Strategy<Value = DlFrequ> {
    (0u32..12_000_000).prop_map(DlFrequ)
}

fn ms_downlink() -> impl Strategy<Value = ms::Downlink> {
    prop_oneof![
        Just(ms::Downlink::PackageVersionReq(ms::PackageVersionReq)),
        (0u8..16).prop_map(|m| ms::Downlink::McGroupStatusReq(ms::McGroupStatusReq {
            req_group_mask: m
        })),
        (
            0u8..4,
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(id, a, k, lo, hi)| {
                ms::Downlink::McGroupSetupReq(ms::McGroupSetupReq {
                    mc_group_id: id,
                    mc_addr: a,
                    mc_key_encrypted: k,
                    min_mc_fcount: lo,
                    max_mc_fcount: hi,
                })
            }),
        (0u8..4).prop_map(|id| ms::Downlink::McGroupDeleteReq(ms::McGroupDeleteReq {
            mc_group_id: id
        })),
        (0u8..4, any::<u32>(), 0u8..16, dl_frequ(), any::<u8>()).prop_map(|(id, t, to, f, dr)| {
            ms::Downlink::McClassCSessionReq(ms::McClassCSessionReq {
                mc_group_id: id,
                session_time: t,
                time_out: to,
                dl_frequ: f,
                dr,
            })
        }),
        (
            0u8..4,
            any::<u32>(),
            0u8..16,
            0u8..8,
            dl_frequ(),
            any::<u8>()
        )
            .prop_map(|(id, t, to, p, f, dr)| {
                ms::Downlink::McClassBSessionReq(ms::McClassBSessionReq {
                    mc_group_id: id,
                    session_time: t,
                    time_out: to,
                    periodicity: p,
                    dl_frequ: f,
                    dr,
                })
            }),
    ]
}

fn session_ans(version: Version) -> impl Strategy<Value = ms::McSessionAns> {
    (0u8..4, any::<[bool; 4]>(), 0u32..(1 << 24)).prop_map(move |(id, f, t)| {
        let error = f[0] || f[1] || f[2];
        ms::McSessionAns {
            mc_group_id: id,
            dr_error: f[0],
            freq_error: f[1],
            mc_group_undefined: f[2],
            start_missed: f[3] && version == Version::V2,
            time_to_start: (!error).then_some(t),
        }
    })
}

fn ms_uplink(version: Version) -> impl Strategy<Value = ms::Uplink> {
    let item = (0u8..4, any::<u32>()).prop_map(|(id, a)| ms::McGroupStatusItem {
        mc_group_id: id,
        mc_addr: a,
    });
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(i, v)| ms::Uplink::PackageVersionAns(
            ms::PackageVersionAns {
                package_identifier: i,
                package_version: v,
            }
        )),
        (0u8..16, 0u8..8, proptest::array::uniform4(item)).prop_map(|(mask, total, items)| {
            let mut items = items;
            for it in items.iter_mut().skip(mask.count_ones() as usize) {
                *it = ms::McGroupStatusItem {
                    mc_group_id: 0,
                    mc_addr: 0,
                };
            }
            ms::Uplink::McGroupStatusAns(ms::McGroupStatusAns {
                ans_group_mask: mask,
                nb_total_groups: total,
                items,
            })
        }),
        (0u8..4, any::<bool>()).prop_map(|(id, e)| ms::Uplink::McGroupSetupAns(
            ms::McGroupSetupAns {
                mc_group_id: id,
                id_error: e
            }
        )),
        (0u8..4, any::<bool>()).prop_map(|(id, u)| ms::Uplink::McGroupDeleteAns(
            ms::McGroupDeleteAns {
                mc_group_id: id,
                mc_group_undefined: u,
            }
        )),
        session_ans(version).prop_map(ms::Uplink::McClassCSessionAns),
        session_ans(version).prop_map(ms::Uplink::McClassBSessionAns),
    ]
}

fn cs_downlink() -> impl Strategy<Value = cs::Downlink> {
    prop_oneof![
        Just(cs::Downlink::PackageVersionReq(cs::PackageVersionReq)),
        (any::<i32>(), 0u8..16).prop_map(|(c, t)| cs::Downlink::AppTimeAns(cs::AppTimeAns {
            time_correction: c,
            token_ans: t
        })),
        (0u8..16).prop_map(|p| cs::Downlink::DeviceAppTimePeriodicityReq(
            cs::DeviceAppTimePeriodicityReq { period: p }
        )),
        (0u8..8).prop_map(
            |n| cs::Downlink::ForceDeviceResync(cs::ForceDeviceResyncCmd {
                nb_transmissions: n
            })
        ),
    ]
}

fn cs_uplink() -> impl Strategy<Value = cs::Uplink> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(i, v)| cs::Uplink::PackageVersionAns(
            cs::PackageVersionAns {
                package_identifier: i,
                package_version: v,
            }
        )),
        (any::<u32>(), 0u8..16, any::<bool>()).prop_map(|(t, k, a)| cs::Uplink::AppTimeReq(
            cs::AppTimeReq {
                device_time: t,
                token_req: k,
                ans_required: a,
            }
        )),
        (any::<bool>(), any::<u32>()).prop_map(|(n, t)| cs::Uplink::DeviceAppTimePeriodicityAns(
            cs::DeviceAppTimePeriodicityAns {
                not_supported: n,
                time: t
            }
        )),
    ]
}

fn build<F: FnOnce(&mut [u8]) -> Result<&[u8], fuota_codec::Error>>(f: F) -> Vec<u8> {
    let mut buf = [0u8; 64];
    f(&mut buf).unwrap().to_vec()
}

/// lrwn's value for one of our multicast-setup commands; the two lrwn versions have the same
/// shapes but for StartMissed, so one macro serves both.
macro_rules! lrwn_ms {
    ($v:ident, $start_missed:ident) => {
        mod $v {
            use super::*;
            use multicastsetup::$v as l;

            pub fn down(c: &ms::Downlink) -> l::Payload {
                match *c {
                    ms::Downlink::PackageVersionReq(_) => l::Payload::PackageVersionReq,
                    ms::Downlink::McGroupStatusReq(c) => l::Payload::McGroupStatusReq(l::McGroupStatusReqPayload {
                        cmd_mask: l::McGroupStatusReqPayloadCmdMask {
                            req_group_mask: core::array::from_fn(|i| c.req_group_mask & (1 << i) != 0),
                        },
                    }),
                    ms::Downlink::McGroupSetupReq(c) => l::Payload::McGroupSetupReq(l::McGroupSetupReqPayload {
                        mc_group_id_header: l::McGroupSetupReqPayloadMcGroupIdHeader { mc_group_id: c.mc_group_id },
                        mc_addr: DevAddr::from_le_bytes(c.mc_addr.to_le_bytes()),
                        mc_key_encrypted: c.mc_key_encrypted,
                        min_mc_f_count: c.min_mc_fcount,
                        max_mc_f_count: c.max_mc_fcount,
                    }),
                    ms::Downlink::McGroupDeleteReq(c) => l::Payload::McGroupDeleteReq(l::McGroupDeleteReqPayload {
                        mc_group_id_header: l::McGroupDeleteReqPayloadMcGroupIdHeader { mc_group_id: c.mc_group_id },
                    }),
                    ms::Downlink::McClassCSessionReq(c) => l::Payload::McClassCSessionReq(l::McClassCSessionReqPayload {
                        mc_group_id_header: l::McClassCSessionReqPayloadMcGroupIdHeader { mc_group_id: c.mc_group_id },
                        session_time: c.session_time,
                        session_time_out: l::McClassCSessionReqPayloadSessionTimeOut { time_out: c.time_out },
                        dl_frequ: c.dl_frequ.hz(),
                        dr: c.dr,
                    }),
                    ms::Downlink::McClassBSessionReq(c) => l::Payload::McClassBSessionReq(l::McClassBSessionReqPayload {
                        mc_group_id_header: l::McClassBSessionReqPayloadMcGroupIdHeader { mc_group_id: c.mc_group_id },
                        session_time: c.session_time,
                        time_out_periodicity: l::McClassBSessionReqPayloadTimeOutPeriodicity {
                            time_out: c.time_out,
                            periodicity: c.periodicity,
                        },
                        dl_frequ: c.dl_frequ.hz(),
                        dr: c.dr,
                    }),
                }
            }

            pub fn up(c: &ms::Uplink) -> l::Payload {
                match *c {
                    ms::Uplink::PackageVersionAns(c) => l::Payload::PackageVersionAns(l::PackageVersionAnsPayload {
                        package_identifier: c.package_identifier,
                        package_version: c.package_version,
                    }),
                    ms::Uplink::McGroupStatusAns(c) => l::Payload::McGroupStatusAns(l::McGroupStatusAnsPayload {
                        status: l::McGroupStatusAnsPayloadStatus {
                            ans_group_mask: core::array::from_fn(|i| c.ans_group_mask & (1 << i) != 0),
                            nb_total_groups: c.nb_total_groups,
                        },
                        items: c
                            .items()
                            .iter()
                            .map(|it| l::McGroupStatusAnsPayloadItem {
                                mc_group_id: it.mc_group_id,
                                mc_addr: DevAddr::from_le_bytes(it.mc_addr.to_le_bytes()),
                            })
                            .collect(),
                    }),
                    ms::Uplink::McGroupSetupAns(c) => l::Payload::McGroupSetupAns(l::McGroupSetupAnsPayload {
                        mc_group_id_header: l::McGroupSetupAnsPayloadMcGroupIdHeader {
                            mc_group_id: c.mc_group_id,
                            id_error: c.id_error,
                        },
                    }),
                    ms::Uplink::McGroupDeleteAns(c) => l::Payload::McGroupDeleteAns(l::McGroupDeleteAnsPayload {
                        mc_group_id_header: l::McGroupDeleteAnsPayloadMcGroupIdHeader {
                            mc_group_id: c.mc_group_id,
                            mc_group_undefined: c.mc_group_undefined,
                        },
                    }),
                    ms::Uplink::McClassCSessionAns(a) => l::Payload::McClassCSessionAns(l::McClassCSessionAnsPayload {
                        status_and_mc_group_id: lrwn_ms!(@status McClassCSessionAnsPayloadStatusAnsMcGroupId, a, $start_missed),
                        time_to_start: a.time_to_start,
                    }),
                    ms::Uplink::McClassBSessionAns(a) => l::Payload::McClassBSessionAns(l::McClassBSessionAnsPayload {
                        status_and_mc_group_id: lrwn_ms!(@status McClassBSessionAnsPayloadStatusAndMcGroupId, a, $start_missed),
                        time_to_start: a.time_to_start,
                    }),
                }
            }
        }
    };
    (@status $ty:ident, $a:ident, with_start_missed) => {
        l::$ty {
            mc_group_id: $a.mc_group_id,
            dr_error: $a.dr_error,
            freq_error: $a.freq_error,
            mc_group_undefined: $a.mc_group_undefined,
            start_missed: $a.start_missed,
        }
    };
    (@status $ty:ident, $a:ident, without_start_missed) => {
        l::$ty {
            mc_group_id: $a.mc_group_id,
            dr_error: $a.dr_error,
            freq_error: $a.freq_error,
            mc_group_undefined: $a.mc_group_undefined,
        }
    };
}

lrwn_ms!(v1, without_start_missed);
lrwn_ms!(v2, with_start_missed);

fn lrwn_cs_v1_down(c: &cs::Downlink) -> clocksync::v1::Payload {
    use clocksync::v1 as l;
    match *c {
        cs::Downlink::PackageVersionReq(_) => l::Payload::PackageVersionReq,
        cs::Downlink::AppTimeAns(c) => l::Payload::AppTimeAns(l::AppTimeAnsPayload {
            time_correction: c.time_correction,
            param: l::AppTimeAnsPayloadParam {
                token_ans: c.token_ans,
            },
        }),
        cs::Downlink::DeviceAppTimePeriodicityReq(c) => {
            l::Payload::DeviceAppTimePeropdicityReq(l::DeviceAppTimePeriodicityReqPayload {
                period: c.period,
            })
        }
        cs::Downlink::ForceDeviceResync(c) => {
            l::Payload::ForceDeviceResyncReq(l::ForceDeviceResyncReqPayload {
                force_conf: l::ForceDeviceResyncReqPayloadForceConf {
                    nb_transmissions: c.nb_transmissions,
                },
            })
        }
    }
}

fn lrwn_cs_v2_down(c: &cs::Downlink) -> clocksync::v2::Payload {
    use clocksync::v2 as l;
    match *c {
        cs::Downlink::PackageVersionReq(_) => l::Payload::PackageVersionReq,
        cs::Downlink::AppTimeAns(c) => l::Payload::AppTimeAns(l::AppTimeAnsPayload {
            time_correction: c.time_correction,
            param: l::AppTimeAnsPayloadParam {
                token_ans: c.token_ans,
            },
        }),
        cs::Downlink::DeviceAppTimePeriodicityReq(c) => {
            l::Payload::DeviceAppTimePeropdicityReq(l::DeviceAppTimePeriodicityReqPayload {
                period: c.period,
            })
        }
        cs::Downlink::ForceDeviceResync(c) => {
            l::Payload::ForceDeviceResyncCmd(l::ForceDeviceResyncCmdPayload {
                force_conf: l::ForceDeviceResyncCmdPayloadForceConf {
                    nb_transmissions: c.nb_transmissions,
                },
            })
        }
    }
}

macro_rules! lrwn_cs_up {
    ($name:ident, $v:ident) => {
        fn $name(c: &cs::Uplink) -> clocksync::$v::Payload {
            use clocksync::$v as l;
            match *c {
                cs::Uplink::PackageVersionAns(c) => {
                    l::Payload::PackageVersionAns(l::PackageVersionAnsPayload {
                        package_identifier: c.package_identifier,
                        package_version: c.package_version,
                    })
                }
                cs::Uplink::AppTimeReq(c) => l::Payload::AppTimeReq(l::AppTimeReqPayload {
                    device_time: c.device_time,
                    param: l::AppTimeReqPayloadParam {
                        token_req: c.token_req,
                        ans_required: c.ans_required,
                    },
                }),
                cs::Uplink::DeviceAppTimePeriodicityAns(c) => {
                    l::Payload::DeviceAppTimePeropdicityAns(l::DeviceAppTimePeriodicityAnsPayload {
                        status: l::DeviceAppTimePeriodicityAnsPayloadStatus {
                            not_supported: c.not_supported,
                        },
                        time: c.time,
                    })
                }
            }
        }
    };
}
lrwn_cs_up!(lrwn_cs_v1_up, v1);
lrwn_cs_up!(lrwn_cs_v2_up, v2);

proptest! {
    #[test]
    fn multicast_downlinks_match_lrwn(cmd in ms_downlink(), version in version()) {
        let ours = build(|b| cmd.build_into(version, b));
        let theirs = match version {
            Version::V1 => v1::down(&cmd).to_vec().unwrap(),
            Version::V2 => v2::down(&cmd).to_vec().unwrap(),
        };
        prop_assert_eq!(&ours, &theirs);
        prop_assert_eq!(ms::Downlink::parse(version, &theirs).unwrap(), (cmd, theirs.len()));
        match version {
            Version::V1 => prop_assert_eq!(multicastsetup::v1::Payload::from_slice(false, &ours).unwrap(), v1::down(&cmd)),
            Version::V2 => prop_assert_eq!(multicastsetup::v2::Payload::from_slice(false, &ours).unwrap(), v2::down(&cmd)),
        }
    }

    #[test]
    fn multicast_uplinks_match_lrwn((version, cmd) in version().prop_flat_map(|v| (Just(v), ms_uplink(v)))) {
        let ours = build(|b| cmd.build_into(version, b));
        // The device's quiet build: the same bytes.
        let mut quiet = [0u8; 64];
        prop_assert_eq!(cmd.write_into(version, &mut quiet), Some(&ours[..]));
        let theirs = match version {
            Version::V1 => v1::up(&cmd).to_vec().unwrap(),
            Version::V2 => v2::up(&cmd).to_vec().unwrap(),
        };
        prop_assert_eq!(&ours, &theirs);
        prop_assert_eq!(ms::Uplink::parse(version, &theirs).unwrap(), (cmd, theirs.len()));
        match version {
            Version::V1 => prop_assert_eq!(multicastsetup::v1::Payload::from_slice(true, &ours).unwrap(), v1::up(&cmd)),
            Version::V2 => prop_assert_eq!(multicastsetup::v2::Payload::from_slice(true, &ours).unwrap(), v2::up(&cmd)),
        }
    }

    #[test]
    fn clock_sync_matches_lrwn(down in cs_downlink(), up in cs_uplink(), version in version()) {
        let (d, u) = (build(|b| down.build_into(version, b)), build(|b| up.build_into(version, b)));
        let mut quiet = [0u8; 64];
        prop_assert_eq!(up.write_into(version, &mut quiet), Some(&u[..]));
        let (ld, lu) = match version {
            Version::V1 => (lrwn_cs_v1_down(&down).to_vec().unwrap(), lrwn_cs_v1_up(&up).to_vec().unwrap()),
            Version::V2 => (lrwn_cs_v2_down(&down).to_vec().unwrap(), lrwn_cs_v2_up(&up).to_vec().unwrap()),
        };
        prop_assert_eq!(&d, &ld);
        prop_assert_eq!(&u, &lu);
        prop_assert_eq!(cs::Downlink::parse(version, &ld).unwrap(), (down, ld.len()));
        prop_assert_eq!(cs::Uplink::parse(version, &lu).unwrap(), (up, lu.len()));
    }

    #[test]
    fn several_commands_iterate_back(
        (version, downs, ups) in version().prop_flat_map(|v| (
            Just(v),
            proptest::collection::vec(ms_downlink(), 0..5),
            proptest::collection::vec(ms_uplink(v), 0..5),
        )),
        cs_downs in proptest::collection::vec(cs_downlink(), 0..5),
        cs_ups in proptest::collection::vec(cs_uplink(), 0..5),
    ) {
        let join = |parts: Vec<Vec<u8>>| parts.concat();
        let payload = join(downs.iter().map(|c| build(|b| c.build_into(version, b))).collect());
        prop_assert_eq!(ms::downlinks(version, &payload).collect::<Result<Vec<_>, _>>().unwrap(), downs);
        let payload = join(ups.iter().map(|c| build(|b| c.build_into(version, b))).collect());
        prop_assert_eq!(ms::uplinks(version, &payload).collect::<Result<Vec<_>, _>>().unwrap(), ups);
        let payload = join(cs_downs.iter().map(|c| build(|b| c.build_into(version, b))).collect());
        prop_assert_eq!(cs::downlinks(version, &payload).collect::<Result<Vec<_>, _>>().unwrap(), cs_downs);
        let payload = join(cs_ups.iter().map(|c| build(|b| c.build_into(version, b))).collect());
        prop_assert_eq!(cs::uplinks(version, &payload).collect::<Result<Vec<_>, _>>().unwrap(), cs_ups);
    }

    #[test]
    fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64), version in version()) {
        // Whatever parses must build back to exactly the bytes it came from.
        macro_rules! check {
            ($iter:expr) => {{
                let mut at = 0;
                for cmd in $iter {
                    let Ok(cmd) = cmd else { break };
                    let len = cmd.len(version);
                    prop_assert_eq!(build(|b| cmd.build_into(version, b)), bytes[at..at + len].to_vec());
                    at += len;
                }
            }};
        }
        check!(ms::downlinks(version, &bytes));
        check!(ms::uplinks(version, &bytes));
        check!(cs::downlinks(version, &bytes));
        check!(cs::uplinks(version, &bytes));
    }

    #[test]
    fn truncation_is_reported(cmd in ms_downlink(), version in version()) {
        let bytes = build(|b| cmd.build_into(version, b));
        for cut in 0..bytes.len() {
            let e = ms::Downlink::parse(version, &bytes[..cut]).unwrap_err();
            prop_assert!(matches!(e.kind, fuota_codec::ErrorKind::Truncated { .. }), "{}", e);
        }
    }
}

#[test]
fn dl_frequ_in_the_2g4_band_counts_200_hz_steps() {
    let f = DlFrequ::from_hz(2_425_000_000).unwrap();
    assert_eq!(f.hz(), 2_425_000_000);
    assert_eq!(f.0, 12_125_000);
    let req = ms::Downlink::McClassCSessionReq(ms::McClassCSessionReq {
        mc_group_id: 0,
        session_time: 1,
        time_out: 1,
        dl_frequ: f,
        dr: 0,
    });
    let theirs = v2::down(&req).to_vec().unwrap();
    assert_eq!(build(|b| req.build_into(Version::V2, b)), theirs);
    assert_eq!(DlFrequ::from_hz(869_525_050), None);
}

#[test]
fn every_cid_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut down, mut up) = ([false; 6], [false; 6]);
    for _ in 0..500 {
        down[ms_downlink().new_tree(&mut runner).unwrap().current().cid() as usize] = true;
        up[ms_uplink(Version::V2)
            .new_tree(&mut runner)
            .unwrap()
            .current()
            .cid() as usize] = true;
    }
    assert_eq!((down, up), ([true; 6], [true; 6]));
}
