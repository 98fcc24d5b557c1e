//! The HTTP ingest's task requests (`POST /v1/tasks` and `/v1/tasks:batch`), read and
//! validated as the ingest does: any body is either tasks or a message for the client.
//!
//! The first byte picks the endpoint (bit 0: 1 for a batch) and whether the request carries
//! a `traceparent` header (bit 1); the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let batch = selector & 1 == 1;
    let traceparent = (selector & 2 == 2).then_some(TRACEPARENT);
    match warren_producer::read_task_body(body, batch, traceparent) {
        Ok(ids) => {
            assert!(batch || ids.len() == 1);
            assert!(ids.iter().all(|id| !id.is_empty() && id.len() <= 255));
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
