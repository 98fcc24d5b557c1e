//! The answers of the status API (`GET /v1/tasks/{id}`, `GET /v1/tasks/{id}/timeline`,
//! `GET /v1/tasks`, `GET /v1/workers`, docs/openapi.yaml) as types: the server serializes these and the Rust client
//! ([`super::StatusClient`]) deserializes the same ones, so the two cannot drift.

use super::State;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warren_common::events::{EventKind, PayloadCopy};

/// An instant, written in the API as an RFC 3339 UTC time with milliseconds
/// (`2026-12-01T09:00:00.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    ms: u64,
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z): later times are
/// written as it.
const LAST_MS: u64 = 253_402_300_799_999;

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch.
    pub fn from_millis(ms: u64) -> Self {
        Timestamp {
            ms: ms.min(LAST_MS),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.ms
    }

    /// The instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Timestamp::from_millis(
            u64::try_from(ms).unwrap_or(u64::MAX),
        ))
    }
}

/// A task's status (`GET /v1/tasks/{id}`, and each task of a [`TaskList`]). A task the index
/// has no event of is `unknown`, with every field but `id` and `state` empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task's id.
    pub id: String,
    /// What became of it.
    pub state: State,
    /// The task's name.
    pub task: Option<String>,
    /// The queue it was published to.
    pub queue: Option<String>,
    /// The attempt of the deciding event (1 for the first run).
    pub attempt: Option<u32>,
    /// The broker's delivery count of the deciding run (quorum queues).
    pub delivery_count: Option<u64>,
    /// Who recorded the deciding event (a worker's id, or a dead-letter tool's).
    pub worker: Option<String>,
    /// When its status last changed.
    pub updated_at: Option<Timestamp>,
    /// When its latest run started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// When its next attempt is due (`retrying`).
    pub retry_at: Option<Timestamp>,
    /// The last error.
    pub error: Option<TaskError>,
    /// What its handler returned, as JSON, when it succeeded with a result
    /// (`GET /v1/tasks/{id}` only: listings leave results out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why a succeeded task's result was left out (larger than the worker's
    /// `--max-result-bytes`, or not serializable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
    /// Replays from the dead letters of the deciding run (`x-warren-replays`; 0 for none).
    pub replays: Option<u32>,
    /// When its `published` event was recorded, if the index read one.
    pub published_at: Option<Timestamp>,
    /// The copy of the payload its `published` event carried (`GET /v1/tasks/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadCopy>,
    /// The answering index's completeness (`GET /v1/tasks/{id}` only; a listing has one for
    /// all its tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexState>,
}

impl TaskStatus {
    /// The answer for a task the index has no event of.
    pub fn unknown(id: String, index: IndexState) -> Self {
        TaskStatus {
            id,
            state: State::Unknown,
            task: None,
            queue: None,
            attempt: None,
            delivery_count: None,
            worker: None,
            updated_at: None,
            started_at: None,
            ended_at: None,
            retry_at: None,
            error: None,
            result: None,
            result_error: None,
            replays: None,
            published_at: None,
            payload: None,
            index: Some(index),
        }
    }
}

/// Why a run failed or the task was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The kind: `retries_exhausted`, `crash_loop`, `broker:delivery_limit`, ...
    pub kind: String,
    /// The handler's or the broker's message.
    pub reason: String,
}

/// How complete and how fresh the index that answered is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    /// Events from this time on may be missing (none: none are).
    pub incomplete_since: Option<Timestamp>,
    /// The newest event time applied (none: no event yet).
    pub events_until: Option<Timestamp>,
    /// Whether the index has applied the events stream up to where it ended when the index
    /// (re)connected; false while it catches up on a backlog (after a restart, or reading
    /// the stream from its start), when statuses can be far behind.
    pub caught_up: bool,
}

/// A page of statuses, newest change first (`GET /v1/tasks`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    /// The tasks of this page.
    pub tasks: Vec<TaskStatus>,
    /// Where the next page starts; none on the last page.
    pub next_cursor: Option<String>,
    /// The answering index's completeness.
    pub index: IndexState,
}

