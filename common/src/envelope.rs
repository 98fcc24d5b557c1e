//! The task envelope: a task's identity and metadata, and how it maps to AMQP properties and
//! headers. The body of the message is the encoded payload and is not part of the envelope.

use crate::header_value::{int_header, int_value, string_value, text_value};
use crate::{headers, Codec, CodecError};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use std::time::{SystemTime, UNIX_EPOCH};

/// A task's id: unique, chosen by the producer (a UUIDv7 unless the caller gives one).
pub type TaskId = String;

/// Schema version written when the producer does not choose one.
pub const DEFAULT_SCHEMA_VERSION: u32 = 1;

/// AMQP short strings (`type`, `message_id`) are at most 255 bytes.
const MAX_SHORT_STRING: usize = 255;

/// Persistent delivery mode: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message that is not a valid Warren task.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// A property the contract requires is absent or empty.
    #[error("missing required property `{0}`")]
    MissingProperty(&'static str),
    /// A header has a type or value the contract does not allow.
    #[error("header `{name}` is invalid: {problem}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A property is longer than AMQP allows.
    #[error("`{name}` is {len} bytes long; AMQP allows at most 255")]
    TooLong {
        /// The property's name.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The content type names no known codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A task's identity and metadata, as carried by AMQP properties and Warren headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The task id (`message_id`).
    pub id: TaskId,
    /// The task name (`type`), which selects the handler.
    pub task: String,
    /// The payload's codec (`content_type`).
    pub codec: Codec,
    /// Attempt number of this delivery, starting at 1.
    pub attempt: u32,
    /// Creation time in milliseconds since the epoch: `x-warren-created-ms`, or the time in
    /// a UUIDv7 id.
    pub created_ms: Option<u64>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// Per-task override of the maximum number of attempts.
    pub max_attempts: Option<u32>,
    /// Per-task override of the handler timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Time after which the task must not run, in milliseconds since the epoch.
    pub expires_ms: Option<u64>,
    /// W3C trace context of the publisher.
    pub traceparent: Option<String>,
    /// Time before which the task was held back, milliseconds since the epoch.
    pub not_before_ms: Option<u64>,
}

impl Envelope {
    /// A new task with a fresh time-ordered id (a UUIDv7), attempt 1, created now: the
    /// creation time is the one the id carries, so the message needs no header for it.
    pub fn new(task: impl Into<String>, codec: Codec) -> Self {
        let id = uuid::Uuid::now_v7();
        Envelope {
            created_ms: v7_ms(&id),
            ..Envelope::with_defaults(id.to_string(), task.into(), codec)
        }
    }

    /// A task with every optional field absent and every other at its contract default.
    fn with_defaults(id: TaskId, task: String, codec: Codec) -> Self {
        Envelope {
            id,
            task,
            codec,
            attempt: 1,
            created_ms: None,
            schema_version: DEFAULT_SCHEMA_VERSION,
            max_attempts: None,
            timeout_ms: None,
            expires_ms: None,
            traceparent: None,
            not_before_ms: None,
        }
    }

    /// Checks what AMQP would otherwise refuse (or lapin panic on) before publishing.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        check_short("type", &self.task)?;
        check_short("message_id", &self.id)?;
        if self.task.is_empty() {
            return Err(EnvelopeError::MissingProperty("type"));
        }
        if self.id.is_empty() {
            return Err(EnvelopeError::MissingProperty("message_id"));
        }
        Ok(())
    }

    /// The AMQP properties of a persistent message carrying this task. Call
    /// [`validate`](Self::validate) first: lapin panics on over-long short strings.
    pub fn to_properties(&self) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from(self.codec.content_type()))
            .with_type(ShortString::from(self.task.as_str()))
            .with_message_id(ShortString::from(self.id.as_str()));
        if let Some(created) = self.created_ms {
            props = props.with_timestamp(created / 1000);
        }
        let headers = self.write_headers(FieldTable::default());
        if headers.inner().is_empty() {
            // No header table at all: nothing for the broker or a reader to parse.
            return props;
        }
        props.with_headers(headers)
    }

    /// Writes Warren's headers into `table`. A header holding its default (attempt 1,
    /// schema 1, a creation time equal to the one in a UUIDv7 id) is left out: every reader
    /// applies the default, and each header costs every delivery a parse on the broker and
    /// in the worker.
    fn write_headers(&self, mut table: FieldTable) -> FieldTable {
        let optional = [
            (
                headers::ATTEMPT,
                Some(self.attempt.into()).filter(|&a| a != 1),
            ),
            (
                headers::SCHEMA_VERSION,
                Some(self.schema_version.into())
                    .filter(|&v| v != u64::from(DEFAULT_SCHEMA_VERSION)),
            ),
            (
                headers::CREATED_MS,
                self.created_ms.filter(|&c| Some(c) != id_time_ms(&self.id)),
            ),
            (headers::MAX_ATTEMPTS, self.max_attempts.map(u64::from)),
            (headers::TIMEOUT_MS, self.timeout_ms),
            (headers::EXPIRES_MS, self.expires_ms),
            (headers::NOT_BEFORE_MS, self.not_before_ms),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                table.insert(name.into(), int_value(value));
            }
        }
        if let Some(tp) = &self.traceparent {
            table.insert(headers::TRACEPARENT.into(), text_value(tp));
        }
        table
    }

    /// Reads a task from a received message's properties, in one pass over the headers.
    pub fn from_properties(props: &BasicProperties) -> Result<Self, EnvelopeError> {
        let task = non_empty(props.kind(), "type")?;
        let id = non_empty(props.message_id(), "message_id")?;
        let codec = Codec::from_content_type(props.content_type().as_ref().map(|s| s.as_str()))?;
        let mut envelope = Envelope::with_defaults(id, task, codec);
        let table = props.headers().as_ref().map(FieldTable::inner);
        for (name, value) in table.into_iter().flatten() {
            let e = &mut envelope;
            match name.as_str() {
                headers::ATTEMPT => {
                    e.attempt = attempt_number(int_header(headers::ATTEMPT, value)?)
                }
                headers::SCHEMA_VERSION => {
                    let schema = int_header(headers::SCHEMA_VERSION, value)?;
                    e.schema_version = schema.map_or(DEFAULT_SCHEMA_VERSION, saturate);
                }
                headers::CREATED_MS => e.created_ms = int_header(headers::CREATED_MS, value)?,
                headers::MAX_ATTEMPTS => {
                    e.max_attempts = int_header(headers::MAX_ATTEMPTS, value)?.map(saturate);
                }
                headers::TIMEOUT_MS => e.timeout_ms = int_header(headers::TIMEOUT_MS, value)?,
                headers::EXPIRES_MS => e.expires_ms = int_header(headers::EXPIRES_MS, value)?,
                headers::NOT_BEFORE_MS => {
                    e.not_before_ms = int_header(headers::NOT_BEFORE_MS, value)?;
                }
                headers::TRACEPARENT => e.traceparent = string_value(value),
                _ => {}
            }
        }
        if envelope.created_ms.is_none() {
            envelope.created_ms = id_time_ms(&envelope.id);
        }
        Ok(envelope)
    }
}

