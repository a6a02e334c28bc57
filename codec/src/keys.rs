//! Multicast key derivation (TS005) and the TS004 v2 data-block integrity key and MIC.
//!
//! Every derived key is one AES-128 block encryption of a constant block under its parent key:
//!
//! ```text
//! McRootKey   = AES(GenAppKey, 00 | 0^15)           LoRaWAN 1.0.x
//!             = AES(AppKey,    20 | 0^15)           LoRaWAN 1.1
//! McKEKey     = AES(McRootKey, 00 | 0^15)
//! McAppSKey   = AES(McKey,     01 | McAddr LE | 0^11)
//! McNwkSKey   = AES(McKey,     02 | McAddr LE | 0^11)
//! DataBlockIntKey = AES(GenAppKey (1.0.x) or AppKey (1.1), 30 | 0^15)
//! ```
//!
//! McKey travels encrypted by AES *decryption* under McKEKey, so a device only ever needs the
//! AES encryption direction.

use core::fmt;

use crate::aes128::Aes128;
use crate::aes_cmac::Cmac;
use crate::error::{Error, ErrorKind};

/// An AES-128 key. Its `Debug` output hides the key bytes, so keys can sit in structs that
/// get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Key128([u8; 16]);

impl Key128 {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// One block encrypted under this key: every derivation in this module.
    fn encrypt_block(&self, mut block: [u8; 16]) -> [u8; 16] {
        Aes128::new(&self.0).encrypt_block(&mut block);
        block
    }

    fn derive(&self, first_byte: u8, mc_addr: Option<u32>) -> Key128 {
        // The block as one little-endian number: the byte, the address (none leaves those
        // bytes zero, as the rest), stored in four words.
        let block = u128::from(first_byte) | u128::from(mc_addr.unwrap_or(0)) << 8;
        Key128(self.encrypt_block(block.to_le_bytes()))
    }
}

impl From<[u8; 16]> for Key128 {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Key128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key128(<redacted>)")
    }
}

/// McRootKey of a LoRaWAN 1.0.x device, from its GenAppKey.
pub fn mc_root_key_lorawan_1_0(gen_app_key: &Key128) -> Key128 {
    gen_app_key.derive(0x00, None)
}

/// McRootKey of a LoRaWAN 1.1 device, from its AppKey.
pub fn mc_root_key_lorawan_1_1(app_key: &Key128) -> Key128 {
    app_key.derive(0x20, None)
}

/// McKEKey, the key that wraps McKey in McGroupSetupReq.
pub fn mc_ke_key(mc_root_key: &Key128) -> Key128 {
    mc_root_key.derive(0x00, None)
}

/// Server side: the McKey_encrypted field of McGroupSetupReq.
pub fn encrypt_mc_key(mc_ke_key: &Key128, mc_key: &Key128) -> [u8; 16] {
    let mut block = mc_key.0;
    Aes128::new(&mc_ke_key.0).decrypt_block(&mut block);
    block
}

/// Device side: McKey from the McKey_encrypted field of McGroupSetupReq.
pub fn decrypt_mc_key(mc_ke_key: &Key128, mc_key_encrypted: &[u8; 16]) -> Key128 {
    Key128(mc_ke_key.encrypt_block(*mc_key_encrypted))
}

/// McAppSKey of the multicast group with address `mc_addr`.
pub fn mc_app_s_key(mc_key: &Key128, mc_addr: u32) -> Key128 {
    mc_key.derive(0x01, Some(mc_addr))
}

/// McNwkSKey of the multicast group with address `mc_addr`.
pub fn mc_nwk_s_key(mc_key: &Key128, mc_addr: u32) -> Key128 {
    mc_key.derive(0x02, Some(mc_addr))
}

/// TS004 v2 DataBlockIntKey, from the GenAppKey (LoRaWAN 1.0.x) or the AppKey (1.1).
pub fn data_block_int_key(app_key: &Key128) -> Key128 {
    app_key.derive(0x30, None)
}

/// The TS004 v2 data-block MIC computed over a block fed in pieces, so a device can read its
/// rebuilt block back from flash chunk by chunk. The block length goes into the first CMAC
/// block, so it is fixed up front and [`DataBlockMic::finalize`] checks it was honoured.
#[derive(Clone)]
pub struct DataBlockMic {
    mac: Cmac,
    block_len: u32,
    fed: u32,
}

impl DataBlockMic {
    /// Starts a MIC for a block of `block_len` bytes of the session with these SessionCnt,
    /// FragIndex and Descriptor.
    pub fn new(
        data_block_int_key: &Key128,
        session_cnt: u16,
        frag_index: u8,
        descriptor: [u8; 4],
        block_len: u32,
    ) -> Self {
        // B0 = 49 | SessionCnt LE | FragIndex | Descriptor | 0^4 | block length LE, made as
        // one little-endian number of four words, stored whole: no byte stores, no range
        // copies.
        let [c0, c1] = session_cnt.to_le_bytes();
        let head = u32::from_le_bytes([0x49, c0, c1, frag_index]);
        let b0 = (u128::from(head)
            | u128::from(u32::from_le_bytes(descriptor)) << 32
            | u128::from(block_len) << 96)
            .to_le_bytes();
        Self {
            mac: Cmac::with_first_block(data_block_int_key.as_bytes(), b0),
            block_len,
            fed: 0,
        }
    }

