//! How Warren's header values are encoded and read (wire-format §3.1): integers are written
//! as signed 64-bit values and read in any AMQP integer width or as a decimal string;
//! strings are written as long strings and read as long or short ones.

use crate::EnvelopeError;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// How much of a refused string header value an error message quotes: enough to recognise
/// it, not enough to let a hostile header fill a dead letter's reason.
const QUOTED_CHARS: usize = 40;

/// An integer header value: a signed 64-bit integer, which the broker and every client
/// library read (lapin would turn a plain `u64` into a timestamp). A value above `i64::MAX`,
/// which only a producer's header can hold, is written as a decimal string, so that what a
/// worker writes back (a retry, a dead letter) reads the same.
pub fn int_value(value: u64) -> AMQPValue {
    match i64::try_from(value) {
        Ok(signed) => AMQPValue::LongLongInt(signed),
        Err(_) => AMQPValue::LongString(LongString::from(value.to_string())),
    }
}

/// A string header value. Always a long string: RabbitMQ refuses short strings in tables.
pub fn text_value(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Reads an unsigned integer header written in any integer width (clients such as pika
/// choose the width by the value), or as a decimal string.
pub fn header_u64(table: &FieldTable, name: &'static str) -> Result<Option<u64>, EnvelopeError> {
    match table.inner().get(name) {
        Some(value) => int_header(name, value),
        None => Ok(None),
    }
}

/// The value of integer header `name`, as [`header_u64`] reads it. `None` for a void value.
pub(crate) fn int_header(
    name: &'static str,
    value: &AMQPValue,
) -> Result<Option<u64>, EnvelopeError> {
    let invalid = |problem: String| EnvelopeError::InvalidHeader { name, problem };
    let signed: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        // The one unsigned 64-bit type: every value is in range.
        AMQPValue::Timestamp(v) => return Ok(Some(*v)),
        AMQPValue::LongString(s) => return decimal(s.as_bytes()).map(Some).map_err(invalid),
        AMQPValue::Void => return Ok(None),
        other => return Err(invalid(format!("expected an integer, found {other:?}"))),
    };
    u64::try_from(signed)
        .map(Some)
        .map_err(|_| invalid(format!("{signed} is negative")))
}

/// Parses the string form of an integer header: an optional `-` and one or more ASCII digits
/// (leading zeros allowed), with ASCII whitespace around them allowed. No `+`, no other sign,
/// no digit grouping, no exponent. The error says what is wrong, quoting the value.
fn decimal(bytes: &[u8]) -> Result<u64, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err("a string that is not UTF-8 is not a decimal integer".into());
    };
    let quoted = quote(text);
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{quoted} is not a decimal integer"));
    }
    if negative && digits.bytes().any(|b| b != b'0') {
        return Err(format!("{quoted} is negative"));
    }
    // Only digits are left, so parsing can fail for one reason alone.
    digits
        .parse::<u64>()
        .map_err(|_| format!("{quoted} is too large (the largest is {})", u64::MAX))
}

/// `text` quoted and escaped as Rust writes a string literal, cut to [`QUOTED_CHARS`].
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Reads a string header (long or short string), if present.
pub fn header_string(table: &FieldTable, name: &str) -> Option<String> {
    string_value(table.inner().get(name)?)
}

