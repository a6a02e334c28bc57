//! PULL_ACK: the server's immediate answer to every PULL_DATA, echoing its token.

use super::{header, write_header, Identifier, Malformed};

/// PULL_ACK: version, the token of the PULL_DATA it answers, identifier; nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullAck {
    pub token: u16,
}

impl PullAck {
    pub const LEN: usize = 4;

    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let token = header(bytes, Identifier::PullAck, Self::LEN)?;
        if bytes.len() > Self::LEN {
            return Err(Malformed::TrailingBytes);
        }
        Ok(Self { token })
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        write_header(&mut out, Identifier::PullAck, self.token);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_form() {
        let ack = PullAck { token: 0xbeef };
        assert_eq!(ack.build(), [2, 0xef, 0xbe, Identifier::PullAck as u8]);
        assert_eq!(PullAck::parse(&ack.build()), Ok(ack));
    }

    #[test]
    fn malformed() {
        let id = Identifier::PullAck as u8;
        assert_eq!(PullAck::parse(&[2, 0, 0]), Err(Malformed::TooShort));
        assert_eq!(
            PullAck::parse(&[2, 0, 0, id, 0]),
            Err(Malformed::TrailingBytes)
        );
        assert_eq!(PullAck::parse(&[1, 0, 0, id]), Err(Malformed::BadVersion));
        assert_eq!(
            PullAck::parse(&[2, 0, 0, 7]),
            Err(Malformed::UnknownIdentifier)
        );
        assert_eq!(
            PullAck::parse(&[2, 0, 0, Identifier::TxAck as u8]),
            Err(Malformed::UnexpectedIdentifier)
        );
    }

    proptest! {
        #[test]
        fn round_trip(token: u16) {
            prop_assert_eq!(PullAck::parse(&PullAck { token }.build()), Ok(PullAck { token }));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = PullAck::parse(&bytes);
        }
    }
}