/// What a message says about itself even when it is not a valid task: each of `message_id`,
/// `type` and `x-warren-attempt` that it carried in a readable form. The logs of its dead
/// letter show these; they are the publisher's strings, not known task names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimed<'a> {
    /// `message_id`, if present and not empty.
    pub id: Option<&'a str>,
    /// `type`, if present and not empty.
    pub task: Option<&'a str>,
    /// The attempt number as [`Envelope::attempt`] reads it (1 when the header is absent);
    /// `None` when the header itself is invalid.
    pub attempt: Option<u32>,
}

impl<'a> Claimed<'a> {
    /// Reads what it can of a received message's properties, never failing.
    pub fn from_properties(props: &'a BasicProperties) -> Self {
        let text = |value: &'a Option<ShortString>| {
            value.as_ref().map(|s| s.as_str()).filter(|s| !s.is_empty())
        };
        let table = props.headers().as_ref().map(FieldTable::inner);
        let attempt = match table.and_then(|t| t.get(headers::ATTEMPT)) {
            Some(value) => int_header(headers::ATTEMPT, value).ok().map(attempt_number),
            None => Some(1),
        };
        Claimed {
            id: text(props.message_id()),
            task: text(props.kind()),
            attempt,
        }
    }
}

/// How many times a message was replayed from the dead letters: its `x-warren-replays`
/// header, 0 when absent or invalid (a count for ranking events, never a reason to refuse a
/// task).
pub fn replay_count(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(headers::REPLAYS))
        .and_then(|value| int_header(headers::REPLAYS, value).ok().flatten())
        .map_or(0, saturate)
}

/// The creation time a task id carries: the Unix milliseconds of a UUIDv7 (RFC 9562), the
/// default of `x-warren-created-ms`. `None` for any other id.
pub fn id_time_ms(id: &str) -> Option<u64> {
    // Cheap checks first: most ids that are not UUIDv7s fail on length or version digit.
    if id.len() != 36 || id.as_bytes()[14] != b'7' {
        return None;
    }
    v7_ms(&uuid::Uuid::try_parse(id).ok()?)
}