/// A string value (long or short string) as text; invalid UTF-8 is replaced.
pub(crate) fn string_value(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers;

    fn read(value: AMQPValue) -> Result<Option<u64>, String> {
        let mut table = FieldTable::default();
        table.insert(headers::ATTEMPT.into(), value);
        header_u64(&table, headers::ATTEMPT).map_err(|e| e.to_string())
    }

    fn read_str(text: &str) -> Result<Option<u64>, String> {
        read(AMQPValue::LongString(text.into()))
    }

    #[test]
    fn integer_headers_are_read_in_any_width() {
        for (value, expected) in [
            (AMQPValue::ShortShortInt(2), 2),
            (AMQPValue::ShortShortUInt(2), 2),
            (AMQPValue::ShortInt(300), 300),
            (AMQPValue::ShortUInt(60_000), 60_000),
            (AMQPValue::LongInt(70_000), 70_000),
            (AMQPValue::LongUInt(4_000_000_000), 4_000_000_000),
            (AMQPValue::LongLongInt(1_700_000_000_000), 1_700_000_000_000),
            (AMQPValue::LongLongInt(i64::MAX), i64::MAX as u64),
            (AMQPValue::Timestamp(u64::MAX), u64::MAX),
        ] {
            assert_eq!(read(value), Ok(Some(expected)));
        }
        assert_eq!(read(AMQPValue::Void), Ok(None));
    }

    #[test]
    fn negative_and_non_integer_values_are_refused_with_the_reason() {
        let err = read(AMQPValue::LongInt(-1)).unwrap_err();
        assert_eq!(err, "header `x-warren-attempt` is invalid: -1 is negative");
        let err = read(AMQPValue::LongLongInt(i64::MIN)).unwrap_err();
        assert!(err.ends_with(&format!("{} is negative", i64::MIN)), "{err}");
        let err = read(AMQPValue::Boolean(true)).unwrap_err();
        assert!(err.contains("expected an integer"), "{err}");
        let err = read(AMQPValue::Double(1.7e9)).unwrap_err();
        assert!(err.contains("expected an integer"), "{err}");
    }

    #[test]
    fn decimal_strings_are_read_at_the_extremes() {
        assert_eq!(read_str("12"), Ok(Some(12)));
        assert_eq!(read_str("0"), Ok(Some(0)));
        assert_eq!(read_str("18446744073709551615"), Ok(Some(u64::MAX)));
        // Leading zeros change nothing (there is no octal form), and neither does a minus
        // sign on zero.
        assert_eq!(read_str("03"), Ok(Some(3)));
        assert_eq!(read_str("-0"), Ok(Some(0)));
        // Whitespace around the digits is allowed (a value copied from a terminal).
        assert_eq!(read_str(" 3"), Ok(Some(3)));
        assert_eq!(read_str("3\r\n"), Ok(Some(3)));
        assert_eq!(read_str("\t3 "), Ok(Some(3)));
    }

    #[test]
    fn an_overflowing_string_is_too_large_not_negative() {
        let problem = |text: &str| {
            let err = read_str(text).unwrap_err();
            let prefix = "header `x-warren-attempt` is invalid: ";
            err.strip_prefix(prefix)
                .expect("the header is named")
                .to_owned()
        };
        assert_eq!(
            problem("18446744073709551616"),
            "\"18446744073709551616\" is too large (the largest is 18446744073709551615)"
        );
        assert!(problem(&"9".repeat(100)).contains("is too large"));
        assert_eq!(problem("-3"), "\"-3\" is negative");
        assert_eq!(
            problem("-18446744073709551616"),
            "\"-18446744073709551616\" is negative"
        );
    }

    #[test]
    fn strings_that_are_not_plain_decimal_integers_are_refused() {
        for text in [
            "",
            " ",
            "+3",
            "+0",
            "-",
            "--3",
            "3 3",
            "1_000",
            "1,000",
            "1e3",
            "3.0",
            "0x10",
            "١٢",
            "\u{a0}3",
            "3\u{2003}",
            "three",
        ] {
            let err = read_str(text).unwrap_err();
            assert!(
                err.ends_with(&format!("{text:?} is not a decimal integer")),
                "{text:?}: {err}"
            );
        }
        let err = read(AMQPValue::LongString(vec![b'3', 0xff].into())).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_refused_string_is_quoted_escaped_and_cut_short() {
        let err = read_str(&format!("x\u{1b}[31m{}", "y".repeat(5_000))).unwrap_err();
        assert!(err.contains(r#""x\u{1b}[31myyy"#), "{err}");
        assert!(err.ends_with("yyy\"… is not a decimal integer"), "{err}");
        assert!(err.len() < 200, "{} bytes: {err}", err.len());
    }

    #[test]
    fn written_integers_read_back() {
        for value in [0, 1, u64::from(u32::MAX), i64::MAX as u64] {
            assert_eq!(read(int_value(value)), Ok(Some(value)));
            assert!(matches!(int_value(value), AMQPValue::LongLongInt(_)));
        }
        // Past i64::MAX, a decimal string: neither wrapped to a negative number nor cut
        // (the fuzzer found a not-before time of 17000000050000005000 written back as
        // i64::MAX).
        for value in [i64::MAX as u64 + 1, 17_000_000_050_000_005_000, u64::MAX] {
            assert_eq!(read(int_value(value)), Ok(Some(value)));
        }
        assert_eq!(read(text_value("42")), Ok(Some(42)));
    }
}
