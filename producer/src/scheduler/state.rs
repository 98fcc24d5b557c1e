//! The last published tick of each schedule, kept in RabbitMQ so that a new leader knows where
//! the previous one left off.
//!
//! Each schedule has a durable quorum queue `<lease name>.tick.<schedule>` holding at most
//! one message (`x-max-length: 1`, `x-overflow: drop-head`): the JSON `{"tick_ms": N}` of the
//! last tick whose task the broker confirmed. Writing a new record drops the old one. Reading
//! takes the message with `basic.get` and returns it at once (`basic.nack`, requeue), so the
//! record stays in place. A quorum queue is replicated, so the state survives the loss of any
//! one node of a cluster.
//!
//! Earlier versions kept the record in a classic queue `<lease name>.state.<schedule>`, which
//! lives on one node. [`load`] carries its tick over (the `classic_state` module) and deletes
//! it once the quorum queue holds the tick.

use super::classic_state::{self, Classic};
use crate::{PublishError, Publisher};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use warren_common::fault::{classify, Operation};
use warren_common::{header_u64, headers, int_value, text_value, TopologyError};

/// The record stored in a state queue (the same JSON in the classic queues of earlier
/// versions).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The tick, in milliseconds since the Unix epoch.
    tick_ms: u64,
}

/// A record as read from a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The tick, in milliseconds since the Unix epoch.
    pub(crate) tick_ms: u64,
    /// How often the record was returned to its queue before this read (`x-delivery-count`
    /// of a quorum queue): every read returns it once.
    pub(crate) returns: u64,
}

/// Why the recorded tick of a schedule could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// Only a person can fix it (a queue of that name with other arguments, permissions).
    Refused {
        /// The queue.
        queue: String,
        /// The broker's error.
        source: Box<TopologyError>,
    },
    /// The broker cannot serve the state now (a node down, a queue without a leader, the
    /// connection lost): try again later rather than guess.
    Unavailable {
        /// The queue.
        queue: String,
        /// What went wrong.
        reason: String,
    },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Refused { queue, source } => write!(f, "`{queue}` refused: {source}"),
            LoadError::Unavailable { queue, reason } => {
                write!(f, "`{queue}` unavailable: {reason}")
            }
        }
    }
}

impl LoadError {
    /// Classifies `source`, got by `operation` on `queue`.
    pub(crate) fn from_lapin(queue: &str, source: lapin::Error, operation: Operation) -> Self {
        if classify(&source, operation).is_permanent() {
            Self::from_topology(queue, TopologyError::from_lapin(queue, source, operation))
        } else {
            let reason = source.to_string();
            LoadError::Unavailable {
                queue: queue.to_owned(),
                reason,
            }
        }
    }

    /// Sorts a classified error on `queue` into one only a person can fix, or an outage.
    pub(crate) fn from_topology(queue: &str, error: TopologyError) -> Self {
        let queue = queue.to_owned();
        if error.is_permanent() {
            LoadError::Refused {
                queue,
                source: Box::new(error),
            }
        } else {
            let reason = error.reason();
            LoadError::Unavailable { queue, reason }
        }
    }

    fn from_publish(queue: &str, error: &PublishError) -> Self {
        LoadError::Unavailable {
            queue: queue.to_owned(),
            reason: error.to_string(),
        }
    }
}

/// The state queue of `schedule` in the scheduler group `lease_name`.
pub(crate) fn queue_name(lease_name: &str, schedule: &str) -> String {
    format!("{lease_name}.tick.{schedule}")
}

/// Declares a state queue. Idempotent.
pub(crate) async fn declare(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    // No `x-delivery-limit`: every read returns the record once, and a limit would drop it.
    args.insert("x-queue-type".into(), text_value("quorum"));
    args.insert("x-max-length".into(), int_value(1));
    args.insert("x-overflow".into(), text_value("drop-head"));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    Ok(())
}

/// Reads the record of `queue` (a state queue of either kind), leaving it in the queue.
/// `None` when nothing was recorded yet (or the record is unreadable, which is logged).
pub(crate) async fn read(channel: &Channel, queue: &str) -> Result<Option<Recorded>, lapin::Error> {
    let options = BasicGetOptions { no_ack: false };
    let Some(message) = channel.basic_get(queue.into(), options).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice::<Record>(&message.delivery.data);
    let returns = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|table| header_u64(table, headers::X_DELIVERY_COUNT).ok().flatten())
        .unwrap_or(0);
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    message.delivery.acker.nack(requeue).await?;
    match record {
        Ok(record) => Ok(Some(Recorded {
            tick_ms: record.tick_ms,
            returns,
        })),
        Err(error) => {
            tracing::warn!(queue, %error, "unreadable scheduler state record; treated as none");
            Ok(None)
        }
    }
}

