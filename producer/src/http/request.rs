//! The JSON bodies the ingest accepts and their validation: every field is checked here, so
//! that a bad request is answered with the name of the bad field before anything is sent to
//! the broker. The schema is documented in `docs/openapi.yaml`.

use super::error::FieldError;
use crate::TaskOptions;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};
use warren_common::{delay, Codec};

/// Longest task name or id: AMQP short strings hold 255 bytes.
const MAX_SHORT: usize = 255;

/// Longest queue name: the delay cascade's routing keys add 56 bytes to it (see `topology`).
const MAX_QUEUE: usize = 199;

/// One task as posted to `/v1/tasks` (or as an element of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskRequest {
    task: Option<String>,
    #[serde(default)]
    payload: Value,
    queue: Option<String>,
    id: Option<String>,
    max_attempts: Option<u32>,
    delay: Option<Seconds>,
    timeout: Option<Seconds>,
    expires_at: Option<String>,
    priority: Option<u8>,
    traceparent: Option<String>,
}

/// The body of `/v1/tasks:batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    pub(crate) tasks: Vec<TaskRequest>,
}

/// A validated task, ready to publish; its id is always set, so a failure can name it.
#[derive(Debug)]
pub(crate) struct ValidTask {
    pub(crate) task: String,
    pub(crate) payload: Value,
    pub(crate) queue: String,
    pub(crate) options: TaskOptions,
}

impl ValidTask {
    /// The task's id (assigned here when the request named none).
    pub(crate) fn id(&self) -> &str {
        self.options.id.as_deref().unwrap_or_default()
    }
}

impl TaskRequest {
    /// Checks every field. `prefix` is prepended to field names (`tasks[3].` in a batch);
    /// `traceparent` is the request's header, used when the body names none.
    pub(crate) fn validate(
        self,
        prefix: &str,
        default_queue: &str,
        traceparent: Option<&str>,
    ) -> Result<ValidTask, FieldError> {
        let err =
            |field: &str, message: String| FieldError::new(format!("{prefix}{field}"), message);
        let task = self
            .task
            .ok_or_else(|| err("task", "task is required".into()))?;
        check_short(&task, "task").map_err(|m| err("task", m))?;
        if let Some(id) = &self.id {
            check_short(id, "id").map_err(|m| err("id", m))?;
        }
        let queue = self.queue.unwrap_or_else(|| default_queue.to_owned());
        check_queue(&queue).map_err(|m| err("queue", m))?;
        if self.max_attempts == Some(0) {
            return Err(err(
                "max_attempts",
                "max_attempts must be at least 1".into(),
            ));
        }
        if let Some(Seconds(delay)) = self.delay {
            if delay > delay::max_delay() {
                let max = delay::max_delay().as_secs();
                return Err(err("delay", format!("delay must be at most {max} seconds")));
            }
        }
        if self.timeout.is_some_and(|Seconds(t)| t.is_zero()) {
            return Err(err("timeout", "timeout must be more than 0 seconds".into()));
        }
        let expires_at_ms = match &self.expires_at {
            Some(text) => Some(parse_rfc3339_ms(text).map_err(|m| err("expires_at", m))?),
            None => None,
        };
        if self.priority.is_some_and(|p| p > 9) {
            return Err(err("priority", "priority must be between 0 and 9".into()));
        }
        if let Some(tp) = &self.traceparent {
            if !valid_traceparent(tp) {
                let message = "traceparent is not a valid W3C traceparent \
                               (00-<32 hex>-<16 hex>-<2 hex>)";
                return Err(err("traceparent", message.into()));
            }
        }
        let traceparent = self.traceparent.or_else(|| {
            traceparent
                .filter(|t| valid_traceparent(t))
                .map(str::to_owned)
        });
        let options = TaskOptions {
            queue: Some(queue.clone()),
            id: Some(self.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string())),
            codec: Some(Codec::Json),
            max_attempts: self.max_attempts,
            timeout: self.timeout.map(|Seconds(t)| t),
            expires_at_ms,
            traceparent,
            delay: self.delay.map(|Seconds(d)| d).filter(|d| !d.is_zero()),
            priority: self.priority,
            ..TaskOptions::default()
        };
        Ok(ValidTask {
            task,
            payload: self.payload,
            queue,
            options,
        })
    }
}

fn check_short(value: &str, name: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{name} must not be empty"))
    } else if value.len() > MAX_SHORT {
        Err(format!("{name} must be at most {MAX_SHORT} bytes"))
    } else {
        Ok(())
    }
}

/// The rules `QueueSpec` applies when a queue is declared, checked before publishing.
fn check_queue(queue: &str) -> Result<(), String> {
    let problem = if queue.is_empty() {
        "queue must not be empty"
    } else if queue.len() > MAX_QUEUE {
        "queue must be at most 199 bytes"
    } else if queue.starts_with("amq.") {
        "queue names starting with `amq.` are reserved by the broker"
    } else if queue.split('.').any(|word| word == "*" || word == "#") {
        "a dot-separated word of the queue name must not be `*` or `#`"
    } else if queue.chars().any(char::is_control) {
        "queue must not contain control characters"
    } else {
        return Ok(());
    };
    Err(problem.to_owned())
}

/// A duration given either as a number of seconds (`30`, `0.5`) or as a string with units
/// (`"30s"`, `"1h 30m"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Seconds(pub(crate) Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecondsVisitor)
    }
}

