//! The events stream: what happened to each task, recorded by the processes that saw it, in a
//! durable RabbitMQ stream any number of readers follow (docs/wire-format.md §11).
//!
//! This module is the record format, written and read: a batch of [`Event`]s (one JSON object
//! per line, from one source with consecutive sequence numbers) or a worker's [`Heartbeat`].
//! Writing to the stream is `log`'s: a process records events into its [`EventLog`], which
//! batches them, and a recorded event's [`Ticket`] says when the broker has confirmed it, so
//! that a worker can ack a task only once its ending is on the stream. Publishers record
//! `published` events through `published`.

mod log;
mod published;

pub use log::{declare_events_stream, send_heartbeat, EventLog, Ticket};
pub use published::{PayloadCopy, PublishedEvents, DEFAULT_PAYLOAD_BYTES};
pub(crate) use published::{Published, Recorder};

use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The stream events go to unless configured otherwise.
pub const DEFAULT_EVENTS_STREAM: &str = "warren.events";

/// How long the events stream keeps events, unless it was declared otherwise first
/// (`x-max-age`; a stream's retention cannot change after its declaration).
pub const DEFAULT_EVENTS_MAX_AGE: &str = "7D";

/// Content type of a batch: one JSON object per line.
pub const EVENTS_CONTENT_TYPE: &str = "application/x-ndjson";

/// Header naming the process that recorded a batch's events.
pub const SOURCE_HEADER: &str = "x-warren-source";

/// Header holding the sequence number of a batch's first event; the n-th line (from 0) has
/// that number plus n.
pub const FIRST_SEQ_HEADER: &str = "x-warren-first-seq";

/// Header saying what a message of the stream that is not a batch of events holds:
/// [`HEARTBEAT`] or [`FAREWELL`] (a batch has none).
pub const RECORD_HEADER: &str = "x-warren-record";

/// [`RECORD_HEADER`] of a worker's heartbeat.
pub const HEARTBEAT: &str = "heartbeat";

/// [`RECORD_HEADER`] of the last heartbeat of a worker that drained.
pub const FAREWELL: &str = "farewell";

/// A worker's heartbeat: who it is, what it consumes and runs, and its counts so far. Sent
/// every `interval_ms`, and once more as a farewell when it drains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The worker's id (the source of its events).
    pub worker: String,
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
    /// The ids of the tasks it is running (those that recorded `started`).
    pub running: Vec<String>,
    /// Its counts since it started: `received`, `succeeded`, `failed`, `retried`,
    /// `dead_lettered`, `requeued`.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// When it started, by its clock.
    pub started_at_ms: u64,
    /// When this heartbeat was sent, by its clock.
    pub at_ms: u64,
    /// Time between two heartbeats: a worker silent for several is gone.
    pub interval_ms: u64,
}

/// A message of the events stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A batch of events.
    Events(Vec<Stamped>),
    /// A worker's heartbeat.
    Heartbeat(Heartbeat),
    /// A worker's farewell: it drained and is gone.
    Farewell(Heartbeat),
}

/// Reads any message of the events stream (its headers and body).
pub fn read_record(headers: &FieldTable, body: &[u8]) -> Result<Record, BatchError> {
    let heartbeat =
        || serde_json::from_slice(body).map_err(|source| BatchError::Line { line: 1, source });
    match crate::header_string(headers, RECORD_HEADER).as_deref() {
        None => read_batch(headers, body).map(Record::Events),
        Some(HEARTBEAT) => heartbeat().map(Record::Heartbeat),
        Some(FAREWELL) => heartbeat().map(Record::Farewell),
        Some(_) => Err(BatchError::Header(RECORD_HEADER)),
    }
}
/// What happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A publisher published it (or `dead-letters replay` replayed it): it is queued.
    Published,
    /// A worker started running it and it did not finish at once (a task that finishes on
    /// its handler's first poll records only its ending, which says the same).
    Started,
    /// Its handler succeeded.
    Succeeded,
    /// An attempt failed and it will run again at `retry_at_ms`.
    Retrying,
    /// It was dead-lettered (its `error` says why).
    DeadLettered,
    /// It was dead-lettered because its expiry passed before it could run.
    Expired,
    /// It was cancelled (the control stream, docs/wire-format.md §13): not run, or its
    /// handler stopped, and not retried.
    Cancelled,
}

impl EventKind {
    /// The name written in a record.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Published => "published",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Retrying => "retrying",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
        }
    }

    /// Whether nothing follows this event unless the task is published again.
    pub fn is_ending(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded
                | EventKind::DeadLettered
                | EventKind::Expired
                | EventKind::Cancelled
        )
    }
}

/// A JSON value carried as it was written (a handler's result), compared by its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson<'a>(pub Cow<'a, serde_json::value::RawValue>);

impl RawJson<'_> {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The same value owning its text.
    pub fn into_owned(self) -> RawJson<'static> {
        RawJson(Cow::Owned(self.0.into_owned()))
    }
}

