//! Reading a dead letter: the record the worker (or, for its own dead letters, the broker)
//! wrote on a message of a dead-letter queue, a `warren_common::DeadLetterRecord` read by its
//! one reader and embedded as it is, with the message's id, name and payload, in a
//! [`DeadLetter`] for people and tools; and the [`Filter`] that selects dead letters by task,
//! kind and age.
//!
//! A message the broker dead-lettered by itself (a quorum queue's delivery limit) carries only
//! the broker's `x-death` history: its kind reads `broker:<reason>`, e.g.
//! `broker:delivery_limit`.

use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde::Serialize;
use std::time::Duration;
use warren_common::DeadLetterRecord;

/// Characters of the payload kept in [`DeadLetter::payload_preview`].
const PREVIEW_CHARS: usize = 120;

/// Bytes of a binary payload shown (in hex) in the preview.
const PREVIEW_BYTES: usize = 32;

/// A dead letter as people and tools see it: the message's task id and name, the record the
/// worker (or the broker) wrote on it, and its payload. Every field is read from the message
/// alone. Serialized, the record's fields sit beside the others, in one flat object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The task id (`message_id`), absent on a message that was never a valid task.
    pub id: Option<String>,
    /// The task name (`type`).
    pub task: Option<String>,
    /// Why, when and where it was dead-lettered, as [`DeadLetterRecord::read`] reads it: the
    /// worker's `x-warren-dead-*` headers, or the broker's `x-death` for its own dead letters
    /// (kind `broker:<reason>`).
    #[serde(flatten)]
    pub record: DeadLetterRecord,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// Size of the payload in bytes.
    pub payload_bytes: usize,
    /// The start of the payload: text as is, binary as hex.
    pub payload_preview: String,
    /// Times the task was replayed from the dead letters before (`x-warren-replays`); left
    /// out of the JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replays: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DeadLetter {
    /// Reads a dead letter from a message's properties and body. Never fails: a header that
    /// is missing or malformed is simply absent from the view.
    pub fn from_message(props: &BasicProperties, body: &[u8]) -> Self {
        let empty = FieldTable::default();
        DeadLetter {
            id: props.message_id().as_ref().map(|s| s.as_str().to_owned()),
            task: props.kind().as_ref().map(|s| s.as_str().to_owned()),
            record: DeadLetterRecord::read(props.headers().as_ref().unwrap_or(&empty)),
            content_type: props.content_type().as_ref().map(|s| s.as_str().to_owned()),
            payload_bytes: body.len(),
            payload_preview: preview(body),
            replays: warren_common::replay_count(props),
        }
    }

    /// True when the broker, not a worker, dead-lettered it.
    pub fn is_from_broker(&self) -> bool {
        self.record.kind.is_from_broker()
    }
}

/// The start of a payload: UTF-8 text with control characters escaped, or hex.
fn preview(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => {
            let mut out = String::new();
            for c in text.chars().take(PREVIEW_CHARS) {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            if text.chars().count() > PREVIEW_CHARS {
                out.push('…');
            }
            out
        }
        Err(_) => {
            let hex: String = body
                .iter()
                .take(PREVIEW_BYTES)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if body.len() > PREVIEW_BYTES {
                "…"
            } else {
                ""
            };
            format!("0x{hex}{more}")
        }
    }
}

/// Selects dead letters. Every criterion given must hold; an empty filter selects all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this task name.
    pub task: Option<String>,
    /// Only this kind of reason, e.g. `unknown_task` or `broker:delivery_limit`; `broker`
    /// alone selects everything the broker dead-lettered.
    pub kind: Option<String>,
    /// Only dead letters whose last failure is at least this old. A dead letter without a
    /// failure time is never old enough: what cannot be dated is kept.
    pub older_than: Option<Duration>,
    /// Only dead letters with one of these task ids (none given: any id).
    pub ids: Vec<String>,
}

