//! What becomes of a task: the one place where a handler's result, a decoding failure or an
//! exhausted budget turns into ack, retry, dead letter or isolation.

use std::fmt;
use std::time::Duration;
pub use warren_common::ReasonKind;

/// A failure: its kind and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The kind of failure.
    pub kind: ReasonKind,
    /// What went wrong, for people.
    pub reason: String,
}

impl Failure {
    /// A failure of `kind` explained by `reason`.
    pub fn new(kind: ReasonKind, reason: impl fmt::Display) -> Self {
        Failure {
            kind,
            reason: reason.to_string(),
        }
    }
}

/// The fate of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task succeeded: ack it.
    Ack,
    /// Publish it to run again after `after`, then ack this delivery.
    Retry {
        /// How long the broker holds it.
        after: Duration,
        /// The failure that caused the retry.
        failure: Failure,
    },
    /// Publish it to the dead-letter queue, then ack this delivery.
    DeadLetter(Failure),
    /// It came back from the queue without being settled too often to run beside other tasks
    /// (it may be crashing its workers): publish it to the queue's isolation queue, where
    /// workers run it alone, then ack this delivery. Not run.
    Isolate {
        /// How many times the broker returned it to the work queue.
        returns: u64,
    },
    /// It was cancelled through the control stream (before it ran, or its handler was
    /// stopped): ack it, and do not retry it.
    Cancelled,
}

impl Outcome {
    /// Decides what follows a failure on attempt `attempt` of `max_attempts`; `backoff` gives
    /// the delay before the next attempt.
    pub fn after_failure(
        failure: Failure,
        attempt: u32,
        max_attempts: u32,
        backoff: impl FnOnce(u32) -> Duration,
    ) -> Outcome {
        if !failure.kind.is_retryable() {
            return Outcome::DeadLetter(failure);
        }
        if attempt >= max_attempts {
            let reason = format!(
                "gave up after {attempt} attempts; last failure ({}): {}",
                failure.kind, failure.reason
            );
            // The dead letter keeps the kind of the last failure when it says more than
            // "it failed" (a timeout, a panic); a plain error becomes `retries_exhausted`.
            let kind = match failure.kind {
                ReasonKind::Error => ReasonKind::RetriesExhausted,
                other => other,
            };
            return Outcome::DeadLetter(Failure::new(kind, reason));
        }
        Outcome::Retry {
            after: backoff(attempt),
            failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_second(_: u32) -> Duration {
        Duration::from_secs(1)
    }

    #[test]
    fn retryable_failures_retry_until_the_last_attempt() {
        let failure = Failure::new(ReasonKind::Error, "boom");
        let outcome = Outcome::after_failure(failure.clone(), 1, 3, one_second);
        assert_eq!(
            outcome,
            Outcome::Retry {
                after: Duration::from_secs(1),
                failure
            }
        );
        let last =
            Outcome::after_failure(Failure::new(ReasonKind::Error, "boom"), 3, 3, one_second);
        assert!(
            matches!(&last, Outcome::DeadLetter(f) if f.kind == ReasonKind::RetriesExhausted
            && f.reason.contains("3 attempts") && f.reason.contains("boom"))
        );
        let slow =
            Outcome::after_failure(Failure::new(ReasonKind::Timeout, "slow"), 3, 3, one_second);
        assert!(matches!(slow, Outcome::DeadLetter(f) if f.kind == ReasonKind::Timeout));
    }

    #[test]
    fn permanent_kinds_dead_letter_at_once() {
        for kind in [
            ReasonKind::Permanent,
            ReasonKind::Undecodable,
            ReasonKind::UnknownTask,
            ReasonKind::Expired,
            ReasonKind::CrashLoop,
            ReasonKind::TooLarge,
        ] {
            let outcome = Outcome::after_failure(Failure::new(kind, "x"), 1, 5, one_second);
            assert!(matches!(outcome, Outcome::DeadLetter(f) if f.kind == kind));
        }
    }
}
