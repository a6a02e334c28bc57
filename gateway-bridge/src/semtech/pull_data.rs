//! PULL_DATA: the gateway's keep-alive. It opens the NAT route for the downstream socket, so
//! PULL_RESP goes to the address a gateway's PULL_DATA came from, and a gateway that stops
//! sending it is unreachable for downlinks.

use super::{upstream_header, write_header, Identifier, Malformed};
use crate::eui::Eui64;

/// PULL_DATA: header and the gateway's EUI; nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullData {
    pub token: u16,
    pub gateway: Eui64,
}

impl PullData {
    pub const LEN: usize = 12;

    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let (token, gateway, rest) = upstream_header(bytes, Identifier::PullData)?;
        if !rest.is_empty() {
            return Err(Malformed::TrailingBytes);
        }
        Ok(Self { token, gateway })
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        write_header(&mut out, Identifier::PullData, self.token);
        out.extend_from_slice(&self.gateway.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_form() {
        let p = PullData {
            token: 0x1234,
            gateway: Eui64::from_u64(0x0102_0304_0506_0708),
        };
        assert_eq!(p.build(), [2, 0x34, 0x12, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(PullData::parse(&p.build()), Ok(p));
    }

    #[test]
    fn malformed() {
        let ok = PullData {
            token: 1,
            gateway: Eui64([9; 8]),
        }
        .build();
        for len in 0..4 {
            assert_eq!(PullData::parse(&ok[..len]), Err(Malformed::TooShort));
        }
        for len in 4..12 {
            assert_eq!(PullData::parse(&ok[..len]), Err(Malformed::TooShort));
        }
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(PullData::parse(&long), Err(Malformed::TrailingBytes));
        let mut v1 = ok.clone();
        v1[0] = 1;
        assert_eq!(PullData::parse(&v1), Err(Malformed::BadVersion));
        let mut other = ok;
        other[3] = Identifier::PushData as u8;
        assert_eq!(
            PullData::parse(&other),
            Err(Malformed::UnexpectedIdentifier)
        );
    }

    proptest! {
        #[test]
        fn round_trip(token: u16, eui: [u8; 8]) {
            let p = PullData { token, gateway: Eui64(eui) };
            prop_assert_eq!(PullData::parse(&p.build()), Ok(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = PullData::parse(&bytes);
        }
    }
}