impl Filter {
    /// Whether `dead` is selected, `now_ms` being the current time.
    pub fn matches(&self, dead: &DeadLetter, now_ms: u64) -> bool {
        let task_ok = match &self.task {
            Some(task) => dead.task.as_deref() == Some(task.as_str()),
            None => true,
        };
        let kind_ok = match self.kind.as_deref() {
            Some("broker") => dead.is_from_broker(),
            Some(kind) => dead.record.kind.to_string() == kind,
            None => true,
        };
        let age_ok = match self.older_than {
            Some(age) => dead
                .record
                .last_failure_ms
                .is_some_and(|at| now_ms.saturating_sub(at) >= age.as_millis() as u64),
            None => true,
        };
        let id_ok = self.ids.is_empty() || dead.id.as_ref().is_some_and(|id| self.ids.contains(id));
        task_ok && kind_ok && age_ok && id_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, LongString};
    use warren_common::{headers, int_value, text_value, UNKNOWN_KIND};

    fn worker_dead_letter() -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in [
            (headers::DEAD_KIND, text_value("retries_exhausted")),
            (headers::DEAD_REASON, text_value("gave up after 3 attempts")),
            (headers::DEAD_ATTEMPTS, AMQPValue::LongInt(3)),
            (headers::ATTEMPT, int_value(3)),
            (headers::FIRST_FAILURE_MS, int_value(1_000)),
            (headers::LAST_FAILURE_MS, int_value(5_000)),
            (headers::ORIGINAL_QUEUE, text_value("orders")),
            (headers::ORIGINAL_ROUTING_KEY, text_value("orders")),
            (headers::DEAD_WORKER, text_value("w-1")),
        ] {
            table.insert(name.into(), value);
        }
        BasicProperties::default()
            .with_message_id("id-1".into())
            .with_type("demo.flaky".into())
            .with_content_type("application/json".into())
            .with_headers(table)
    }

    /// What RabbitMQ 3.10 writes when a quorum queue's delivery limit dead-letters a message.
    fn broker_dead_letter() -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert("queue".into(), AMQPValue::LongString("orders".into()));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        death.insert("exchange".into(), AMQPValue::LongString("warren".into()));
        let keys = FieldArray::from(vec![AMQPValue::LongString(LongString::from("orders"))]);
        death.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
        let mut table = FieldTable::default();
        let deaths = FieldArray::from(vec![AMQPValue::FieldTable(death)]);
        table.insert(headers::X_DEATH.into(), AMQPValue::FieldArray(deaths));
        table.insert(headers::X_FIRST_DEATH_QUEUE.into(), text_value("orders"));
        table.insert(
            headers::X_FIRST_DEATH_REASON.into(),
            text_value("delivery_limit"),
        );
        table.insert(headers::ATTEMPT.into(), AMQPValue::ShortShortUInt(1));
        BasicProperties::default()
            .with_message_id("id-2".into())
            .with_type("demo.crash".into())
            .with_headers(table)
    }

    /// The record of a view is the one [`DeadLetterRecord::read`] reads from its headers.
    fn record_of(props: &BasicProperties) -> DeadLetterRecord {
        DeadLetterRecord::read(props.headers().as_ref().unwrap())
    }

    #[test]
    fn the_workers_headers_are_read() {
        let props = worker_dead_letter();
        let dead = DeadLetter::from_message(&props, br#"{"fail_times": 1}"#);
        assert_eq!(dead.id.as_deref(), Some("id-1"));
        assert_eq!(dead.task.as_deref(), Some("demo.flaky"));
        assert_eq!(dead.record, record_of(&props));
        assert_eq!(dead.record.kind.to_string(), "retries_exhausted");
        assert_eq!(dead.record.attempts, 3);
        assert_eq!(dead.record.worker.as_deref(), Some("w-1"));
        assert_eq!(dead.content_type.as_deref(), Some("application/json"));
        assert_eq!(dead.payload_preview, r#"{"fail_times": 1}"#);
        assert!(!dead.is_from_broker());
    }

    #[test]
    fn a_message_with_only_x_death_shows_the_brokers_reason() {
        let props = broker_dead_letter();
        let dead = DeadLetter::from_message(&props, &[0xff, 0x00, 0x01]);
        assert_eq!(dead.record, record_of(&props));
        assert_eq!(dead.record.kind.to_string(), "broker:delivery_limit");
        assert!(dead.record.reason.contains("`orders`"), "{dead:?}");
        assert_eq!(dead.record.original_queue.as_deref(), Some("orders"));
        assert_eq!(dead.payload_preview, "0xff0001");
        assert!(dead.is_from_broker());
    }

    #[test]
    fn a_message_without_any_dead_letter_header_is_still_shown() {
        let dead = DeadLetter::from_message(&BasicProperties::default(), b"");
        assert_eq!((dead.id, dead.task), (None, None));
        assert_eq!(dead.record.kind.to_string(), UNKNOWN_KIND);
    }

    /// The JSON of `dead-letters list --json` (which adds the times in RFC 3339): field
    /// names, order and types are what scripts read.
    #[test]
    fn the_json_shape_is_stable() {
        let worker = DeadLetter::from_message(&worker_dead_letter(), b"{}");
        assert_eq!(
            serde_json::to_string(&worker).unwrap(),
            r#"{"id":"id-1","task":"demo.flaky","kind":"retries_exhausted","reason":"gave up after 3 attempts","attempts":3,"first_failure_ms":1000,"last_failure_ms":5000,"original_queue":"orders","original_routing_key":"orders","worker":"w-1","content_type":"application/json","payload_bytes":2,"payload_preview":"{}"}"#
        );
        let broker = DeadLetter::from_message(&broker_dead_letter(), b"");
        assert_eq!(
            serde_json::to_string(&broker).unwrap(),
            r#"{"id":"id-2","task":"demo.crash","kind":"broker:delivery_limit","reason":"dead-lettered by the broker (delivery_limit) from queue `orders`","attempts":1,"first_failure_ms":1700000000000,"last_failure_ms":1700000000000,"original_queue":"orders","original_routing_key":"orders","worker":null,"content_type":null,"payload_bytes":0,"payload_preview":""}"#
        );
    }

    #[test]
    fn long_payloads_are_cut() {
        let text = "é".repeat(500);
        let shown = preview(text.as_bytes());
        assert_eq!(shown.chars().count(), PREVIEW_CHARS + 1);
        assert_eq!(preview(b"a\nb"), "a\\nb");
        assert!(preview(&[0xffu8; 100]).ends_with('…'));
    }

    #[test]
    fn filters_combine_task_kind_and_age() {
        let worker = DeadLetter::from_message(&worker_dead_letter(), b"");
        let broker = DeadLetter::from_message(&broker_dead_letter(), b"");
        let by_kind = |kind: &str| Filter {
            kind: Some(kind.into()),
            ..Filter::default()
        };
        assert!(Filter::default().matches(&worker, 0));
        assert!(by_kind("broker").matches(&broker, 0));
        assert!(!by_kind("broker").matches(&worker, 0));
        assert!(by_kind("broker:delivery_limit").matches(&broker, 0));
        assert!(by_kind("retries_exhausted").matches(&worker, 0));
        let task = Filter {
            task: Some("demo.flaky".into()),
            ..Filter::default()
        };
        assert!(task.matches(&worker, 0) && !task.matches(&broker, 0));
        let old = Filter {
            older_than: Some(Duration::from_secs(60)),
            ..Filter::default()
        };
        assert!(!old.matches(&worker, 5_000 + 59_999));
        assert!(old.matches(&worker, 5_000 + 60_000));
        let undated = DeadLetter::from_message(&BasicProperties::default(), b"");
        assert!(!old.matches(&undated, u64::MAX));
    }
}
