//! Agreement with ChirpStack's lrwn for every key derivation and the TS004 v2 data-block MIC,
//! on random keys and inputs.

use fuota_codec::keys::*;
use lrwn::applayer::{fragmentation, multicastsetup};
use lrwn::{AES128Key, DevAddr};
use proptest::prelude::*;

fn theirs(key: &Key128) -> AES128Key {
    AES128Key::from_bytes(key.to_bytes())
}

fn mc_addr(addr: u32) -> DevAddr {
    // lrwn keeps DevAddr big-endian; McAddr is the same 32-bit value.
    DevAddr::from_be_bytes(addr.to_be_bytes())
}

proptest! {
    #[test]
    fn root_and_ke_keys_match_lrwn(bytes in any::<[u8; 16]>()) {
        let key = Key128::from_bytes(bytes);
        for (ours, want) in [
            (mc_root_key_lorawan_1_0(&key), multicastsetup::v1::get_mc_root_key_for_gen_app_key(theirs(&key)).unwrap()),
            (mc_root_key_lorawan_1_0(&key), multicastsetup::v2::get_mc_root_key_for_gen_app_key(theirs(&key)).unwrap()),
            (mc_root_key_lorawan_1_1(&key), multicastsetup::v1::get_mc_root_key_for_app_key(theirs(&key)).unwrap()),
            (mc_root_key_lorawan_1_1(&key), multicastsetup::v2::get_mc_root_key_for_app_key(theirs(&key)).unwrap()),
            (mc_ke_key(&key), multicastsetup::v1::get_mc_ke_key(theirs(&key)).unwrap()),
            (mc_ke_key(&key), multicastsetup::v2::get_mc_ke_key(theirs(&key)).unwrap()),
            (data_block_int_key(&key), fragmentation::v2::get_data_block_int_key(theirs(&key)).unwrap()),
        ] {
            prop_assert_eq!(ours.to_bytes(), want.to_bytes());
        }
    }

    #[test]
    fn session_keys_match_lrwn(bytes in any::<[u8; 16]>(), addr in any::<u32>()) {
        let mc_key = Key128::from_bytes(bytes);
        prop_assert_eq!(
            mc_app_s_key(&mc_key, addr).to_bytes(),
            multicastsetup::v1::get_mc_app_s_key(theirs(&mc_key), mc_addr(addr)).unwrap().to_bytes()
        );
        prop_assert_eq!(
            mc_nwk_s_key(&mc_key, addr).to_bytes(),
            multicastsetup::v1::get_mc_net_s_key(theirs(&mc_key), mc_addr(addr)).unwrap().to_bytes()
        );
        prop_assert_eq!(
            mc_app_s_key(&mc_key, addr).to_bytes(),
            multicastsetup::v2::get_mc_app_s_key(theirs(&mc_key), mc_addr(addr)).unwrap().to_bytes()
        );
        prop_assert_eq!(
            mc_nwk_s_key(&mc_key, addr).to_bytes(),
            multicastsetup::v2::get_mc_net_s_key(theirs(&mc_key), mc_addr(addr)).unwrap().to_bytes()
        );
    }

    #[test]
    fn mc_key_wrapping_matches_lrwn(ke in any::<[u8; 16]>(), mc in any::<[u8; 16]>()) {
        let (ke, mc) = (Key128::from_bytes(ke), Key128::from_bytes(mc));
        let wrapped = encrypt_mc_key(&ke, &mc);
        prop_assert_eq!(wrapped, multicastsetup::v1::encrypt_mc_key(theirs(&ke), theirs(&mc)));
        prop_assert_eq!(wrapped, multicastsetup::v2::encrypt_mc_key(theirs(&ke), theirs(&mc)));
        prop_assert_eq!(decrypt_mc_key(&ke, &wrapped), mc);
    }

    #[test]
    fn data_block_mic_matches_lrwn(
        key in any::<[u8; 16]>(),
        session_cnt in any::<u16>(),
        frag_index in 0u8..4,
        descriptor in any::<[u8; 4]>(),
        block in proptest::collection::vec(any::<u8>(), 0..600),
        chunk_sizes in proptest::collection::vec(1usize..70, 1..20),
    ) {
        let key = Key128::from_bytes(key);
        let want = fragmentation::v2::calculate_mic(theirs(&key), session_cnt, frag_index, descriptor, &block).unwrap();
        prop_assert_eq!(data_block_mic(&key, session_cnt, frag_index, descriptor, &block), Ok(want));

        // Streamed in uneven chunks, as a device reads its block back from flash.
        let mut mic = DataBlockMic::new(&key, session_cnt, frag_index, descriptor, block.len() as u32);
        let mut rest = &block[..];
        for size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            mic.update(chunk);
            rest = tail;
        }
        prop_assert_eq!(mic.finalize(), Ok(want));
    }
}
