//! Base64 as both sides write it: the forwarder pads `rxpk.data` and may leave `txpk.data`
//! unpadded; protobuf-JSON writes padded standard base64 and reads the URL-safe alphabet too.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

// Non-zero bits after the last byte are ignored, as Go's decoder does (the protocol's own
// txpk example has them).
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Padded standard base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Standard or URL-safe alphabet (not mixed), padding optional. `None` if it is neither.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    STANDARD_LENIENT
        .decode(s)
        .or_else(|_| URL_SAFE_LENIENT.decode(s))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_alphabets_with_or_without_padding() {
        assert_eq!(encode(&[0xfb, 0xff, 0x01]), "+/8B");
        assert_eq!(encode(b"ab"), "YWI=");
        assert_eq!(decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode("+/8B").as_deref(), Some(&[0xfb, 0xff, 0x01][..]));
        assert_eq!(decode("-_8B").as_deref(), Some(&[0xfb, 0xff, 0x01][..]));
        assert_eq!(decode("").as_deref(), Some(&[][..]));
        assert_eq!(decode("YWJ").as_deref(), Some(&b"ab"[..]));
        for bad in ["+_8B", "Y", "YW!=", "YWI==", " YWI="] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