impl PartialEq for RawJson<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Why an attempt failed or a task was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError<'a> {
    /// The reason kind (docs/wire-format.md §8.3).
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// What went wrong, for people.
    #[serde(borrow)]
    pub reason: Cow<'a, str>,
}

/// One event: one line of a batch. The source and sequence number are the batch's
/// ([`SOURCE_HEADER`], [`FIRST_SEQ_HEADER`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<'a> {
    /// What happened.
    pub event: EventKind,
    /// The task's id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The task's name.
    #[serde(borrow)]
    pub task: Cow<'a, str>,
    /// The work queue.
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// When, by the recording process's clock (for people: never to order events).
    pub at_ms: u64,
    /// The attempt (`x-warren-attempt`, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How many times the task was replayed from the dead letters (`x-warren-replays`);
    /// absent when never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replays: Option<u32>,
    /// How many times the broker had returned this delivery: its `x-delivery-count`, or 0 on
    /// a first delivery; absent on a redelivery whose queue does not count (a classic queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_count: Option<u64>,
    /// Why it failed (`retrying`, `dead_lettered`, `expired`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError<'a>>,
    /// When the next attempt is due (`retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// What the handler returned, as JSON (`succeeded`; absent when it returned nothing, or
    /// when the result could not be carried: then `result_error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RawJson<'a>>,
    /// Why a result was left out (larger than the worker's `--max-result-bytes`, or not
    /// serializable); the task succeeded all the same.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<Cow<'a, str>>,
    /// A copy of the payload, at most the publisher's configured size (`published`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadCopy>,
}

impl<'a> Event<'a> {
    /// Appends the event as one line of JSON, byte for byte what `serde_json` writes for it,
    /// written by hand: through serde, escaping the strings one character at a time cost a
    /// third of an event's price, and a worker records one per task.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event\":\"");
        out.extend_from_slice(self.event.as_str().as_bytes());
        out.extend_from_slice(b"\",\"id\":");
        write_str(out, &self.id);
        out.extend_from_slice(b",\"task\":");
        write_str(out, &self.task);
        out.extend_from_slice(b",\"queue\":");
        write_str(out, &self.queue);
        out.extend_from_slice(b",\"at_ms\":");
        write_u64(out, self.at_ms);
        if let Some(attempt) = self.attempt {
            out.extend_from_slice(b",\"attempt\":");
            write_u64(out, attempt.into());
        }
        if let Some(replays) = self.replays {
            out.extend_from_slice(b",\"replays\":");
            write_u64(out, replays.into());
        }
        if let Some(count) = self.delivery_count {
            out.extend_from_slice(b",\"delivery_count\":");
            write_u64(out, count);
        }
        if let Some(error) = &self.error {
            out.extend_from_slice(b",\"error\":{\"kind\":");
            write_str(out, &error.kind);
            out.extend_from_slice(b",\"reason\":");
            write_str(out, &error.reason);
            out.push(b'}');
        }
        if let Some(at) = self.retry_at_ms {
            out.extend_from_slice(b",\"retry_at_ms\":");
            write_u64(out, at);
        }
        if let Some(result) = &self.result {
            out.extend_from_slice(b",\"result\":");
            out.extend_from_slice(result.get().as_bytes());
        }
        if let Some(error) = &self.result_error {
            out.extend_from_slice(b",\"result_error\":");
            write_str(out, error);
        }
        if let Some(payload) = &self.payload {
            // Publishers only (workers record none): serde's speed is enough.
            out.extend_from_slice(b",\"payload\":");
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, payload);
        }
        out.push(b'}');
    }

    /// An event of `kind` for the task `id` named `task` on `queue`, now.
    pub fn new(kind: EventKind, id: &'a str, task: &'a str, queue: &'a str) -> Self {
        Event {
            event: kind,
            id: Cow::Borrowed(id),
            task: Cow::Borrowed(task),
            queue: Cow::Borrowed(queue),
            at_ms: crate::now_ms(),
            attempt: None,
            replays: None,
            delivery_count: None,
            error: None,
            retry_at_ms: None,
            result: None,
            result_error: None,
            payload: None,
        }
    }
}

