//! Durations and instants as the ingest's JSON bodies write them, parsed exactly as
//! `docs/openapi.yaml` describes them, so that the spec's patterns and the server accept the
//! same strings:
//!
//! - a duration is a non-negative number of seconds (`30`, `0.5`) or a string of spans
//!   `<number>[.<fraction>] <unit>`, optionally separated by spaces (`"30s"`, `"1h 30m"`,
//!   `"250 ms"`), with the units of `humantime` (a month is 30.44 days, a year 365.25 days);
//!   a positive duration never rounds down to zero;
//! - an instant is an RFC 3339 date-time with a zone (`T`/`t`, `Z`/`z` or `±HH:MM`).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Nanoseconds in one of a unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    let secs = |s: u128| s * NANOS_PER_SEC;
    Some(match unit {
        "nanos" | "nsec" | "ns" => 1,
        "usec" | "us" | "µs" => 1_000,
        "millis" | "msec" | "ms" => 1_000_000,
        "seconds" | "second" | "secs" | "sec" | "s" => secs(1),
        "minutes" | "minute" | "mins" | "min" | "m" => secs(60),
        "hours" | "hour" | "hrs" | "hr" | "h" => secs(3600),
        "days" | "day" | "d" => secs(86_400),
        "weeks" | "week" | "wks" | "wk" | "w" => secs(604_800),
        "months" | "month" | "M" => secs(2_630_016),
        "years" | "year" | "yrs" | "yr" | "y" => secs(31_557_600),
        _ => return None,
    })
}

/// Parses a duration string (see the module's grammar); fractions of a nanosecond round up.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("`{text}` is not a duration such as \"30s\" or \"1h 30m\": {why}");
    let mut rest = text;
    let mut total: u128 = 0;
    loop {
        let (whole, after) = split_digits(rest);
        if whole.is_empty() {
            return Err(bad("a number is expected"));
        }
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => match split_digits(after) {
                ("", _) => return Err(bad("digits are expected after `.`")),
                (digits, after) => (digits, after),
            },
            None => ("", after),
        };
        let after = after.trim_start_matches(' ');
        let unit_len = after
            .find(|c: char| !(c.is_ascii_alphabetic() || c == 'µ'))
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos =
            unit_nanos(unit).ok_or_else(|| bad("a unit such as s, ms, m, h or d is expected"))?;
        let span = span_nanos(whole, fraction, nanos).ok_or_else(|| bad("it is too large"))?;
        total = total
            .checked_add(span)
            .ok_or_else(|| bad("it is too large"))?;
        if after.is_empty() {
            break;
        }
        rest = after.trim_start_matches(' ');
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad("it is too large"))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// `whole.fraction` units of `unit` nanoseconds each, rounded up to a nanosecond.
fn span_nanos(whole: &str, fraction: &str, unit: u128) -> Option<u128> {
    let mut nanos = whole
        .bytes()
        .try_fold(0u128, |n, d| {
            n.checked_mul(10)?.checked_add(u128::from(d - b'0'))
        })?
        .checked_mul(unit)?;
    // 20 digits hold more precision than a nanosecond of a year; any further digit only
    // rounds up.
    let (kept, dropped) = fraction.split_at(fraction.len().min(20));
    if !kept.is_empty() {
        let numerator: u128 = kept.parse().ok()?;
        let numerator = numerator + u128::from(dropped.bytes().any(|d| d != b'0'));
        let denominator = 10u128.pow(kept.len() as u32);
        nanos = nanos.checked_add((numerator * unit).div_ceil(denominator))?;
    }
    Some(nanos)
}

/// A duration given either as a number of seconds or as a duration string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Seconds(pub(crate) Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecondsVisitor)
    }
}

