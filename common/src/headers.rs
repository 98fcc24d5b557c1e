//! Names of the AMQP headers Warren reads and writes. These strings are the wire contract:
//! changing one breaks every producer written in another language.

/// Attempt number of this delivery of the task, starting at 1 (integer, any width).
pub const ATTEMPT: &str = "x-warren-attempt";
/// Creation time of the task in milliseconds since the Unix epoch (integer).
pub const CREATED_MS: &str = "x-warren-created-ms";
/// Version of the payload's schema, chosen by the task's author (integer, default 1).
pub const SCHEMA_VERSION: &str = "x-warren-schema";
/// Per-task override of the maximum number of attempts (integer, optional).
pub const MAX_ATTEMPTS: &str = "x-warren-max-attempts";
/// Per-task override of the handler timeout in milliseconds (integer, optional).
pub const TIMEOUT_MS: &str = "x-warren-timeout-ms";
/// Time after which the task must not run, in milliseconds since the epoch (integer, optional).
pub const EXPIRES_MS: &str = "x-warren-expires-ms";
/// Time before which the task was held back (a delayed publish or a retry's backoff), in
/// milliseconds since the epoch (integer, optional). Queue latency is measured from it.
pub const NOT_BEFORE_MS: &str = "x-warren-not-before-ms";
/// W3C trace context of the publisher (string, optional).
pub const TRACEPARENT: &str = "traceparent";
/// How many times the task was replayed from the dead letters (integer, absent: 0). Written
/// by `dead-letters replay`, kept through retries and isolation, copied into the task's
/// events: it comes first in their rank (docs/wire-format.md §11.6).
pub const REPLAYS: &str = "x-warren-replays";

/// The last failure of a task being retried: `<kind>: <reason>`, truncated.
pub const LAST_ERROR: &str = "x-warren-last-error";

/// Why the task was dead-lettered: the error text, truncated.
pub const DEAD_REASON: &str = "x-warren-dead-reason";
/// The kind of reason, one of a fixed set (see [`ReasonKind`](crate::ReasonKind)).
pub const DEAD_KIND: &str = "x-warren-dead-kind";
/// Number of attempts made before the task was dead-lettered.
pub const DEAD_ATTEMPTS: &str = "x-warren-dead-attempts";
/// Time of the first failure, milliseconds since the epoch.
pub const FIRST_FAILURE_MS: &str = "x-warren-first-failure-ms";
/// Time of the last failure (the one that dead-lettered it), milliseconds since the epoch.
pub const LAST_FAILURE_MS: &str = "x-warren-last-failure-ms";
/// Queue the task was consumed from.
pub const ORIGINAL_QUEUE: &str = "x-warren-original-queue";
/// Routing key the task was published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-warren-original-routing-key";
/// Identity of the worker that gave up on the task.
pub const DEAD_WORKER: &str = "x-warren-dead-worker";

/// Redelivery count maintained by quorum queues (not written by Warren).
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";
/// Broker-maintained dead-lettering history (read for display only, never for counting).
pub const X_DEATH: &str = "x-death";
/// Exchange of the broker's first dead-lettering of the message.
pub const X_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
/// Queue of the broker's first dead-lettering of the message.
pub const X_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
/// Reason of the broker's first dead-lettering of the message.
pub const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// Exchange of the broker's latest dead-lettering of the message.
pub const X_LAST_DEATH_EXCHANGE: &str = "x-last-death-exchange";
/// Queue of the broker's latest dead-lettering of the message.
pub const X_LAST_DEATH_QUEUE: &str = "x-last-death-queue";
/// Reason of the broker's latest dead-lettering of the message.
pub const X_LAST_DEATH_REASON: &str = "x-last-death-reason";
/// Acquisition count some broker versions add on delivery (not written by Warren).
pub const X_ACQUIRED_COUNT: &str = "x-acquired-count";

/// Fields of one entry (a table) of the broker's [`X_DEATH`] array.
pub mod x_death {
    /// Why the broker dead-lettered it: `delivery_limit`, `expired`, `maxlen`, `rejected`.
    pub const REASON: &str = "reason";
    /// The queue it was dead-lettered from.
    pub const QUEUE: &str = "queue";
    /// The routing keys it had (an array of strings).
    pub const ROUTING_KEYS: &str = "routing-keys";
    /// How many times it was dead-lettered for this queue and reason.
    pub const COUNT: &str = "count";
    /// When, as an AMQP timestamp (seconds since the epoch).
    pub const TIME: &str = "time";
}
