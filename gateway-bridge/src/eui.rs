//! The gateway's EUI-64: bytes 4..12 of PUSH_DATA, PULL_DATA and TX_ACK, and the
//! `{gatewayId}` of every MQTT topic.

use core::fmt;
use core::str::FromStr;

/// A gateway EUI. Written as 16 lowercase hex digits, as ChirpStack writes gateway IDs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Eui64(pub [u8; 8]);

impl Eui64 {
    pub const fn from_u64(v: u64) -> Self {
        Self(v.to_be_bytes())
    }
}

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Not 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEui;

impl fmt::Display for BadEui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a gateway ID is 16 hex digits")
    }
}

impl std::error::Error for BadEui {}

impl FromStr for Eui64 {
    type Err = BadEui;

    /// Exactly 16 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, BadEui> {
        let b = s.as_bytes();
        if b.len() != 16 {
            return Err(BadEui);
        }
        let mut out = [0u8; 8];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16).ok_or(BadEui)?;
            let lo = (pair[1] as char).to_digit(16).ok_or(BadEui)?;
            *o = (hi * 16 + lo) as u8;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_both_ways() {
        let eui = Eui64([0xAA, 0x55, 0x5A, 0x00, 0x00, 0x00, 0x01, 0x01]);
        assert_eq!(eui.to_string(), "aa555a0000000101");
        assert_eq!("AA555A0000000101".parse(), Ok(eui));
        assert_eq!(Eui64::from_u64(0xaa55_5a00_0000_0101), eui);
    }

    #[test]
    fn anything_but_sixteen_hex_digits_is_refused() {
        for s in [
            "",
            "aa555a000000010",
            "aa555a00000001011",
            "aa555a000000010g",
            "+a555a0000000101",
            "ää555a00000001",
        ] {
            assert_eq!(s.parse::<Eui64>(), Err(BadEui), "{s:?}");
        }
    }
}
