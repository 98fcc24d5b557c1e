//! The dead-letter record: what a worker writes on a task it gives up on (the
//! `x-warren-dead-*` headers and the failure times, wire-format §3.3 and §8.4), and what the
//! dead-letter tools read back, through one type. A message the broker dead-lettered by
//! itself carries only the broker's `x-death` history (§8.5); reading it gives a record whose
//! kind is [`DeadLetterKind::Broker`], shown as `broker:<reason>`.

use crate::header_value::{header_string, header_u64, int_value, string_value, text_value};
use crate::headers::{self, x_death};
use crate::ReasonKind;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Serialize, Serializer};
use std::fmt;

/// Longest reason text kept in a dead letter's (or a retry's) headers, in bytes.
pub const MAX_REASON_BYTES: usize = 2048;

/// Prefix of the kind of a message the broker dead-lettered by itself.
pub const BROKER_KIND_PREFIX: &str = "broker:";

/// Kind of a dead letter that says neither who dead-lettered it nor why.
pub const UNKNOWN_KIND: &str = "unknown";

/// The headers of a worker's dead-letter record, all written by
/// [`DeadLetterRecord::write`] (when the record has a value for them).
pub const RECORD_HEADERS: [&str; 8] = [
    headers::DEAD_REASON,
    headers::DEAD_KIND,
    headers::DEAD_ATTEMPTS,
    headers::FIRST_FAILURE_MS,
    headers::LAST_FAILURE_MS,
    headers::ORIGINAL_QUEUE,
    headers::ORIGINAL_ROUTING_KEY,
    headers::DEAD_WORKER,
];

/// Who dead-lettered a message, and the kind of reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// A worker, with one of the kinds this version knows.
    Worker(ReasonKind),
    /// A worker, with a kind this version does not know (written by a newer version, or by
    /// another client): kept as written.
    Other(String),
    /// The broker, by itself: the `reason` of its newest `x-death` entry (`delivery_limit`,
    /// `expired`, ...).
    Broker(String),
    /// Neither a worker's record nor the broker's history is on the message.
    Unknown,
}

impl DeadLetterKind {
    /// The kind as written in `x-warren-dead-kind`: a known one, or kept as it is.
    pub fn from_name(name: &str) -> Self {
        match ReasonKind::parse(name) {
            Some(kind) => DeadLetterKind::Worker(kind),
            None => DeadLetterKind::Other(name.to_owned()),
        }
    }

    /// True when the broker, not a worker, dead-lettered it.
    pub fn is_from_broker(&self) -> bool {
        matches!(self, DeadLetterKind::Broker(_))
    }
}

impl fmt::Display for DeadLetterKind {
    /// The worker's kind name, `broker:<reason>` or `unknown`, as the dead-letter tools show
    /// and filter them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterKind::Worker(kind) => f.write_str(kind.as_str()),
            DeadLetterKind::Other(name) => f.write_str(name),
            DeadLetterKind::Broker(why) => write!(f, "{BROKER_KIND_PREFIX}{why}"),
            DeadLetterKind::Unknown => f.write_str(UNKNOWN_KIND),
        }
    }
}

impl Serialize for DeadLetterKind {
    /// As its [`Display`](fmt::Display): the kind the dead-letter tools show.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<ReasonKind> for DeadLetterKind {
    fn from(kind: ReasonKind) -> Self {
        DeadLetterKind::Worker(kind)
    }
}

/// Why and where a task was dead-lettered. It serializes (for tools' JSON output) with the
/// kind as shown by its `Display`, e.g. `retries_exhausted` or `broker:delivery_limit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterRecord {
    /// Who dead-lettered it and the kind of reason.
    pub kind: DeadLetterKind,
    /// Why, for people (at most [`MAX_REASON_BYTES`] once written).
    pub reason: String,
    /// Attempts made before it was dead-lettered.
    pub attempts: u64,
    /// Time of the first failure, milliseconds since the epoch.
    pub first_failure_ms: Option<u64>,
    /// Time of the last failure (the one that dead-lettered it), milliseconds since the epoch.
    pub last_failure_ms: Option<u64>,
    /// The work queue it was consumed from.
    pub original_queue: Option<String>,
    /// The routing key it was published with.
    pub original_routing_key: Option<String>,
    /// The worker that gave up on it.
    pub worker: Option<String>,
}

