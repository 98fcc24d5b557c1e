//! Reason kinds: the fixed set of machine-readable reasons a task fails or is dead-lettered
//! for. Their names are wire contract (the `x-warren-dead-kind` header, the `<kind>:` prefix
//! of `x-warren-last-error`) and the `reason` label of the worker's metrics.

use std::fmt;

/// Why a task failed or was dead-lettered. The names are the values of the
/// `x-warren-dead-kind` header and of the `reason` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonKind {
    /// A handler error on the last allowed attempt (a timeout or a panic on the last attempt
    /// keeps its own kind).
    RetriesExhausted,
    /// The handler returned a retryable error (a failure, not a dead-letter kind by itself).
    Error,
    /// The handler said the task can never succeed.
    Permanent,
    /// The handler ran longer than its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The task's `expires_at` passed before it ran.
    Expired,
    /// The payload did not decode into the handler's type.
    Undecodable,
    /// No handler is registered under the task's name.
    UnknownTask,
    /// The content type names no codec Warren knows.
    UnsupportedContentType,
    /// A required property (`type`, `message_id`) is missing or a header is invalid.
    InvalidMessage,
    /// The payload is larger than the worker accepts.
    TooLarge,
    /// The task was redelivered more often than the crash budget allows.
    CrashLoop,
}

impl ReasonKind {
    /// Every kind.
    pub const ALL: [ReasonKind; 12] = [
        ReasonKind::RetriesExhausted,
        ReasonKind::Error,
        ReasonKind::Permanent,
        ReasonKind::Timeout,
        ReasonKind::Panic,
        ReasonKind::Expired,
        ReasonKind::Undecodable,
        ReasonKind::UnknownTask,
        ReasonKind::UnsupportedContentType,
        ReasonKind::InvalidMessage,
        ReasonKind::TooLarge,
        ReasonKind::CrashLoop,
    ];

    /// The snake_case name used in headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::RetriesExhausted => "retries_exhausted",
            ReasonKind::Error => "error",
            ReasonKind::Permanent => "permanent",
            ReasonKind::Timeout => "timeout",
            ReasonKind::Panic => "panic",
            ReasonKind::Expired => "expired",
            ReasonKind::Undecodable => "undecodable",
            ReasonKind::UnknownTask => "unknown_task",
            ReasonKind::UnsupportedContentType => "unsupported_content_type",
            ReasonKind::InvalidMessage => "invalid_message",
            ReasonKind::TooLarge => "too_large",
            ReasonKind::CrashLoop => "crash_loop",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ReasonKind::Error | ReasonKind::Timeout | ReasonKind::Panic
        )
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in ReasonKind::ALL {
            assert_eq!(ReasonKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ReasonKind::parse("Timeout"), None);
        assert_eq!(ReasonKind::parse("broker:delivery_limit"), None);
    }

    #[test]
    fn the_names_on_the_wire_do_not_change() {
        // docs/wire-format.md §8.3 lists these; other languages match on them.
        let names: Vec<&str> = ReasonKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "retries_exhausted",
                "error",
                "permanent",
                "timeout",
                "panic",
                "expired",
                "undecodable",
                "unknown_task",
                "unsupported_content_type",
                "invalid_message",
                "too_large",
                "crash_loop"
            ]
        );
    }
}
