//! What a work queue looks like: its type, priority and dead-letter retention, and the
//! arguments it is declared with. The one place those arguments are decided, so workers,
//! producers, the HTTP ingest and the scheduler can never disagree about them.

use crate::header_value::{int_value, text_value};
use lapin::types::FieldTable;

/// Longest work queue name: the delay cascade's routing keys are 56 bytes plus the name,
/// within AMQP's 255.
const MAX_QUEUE_NAME: usize = 199;

/// Suffix of a work queue's dead-letter queue.
const DEAD_LETTER_SUFFIX: &str = ".dead";

/// Suffix of a quorum work queue's isolation queue.
const ISOLATION_SUFFIX: &str = ".isolation";

/// Redeliveries after which a quorum queue dead-letters a message by itself. A backstop only:
/// the worker's own crash budget is far lower and dead-letters with Warren's headers.
pub const BROKER_DELIVERY_LIMIT: u64 = 50;

/// The dead-letter queue of a work queue.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}{DEAD_LETTER_SUFFIX}")
}

/// The isolation queue of a quorum work queue: where a worker moves a task that keeps coming
/// back without being settled (it may be crashing its workers), to run it alone
/// (docs/failures.md, "The crash budget").
pub fn isolation_queue_name(queue: &str) -> String {
    format!("{queue}{ISOLATION_SUFFIX}")
}

/// The RabbitMQ queue type of a work queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum QueueKind {
    /// Replicated, durable, with a redelivery count: the default.
    #[default]
    Quorum,
    /// A classic durable queue (needed for priorities).
    Classic,
}

impl QueueKind {
    fn as_str(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }
}

/// What a work queue looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name, also the routing key tasks are published with.
    pub name: String,
    /// Queue type.
    pub kind: QueueKind,
    /// Highest priority honoured (1-9), making it a priority queue; classic queues only.
    pub max_priority: Option<u8>,
    /// How long and how many dead letters the dead-letter queue keeps.
    pub retention: Retention,
}

/// Retention of a dead-letter queue. Set when the queue is first declared: changing it later
/// is refused by the broker (406) like any queue argument. A RabbitMQ policy can only lower
/// it on a live queue (the broker applies the lower of the two); to raise it, recreate the
/// dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Retention {
    /// Dead letters kept per queue; past it the oldest are dropped (0 = no limit).
    #[cfg_attr(feature = "clap", arg(long = "dead-letter-max-length", env = "WARREN_DEAD_LETTER_MAX_LENGTH", default_value_t = DEFAULT_DEAD_LETTER_MAX_LENGTH))]
    pub max_length: u64,
    /// How long a dead letter is kept (0 = forever).
    #[cfg_attr(feature = "clap", arg(long = "dead-letter-max-age", env = "WARREN_DEAD_LETTER_MAX_AGE", default_value = "14days", value_parser = humantime::parse_duration))]
    pub max_age: std::time::Duration,
}

/// Default number of dead letters kept per queue.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 100_000;

/// Default age after which a dead letter is dropped.
pub const DEFAULT_DEAD_LETTER_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(14 * 24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH,
            max_age: DEFAULT_DEAD_LETTER_MAX_AGE,
        }
    }
}

impl QueueSpec {
    /// A work queue of the given kind.
    pub fn new(name: impl Into<String>, kind: QueueKind) -> Self {
        QueueSpec {
            name: name.into(),
            kind,
            max_priority: None,
            retention: Retention::default(),
        }
    }

    /// The same queue with another dead-letter retention.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The same queue as a priority queue honouring priorities up to `max` (1-9).
    pub fn with_max_priority(mut self, max: Option<u8>) -> Self {
        self.max_priority = max;
        self
    }

    pub(crate) fn work_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text_value(self.kind.as_str()));
        // Whatever the broker dead-letters by itself (a quorum queue's delivery limit) lands
        // in the same dead-letter queue as the worker's dead letters.
        args.insert("x-dead-letter-exchange".into(), text_value(""));
        let dlq = dead_letter_queue_name(&self.name);
        args.insert("x-dead-letter-routing-key".into(), text_value(&dlq));
        if self.kind == QueueKind::Quorum {
            args.insert("x-delivery-limit".into(), int_value(BROKER_DELIVERY_LIMIT));
        }
        if let Some(max) = self.max_priority {
            args.insert("x-max-priority".into(), int_value(max.into()));
        }
        args
    }

    /// The arguments of the isolation queue ([`isolation_queue_name`]) of a quorum work queue:
    /// a quorum queue too (its redelivery count is the crash budget's), with the work queue's
    /// dead-letter route and delivery-limit backstop.
    pub fn isolation_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            text_value(QueueKind::Quorum.as_str()),
        );
        args.insert("x-dead-letter-exchange".into(), text_value(""));
        let dlq = dead_letter_queue_name(&self.name);
        args.insert("x-dead-letter-routing-key".into(), text_value(&dlq));
        args.insert("x-delivery-limit".into(), int_value(BROKER_DELIVERY_LIMIT));
        args
    }

    pub(crate) fn dead_letter_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text_value(self.kind.as_str()));
        if self.retention.max_length > 0 {
            args.insert("x-max-length".into(), int_value(self.retention.max_length));
        }
        if !self.retention.max_age.is_zero() {
            let ms = u64::try_from(self.retention.max_age.as_millis()).unwrap_or(u64::MAX);
            args.insert("x-message-ttl".into(), int_value(ms));
        }
        args
    }

    /// Whether the queue can be declared; else what is wrong with it.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let problem = if self.name.is_empty() {
            Some("a queue name must not be empty")
        } else if self.name.len() > MAX_QUEUE_NAME {
            Some("a queue name must be at most 199 bytes (the delay cascade's routing keys add 56)")
        } else if self.name.starts_with("amq.") {
            Some("names starting with `amq.` are reserved by the broker")
        } else if self.name.split('.').any(|word| word == "*" || word == "#") {
            Some("a dot-separated word of the name must not be `*` or `#`")
        } else if self.max_priority.is_some() && self.kind != QueueKind::Classic {
            Some("priority queues must be classic queues (--queue-type classic)")
        } else if self.max_priority.is_some_and(|p| !(1..=9).contains(&p)) {
            Some("the maximum priority must be between 1 and 9")
        } else {
            None
        };
        problem.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(QueueSpec::new("", QueueKind::Quorum).validate().is_err());
        assert!(QueueSpec::new("amq.x", QueueKind::Quorum)
            .validate()
            .is_err());
        assert!(QueueSpec::new("q".repeat(200), QueueKind::Quorum)
            .validate()
            .is_err());
        assert!(QueueSpec::new("orders.*", QueueKind::Quorum)
            .validate()
            .is_err());
        assert!(QueueSpec::new("orders.eu", QueueKind::Quorum)
            .validate()
            .is_ok());
    }
}