/// One event of a task's timeline, as its source recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// What happened: `published`, `started`, `succeeded`, `retrying`, `dead_lettered`,
    /// `expired` or `cancelled` (docs/wire-format.md §11.4).
    pub event: EventKind,
    /// The attempt (1 for the first run).
    pub attempt: Option<u32>,
    /// The broker's delivery count of the run (quorum queues).
    pub delivery_count: Option<u64>,
    /// Replays from the dead letters (`x-warren-replays`; 0 for none).
    pub replays: u32,
    /// Who recorded it: a worker's id, a publisher's, or a dead-letter tool's.
    pub worker: String,
    /// When, by the recorder's clock.
    pub at: Timestamp,
    /// Why the attempt failed, or why the task was dead-lettered.
    pub error: Option<TaskError>,
    /// When the next attempt is due (`retrying`).
    pub retry_at: Option<Timestamp>,
    /// For an attempt's end, the milliseconds since its run's `started`, when the timeline
    /// holds that `started` (a run that ends on its handler's first poll records none).
    pub duration_ms: Option<u64>,
}

/// A task's timeline (`GET /v1/tasks/{id}/timeline`): every event the index read of it, those
/// that no longer decide its status included, in the merge rule's order (docs/wire-format.md
/// §11.6), not by the recorders' clocks. A task keeps its first `published` event and its 50
/// latest events; a task the index has no event of has none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskTimeline {
    /// The task's id.
    pub id: String,
    /// Its events, the one that decides its status last.
    pub events: Vec<TimelineEvent>,
    /// The answering index's completeness.
    pub index: IndexState,
}

/// Whether a worker is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// It sent a heartbeat within three of its intervals.
    Alive,
    /// It said farewell, or has been silent for three intervals.
    Gone,
}

impl Liveness {
    /// Its name in the API and in the index file.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Gone => "gone",
        }
    }
}

/// A worker, from its last heartbeat (docs/wire-format.md §11.7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// Its id (the source of its events).
    pub id: String,
    /// Whether it is heard from.
    pub status: Liveness,
    /// `farewell` (it drained) or `silent`; none while alive.
    pub gone_reason: Option<String>,
    /// When the index found it gone.
    pub gone_at: Option<Timestamp>,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Warren's version.
    pub version: String,
    /// The queues it consumes.
    pub queues: Vec<String>,
    /// Handlers it runs at once.
    pub concurrency: u64,
    /// Deliveries each of its consumers may hold.
    pub prefetch: u64,
    /// The ids of the tasks it is running.
    pub running: Vec<String>,
    /// Its counts since it started (`received`, `succeeded`, ...).
    pub counts: BTreeMap<String, u64>,
    /// When it started, by its clock.
    pub started_at: Timestamp,
    /// When it sent its last heartbeat, by its clock.
    pub last_heartbeat_at: Timestamp,
    /// When the index received that heartbeat, by the index's clock.
    pub heard_at: Timestamp,
    /// Time between two of its heartbeats.
    pub heartbeat_interval_ms: u64,
}

/// The workers the index has heard from, alive ones first (`GET /v1/workers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerList {
    /// The workers.
    pub workers: Vec<Worker>,
    /// The answering index's completeness.
    pub index: IndexState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds_both_ways() {
        let time = Timestamp::from_millis(1_767_225_600_123);
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2026-01-01T00:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), time);
        assert_eq!(
            Timestamp::from_millis(u64::MAX).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }

    #[test]
    fn an_unknown_task_has_only_its_id_state_and_index() {
        let unknown = TaskStatus::unknown("a".into(), IndexState::default());
        let json = serde_json::to_value(&unknown).unwrap();
        assert_eq!(json["state"], "unknown");
        assert!(json["task"].is_null() && json["updated_at"].is_null());
        assert!(json["index"]["incomplete_since"].is_null());
        let back: TaskStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, unknown);
    }
}
