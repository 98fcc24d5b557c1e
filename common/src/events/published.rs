//! `published` events: what a publisher records for each task it publishes, when configured
//! with [`PublishedEvents`] (docs/wire-format.md §11.4), and the size-capped copy of the
//! payload they carry ([`PayloadCopy`]).
//!
//! The event is best effort: a publish returns once the broker confirmed the task, without
//! waiting for its event's confirm. A `published` event that is lost (the publisher stopped
//! before its batch went out) only leaves the task `unknown` to a status reader until a
//! worker records its run.

use super::{Event, EventKind, EventLog, Ticket};
use crate::connect::Pacer;
use crate::{replay_count, Claimed, Publisher};
use base64::Engine;
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many bytes of a task's payload a `published` event copies unless configured
/// otherwise (docs/performance.md, "Published events", measured the cost).
pub const DEFAULT_PAYLOAD_BYTES: usize = 1024;

/// Configuration of a publisher that records a `published` event for each task it publishes:
/// `Publisher::with_events(PublishedEvents::new("warren.events"))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedEvents {
    /// The events stream (the workers' `--events-stream`).
    pub stream: String,
    /// The source id of the events (`x-warren-source`); by default
    /// `publisher-<host>-<pid>-<n>`, unique within the process.
    pub source: Option<String>,
    /// At most this many bytes of each payload are copied into its event; 0 copies none.
    pub payload_bytes: usize,
}

impl PublishedEvents {
    /// Records into `stream`, copying up to [`DEFAULT_PAYLOAD_BYTES`] of each payload.
    pub fn new(stream: impl Into<String>) -> Self {
        PublishedEvents {
            stream: stream.into(),
            source: None,
            payload_bytes: DEFAULT_PAYLOAD_BYTES,
        }
    }

    /// Copies at most `bytes` of each payload into its event; 0 copies none (for privacy).
    pub fn payload_bytes(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }

    /// Records as `source` rather than the default id.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// A copy of a task's payload in its `published` event, at most the configured number of
/// bytes: `json` when the payload is JSON and fits whole, else its first bytes as `text`
/// (a JSON or `text/*` payload, cut at a character) or as `base64` (any other).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayloadCopy {
    /// The whole payload's size in bytes.
    pub size: u64,
    /// Whether the copy holds less than the whole payload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    /// The whole payload, as the JSON value it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Box<RawValue>>,
    /// The payload's first bytes, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The payload's first bytes, in base64 (RFC 4648, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

impl PartialEq for PayloadCopy {
    fn eq(&self, other: &Self) -> bool {
        let json = |c: &PayloadCopy| c.json.as_ref().map(|j| j.get().to_owned());
        (self.size, self.cut, &self.text, &self.base64)
            == (other.size, other.cut, &other.text, &other.base64)
            && json(self) == json(other)
    }
}

impl PayloadCopy {
    /// The copy of `body` (of content type `content_type`) in at most `cap` bytes; `None`
    /// when `cap` is 0.
    pub fn of(body: &[u8], content_type: Option<&str>, cap: usize) -> Option<PayloadCopy> {
        if cap == 0 {
            return None;
        }
        let media = content_type
            .and_then(|t| t.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        // No content type is JSON, as for a worker (docs/wire-format.md §2).
        let is_json = media.is_empty() || media.eq_ignore_ascii_case("application/json");
        let mut copy = PayloadCopy {
            size: body.len() as u64,
            cut: body.len() > cap,
            json: None,
            text: None,
            base64: None,
        };
        if is_json && !copy.cut {
            if let Some(json) = compact_json(body) {
                copy.json = Some(json);
                return Some(copy);
            }
        }
        let kept = &body[..cap.min(body.len())];
        let text = (is_json || media.starts_with("text/"))
            .then(|| utf8_prefix(kept, body.len() > kept.len()))
            .flatten();
        match text {
            Some(text) => {
                copy.cut = text.len() < body.len();
                copy.text = Some(text.to_owned());
            }
            None => copy.base64 = Some(base64::engine::general_purpose::STANDARD.encode(kept)),
        }
        Some(copy)
    }
}

/// `body` as one line of JSON, if it is JSON: as it is, or written again without line
/// breaks when it has some (an event is one line).
fn compact_json(body: &[u8]) -> Option<Box<RawValue>> {
    let raw: &RawValue = serde_json::from_slice(body).ok()?;
    if !raw.get().contains(['\n', '\r']) {
        return Some(raw.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    serde_json::value::to_raw_value(&value).ok()
}

/// `bytes` as text, or its longest prefix that is when `cut` (the cut may split a
/// character); `None` when it is not UTF-8.
fn utf8_prefix(bytes: &[u8], cut: bool) -> Option<&str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        // An incomplete character at the end of a cut copy: drop it.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// The default source id of a publisher's events: its host and process, and a number for
/// each publisher of the process (each numbers its events from 0).
fn default_source() -> String {
    static PUBLISHERS: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let n = PUBLISHERS.fetch_add(1, Ordering::Relaxed);
    format!("publisher-{host}-{}-{n}", std::process::id())
}

/// Recording `published` events, the part of [`Publisher`]'s API that configures and feeds
/// them (its `publish` records through [`Recorder::record`] too).
impl Publisher {
    /// This publisher, also recording a `published` event for each task it publishes
    /// (docs/wire-format.md §11.4) into the events stream `events` names, which it declares
    /// if missing. The events are sent in batches on the publisher's connection; a publish
    /// does not wait for its event's confirm. Call from within a Tokio runtime.
    pub fn with_events(mut self, events: PublishedEvents) -> Publisher {
        let sender = self.without_events();
        self.events = Some(Arc::new(Recorder::start(sender, events)));
        self
    }

    /// The events stream `published` events go to, if they are recorded.
    pub fn events_stream(&self) -> Option<&str> {
        self.events.as_deref().map(Recorder::stream)
    }

    /// Records a `published` event for a message published as it is (e.g. a dead letter
    /// replayed) to `queue`, if this publisher records events: its id, task name, attempt,
    /// replays and content type are read from `properties`. Nothing for a message without an
    /// id.
    pub fn record_published(&self, queue: &str, body: &[u8], properties: &BasicProperties) {
        let Some(events) = &self.events else {
            return;
        };
        let claimed = Claimed::from_properties(properties);
        let Some(id) = claimed.id else {
            return;
        };
        events.record(Published {
            id,
            task: claimed.task.unwrap_or(""),
            queue,
            attempt: claimed.attempt.unwrap_or(1),
            replays: replay_count(properties),
            body,
            content_type: properties.content_type().as_ref().map(|t| t.as_str()),
        });
    }
}

/// A publisher's side of its `published` events: the log they go to and the flusher that
/// sends it, stopped when the last clone of the publisher is dropped.
pub(crate) struct Recorder {
    log: EventLog,
    payload_bytes: usize,
    /// The ticket of the newest event recorded, for [`flush`](Self::flush).
    last: Mutex<Option<Ticket>>,
    stop: CancellationToken,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Recorder {
    /// Starts sending the events recorded through `sender` (the publisher, without events of
    /// its own) to the configured stream, declared first if missing.
    pub(crate) fn start(sender: Publisher, config: PublishedEvents) -> Recorder {
        let source = config.source.unwrap_or_else(default_source);
        let log = EventLog::new(config.stream, source);
        let stop = CancellationToken::new();
        let (flusher, until) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            declare(&sender, flusher.stream(), &until).await;
            flusher.run(&sender, &until).await;
        });
        Recorder {
            log,
            payload_bytes: config.payload_bytes,
            last: Mutex::new(None),
            stop,
        }
    }

    /// Records that the task `id` named `task` was published to `queue` as `attempt` after
    /// `replays` replays, with a copy of its `body`.
    pub(crate) fn record(&self, task: Published<'_>) {
        let mut event = Event::new(EventKind::Published, task.id, task.task, task.queue);
        event.attempt = Some(task.attempt);
        event.replays = (task.replays > 0).then_some(task.replays);
        event.payload = PayloadCopy::of(task.body, task.content_type, self.payload_bytes);
        let ticket = self.log.record(&event);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(Some(ticket));
    }

    /// Waits at most `timeout` for the events recorded so far to be confirmed.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ticket) = last else {
            return true;
        };
        tokio::time::timeout(timeout, self.log.confirmed(ticket))
            .await
            .is_ok()
    }

