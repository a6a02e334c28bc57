//! Wall-clock instants as the two sides write them: RFC 3339 (the packet forwarder's rxpk
//! `time`, protobuf-JSON `Timestamp`) and the forwarder's "expanded" stat time
//! (`2014-01-12 08:59:28 GMT`). Civil-calendar arithmetic is done here by hand so that the
//! crate needs no date library for two formats.

use core::fmt;

/// Seconds and nanoseconds since 1970-01-01T00:00:00Z (protobuf's `Timestamp` range:
/// years 0001 to 9999).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const MIN_SECS: i64 = -62_135_596_800;
const MAX_SECS: i64 = 253_402_300_799;

impl Timestamp {
    /// `None` outside years 0001..=9999 or with `nanos` of a second or more.
    pub fn new(secs: i64, nanos: u32) -> Option<Self> {
        ((MIN_SECS..=MAX_SECS).contains(&secs) && nanos < 1_000_000_000)
            .then_some(Self { secs, nanos })
    }

    pub fn unix_secs(self) -> i64 {
        self.secs
    }

    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }

    /// `2013-03-31T16:21:17.528002Z`, `…+02:00`: a date, `T` (or `t`), a time with up to nine
    /// fractional digits, and `Z` or a numeric offset.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 20 || !matches!(b[10], b'T' | b't') {
            return None;
        }
        let (days, rest) = parse_date(b)?;
        let (day_secs, rest) = parse_time(&rest[1..])?;
        let (nanos, rest) = parse_fraction(rest)?;
        let offset = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let h = two_digits(*h1, *h2)?;
                let m = two_digits(*m1, *m2)?;
                if h > 23 || m > 59 {
                    return None;
                }
                let off = i64::from(h * 3600 + m * 60);
                if *sign == b'+' {
                    off
                } else {
                    -off
                }
            }
            _ => return None,
        };
        Self::new(days * 86_400 + day_secs - offset, nanos)
    }

    /// `2014-01-12 08:59:28 GMT`: the forwarder formats gmtime() with `%F %T %Z`, so the zone
    /// is whatever the C library calls UTC (`GMT`, `UTC`); any alphabetic zone name is read
    /// as UTC, as the time it names is.
    pub fn parse_expanded(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 19 || b[10] != b' ' {
            return None;
        }
        let (days, rest) = parse_date(b)?;
        let (day_secs, rest) = parse_time(&rest[1..])?;
        match rest {
            [] => {}
            [b' ', zone @ ..] if !zone.is_empty() && zone.iter().all(u8::is_ascii_alphabetic) => {}
            _ => return None,
        }
        Self::new(days * 86_400 + day_secs, 0)
    }

    /// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as protobuf-JSON writes it.
    pub fn rfc3339(self) -> impl fmt::Display {
        Rfc3339(self)
    }

    /// The forwarder's expanded stat time, `YYYY-MM-DD hh:mm:ss GMT` (whole seconds).
    pub fn expanded(self) -> impl fmt::Display {
        Expanded(self)
    }
}

struct Rfc3339(Timestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_civil(f, self.0.secs, 'T')?;
        write_fraction(f, self.0.nanos)?;
        f.write_str("Z")
    }
}

struct Expanded(Timestamp);

impl fmt::Display for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_civil(f, self.0.secs, ' ')?;
        f.write_str(" GMT")
    }
}