    /// Feeds the next piece of the block.
    pub fn update(&mut self, chunk: &[u8]) {
        self.mac.update(chunk);
        // In u32, as the length it is checked against, saturating: a count stuck at
        // u32::MAX differs from every block length but that one, which no device's block
        // (at most 16,383 fragments of 255 bytes) comes near.
        let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        self.fed = self.fed.saturating_add(len);
    }

    /// The 4-byte MIC. Fails with `InvalidValue` on `DataBlockMic.BlockLength` when the bytes
    /// fed differ from the length given to [`DataBlockMic::new`]: that MIC would be wrong.
    pub fn finalize(self) -> Result<[u8; 4], Error> {
        if self.fed != self.block_len {
            return Err(Error::new(
                "DataBlockMic",
                "BlockLength",
                ErrorKind::InvalidValue,
            ));
        }
        let tag = self.mac.finalize();
        let mut mic = [0u8; 4];
        mic.copy_from_slice(&tag[..4]);
        Ok(mic)
    }
}

impl fmt::Debug for DataBlockMic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataBlockMic")
            .field("block_len", &self.block_len)
            .field("fed", &self.fed)
            .finish_non_exhaustive()
    }
}

/// The TS004 v2 data-block MIC of a whole block in memory. Fails with `InvalidValue` only for
/// a block longer than 2^32 - 1 bytes, which the B0 length field cannot express.
pub fn data_block_mic(
    data_block_int_key: &Key128,
    session_cnt: u16,
    frag_index: u8,
    descriptor: [u8; 4],
    block: &[u8],
) -> Result<[u8; 4], Error> {
    let block_len = u32::try_from(block.len())
        .map_err(|_| Error::new("DataBlockMic", "BlockLength", ErrorKind::InvalidValue))?;
    let mut mic = DataBlockMic::new(
        data_block_int_key,
        session_cnt,
        frag_index,
        descriptor,
        block_len,
    );
    mic.update(block);
    mic.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    fn key(hex_str: &str) -> Key128 {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(hex_str, &mut bytes).unwrap();
        Key128::from_bytes(bytes)
    }

    #[test]
    fn mc_root_key_is_aes_of_the_zero_block() {
        // AES-128 of the all-zero block under key 00..0f, a widely published answer.
        let k = key("000102030405060708090a0b0c0d0e0f");
        let mut expected = [0u8; 16];
        hex::decode_to_slice("c6a13b37878f5b826f4f8162a1c8d879", &mut expected).unwrap();
        assert_eq!(mc_root_key_lorawan_1_0(&k).to_bytes(), expected);
    }

    #[test]
    fn mc_key_wrapping_round_trips() {
        let ke = mc_ke_key(&mc_root_key_lorawan_1_1(&key(
            "2b7e151628aed2a6abf7158809cf4f3c",
        )));
        let mc_key = key("0123456789abcdef0123456789abcdef");
        let wrapped = encrypt_mc_key(&ke, &mc_key);
        assert_ne!(&wrapped, mc_key.as_bytes());
        assert_eq!(decrypt_mc_key(&ke, &wrapped), mc_key);
    }

    #[test]
    fn session_keys_depend_on_address_and_kind() {
        let mc_key = key("0123456789abcdef0123456789abcdef");
        let app = mc_app_s_key(&mc_key, 0x0102_0304);
        assert_ne!(app, mc_nwk_s_key(&mc_key, 0x0102_0304));
        assert_ne!(app, mc_app_s_key(&mc_key, 0x0102_0305));
    }

    #[test]
    fn debug_hides_key_bytes() {
        let k = key("a1a2a3a4a5a6a7a8a9aaabacadaeafb0");
        let shown = std::format!("{k:?}");
        assert_eq!(shown, "Key128(<redacted>)");
    }

    #[test]
    fn streamed_mic_equals_one_shot_and_checks_length() {
        let k = data_block_int_key(&key("2b7e151628aed2a6abf7158809cf4f3c"));
        let block: [u8; 100] = core::array::from_fn(|i| i as u8);
        let whole = data_block_mic(&k, 7, 1, [1, 2, 3, 4], &block).unwrap();
        let mut streamed = DataBlockMic::new(&k, 7, 1, [1, 2, 3, 4], 100);
        for chunk in block.chunks(7) {
            streamed.update(chunk);
        }
        assert_eq!(streamed.finalize().unwrap(), whole);
        assert_ne!(
            data_block_mic(&k, 8, 1, [1, 2, 3, 4], &block).unwrap(),
            whole
        );
        let mut short = DataBlockMic::new(&k, 7, 1, [1, 2, 3, 4], 100);
        short.update(&block[..99]);
        assert_eq!(
            short.finalize().unwrap_err(),
            Error::new("DataBlockMic", "BlockLength", ErrorKind::InvalidValue)
        );
    }
}