fn v7_ms(id: &uuid::Uuid) -> Option<u64> {
    if id.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// The attempt number an `x-warren-attempt` value means: 1 when absent, and 0 read as 1.
fn attempt_number(header: Option<u64>) -> u32 {
    saturate(header.unwrap_or(1).max(1))
}

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn check_short(name: &'static str, value: &str) -> Result<(), EnvelopeError> {
    if value.len() > MAX_SHORT_STRING {
        return Err(EnvelopeError::TooLong {
            name,
            len: value.len(),
        });
    }
    Ok(())
}

fn non_empty(value: &Option<ShortString>, name: &'static str) -> Result<String, EnvelopeError> {
    match value {
        Some(v) if !v.as_str().is_empty() => Ok(v.as_str().to_owned()),
        _ => Err(EnvelopeError::MissingProperty(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_u64;

    #[test]
    fn properties_round_trip() {
        let mut env = Envelope::new("demo.echo", Codec::Json);
        env.attempt = 3;
        env.max_attempts = Some(7);
        env.expires_ms = Some(123_456);
        env.not_before_ms = Some(100_000);
        env.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let props = env.to_properties();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(Envelope::from_properties(&props).unwrap(), env);
    }

    #[test]
    fn an_invalid_message_still_shows_what_it_carried() {
        let mut table = FieldTable::default();
        table.insert(headers::ATTEMPT.into(), text_value("4"));
        table.insert(headers::MAX_ATTEMPTS.into(), text_value("+3"));
        let props = BasicProperties::default()
            .with_type("demo.echo".into())
            .with_message_id("bad-1".into())
            .with_headers(table.clone());
        let err = Envelope::from_properties(&props).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header `x-warren-max-attempts` is invalid: \"+3\" is not a decimal integer"
        );
        let claimed = Claimed::from_properties(&props);
        assert_eq!(
            claimed,
            Claimed {
                id: Some("bad-1"),
                task: Some("demo.echo"),
                attempt: Some(4)
            }
        );
        // The attempt header itself invalid: no attempt; absent: the default, 1.
        table.insert(headers::ATTEMPT.into(), text_value("-2"));
        let props = props.with_headers(table).with_message_id("".into());
        let claimed = Claimed::from_properties(&props);
        assert_eq!((claimed.id, claimed.attempt), (None, None));
        let bare = BasicProperties::default();
        assert_eq!(
            Claimed::from_properties(&bare),
            Claimed {
                id: None,
                task: None,
                attempt: Some(1)
            }
        );
    }

    #[test]
    fn missing_properties_are_named() {
        let props = BasicProperties::default().with_type("demo.noop".into());
        let err = Envelope::from_properties(&props).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::MissingProperty("message_id")),
            "{err}"
        );
        let props = BasicProperties::default().with_message_id("id".into());
        let err = Envelope::from_properties(&props).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::MissingProperty("type")),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply_to_a_minimal_message() {
        let props = BasicProperties::default()
            .with_type("demo.noop".into())
            .with_message_id("abc".into());
        let env = Envelope::from_properties(&props).unwrap();
        assert_eq!(
            (env.attempt, env.codec, env.schema_version),
            (1, Codec::Json, 1)
        );
        assert_eq!(env.created_ms, None);
    }

    #[test]
    fn a_generated_id_carries_the_creation_time_and_the_message_no_headers() {
        let before = now_ms();
        let env = Envelope::new("demo.noop", Codec::Json);
        let created = env.created_ms.expect("a new task has a creation time");
        assert!(created >= before && created <= now_ms(), "{created}");
        assert_eq!(id_time_ms(&env.id), Some(created));
        let props = env.to_properties();
        assert_eq!(props.headers(), &None, "a first attempt needs no header");
        assert_eq!(props.timestamp(), &Some(created / 1000));
        assert_eq!(Envelope::from_properties(&props).unwrap(), env);
    }

    #[test]
    fn a_creation_time_the_id_does_not_carry_is_written() {
        let mut env = Envelope::new("demo.noop", Codec::Json);
        // A caller's own id (not a UUIDv7), and a UUIDv7 minted at another time.
        for id in ["order-42", "01890a5d-ac96-774b-bcce-b302099a8057"] {
            env.id = id.to_owned();
            let props = env.to_properties();
            let table = props.headers().as_ref().expect("headers");
            assert_eq!(
                header_u64(table, headers::CREATED_MS).unwrap(),
                env.created_ms
            );
            assert_eq!(Envelope::from_properties(&props).unwrap(), env);
        }
    }

    #[test]
    fn without_the_header_the_creation_time_comes_from_a_uuidv7_id() {
        let props = |id: &str| {
            BasicProperties::default()
                .with_type("demo.noop".into())
                .with_message_id(id.into())
        };
        // 0x01890a5dac96 ms = 2023-07-04T...: the RFC 9562 layout.
        let v7 = Envelope::from_properties(&props("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert_eq!(v7.unwrap().created_ms, Some(0x0189_0a5d_ac96));
        let v4 = Envelope::from_properties(&props("9f1c2c1e-5b7a-4c59-9d0e-2f1b8e4c7a10"));
        assert_eq!(v4.unwrap().created_ms, None);
        let not_a_uuid = Envelope::from_properties(&props("01890a5d-ac96-774b-bcce-b302099a805z"));
        assert_eq!(not_a_uuid.unwrap().created_ms, None);
    }

    #[test]
    fn over_long_names_are_refused_before_lapin_sees_them() {
        let env = Envelope::new("x".repeat(300), Codec::Json);
        assert!(matches!(
            env.validate(),
            Err(EnvelopeError::TooLong {
                name: "type",
                len: 300
            })
        ));
    }
}