/// The tick a new leader of `schedule` resumes from: declares the state queue, reads it, and
/// carries the tick over from the classic queue of an earlier version if there is one.
/// `None` when nothing was recorded.
pub(crate) async fn load(
    publisher: &Publisher,
    lease_name: &str,
    schedule: &str,
) -> Result<Option<u64>, LoadError> {
    let queue = queue_name(lease_name, schedule);
    let current = read_current(publisher, &queue).await?;
    let old_queue = classic_state::queue_name(lease_name, schedule);
    let old = match classic_state::inspect(publisher, &old_queue).await {
        Ok(old) => old,
        // The classic queue can only hold a later tick if a replica of an earlier version
        // led after the upgrade: not worth stopping for while a node is down.
        Err(error) if current.is_some() => {
            tracing::warn!(queue = old_queue, %error, "cannot read the classic state queue of an earlier version; resuming from the quorum one");
            return Ok(current.map(|r| r.tick_ms));
        }
        // It may hold the only record: starting from now could skip ticks for good.
        Err(error) => return Err(error),
    };
    let carried = match &old {
        Classic::Present {
            record: Some(tick), ..
        } => Some(*tick),
        _ => None,
    };
    let (tick, rewrite) = resume_point(current, carried);
    if let Some(tick) = rewrite {
        let id = format!("{schedule}@state");
        write(publisher, &queue, tick, &id)
            .await
            .map_err(|e| LoadError::from_publish(&queue, &e))?;
        if Some(tick) != current.map(|r| r.tick_ms) {
            tracing::info!(
                schedule,
                tick_ms = tick,
                from = old_queue,
                to = queue,
                "carried the last tick over from the classic state queue"
            );
        }
    }
    if let Classic::Present { channel, .. } = old {
        // The quorum queue now holds the tick (or there was none to keep).
        classic_state::delete(channel, &old_queue).await;
    }
    Ok(tick)
}

/// Where to resume given the quorum queue's record and the tick carried over from the classic
/// queue, and the tick to write into the quorum queue first, if any.
fn resume_point(current: Option<Recorded>, carried: Option<u64>) -> (Option<u64>, Option<u64>) {
    let current_tick = current.map(|r| r.tick_ms);
    // The later one: the classic queue holds a later tick only if a replica of an earlier
    // version led after the upgrade.
    let tick = current_tick.max(carried);
    let carry_over = tick != current_tick;
    // Also rewrite a record already returned by an earlier read: a fresh message starts again
    // at `x-delivery-count` 0, so that a `delivery-limit` set by a policy does not drop it
    // after a few leaders read it without ticking.
    let returned = current.is_some_and(|r| r.returns > 0);
    (tick, tick.filter(|_| carry_over || returned))
}

/// Declares and reads the quorum state queue.
async fn read_current(publisher: &Publisher, queue: &str) -> Result<Option<Recorded>, LoadError> {
    let channel = publisher
        .create_channel()
        .await
        .map_err(|e| LoadError::from_publish(queue, &e))?;
    let recorded = async {
        declare(&channel, queue).await?;
        read(&channel, queue).await
    }
    .await
    .map_err(|e| LoadError::from_lapin(queue, e, Operation::Use))?;
    let _ = channel.close(200, "state read".into()).await;
    Ok(recorded)
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

    fn recorded(tick_ms: u64, returns: u64) -> Option<Recorded> {
        Some(Recorded { tick_ms, returns })
    }

    #[test]
    fn the_later_tick_wins_and_only_a_change_or_a_returned_record_is_written() {
        // Nothing anywhere: start from now, write nothing.
        assert_eq!(resume_point(None, None), (None, None));
        // An upgrade: the classic queue's tick is carried over.
        assert_eq!(resume_point(None, Some(5)), (Some(5), Some(5)));
        // A replica of an earlier version led after the upgrade: its later tick wins.
        assert_eq!(resume_point(recorded(5, 0), Some(7)), (Some(7), Some(7)));
        // A stale classic queue changes nothing.
        assert_eq!(resume_point(recorded(7, 0), Some(5)), (Some(7), None));
        assert_eq!(resume_point(recorded(7, 0), None), (Some(7), None));
        // A record read before without a tick since is written afresh.
        assert_eq!(resume_point(recorded(7, 1), None), (Some(7), Some(7)));
    }

    #[test]
    fn records_are_small_json() {
        let body = serde_json::to_vec(&Record { tick_ms: 42 }).unwrap();
        assert_eq!(body, br#"{"tick_ms":42}"#);
        assert_eq!(
            queue_name("warren.scheduler", "cleanup"),
            "warren.scheduler.tick.cleanup"
        );
    }
}
