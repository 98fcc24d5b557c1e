//! Writing to the control stream, and declaring it.

use super::{Record, CONTROL_CONTENT_TYPE, CONTROL_SEGMENT_BYTES, DEFAULT_CONTROL_MAX_AGE};
use crate::declare::{declare_queue, TopologyError};
use crate::publish::Publisher;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

/// Sends `record` to `stream` through `publisher`, with a confirm (persistent, mandatory: a
/// stream that does not exist is an error, not a record lost).
pub async fn send_record(
    publisher: &Publisher,
    stream: &str,
    record: &Record,
) -> Result<(), crate::PublishError> {
    let properties = BasicProperties::default()
        .with_content_type(CONTROL_CONTENT_TYPE.into())
        .with_delivery_mode(2);
    publisher
        .publish_raw("", stream, &record.to_body(), properties, record.kind())
        .await
}

/// Declares the control stream `name` on `channel` with Warren's retention. A stream that
/// exists with other arguments stands as it is (a stream's arguments cannot change after its
/// declaration; the broker then closes `channel`).
pub async fn declare_control_stream(channel: &Channel, name: &str) -> Result<(), TopologyError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(DEFAULT_CONTROL_MAX_AGE.into()),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(CONTROL_SEGMENT_BYTES),
    );
    match declare_queue(channel, name, args).await {
        Err(TopologyError::Mismatch { .. }) => Ok(()),
        other => other,
    }
}