/// Appends `s` as a JSON string: as it is when nothing in it needs escaping (ids, names),
/// else through `serde_json`.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `bytes` holds a byte JSON escapes: a control character, `"` or `\\`. Eight bytes
/// at a time (the usual bit tricks): a byte at a time, this check was the costliest part of
/// writing an event.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Sets the high bit of each byte of `x` that is below `n` (for bytes below 0x80; a byte
    // at or above it has its own high bit set, which `!x` clears).
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let equal = |x: u64, c: u64| below(x ^ (ONES * c), 1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if below(x, 0x20) | equal(x, u64::from(b'"')) | equal(x, u64::from(b'\\')) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An event read back from the stream, with its source and sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped {
    /// The process that recorded it.
    pub source: String,
    /// Its number among that process's events.
    pub seq: u64,
    /// The event.
    pub event: Event<'static>,
}

/// A batch that is not in the documented format.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A header is missing or has the wrong type.
    #[error("the batch has no valid `{0}` header")]
    Header(&'static str),
    /// A line is not an event.
    #[error("line {line} of the batch is not an event: {source}")]
    Line {
        /// The line, from 1.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads a batch (a stream message's headers and body) into its events.
pub fn read_batch(headers: &FieldTable, body: &[u8]) -> Result<Vec<Stamped>, BatchError> {
    let source =
        crate::header_string(headers, SOURCE_HEADER).ok_or(BatchError::Header(SOURCE_HEADER))?;
    let first = crate::header_u64(headers, FIRST_SEQ_HEADER)
        .ok()
        .flatten()
        .ok_or(BatchError::Header(FIRST_SEQ_HEADER))?;
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(n, line)| {
            let event: Event<'_> =
                serde_json::from_slice(line).map_err(|source| BatchError::Line {
                    line: n + 1,
                    source,
                })?;
            Ok(Stamped {
                source: source.clone(),
                seq: first + n as u64,
                event: event.into_owned(),
            })
        })
        .collect()
}

impl Event<'_> {
    /// The same event owning its strings.
    pub fn into_owned(self) -> Event<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        Event {
            event: self.event,
            id: own(self.id),
            task: own(self.task),
            queue: own(self.queue),
            at_ms: self.at_ms,
            attempt: self.attempt,
            replays: self.replays,
            delivery_count: self.delivery_count,
            error: self.error.map(|e| EventError {
                kind: own(e.kind),
                reason: own(e.reason),
            }),
            retry_at_ms: self.retry_at_ms,
            result: self.result.map(RawJson::into_owned),
            result_error: self.result_error.map(own),
            payload: self.payload,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_value::{int_value, text_value};
    #[test]
    fn a_heartbeat_reads_back_and_a_batch_is_not_one() {
        let heartbeat = Heartbeat {
            worker: "w-1".into(),
            host: "w".into(),
            pid: 1,
            version: "0.1.0".into(),
            queues: vec!["q".into()],
            concurrency: 64,
            prefetch: 512,
            running: vec!["id-1".into()],
            counts: [("succeeded".to_owned(), 3)].into(),
            started_at_ms: 1,
            at_ms: 2,
            interval_ms: 5000,
        };
        let mut headers = FieldTable::default();
        headers.insert(SOURCE_HEADER.into(), text_value("w-1"));
        headers.insert(RECORD_HEADER.into(), text_value(FAREWELL));
        let body = serde_json::to_vec(&heartbeat).unwrap();
        assert_eq!(
            read_record(&headers, &body).unwrap(),
            Record::Farewell(heartbeat)
        );
        headers.insert(RECORD_HEADER.into(), text_value("other"));
        assert!(read_record(&headers, &body).is_err());
    }

    #[test]
    fn events_are_written_as_serde_json_writes_them() {
        let mut full = Event::new(EventKind::DeadLettered, "id \"1\"", "t\u{1}", "q\\é");
        full.attempt = Some(u32::MAX);
        full.delivery_count = Some(u64::MAX);
        full.retry_at_ms = Some(0);
        full.replays = Some(2);
        full.payload = PayloadCopy::of(b"{\"a\": \"\xc3\xa9\"}", None, 100);
        full.error = Some(EventError {
            kind: "expired".into(),
            reason: "line\nbreak\ttab \u{7f}".into(),
        });
        let result = serde_json::value::RawValue::from_string(r#"{"a":[1,"é\n"]}"#.into()).unwrap();
        full.result = Some(RawJson(Cow::Borrowed(&result)));
        full.result_error = Some("too \"large\"".into());
        let bare = Event::new(
            EventKind::Started,
            "0190a5b4-2f1c-7c3e",
            "demo.noop",
            "default",
        );
        for event in [full, bare] {
            let mut mine = Vec::new();
            event.write_json(&mut mine);
            let serde = serde_json::to_vec(&event).unwrap();
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn every_byte_that_json_escapes_is_found_wherever_it_is() {
        for byte in 0..=255u8 {
            let escaped = byte < 0x20 || byte == b'"' || byte == b'\\';
            for len in [1, 7, 8, 9, 16, 23] {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    assert_eq!(needs_escape(&bytes), escaped, "{byte:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(
            "0190a5b4-2f1c-7c3e-9d6a-3b2f1e0c4d5a é".as_bytes()
        ));
    }

    #[test]
    fn a_line_that_is_not_an_event_is_named() {
        let mut headers = FieldTable::default();
        headers.insert(SOURCE_HEADER.into(), text_value("w"));
        headers.insert(FIRST_SEQ_HEADER.into(), int_value(0));
        let error = read_batch(&headers, b"{\"event\":\"nope\"}\n").unwrap_err();
        assert!(error.to_string().starts_with("line 1 of the batch"));
        let missing = read_batch(&FieldTable::default(), b"").unwrap_err();
        assert!(missing.to_string().contains(SOURCE_HEADER));
    }
}