    /// The events stream.
    pub(crate) fn stream(&self) -> &str {
        self.log.stream()
    }
}

/// What a `published` event says about a task.
pub(crate) struct Published<'a> {
    pub(crate) id: &'a str,
    pub(crate) task: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) attempt: u32,
    pub(crate) replays: u32,
    pub(crate) body: &'a [u8],
    pub(crate) content_type: Option<&'a str>,
}

/// Declares the events stream through `sender`'s connection, retrying with backoff until it
/// is done or `stop` fires (the flusher meanwhile holds the events).
async fn declare(sender: &Publisher, stream: &str, stop: &CancellationToken) {
    let mut pacer = Pacer::new();
    loop {
        match sender.declare_events_stream(stream).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%stream, %error, "cannot declare the events stream; retrying");
                if !pacer.pause(stop).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_payload_that_fits_is_copied_as_json_on_one_line() {
        let copy = PayloadCopy::of(b"{\n  \"a\": [1, 2]\n}", Some("application/json"), 100)
            .expect("a copy");
        assert_eq!(copy.json.as_ref().map(|j| j.get()), Some(r#"{"a":[1,2]}"#));
        assert_eq!((copy.size, copy.cut), (17, false));
        let plain = PayloadCopy::of(br#"{"ms": 10}"#, None, 100).expect("a copy");
        assert_eq!(plain.json.as_ref().map(|j| j.get()), Some(r#"{"ms": 10}"#));
    }

    #[test]
    fn a_payload_over_the_cap_is_cut_and_says_so() {
        let copy = PayloadCopy::of(b"{\"name\":\"caf\xc3\xa9\"}", None, 13).expect("a copy");
        // 13 bytes end inside the two-byte é: the text keeps 12.
        assert_eq!(copy.text.as_deref(), Some(r#"{"name":"caf"#));
        assert_eq!((copy.size, copy.cut, copy.json.is_none()), (16, true, true));
        let binary =
            PayloadCopy::of(&[0, 159, 146, 150], Some("application/x-bincode"), 3).expect("a copy");
        assert_eq!(binary.base64.as_deref(), Some("AJ+S"));
        assert!(binary.cut);
        assert_eq!(PayloadCopy::of(b"{}", None, 0), None);
    }

    #[test]
    fn json_that_is_not_valid_is_copied_as_text() {
        let copy = PayloadCopy::of(b"{not json", None, 100).expect("a copy");
        assert_eq!(copy.text.as_deref(), Some("{not json"));
        assert!(!copy.cut);
    }
}
