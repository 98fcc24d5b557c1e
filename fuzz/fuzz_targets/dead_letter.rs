//! The dead-letter record as `warren-producer dead-letters` reads it from a message's headers
//! (the worker's record, or the broker's `x-death`): any message reads, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_fuzz::Message;
use warren_producer::DeadLetter;

fuzz_target!(|data: &[u8]| {
    let Some(message) = Message::parse(data) else {
        return;
    };
    let Some(props) = message.properties() else {
        return;
    };
    let dead = DeadLetter::from_message(&props, message.body.as_bytes());
    assert_eq!(dead.payload_bytes, message.body.len());
    serde_json::to_string(&dead).expect("a dead letter serializes");
});
