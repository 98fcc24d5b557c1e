//! How the console writes numbers, times and durations: the same everywhere, in UTC.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// `ms` since the epoch as a UTC time (`2026-12-07 23:10:05`), with the exact time (RFC 3339)
/// in the element's `datetime`.
pub(crate) fn time(ms: u64) -> Markup {
    let Some(at) = i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
    else {
        return html! { "-" };
    };
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S"))
        }
    }
}

/// An optional time.
pub(crate) fn maybe_time(ms: Option<u64>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { "-" },
    }
}

/// How long ago `ms` was at `now_ms` (`12 s ago`, `3 min ago`).
pub(crate) fn ago(ms: u64, now_ms: u64) -> String {
    match now_ms.checked_sub(ms) {
        Some(past) => format!("{} ago", duration(past)),
        None => format!("in {}", duration(ms - now_ms)),
    }
}

/// A duration in milliseconds, to two significant units at most (`850 ms`, `4.2 s`,
/// `3 min 20 s`, `2 h 5 min`, `3 d 4 h`).
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..60_000 => format!("{s} s"),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A count with thousands separated (`1 234 567`).
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// An optional count (`-` when unknown).
pub(crate) fn maybe_count(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), count)
}

/// JSON text pretty-printed when it parses, else as it is.
pub(crate) fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(4_250), "4.2 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(200_000), "3 min 20 s");
        assert_eq!(duration(7_500_000), "2 h 5 min");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(ago(1_000, 13_000), "12 s ago");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(7), "7");
        assert_eq!(count(1_000), "1\u{202f}000");
        assert_eq!(count(1_234_567), "1\u{202f}234\u{202f}567");
    }

    #[test]
    fn times_are_utc_and_escaped_markup() {
        let t = time(1_765_148_400_000).into_string();
        assert!(t.contains("2025-12-07 23:00:00"), "{t}");
        assert!(t.contains("datetime=\"2025-12-07T23:00:00.000Z\""), "{t}");
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("<b>"), "<b>");
    }
}