/// Writes `.xxx`, `.xxxxxx` or `.xxxxxxxxx`, the shortest of those that loses nothing.
pub(crate) fn write_fraction(f: &mut fmt::Formatter<'_>, nanos: u32) -> fmt::Result {
    if nanos == 0 {
        Ok(())
    } else if nanos % 1_000_000 == 0 {
        write!(f, ".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        write!(f, ".{:06}", nanos / 1_000)
    } else {
        write!(f, ".{nanos:09}")
    }
}

fn write_civil(f: &mut fmt::Formatter<'_>, secs: i64, sep: char) -> fmt::Result {
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    write!(
        f,
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

fn digit(c: u8) -> Option<u32> {
    c.is_ascii_digit().then(|| u32::from(c - b'0'))
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    Some(digit(a)? * 10 + digit(b)?)
}

/// `YYYY-MM-DD` at the start of `b`: days since the Unix epoch and what follows.
fn parse_date(b: &[u8]) -> Option<(i64, &[u8])> {
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, rest @ ..] = b else {
        return None;
    };
    let year = two_digits(*y1, *y2)? * 100 + two_digits(*y3, *y4)?;
    let month = two_digits(*m1, *m2)?;
    let day = two_digits(*d1, *d2)?;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some((days_from_civil(i64::from(year), month, day), rest))
}

/// `hh:mm:ss`: seconds into the day and what follows. Leap seconds (`:60`) are refused, as
/// protobuf's Timestamp has none.
fn parse_time(b: &[u8]) -> Option<(i64, &[u8])> {
    let [h1, h2, b':', m1, m2, b':', s1, s2, rest @ ..] = b else {
        return None;
    };
    let (h, m, s) = (
        two_digits(*h1, *h2)?,
        two_digits(*m1, *m2)?,
        two_digits(*s1, *s2)?,
    );
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    Some((i64::from(h * 3600 + m * 60 + s), rest))
}

/// An optional `.` and one to nine digits: nanoseconds and what follows.
pub(crate) fn parse_fraction(b: &[u8]) -> Option<(u32, &[u8])> {
    let Some(rest) = b.strip_prefix(b".") else {
        return Some((0, b));
    };
    let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 9 {
        return None;
    }
    let mut nanos = 0u32;
    for &c in &rest[..n] {
        nanos = nanos * 10 + u32::from(c - b'0');
    }
    Some((nanos * 10u32.pow(9 - n as u32), &rest[n..]))
}

fn is_leap(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (eras of 400 years, March-based
/// years so that the leap day falls last).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_of_the_protocol_example() {
        let t = Timestamp::parse_rfc3339("2013-03-31T16:21:17.528002Z").unwrap();
        assert_eq!(t.unix_secs(), 1_364_746_877);
        assert_eq!(t.subsec_nanos(), 528_002_000);
        assert_eq!(t.rfc3339().to_string(), "2013-03-31T16:21:17.528002Z");
    }

    #[test]
    fn rfc3339_offsets_are_folded_into_utc() {
        let t = Timestamp::parse_rfc3339("2013-03-31T18:21:17+02:00").unwrap();
        assert_eq!(t.rfc3339().to_string(), "2013-03-31T16:21:17Z");
        let t = Timestamp::parse_rfc3339("2013-03-31T16:00:00.5-01:30").unwrap();
        assert_eq!(t.rfc3339().to_string(), "2013-03-31T17:30:00.500Z");
    }

    #[test]
    fn fractions_use_the_shortest_lossless_group() {
        let t = |n| Timestamp::new(0, n).unwrap().rfc3339().to_string();
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(120_000_000), "1970-01-01T00:00:00.120Z");
        assert_eq!(t(120_001_000), "1970-01-01T00:00:00.120001Z");
        assert_eq!(t(1), "1970-01-01T00:00:00.000000001Z");
    }

    #[test]
    fn expanded_stat_time() {
        let t = Timestamp::parse_expanded("2014-01-12 08:59:28 GMT").unwrap();
        assert_eq!(t.unix_secs(), 1_389_517_168);
        assert_eq!(t.expanded().to_string(), "2014-01-12 08:59:28 GMT");
        assert_eq!(
            Timestamp::parse_expanded("2014-01-12 08:59:28 UTC"),
            Some(t)
        );
        assert_eq!(Timestamp::parse_expanded("2014-01-12 08:59:28"), Some(t));
    }

    #[test]
    fn invalid_dates_and_times_are_refused() {
        for s in [
            "",
            "2013-02-29T00:00:00Z",
            "2012-02-30T00:00:00Z",
            "2013-13-01T00:00:00Z",
            "2013-00-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2013-01-01T24:00:00Z",
            "2013-01-01T00:60:00Z",
            "2013-01-01T00:00:60Z",
            "2013-01-01T00:00:00",
            "2013-01-01T00:00:00.Z",
            "2013-01-01T00:00:00.1234567890Z",
            "2013-01-01T00:00:00+24:00",
            "2013-01-01 00:00:00Z",
            "20130101T000000Z",
            "2013-01-01T00:00:00Zjunk",
            "٢٠١٣-01-01T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(s), None, "{s:?}");
        }
        for s in [
            "2014-01-12T08:59:28 GMT",
            "2014-01-12 08:59:28 G1T",
            "2014-01-12 08:59:28 ",
        ] {
            assert_eq!(Timestamp::parse_expanded(s), None, "{s:?}");
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2012-02-29T00:00:00Z").map(|t| t.unix_secs()),
            Some(1_330_473_600)
        );
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(
            Timestamp::parse_rfc3339("0001-01-01T00:00:00Z").map(Timestamp::unix_secs),
            Some(MIN_SECS)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:59:59Z").map(Timestamp::unix_secs),
            Some(MAX_SECS)
        );
        assert_eq!(Timestamp::parse_rfc3339("0001-01-01T00:00:00+00:01"), None);
        assert_eq!(Timestamp::new(MAX_SECS + 1, 0), None);
        assert_eq!(Timestamp::new(0, 1_000_000_000), None);
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(secs in MIN_SECS..=MAX_SECS, nanos in 0u32..1_000_000_000) {
            let t = Timestamp::new(secs, nanos).unwrap();
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.rfc3339().to_string()), Some(t));
        }

        #[test]
        fn expanded_round_trips(secs in MIN_SECS..=MAX_SECS) {
            let t = Timestamp::new(secs, 0).unwrap();
            prop_assert_eq!(Timestamp::parse_expanded(&t.expanded().to_string()), Some(t));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = Timestamp::parse_rfc3339(&s);
            let _ = Timestamp::parse_expanded(&s);
        }
    }
}
