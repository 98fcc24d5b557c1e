//! The envelope read from a received message's AMQP properties and headers: any message
//! either reads or fails with an error, never a panic, and a valid one survives the trip
//! through the properties the publisher writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_common::{Claimed, Envelope};
use warren_fuzz::Message;

fuzz_target!(|data: &[u8]| {
    let Some(props) = Message::parse(data).and_then(|m| m.properties()) else {
        return;
    };
    let claimed = Claimed::from_properties(&props);
    match Envelope::from_properties(&props) {
        Ok(envelope) => {
            assert_eq!(claimed.id, Some(envelope.id.as_str()));
            assert_eq!(claimed.task, Some(envelope.task.as_str()));
            assert_eq!(claimed.attempt, Some(envelope.attempt));
            // What a worker writes back (a retry, a dead letter) reads the same.
            if envelope.validate().is_ok() {
                let again = Envelope::from_properties(&envelope.to_properties());
                assert_eq!(again.ok().as_ref(), Some(&envelope));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
