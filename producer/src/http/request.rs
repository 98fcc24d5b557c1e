//! The JSON bodies the ingest accepts and their validation: every field is checked here, so
//! that a bad request is answered with the name of the bad field before anything is sent to
//! the broker. The schema is documented in `docs/openapi.yaml`.

use super::error::FieldError;
use super::json::read_json;
use super::time::{parse_rfc3339_ms, Seconds};
use crate::TaskOptions;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
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
        if task.chars().any(char::is_control) {
            // The name selects a handler: one with a control character is a client's bug,
            // better answered now than dead-lettered as an unknown task later.
            return Err(err(
                "task",
                "task must not contain control characters".into(),
            ));
        }
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
        let max = delay::max_delay();
        if self.delay.is_some_and(|Seconds(d)| d > max) {
            let message = format!("delay must be at most {} seconds", max.as_secs());
            return Err(err("delay", message));
        }
        let timeout = self.timeout.map(|Seconds(t)| t);
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(err("timeout", "timeout must be more than 0 seconds".into()));
        }
        if timeout.is_some_and(|t| t > max) {
            let message = format!("timeout must be at most {} seconds", max.as_secs());
            return Err(err("timeout", message));
        }
        let expires_at = match &self.expires_at {
            Some(text) => {
                let ms = parse_rfc3339_ms(text).map_err(|m| err("expires_at", m))?;
                Some(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            }
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
            timeout: timeout.map(whole_millis),
            expires_at,
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

/// Reads a `POST /v1/tasks` body (with `batch`, a `/v1/tasks:batch` one) as the ingest does,
/// without a server or a broker: the ids of its tasks, or the error message a client would
/// get. For the fuzz targets in `fuzz/`, not a supported API.
#[doc(hidden)]
pub fn read_task_body(
    body: &[u8],
    batch: bool,
    traceparent: Option<&str>,
) -> Result<Vec<String>, String> {
    let tasks = if batch {
        read_json::<BatchRequest>(body)
            .map_err(|e| e.body.error)?
            .tasks
    } else {
        vec![read_json::<TaskRequest>(body).map_err(|e| e.body.error)?]
    };
    let prefix = |i: usize| match batch {
        true => format!("tasks[{i}]."),
        false => String::new(),
    };
    let validate = |(i, task): (usize, TaskRequest)| {
        let task = task.validate(&prefix(i), "default", traceparent);
        task.map(|t| t.id().to_owned()).map_err(|e| e.message)
    };
    tasks.into_iter().enumerate().map(validate).collect()
}

/// The wire carries a timeout in milliseconds: round up, so that a positive timeout stays one.
fn whole_millis(timeout: Duration) -> Duration {
    Duration::from_millis(timeout.as_nanos().div_ceil(1_000_000) as u64)
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
        assert_eq!(field(r#"{"task": "a\u0000b"}"#), "task");
        assert_eq!(
            field(r#"{"task": "t", "timeout": "300000000s"}"#),
            "timeout"
        );
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
        let tiny: TaskRequest = serde_json::from_str(r#"{"task": "t", "timeout": 1e-9}"#).unwrap();
        let tiny = tiny.validate("", "jobs", None).unwrap();
        assert_eq!(tiny.options.timeout, Some(Duration::from_millis(1)));
        assert_eq!(task.options.priority, Some(3));
        assert_eq!(task.options.max_attempts, Some(2));
        assert_eq!(
            task.options.expires_at,
            Some(std::time::UNIX_EPOCH + Duration::from_millis(4_102_444_800_000))
        );
        assert_eq!(task.options.traceparent.as_deref(), Some(tp));
        assert_eq!(task.options.codec, Some(Codec::Json));
        assert!(!task.id().is_empty());
    }
}
