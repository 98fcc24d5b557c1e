//! The last published tick of each schedule, kept in RabbitMQ so that a new leader knows where
//! the previous one left off.
//!
//! Each schedule has a durable classic queue `<lease name>.state.<schedule>` holding at most
//! one message (`x-max-length: 1`, `x-overflow: drop-head`): the JSON `{"tick_ms": N}` of the
//! last tick whose task the broker confirmed. Writing a new record drops the old one. Reading
//! takes the message with `basic.get` and returns it at once (`basic.nack`, requeue), so the
//! record stays in place.

use crate::{PublishError, Publisher};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use warren_common::{int_value, text_value};

/// The record stored in a state queue.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The tick, in milliseconds since the Unix epoch.
    tick_ms: u64,
}

/// The state queue of `schedule` in the scheduler group `lease_name`.
pub(crate) fn queue_name(lease_name: &str, schedule: &str) -> String {
    format!("{lease_name}.state.{schedule}")
}

/// Declares a state queue. Idempotent.
pub(crate) async fn declare(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text_value("classic"));
    args.insert("x-max-length".into(), int_value(1));
    args.insert("x-overflow".into(), text_value("drop-head"));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    Ok(())
}

/// Reads the last recorded tick, leaving the record in the queue. `None` when nothing was
/// recorded yet (or the record is unreadable, which is logged).
pub(crate) async fn read(channel: &Channel, queue: &str) -> Result<Option<u64>, lapin::Error> {
    let options = BasicGetOptions { no_ack: false };
    let Some(message) = channel.basic_get(queue.into(), options).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice::<Record>(&message.delivery.data);
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    message.delivery.acker.nack(requeue).await?;
    match record {
        Ok(record) => Ok(Some(record.tick_ms)),
        Err(error) => {
            tracing::warn!(queue, %error, "unreadable scheduler state record; treated as none");
            Ok(None)
        }
    }
}

/// Records `tick_ms` as the last published tick, waiting for the broker's confirm. Declares
/// the queue again if it was deleted meanwhile.
pub(crate) async fn write(
    publisher: &Publisher,
    queue: &str,
    tick_ms: u64,
    task_id: &str,
) -> Result<(), PublishError> {
    // Serializing a struct of one integer cannot fail.
    let body = serde_json::to_vec(&Record { tick_ms }).unwrap_or_default();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let sent = publisher
        .publish_raw("", queue, &body, properties.clone(), task_id)
        .await;
    let Err(PublishError::Unroutable { .. }) = sent else {
        return sent;
    };
    tracing::warn!(
        queue,
        "the scheduler state queue was deleted; declaring it again"
    );
    let channel = publisher.create_channel().await?;
    declare(&channel, queue)
        .await
        .map_err(|source| PublishError::Connection {
            id: task_id.to_owned(),
            source,
        })?;
    let _ = channel.close(200, "declared".into()).await;
    publisher
        .publish_raw("", queue, &body, properties, task_id)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_small_json() {
        let body = serde_json::to_vec(&Record { tick_ms: 42 }).unwrap();
        assert_eq!(body, br#"{"tick_ms":42}"#);
        assert_eq!(
            queue_name("warren.scheduler", "cleanup"),
            "warren.scheduler.state.cleanup"
        );
    }
}