struct SecondsVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = Seconds;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number of seconds or a duration such as \"30s\" or \"1h 30m\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
        Ok(Seconds(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
        u64::try_from(v)
            .map(|v| Seconds(Duration::from_secs(v)))
            .map_err(|_| E::custom("a duration must not be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
        let duration = Duration::try_from_secs_f64(v).map_err(|_| {
            E::custom("a duration must be a non-negative, finite number of seconds")
        })?;
        // A positive number of seconds stays positive, however small.
        let floor = if v > 0.0 {
            Duration::from_nanos(1)
        } else {
            Duration::ZERO
        };
        Ok(Seconds(duration.max(floor)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
        parse_duration(v).map(Seconds).map_err(E::custom)
    }
}

/// Parses an RFC 3339 date-time with a zone into milliseconds since the epoch (fractions of
/// a millisecond dropped); a time before 1970 is 0, already past like any other past time.
/// A time without a zone is refused: it would mean a different instant on the client and
/// the server.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "expires_at `{text}` is not an RFC 3339 time with a zone, e.g. 2026-12-01T09:00:00Z"
        )
    };
    let fields = Rfc3339::parse(text).ok_or_else(bad)?;
    let date =
        chrono::NaiveDate::from_ymd_opt(fields.year, fields.month, fields.day).ok_or_else(bad)?;
    let days = date
        .signed_duration_since(chrono::NaiveDate::default())
        .num_days();
    let secs = days * 86_400 + i64::from(fields.seconds_of_day) - i64::from(fields.offset_secs);
    let millis = secs * 1000 + i64::from(fields.millis);
    Ok(u64::try_from(millis).unwrap_or(0))
}

/// The fields of `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, each within its range.
struct Rfc3339 {
    year: i32,
    month: u32,
    day: u32,
    /// Seconds since midnight, local time (a leap second 60 counts as the next minute's 0).
    seconds_of_day: u32,
    millis: u32,
    offset_secs: i32,
}

impl Rfc3339 {
    fn parse(text: &str) -> Option<Rfc3339> {
        let b = text.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Option<u32> {
            let digits = b.get(range)?;
            digits
                .iter()
                .all(u8::is_ascii_digit)
                .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
        };
        let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
        let shape = at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":");
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !shape || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0;
        if at(i, b".") {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            let kept = &text[i + 1..i + 1 + digits.min(3)];
            millis = kept.parse::<u32>().ok()? * 10u32.pow(3 - kept.len() as u32);
            i += 1 + digits;
        }
        let offset_secs = match b.get(i..)? {
            b"Z" | b"z" => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let (hours, minutes) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let secs = (hours * 3600 + minutes * 60) as i32;
                if *sign == b'-' {
                    -secs
                } else {
                    secs
                }
            }
            _ => return None,
        };
        Some(Rfc3339 {
            year: num(0..4)? as i32,
            month: num(5..7)?,
            day: num(8..10)?,
            seconds_of_day: hour * 3600 + minute * 60 + second,
            millis,
            offset_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_strings() {
        let s = |json: &str| serde_json::from_str::<Seconds>(json).map(|s| s.0);
        assert_eq!(s("30").unwrap(), Duration::from_secs(30));
        assert_eq!(s("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(s("1e-300").unwrap(), Duration::from_nanos(1));
        assert_eq!(s("0").unwrap(), Duration::ZERO);
        assert_eq!(s("\"1m 30s\"").unwrap(), Duration::from_secs(90));
        assert!(s("-1").is_err());
        assert!(s("\"30\"").is_err());
        assert!(s("true").is_err());
    }

    #[test]
    fn duration_strings_follow_the_grammar() {
        let d = |text: &str| parse_duration(text);
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("250 ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1.5ns"), Ok(Duration::from_nanos(2)));
        assert_eq!(
            d("0.1000000000000000000001s"),
            Ok(Duration::from_nanos(100_000_001))
        );
        assert_eq!(d("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(d("1M"), Ok(Duration::from_secs(2_630_016)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "30",
            " 30s",
            "30s ",
            "30 s ",
            "1.s",
            ".5s",
            "30sec!",
            "1 2s",
            "30S",
            "-1s",
            "1h,30m",
            "1e3s",
            "99999999999999999999999999999999999999999y",
        ] {
            assert!(d(bad).is_err(), "{bad:?} is accepted");
        }
    }

    #[test]
    fn rfc3339_times_need_a_zone() {
        let p = parse_rfc3339_ms;
        assert_eq!(p("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(p("1970-01-01t00:00:01z"), Ok(1000));
        assert_eq!(p("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert_eq!(p("1970-01-01T00:00:01.250-00:30"), Ok(1_801_250));
        assert_eq!(p("1970-01-01T00:00:01.2509999Z"), Ok(1250));
        assert_eq!(p("2026-12-01T09:00:00Z"), Ok(1_796_115_600_000));
        assert_eq!(p("2016-12-31T23:59:60Z"), Ok(1_483_228_800_000));
        // Before 1970 is in the past: already expired.
        assert_eq!(p("1969-12-31T23:59:59Z"), Ok(0));
        assert_eq!(p("0000-01-01T00:00:00Z"), Ok(0));
        for bad in [
            "1970-01-01T00:00:01",
            "1970-01-01 00:00:01Z",
            "tomorrow",
            "+01:00",
            "1970-02-30T00:00:00Z",
            "1970-01-01T24:00:00Z",
            "1970-01-01T00:00:00.Z",
            " 1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00+24:00",
            "1970-01-01T00:00:00+0100",
            "1970-01-01T00:00:00ZZ",
            "197-01-01T00:00:00Z",
        ] {
            assert!(p(bad).is_err(), "{bad:?} is accepted");
        }
    }
}
