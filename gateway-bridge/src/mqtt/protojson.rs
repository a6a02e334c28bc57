//! The pieces of protobuf's JSON mapping these messages use: `google.protobuf.Duration`,
//! bytes, and the lenient reading of numbers and enums (a protobuf-JSON reader accepts
//! `uint32` as a number or a string, an enum as its name or its number, `null` as the
//! default).

use crate::base64_field;
use crate::timestamp::{parse_fraction, write_fraction};
use core::fmt;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// `google.protobuf.Duration`: whole seconds and nanoseconds of the same sign, within
/// ±315,576,000,000 s (10,000 years).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    nanos: i128,
}

const MAX_SECS: i128 = 315_576_000_000;

impl Duration {
    pub fn from_nanos(nanos: i128) -> Option<Self> {
        (nanos.abs() <= MAX_SECS * 1_000_000_000).then_some(Self { nanos })
    }

    pub fn from_millis(ms: i64) -> Option<Self> {
        Self::from_nanos(i128::from(ms) * 1_000_000)
    }

    pub fn as_nanos(self) -> i128 {
        self.nanos
    }

    /// Rounded toward zero.
    pub fn as_micros(self) -> i128 {
        self.nanos / 1_000
    }

    /// Rounded toward zero.
    pub fn as_millis(self) -> i128 {
        self.nanos / 1_000_000
    }

    /// `"1.5s"`, `"-0.001s"`, `"3s"`: a sign, seconds, an optional fraction of one to nine
    /// digits, and `s`.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_suffix('s')?;
        let (negative, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let b = body.as_bytes();
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if int_len == 0 || int_len > 12 {
            return None;
        }
        let secs: i128 = body[..int_len].parse().ok()?;
        let (frac, rest) = parse_fraction(&b[int_len..])?;
        if !rest.is_empty() {
            return None;
        }
        let magnitude = secs * 1_000_000_000 + i128::from(frac);
        Self::from_nanos(if negative { -magnitude } else { magnitude })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.nanos.unsigned_abs();
        if self.nanos < 0 {
            f.write_str("-")?;
        }
        write!(f, "{}", m / 1_000_000_000)?;
        write_fraction(f, (m % 1_000_000_000) as u32)?;
        f.write_str("s")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Duration::parse(&s).ok_or_else(|| de::Error::custom("not a protobuf Duration"))
    }
}

/// `bytes` fields: padded standard base64 out; either alphabet, padded or not, or `null`, in.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64_field::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match <Option<std::borrow::Cow<'de, str>>>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => base64_field::decode(&s).ok_or_else(|| de::Error::custom("not base64")),
        }
    }
}

/// An integer in any of protobuf-JSON's spellings: a number (an integral float included), a
/// string holding one, or `null` for zero.
fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, as a number or a string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
            if v.fract() == 0.0 && v.abs() < 1e30 {
                Ok(v as i128)
            } else {
                Err(E::custom("not an integer"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
            if let Ok(i) = v.parse::<i128>() {
                return Ok(i);
            }
            match v.parse::<f64>() {
                Ok(f) if f.is_finite() => self.visit_f64(f),
                _ => Err(E::custom("not an integer")),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<i128, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V)
}

pub fn uint32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    u32::try_from(integer(d)?).map_err(|_| de::Error::custom("out of range for uint32"))
}

pub fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    i32::try_from(integer(d)?).map_err(|_| de::Error::custom("out of range for int32"))
}

/// An enum value by name, by number, or `null` for the zero value.
pub(crate) fn enum_value<'de, D, T>(
    d: D,
    from_name: fn(&str) -> Option<T>,
    from_number: fn(i64) -> Option<T>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => from_number(0),
        serde_json::Value::String(s) => from_name(&s),
        serde_json::Value::Number(n) => n.as_i64().and_then(from_number),
        _ => None,
    }
    .ok_or_else(|| de::Error::custom("unknown enum value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        let d = |s| Duration::parse(s).map(Duration::as_nanos);
        assert_eq!(d("1.5s"), Some(1_500_000_000));
        assert_eq!(d("1s"), Some(1_000_000_000));
        assert_eq!(d("0s"), Some(0));
        assert_eq!(d("-0.001s"), Some(-1_000_000));
        assert_eq!(d("0.000000001s"), Some(1));
        assert_eq!(d("315576000000s"), Some(315_576_000_000_000_000_000));
        for bad in [
            "",
            "s",
            "1",
            "1.s",
            ".5s",
            "+1s",
            "1.5 s",
            "1.0000000001s",
            "315576000001s",
            "1e3s",
            "--1s",
            "1.5ms",
        ] {
            assert_eq!(Duration::parse(bad), None, "{bad:?}");
        }
        let show = |n| Duration::from_nanos(n).unwrap().to_string();
        assert_eq!(show(1_500_000_000), "1.500s");
        assert_eq!(show(5_000_000_000), "5s");
        assert_eq!(show(-1_000), "-0.000001s");
        assert_eq!(show(1), "0.000000001s");
        assert_eq!(Duration::from_millis(1_234).unwrap().to_string(), "1.234s");
        assert_eq!(
            Duration::parse("1.0000019s").unwrap().as_micros(),
            1_000_001
        );
        assert_eq!(Duration::parse("-1.0019s").unwrap().as_millis(), -1_001);
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Numbers {
        #[serde(default, deserialize_with = "uint32")]
        u: u32,
        #[serde(default, deserialize_with = "int32")]
        i: i32,
        #[serde(default, with = "bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn lenient_numbers_and_bytes() {
        let n = |s: &str| {
            serde_json::from_str::<Numbers>(s)
                .map(|n| (n.u, n.i, n.b))
                .ok()
        };
        assert_eq!(n(r#"{"u":1,"i":-1,"b":"AQI="}"#), Some((1, -1, vec![1, 2])));
        assert_eq!(
            n(r#"{"u":"4294967295","i":"-2147483648","b":"AQI"}"#),
            Some((u32::MAX, i32::MIN, vec![1, 2]))
        );
        assert_eq!(n(r#"{"u":1.0,"i":"2e1","b":null}"#), Some((1, 20, vec![])));
        assert_eq!(n(r#"{"u":null,"i":null}"#), Some((0, 0, vec![])));
        assert_eq!(n("{}"), Some((0, 0, vec![])));
        for bad in [
            r#"{"u":-1}"#,
            r#"{"u":4294967296}"#,
            r#"{"u":1.5}"#,
            r#"{"u":"x"}"#,
            r#"{"u":true}"#,
            r#"{"u":[]}"#,
            r#"{"i":2147483648}"#,
            r#"{"b":"!"}"#,
            r#"{"b":1}"#,
            r#"{"u":"NaN"}"#,
            r#"{"u":1e300}"#,
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn duration_round_trips(n in -315_576_000_000_000_000_000i128..=315_576_000_000_000_000_000) {
            let d = Duration::from_nanos(n).unwrap();
            prop_assert_eq!(Duration::parse(&d.to_string()), Some(d));
        }

        #[test]
        fn arbitrary_duration_text_never_panics(s in "[-0-9.s]{0,24}") {
            let _ = Duration::parse(&s);
        }
    }
}
