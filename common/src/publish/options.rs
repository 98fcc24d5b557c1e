//! Per-task publishing options, and the message a task with them becomes.

use super::PublishError;
use crate::{delay, Codec, Envelope, TaskId};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-task publishing options, set with a builder:
/// `TaskOptions::new().queue("images").delay(Duration::from_secs(30))`.
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// Queue (routing key) to publish to; the publisher's default queue when `None`.
    pub queue: Option<String>,
    /// The task id; a fresh UUIDv7 when `None`.
    pub id: Option<TaskId>,
    /// Payload codec; bincode when `None`.
    pub codec: Option<Codec>,
    /// Payload schema version; 1 when `None`.
    pub schema_version: Option<u32>,
    /// Maximum attempts for this task, overriding the worker's setting.
    pub max_attempts: Option<u32>,
    /// Handler timeout for this task, overriding the worker's setting.
    pub timeout: Option<Duration>,
    /// Time after which the task must not run: a worker receiving it later dead-letters it as
    /// `expired`.
    pub expires_at: Option<SystemTime>,
    /// W3C `traceparent` of the caller's span.
    pub traceparent: Option<String>,
    /// Hold the task in the broker this long before it is delivered (whole seconds, rounded
    /// up; see the delay cascade in `docs/wire-format.md`).
    pub delay: Option<Duration>,
    /// Priority 0-9, honoured by queues declared as priority queues.
    pub priority: Option<u8>,
}

impl TaskOptions {
    /// Every option at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publish to `queue` instead of the publisher's default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Use `id` as the task id (e.g. to make a republish idempotent).
    pub fn id(mut self, id: impl Into<TaskId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Encode the payload with `codec` (bincode by default; JSON for other languages).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// The payload's schema version.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = Some(version);
        self
    }

    /// Attempts allowed for this task, overriding the worker's setting.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Handler timeout for this task, overriding the worker's setting.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The task must not run after `at`.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The task must not run once `after` has passed from now.
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expires_at = SystemTime::now().checked_add(after);
        self
    }

    /// Deliver the task after `delay` (whole seconds, rounded up; at most
    /// [`delay::max_delay`]).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Priority 0-9 (priority queues only).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The caller's W3C `traceparent`.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The envelope and body of task `task` with these options, as a publish would send
    /// them (no broker needed: the testing API and tools use it too).
    pub fn prepare<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
    ) -> Result<(Envelope, Vec<u8>), PublishError> {
        let options = self;
        let codec = options.codec.unwrap_or_default();
        let mut envelope = Envelope::new(task, codec);
        if let Some(id) = &options.id {
            envelope.id.clone_from(id);
        }
        if let Some(v) = options.schema_version {
            envelope.schema_version = v;
        }
        envelope.max_attempts = options.max_attempts;
        envelope.timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
        envelope.expires_ms = options.expires_at.map(epoch_ms);
        envelope.traceparent.clone_from(&options.traceparent);
        envelope.not_before_ms = options
            .delay
            .filter(|d| delay::delay_seconds(*d) > 0)
            .map(|d| {
                let created = envelope.created_ms.unwrap_or_else(crate::now_ms);
                created + delay::delay_seconds(d) * 1000
            });
        if let Some(wait) = options.delay.filter(|d| *d > delay::max_delay()) {
            return Err(PublishError::DelayTooLong {
                requested: wait,
                max: delay::max_delay(),
            });
        }
        envelope.validate()?;
        let body = codec.encode(payload)?;
        Ok((envelope, body))
    }
}

/// Milliseconds since the epoch of `at`: 0 before the epoch, `u64::MAX` past its range.
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_convert_to_epoch_milliseconds_at_the_extremes() {
        assert_eq!(epoch_ms(UNIX_EPOCH), 0);
        assert_eq!(epoch_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let at = UNIX_EPOCH + Duration::from_millis(4_102_444_800_000);
        assert_eq!(epoch_ms(at), 4_102_444_800_000);
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_millis(u64::MAX) * 2) {
            assert_eq!(epoch_ms(far), u64::MAX);
        }
        // The largest Duration is not a time: expires_in leaves the task without an expiry
        // rather than overflowing.
        assert_eq!(
            TaskOptions::new().expires_in(Duration::MAX).expires_at,
            None
        );
    }

    #[test]
    fn the_builder_sets_each_option() {
        let options = TaskOptions::new()
            .queue("images")
            .id("t-1")
            .codec(Codec::Json)
            .schema_version(2)
            .max_attempts(3)
            .timeout(Duration::from_secs(9))
            .delay(Duration::from_secs(30))
            .priority(4)
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(options.queue.as_deref(), Some("images"));
        assert_eq!(options.id.as_deref(), Some("t-1"));
        assert_eq!(options.codec, Some(Codec::Json));
        assert_eq!(options.schema_version, Some(2));
        assert_eq!(options.max_attempts, Some(3));
        assert_eq!(options.timeout, Some(Duration::from_secs(9)));
        assert_eq!(options.delay, Some(Duration::from_secs(30)));
        assert_eq!(options.priority, Some(4));
        assert!(options.traceparent.is_some());
    }
}