impl DeadLetterRecord {
    /// Writes the record into `table` (a copy of the task's headers), replacing any earlier
    /// record. Absent values are not written; a broker's or unknown kind is not written
    /// either (only the broker writes its history), so such a record reads back as what the
    /// message said before.
    pub fn write(&self, table: &mut FieldTable) {
        let reason = truncate_reason(&self.reason);
        let kind = match &self.kind {
            DeadLetterKind::Worker(_) | DeadLetterKind::Other(_) => Some(self.kind.to_string()),
            DeadLetterKind::Broker(_) | DeadLetterKind::Unknown => None,
        };
        let mut put = |name: &str, value: AMQPValue| {
            table.insert(name.into(), value);
        };
        put(headers::DEAD_REASON, text_value(reason));
        if let Some(kind) = kind {
            put(headers::DEAD_KIND, text_value(&kind));
        }
        put(headers::DEAD_ATTEMPTS, int_value(self.attempts));
        let ints = [
            (headers::FIRST_FAILURE_MS, self.first_failure_ms),
            (headers::LAST_FAILURE_MS, self.last_failure_ms),
        ];
        for (name, value) in ints {
            if let Some(value) = value {
                put(name, int_value(value));
            }
        }
        let texts = [
            (headers::ORIGINAL_QUEUE, &self.original_queue),
            (headers::ORIGINAL_ROUTING_KEY, &self.original_routing_key),
            (headers::DEAD_WORKER, &self.worker),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                put(name, text_value(value));
            }
        }
    }

    /// Reads the record of a dead letter's headers. Never fails: a header that is missing or
    /// malformed is simply absent. Without a worker's record the broker's `x-death` history
    /// (newest entry first, then `x-last-death-*` / `x-first-death-*`) says what it can; the
    /// attempts fall back to the message's own `x-warren-attempt`, then 1.
    pub fn read(table: &FieldTable) -> Self {
        let int = |name: &'static str| header_u64(table, name).ok().flatten();
        let deaths = x_deaths(table);
        let newest = deaths.first();
        let broker_times = || deaths.iter().filter_map(|d| d.time_ms);
        let (kind, reason) = kind_and_reason(table, newest);
        DeadLetterRecord {
            kind,
            reason,
            attempts: int(headers::DEAD_ATTEMPTS)
                .or_else(|| int(headers::ATTEMPT))
                .unwrap_or(1),
            first_failure_ms: int(headers::FIRST_FAILURE_MS).or_else(|| broker_times().min()),
            last_failure_ms: int(headers::LAST_FAILURE_MS).or_else(|| broker_times().max()),
            original_queue: header_string(table, headers::ORIGINAL_QUEUE)
                .or_else(|| newest.and_then(|d| d.queue.clone()))
                .or_else(|| header_string(table, headers::X_FIRST_DEATH_QUEUE)),
            original_routing_key: header_string(table, headers::ORIGINAL_ROUTING_KEY)
                .or_else(|| newest.and_then(|d| d.routing_key.clone())),
            worker: header_string(table, headers::DEAD_WORKER),
        }
    }
}

/// `text` cut to at most [`MAX_REASON_BYTES`], on a character boundary.
pub fn truncate_reason(text: &str) -> &str {
    truncate(text, MAX_REASON_BYTES)
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The worker's kind and reason, or the broker's reason from `x-death`.
fn kind_and_reason(table: &FieldTable, newest: Option<&XDeath>) -> (DeadLetterKind, String) {
    if let Some(kind) = header_string(table, headers::DEAD_KIND) {
        let reason = header_string(table, headers::DEAD_REASON).unwrap_or_default();
        return (DeadLetterKind::from_name(&kind), reason);
    }
    let broker_reason = newest
        .and_then(|d| d.reason.clone())
        .or_else(|| header_string(table, headers::X_LAST_DEATH_REASON))
        .or_else(|| header_string(table, headers::X_FIRST_DEATH_REASON));
    let Some(why) = broker_reason else {
        let reason = header_string(table, headers::DEAD_REASON)
            .unwrap_or_else(|| "no dead-letter headers on this message".to_owned());
        return (DeadLetterKind::Unknown, reason);
    };
    let mut reason = format!("dead-lettered by the broker ({why})");
    if let Some(queue) = newest.and_then(|d| d.queue.as_deref()) {
        reason.push_str(&format!(" from queue `{queue}`"));
    }
    if let Some(count) = newest.and_then(|d| d.count).filter(|&c| c > 1) {
        reason.push_str(&format!(", {count} times"));
    }
    (DeadLetterKind::Broker(why), reason)
}

/// One entry of the broker's `x-death` header, newest first.
#[derive(Debug, Default)]
struct XDeath {
    reason: Option<String>,
    queue: Option<String>,
    routing_key: Option<String>,
    count: Option<u64>,
    time_ms: Option<u64>,
}

fn x_deaths(table: &FieldTable) -> Vec<XDeath> {
    let Some(AMQPValue::FieldArray(entries)) = table.inner().get(headers::X_DEATH) else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(t) => Some(XDeath {
                reason: header_string(t, x_death::REASON),
                queue: header_string(t, x_death::QUEUE),
                routing_key: first_routing_key(t),
                count: header_u64(t, x_death::COUNT).ok().flatten(),
                // The broker writes `time` as an AMQP timestamp: seconds since the epoch.
                time_ms: header_u64(t, x_death::TIME)
                    .ok()
                    .flatten()
                    .map(|s| s.saturating_mul(1000)),
            }),
            _ => None,
        })
        .collect()
}

