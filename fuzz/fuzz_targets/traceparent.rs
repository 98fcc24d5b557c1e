//! W3C `traceparent` values: a value that parses is exactly the canonical form of what it
//! parsed to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_common::TraceParent;

fuzz_target!(|value: &str| {
    if let Some(tp) = TraceParent::parse(value) {
        let canonical = format!("00-{}-{}-{:02x}", tp.trace_id, tp.parent_id, tp.flags);
        assert_eq!(canonical, value.trim());
    }
});
