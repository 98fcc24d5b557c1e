//! What a broker's error means for the one who got it: retry later, or tell a person.
//!
//! A reply code alone does not say. 404 NOT_FOUND answers a passive declare of a queue that
//! does not exist (only a person can fix that), but also any declare of a classic queue whose
//! home node is down (an outage: it ends when the node is back), and an active declare can
//! only get it for the second reason. So every place that classifies a broker error names the
//! operation that got it, and goes through [`classify`].

/// What was being done when the broker answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A passive declare: asking whether something exists.
    Inspect,
    /// Anything else: an active declare, a bind, a consume, a publish.
    Use,
}

/// The meaning of a broker error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A passive declare found nothing of that name.
    Missing,
    /// The broker cannot serve it now: a node that is down, a queue without a leader, a lost
    /// connection. Retry with backoff.
    Unavailable,
    /// It exists with other arguments (406): only a person can fix that.
    Mismatch,
    /// The user may not do it (403): only a person can fix that.
    Forbidden,
}

impl Fault {
    /// True when retrying cannot help.
    pub fn is_permanent(self) -> bool {
        matches!(self, Fault::Missing | Fault::Mismatch | Fault::Forbidden)
    }
}

/// Classifies `error`, which the broker (or the connection) gave for `operation`.
pub fn classify(error: &lapin::Error, operation: Operation) -> Fault {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            classify_reply(amqp.get_id(), amqp.get_message().as_str(), operation)
        }
        _ => Fault::Unavailable,
    }
}

/// Classifies a reply code and text (see [`classify`]).
fn classify_reply(code: u16, text: &str, operation: Operation) -> Fault {
    match code {
        404 if operation == Operation::Inspect && !is_node_down(text) => Fault::Missing,
        406 => Fault::Mismatch,
        403 => Fault::Forbidden,
        _ => Fault::Unavailable,
    }
}

/// The broker's words for a classic queue whose home node is down: "NOT_FOUND - home node
/// 'rabbit@b' of durable queue 'q' in vhost '/' is down or inaccessible" (RabbitMQ 3.10).
fn is_node_down(text: &str) -> bool {
    text.contains("home node") || text.contains("down or inaccessible")
}

/// The broker's message of a protocol error, for logs and readiness.
pub fn reply_text(error: &lapin::Error) -> Option<&str> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_message().as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: &str = "NOT_FOUND - home node 'rabbit@b' of durable queue 'warren.delay.01' \
                        in vhost '/' is down or inaccessible";
    const MISSING: &str = "NOT_FOUND - no queue 'q' in vhost '/'";

    #[test]
    fn a_missing_queue_is_missing_only_when_asked_about() {
        assert_eq!(
            classify_reply(404, MISSING, Operation::Inspect),
            Fault::Missing
        );
        // An active declare creates what is missing: its 404 can only be an outage.
        assert_eq!(
            classify_reply(404, MISSING, Operation::Use),
            Fault::Unavailable
        );
    }

    #[test]
    fn a_node_that_is_down_is_an_outage_whatever_was_asked() {
        for operation in [Operation::Inspect, Operation::Use] {
            let fault = classify_reply(404, DOWN, operation);
            assert_eq!(fault, Fault::Unavailable);
            assert!(!fault.is_permanent());
        }
    }

    #[test]
    fn only_a_person_can_fix_mismatches_and_permissions() {
        assert!(classify_reply(406, "PRECONDITION_FAILED", Operation::Use).is_permanent());
        assert!(classify_reply(403, "ACCESS_REFUSED", Operation::Use).is_permanent());
        // 541 INTERNAL_ERROR: e.g. a quorum queue without a leader.
        assert!(!classify_reply(541, "INTERNAL_ERROR", Operation::Use).is_permanent());
        assert!(!classify_reply(320, "CONNECTION_FORCED", Operation::Inspect).is_permanent());
    }
}