fn first_routing_key(table: &FieldTable) -> Option<String> {
    match table.inner().get(x_death::ROUTING_KEYS)? {
        AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(string_value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn record() -> DeadLetterRecord {
        DeadLetterRecord {
            kind: DeadLetterKind::Worker(ReasonKind::RetriesExhausted),
            reason: "gave up after 3 attempts; last failure (error): boom".into(),
            attempts: 3,
            first_failure_ms: Some(1_000),
            last_failure_ms: Some(5_000),
            original_queue: Some("orders".into()),
            original_routing_key: Some("orders.eu".into()),
            worker: Some("w-1".into()),
        }
    }

    fn written(record: &DeadLetterRecord) -> FieldTable {
        let mut table = FieldTable::default();
        record.write(&mut table);
        table
    }

    #[test]
    fn a_written_record_reads_back() {
        let record = record();
        assert_eq!(DeadLetterRecord::read(&written(&record)), record);
        for kind in ReasonKind::ALL {
            let record = DeadLetterRecord {
                kind: kind.into(),
                ..self::record()
            };
            assert_eq!(DeadLetterRecord::read(&written(&record)), record);
        }
        let newer = DeadLetterRecord {
            kind: DeadLetterKind::Other("cancelled".into()),
            ..record.clone()
        };
        assert_eq!(DeadLetterRecord::read(&written(&newer)), newer);
    }

    #[test]
    fn the_headers_on_the_wire_are_the_contracts() {
        let table = written(&record());
        let names: Vec<&str> = table.inner().keys().map(|k| k.as_str()).collect();
        let mut expected = RECORD_HEADERS.to_vec();
        expected.sort_unstable();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(names, expected);
        // Integers as signed 64-bit values, strings as long strings (wire-format §3.1).
        let get = |name: &str| table.inner().get(name).cloned();
        assert_eq!(get(headers::DEAD_ATTEMPTS), Some(AMQPValue::LongLongInt(3)));
        assert_eq!(
            get(headers::DEAD_KIND),
            Some(AMQPValue::LongString("retries_exhausted".into()))
        );
        assert_eq!(
            get(headers::LAST_FAILURE_MS),
            Some(AMQPValue::LongLongInt(5_000))
        );
    }

    #[test]
    fn writing_replaces_an_earlier_record_and_keeps_the_rest() {
        let mut table = written(&record());
        table.insert(headers::CREATED_MS.into(), int_value(42));
        let again = DeadLetterRecord {
            kind: ReasonKind::Expired.into(),
            reason: "expired".into(),
            attempts: 4,
            ..record()
        };
        again.write(&mut table);
        assert_eq!(DeadLetterRecord::read(&table), again);
        assert_eq!(header_u64(&table, headers::CREATED_MS).unwrap(), Some(42));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let long = DeadLetterRecord {
            reason: "é".repeat(MAX_REASON_BYTES),
            ..record()
        };
        let read = DeadLetterRecord::read(&written(&long));
        assert_eq!(read.reason.len(), MAX_REASON_BYTES);
        assert_eq!(read.reason, "é".repeat(MAX_REASON_BYTES / 2));
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate_reason("short"), "short");
    }

    /// What the first versions wrote, and other clients may: integers in narrower widths or
    /// as decimal strings, no first-failure time, no worker, no routing key.
    #[test]
    fn older_and_other_writers_are_read() {
        let mut table = FieldTable::default();
        for (name, value) in [
            (headers::DEAD_KIND, text_value("unknown_task")),
            (headers::DEAD_REASON, text_value("no handler for `x`")),
            (headers::DEAD_ATTEMPTS, AMQPValue::LongInt(1)),
            (headers::LAST_FAILURE_MS, text_value("1700000000000")),
            (headers::ORIGINAL_QUEUE, text_value("default")),
        ] {
            table.insert(name.into(), value);
        }
        let read = DeadLetterRecord::read(&table);
        assert_eq!(read.kind, DeadLetterKind::Worker(ReasonKind::UnknownTask));
        assert_eq!(read.reason, "no handler for `x`");
        assert_eq!(read.attempts, 1);
        assert_eq!(read.first_failure_ms, None);
        assert_eq!(read.last_failure_ms, Some(1_700_000_000_000));
        assert_eq!(read.original_queue.as_deref(), Some("default"));
        assert_eq!((read.original_routing_key, read.worker), (None, None));
        // A kind this version does not know is shown as written.
        table.insert(headers::DEAD_KIND.into(), text_value("quota_exceeded"));
        assert_eq!(
            DeadLetterRecord::read(&table).kind.to_string(),
            "quota_exceeded"
        );
    }

    /// What RabbitMQ 3.10 writes when a quorum queue's delivery limit dead-letters a message.
    fn broker_dead_letter() -> FieldTable {
        let mut death = FieldTable::default();
        death.insert(x_death::COUNT.into(), AMQPValue::LongLongInt(2));
        death.insert(
            x_death::REASON.into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert(
            x_death::QUEUE.into(),
            AMQPValue::LongString("orders".into()),
        );
        death.insert(x_death::TIME.into(), AMQPValue::Timestamp(1_700_000_000));
        death.insert("exchange".into(), AMQPValue::LongString("warren".into()));
        let keys = FieldArray::from(vec![AMQPValue::LongString(LongString::from("orders"))]);
        death.insert(x_death::ROUTING_KEYS.into(), AMQPValue::FieldArray(keys));
        let mut table = FieldTable::default();
        let deaths = FieldArray::from(vec![AMQPValue::FieldTable(death)]);
        table.insert(headers::X_DEATH.into(), AMQPValue::FieldArray(deaths));
        table.insert(headers::X_FIRST_DEATH_QUEUE.into(), text_value("orders"));
        table.insert(
            headers::X_FIRST_DEATH_REASON.into(),
            text_value("delivery_limit"),
        );
        table.insert(headers::ATTEMPT.into(), AMQPValue::ShortShortUInt(1));
        table
    }

    #[test]
    fn the_brokers_own_dead_letters_are_read_from_x_death() {
        let read = DeadLetterRecord::read(&broker_dead_letter());
        assert_eq!(read.kind, DeadLetterKind::Broker("delivery_limit".into()));
        assert_eq!(read.kind.to_string(), "broker:delivery_limit");
        assert!(read.kind.is_from_broker());
        assert_eq!(
            read.reason,
            "dead-lettered by the broker (delivery_limit) from queue `orders`, 2 times"
        );
        assert_eq!(read.attempts, 1);
        assert_eq!(read.first_failure_ms, Some(1_700_000_000_000));
        assert_eq!(read.last_failure_ms, Some(1_700_000_000_000));
        assert_eq!(read.original_queue.as_deref(), Some("orders"));
        assert_eq!(read.original_routing_key.as_deref(), Some("orders"));
        assert_eq!(read.worker, None);
    }

    #[test]
    fn without_x_death_the_brokers_summary_headers_are_read() {
        let mut table = FieldTable::default();
        table.insert(headers::X_LAST_DEATH_REASON.into(), text_value("expired"));
        table.insert(headers::X_FIRST_DEATH_QUEUE.into(), text_value("orders"));
        let read = DeadLetterRecord::read(&table);
        assert_eq!(read.kind.to_string(), "broker:expired");
        assert_eq!(read.reason, "dead-lettered by the broker (expired)");
        assert_eq!(read.original_queue.as_deref(), Some("orders"));
        assert_eq!(read.last_failure_ms, None);
    }

    #[test]
    fn a_message_without_any_record_is_unknown() {
        let read = DeadLetterRecord::read(&FieldTable::default());
        assert_eq!(read.kind, DeadLetterKind::Unknown);
        assert_eq!(read.kind.to_string(), UNKNOWN_KIND);
        assert_eq!(read.reason, "no dead-letter headers on this message");
        assert_eq!(read.attempts, 1);
    }
}
