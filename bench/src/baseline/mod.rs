//! The baseline: what a careful engineer would write by hand with lapin and no Warren code,
//! with the same broker settings (persistent messages, a quorum queue, publisher confirms
//! pipelined up to a window, a prefetch limit and `multiple` acks).
//!
//! It leaves out what Warren adds for production: task ids and headers, retries, dead
//! letters, crash budgets, metrics beyond one counter, reconnection and graceful drains.

mod caller;
mod publisher;
mod worker;

pub use caller::RawCaller;
pub use publisher::{check, RawPublisher};
pub use worker::{run_worker, SUCCEEDED_METRIC};

use lapin::BasicProperties;

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// The properties of a baseline task: persistent, JSON, and its task name in `type`. With
/// `envelope`, also what Warren's envelope carries on a first attempt (a UUIDv7 message id,
/// which holds the creation time, and a timestamp), written by hand, to measure what the
/// bigger messages cost.
pub fn properties(task: &str, envelope: bool) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_type(task.into());
    if !envelope {
        return props;
    }
    let now_s = crate::payload::now_us() / 1_000_000;
    props
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_timestamp(now_s)
}
