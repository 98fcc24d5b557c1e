//! The control stream: cancellations of tasks and pauses of queues, as durable records in a
//! small RabbitMQ stream every worker follows from its start (docs/wire-format.md §13).
//!
//! This module is the record format, written and read ([`Record`], one JSON object per
//! stream message), and the state the records add up to ([`ControlState`]): which tasks are
//! cancelled and which queues are paused. Writing to the stream and declaring it is
//! `stream`'s.

mod state;
mod stream;

pub use state::{Applied, ControlState, QueueDecision};
pub use stream::{declare_control_stream, send_record};

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The control stream's name unless configured otherwise.
pub const DEFAULT_CONTROL_STREAM: &str = "warren.control";

/// How long the control stream keeps records, unless it was declared otherwise first
/// (`x-max-age`). Snapshots (written at least every [`SNAPSHOT_INTERVAL`]) carry what is still
/// in force past it, so a booting worker reads at most this much history.
pub const DEFAULT_CONTROL_MAX_AGE: &str = "1D";

/// The size of the control stream's segments (`x-stream-max-segment-size-bytes`): a stream
/// drops whole segments only, so its retention takes effect only with segments this small
/// (the broker's default, 500 MB, would keep every control record for ever).
pub const CONTROL_SEGMENT_BYTES: i64 = 1_000_000;

/// How long a cancellation stays in force unless its writer says otherwise: past it, a task
/// with that id runs again (a worker forgets it).
pub const DEFAULT_CANCEL_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// How old the last snapshot may get before a worker writes one.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(3600);

/// Content type of a control record.
pub const CONTROL_CONTENT_TYPE: &str = "application/json";

/// A message of the control stream (its body, one JSON object; `record` names the kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// Cancels the task `id`: every run of it created before `at_ms` that has not ended.
    Cancel(Cancel),
    /// Stops every worker consuming `queue` until it is resumed.
    Pause(QueueRecord),
    /// Lets workers consume `queue` again.
    Resume(QueueRecord),
    /// The whole state in force when it was written, so that a reader whose start retention
    /// removed still knows it.
    Snapshot(Snapshot),
    /// A marker a worker writes on connecting and reads back: once it sees its own marker it
    /// has read every record written before it.
    Sync(Sync),
}

/// A cancellation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The task id.
    pub id: String,
    /// When it was cancelled (ms since the epoch, by the writer's clock): runs created later
    /// (a republish with the same id) are not cancelled.
    pub at_ms: u64,
    /// When the cancellation stops being in force (ms since the epoch).
    pub expires_ms: u64,
}

impl Cancel {
    /// A cancellation of `id` made now, in force for `horizon`.
    pub fn new(id: impl Into<String>, horizon: Duration) -> Self {
        let at_ms = crate::now_ms();
        Cancel {
            id: id.into(),
            at_ms,
            expires_ms: at_ms.saturating_add(horizon.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }

    /// Whether it cancels a run created at `created_ms` (`None`: the message says not; it is
    /// cancelled).
    pub fn covers(&self, created_ms: Option<u64>) -> bool {
        created_ms.is_none_or(|created| created <= self.at_ms)
    }
}

/// A pause or resume of a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// The work queue.
    pub queue: String,
    /// When, by the writer's clock (for people: the stream's order decides).
    pub at_ms: u64,
}

/// A snapshot of the control state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was written, by the writer's clock.
    pub at_ms: u64,
    /// The last decision about each queue ever paused, with the stream offset of the
    /// record that made it.
    pub queues: Vec<QueueDecision>,
    /// The cancellations in force.
    pub cancelled: Vec<Cancel>,
}

/// A worker's sync marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The worker that wrote it.
    pub source: String,
    /// A value unique to this marker.
    pub nonce: String,
}

/// A control record that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("not a control record: {0}")]
pub struct RecordError(#[from] serde_json::Error);

impl Record {
    /// The record as a stream message's body.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a control record serializes")
    }

    /// Reads a stream message's body.
    pub fn from_body(body: &[u8]) -> Result<Self, RecordError> {
        Ok(serde_json::from_slice(body)?)
    }

    /// The record's name (its `record` field).
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Cancel(_) => "cancel",
            Record::Pause(_) => "pause",
            Record::Resume(_) => "resume",
            Record::Snapshot(_) => "snapshot",
            Record::Sync(_) => "sync",
        }
    }

    /// A pause of `queue`, now.
    pub fn pause(queue: impl Into<String>) -> Self {
        Record::Pause(QueueRecord {
            queue: queue.into(),
            at_ms: crate::now_ms(),
        })
    }

    /// A resume of `queue`, now.
    pub fn resume(queue: impl Into<String>) -> Self {
        Record::Resume(QueueRecord {
            queue: queue.into(),
            at_ms: crate::now_ms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_in_the_documented_shape() {
        let cancel = Record::Cancel(Cancel {
            id: "t-1".into(),
            at_ms: 10,
            expires_ms: 20,
        });
        assert_eq!(
            String::from_utf8(cancel.to_body()).unwrap(),
            r#"{"record":"cancel","id":"t-1","at_ms":10,"expires_ms":20}"#
        );
        let pause = br#"{"record":"pause","queue":"q","at_ms":5}"#;
        assert_eq!(
            Record::from_body(pause).unwrap(),
            Record::Pause(QueueRecord {
                queue: "q".into(),
                at_ms: 5
            })
        );
        let snapshot = Record::Snapshot(Snapshot {
            at_ms: 1,
            queues: vec![QueueDecision {
                queue: "q".into(),
                paused: true,
                offset: 7,
            }],
            cancelled: vec![],
        });
        assert_eq!(Record::from_body(&snapshot.to_body()).unwrap(), snapshot);
        assert!(Record::from_body(br#"{"record":"other"}"#).is_err());
    }

    #[test]
    fn a_cancel_covers_runs_created_before_it() {
        let cancel = Cancel {
            id: "t".into(),
            at_ms: 100,
            expires_ms: 200,
        };
        assert!(cancel.covers(Some(99)));
        assert!(cancel.covers(Some(100)));
        assert!(!cancel.covers(Some(101)));
        assert!(cancel.covers(None));
    }
}
