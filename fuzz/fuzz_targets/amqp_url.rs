//! AMQP URLs: any text either parses or fails with a message, and the password of a URL never
//! appears in its `Display`, its `Debug` or the error.
//!
//! An input with three NUL bytes is split at them into a scheme selector, a user, a password
//! and the rest of the URL (host, port, vhost, query); the password, percent-encoded as a
//! careful user would write it, starts with a marker found nowhere else (even once the rest is
//! percent-decoded and rid of tabs and newlines), so that any leak of it shows. Any other
//! input is parsed as a URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_common::AmqpUrl;

const MARKER: &str = "Zq7Pw";

fuzz_target!(|input: &str| {
    let mut parts = input.splitn(4, '\0');
    let (Some(scheme), Some(user), Some(password), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // No user and password: the whole text is a URL.
        let _ = input
            .parse::<AmqpUrl>()
            .map(|url| (url.to_string(), format!("{url:?}")));
        return;
    };
    // URL parsers drop every tab and newline, so the rest could spell the marker with them.
    let rest_as_parsed = decode(&rest.replace(['\t', '\n', '\r'], ""));
    let outside = format!("{user}{rest_as_parsed}").to_lowercase();
    if outside.contains(&MARKER.to_lowercase()) {
        return;
    }
    let scheme = if scheme.len() % 2 == 0 {
        "amqp"
    } else {
        "amqps"
    };
    let secret = format!("{MARKER}{password}");
    let url = format!("{scheme}://{}:{}@{rest}", encode(user), encode(&secret));
    match url.parse::<AmqpUrl>() {
        Ok(parsed) => {
            assert!(!parsed.to_string().contains(MARKER), "Display: {parsed}");
            assert!(!format!("{parsed:?}").contains(MARKER), "Debug: {parsed:?}");
        }
        Err(message) => assert!(!message.contains(MARKER), "error: {message}"),
    }
});

/// Percent-decodes, leaving malformed escapes as they are.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