struct SecondsVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = Seconds;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number of seconds or a duration such as \"30s\" or \"1h 30m\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
        Ok(Seconds(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
        u64::try_from(v)
            .map(|v| Seconds(Duration::from_secs(v)))
            .map_err(|_| E::custom("a duration must not be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
        Duration::try_from_secs_f64(v)
            .map(Seconds)
            .map_err(|_| E::custom("a duration must be a non-negative, finite number of seconds"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
        humantime::parse_duration(v.trim())
            .map(Seconds)
            .map_err(|e| E::custom(format!("`{v}` is not a duration such as \"30s\": {e}")))
    }
}

/// Parses an RFC 3339 timestamp with a zone (`Z` or `±HH:MM`) into milliseconds since the
/// epoch. A timestamp without a zone is refused: it would mean a different instant on the
/// client and the server.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "expires_at `{text}` is not an RFC 3339 time with a zone, e.g. 2026-12-01T09:00:00Z"
        )
    };
    let text = text.trim();
    let (local, offset_secs) = if let Some(local) = text.strip_suffix(['Z', 'z']) {
        (local, 0i64)
    } else {
        let split = text.len().checked_sub(6).ok_or_else(bad)?;
        let (local, zone) = text.split_at_checked(split).ok_or_else(bad)?;
        let sign = match zone.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (hours, minutes) = zone[1..].split_once(':').ok_or_else(bad)?;
        let hours: i64 = hours.parse().map_err(|_| bad())?;
        let minutes: i64 = minutes.parse().map_err(|_| bad())?;
        if hours > 23 || minutes > 59 {
            return Err(bad());
        }
        (local, sign * (hours * 3600 + minutes * 60))
    };
    if !local.contains(['T', 't']) {
        return Err(bad());
    }
    let utc = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    let millis = utc
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis() as i64;
    u64::try_from(millis - offset_secs * 1000).map_err(|_| bad())
}

/// Whether `value` is a W3C trace-context `traceparent` (version 00, or a later version's
/// first four fields), with non-zero trace and parent ids.
pub(crate) fn valid_traceparent(value: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = value.splitn(5, '-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest = parts.next();
    let shapes = version.len() == 2
        && trace.len() == 32
        && parent.len() == 16
        && flags.len() == 2
        && [version, trace, parent, flags].into_iter().all(hex);
    shapes
        && version != "ff"
        && (version != "00" || rest.is_none())
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidTask, FieldError> {
        let request: TaskRequest = serde_json::from_str(json).expect("parses");
        request.validate("", "default", None)
    }

    #[test]
    fn durations_are_seconds_or_strings() {
        let s = |json: &str| serde_json::from_str::<Seconds>(json).map(|s| s.0);
        assert_eq!(s("30").unwrap(), Duration::from_secs(30));
        assert_eq!(s("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(s("\"1m 30s\"").unwrap(), Duration::from_secs(90));
        assert!(s("-1").is_err());
        assert!(s("\"30\"").is_err());
        assert!(s("true").is_err());
    }

    #[test]
    fn rfc3339_times_need_a_zone() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert_eq!(
            parse_rfc3339_ms("1970-01-01T00:00:01.250-00:30"),
            Ok(1_801_250)
        );
        assert!(parse_rfc3339_ms("1970-01-01T00:00:01").is_err());
        assert!(parse_rfc3339_ms("1970-01-01 00:00:01Z").is_err());
        assert!(parse_rfc3339_ms("tomorrow").is_err());
        assert!(parse_rfc3339_ms("+01:00").is_err());
        assert_eq!(
            parse_rfc3339_ms("2026-12-01T09:00:00Z"),
            Ok(1_796_115_600_000)
        );
    }

    #[test]
    fn traceparents_follow_the_w3c_format() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(good));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        assert!(!valid_traceparent(&format!("{good}-extra")));
        assert!(!valid_traceparent(&good.to_uppercase()));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!valid_traceparent(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("00-abc-def-01"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |json: &str| parse(json).unwrap_err().field;
        assert_eq!(field(r#"{"payload": 1}"#), "task");
        assert_eq!(field(r#"{"task": ""}"#), "task");
        assert_eq!(
            field(&format!(r#"{{"task": "{}"}}"#, "t".repeat(256))),
            "task"
        );
        assert_eq!(field(r#"{"task": "t", "id": ""}"#), "id");
        assert_eq!(field(r#"{"task": "t", "queue": "amq.x"}"#), "queue");
        assert_eq!(field(r#"{"task": "t", "queue": "a.#"}"#), "queue");
        assert_eq!(field(r#"{"task": "t", "priority": 10}"#), "priority");
        assert_eq!(field(r#"{"task": "t", "max_attempts": 0}"#), "max_attempts");
        assert_eq!(field(r#"{"task": "t", "timeout": 0}"#), "timeout");
        assert_eq!(field(r#"{"task": "t", "delay": 1e12}"#), "delay");
        assert_eq!(
            field(r#"{"task": "t", "expires_at": "soon"}"#),
            "expires_at"
        );
        assert_eq!(field(r#"{"task": "t", "traceparent": "x"}"#), "traceparent");
    }

    #[test]
    fn a_valid_task_becomes_options() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let request: TaskRequest = serde_json::from_str(
            r#"{"task": "demo.sleep", "payload": {"ms": 5}, "delay": "2s", "timeout": 1.5,
                "priority": 3, "max_attempts": 2, "expires_at": "2100-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let task = request.validate("", "jobs", Some(tp)).unwrap();
        assert_eq!(task.queue, "jobs");
        assert_eq!(task.payload, serde_json::json!({"ms": 5}));
        assert_eq!(task.options.delay, Some(Duration::from_secs(2)));
        assert_eq!(task.options.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(task.options.priority, Some(3));
        assert_eq!(task.options.max_attempts, Some(2));
        assert_eq!(task.options.expires_at_ms, Some(4_102_444_800_000));
        assert_eq!(task.options.traceparent.as_deref(), Some(tp));
        assert_eq!(task.options.codec, Some(Codec::Json));
        assert!(!task.id().is_empty());
    }
}
