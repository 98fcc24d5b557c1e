//! Why a publish failed: every way a task can fail to be confirmed, and a short kind for
//! metrics and summaries.

use crate::{CodecError, ConnectError, EnvelopeError, TaskId, TopologyError};
use std::time::Duration;

/// A task that was not confirmed by the broker. The caller must assume it was not queued
/// (though after `Timeout` or `Connection` it may have been: publish again with the same id
/// if duplicates are acceptable to the handler).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message (a nack: e.g. a queue over its length limit).
    #[error("the broker refused task {id} (nack)")]
    Nacked {
        /// The task id.
        id: TaskId,
    },
    /// No queue is bound for the routing key: the message was returned.
    #[error(
        "task {id} is unroutable: no queue bound to `{routing_key}` on `{exchange}` ({reply})"
    )]
    Unroutable {
        /// The task id.
        id: TaskId,
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// No confirm arrived in time (the broker may be blocking publishers).
    #[error("no confirm for task {id} within {timeout:?}")]
    Timeout {
        /// The task id.
        id: TaskId,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The connection or channel failed before the confirm arrived.
    #[error("lost the broker connection before task {id} was confirmed: {source}")]
    Connection {
        /// The task id.
        id: TaskId,
        /// The error.
        source: lapin::Error,
    },
    /// The task's metadata cannot be sent (an over-long name or id).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The payload did not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The broker blocked publishers (a memory or disk alarm) for longer than the timeout.
    #[error(
        "the broker blocks publishers (resource alarm); task {id} not published within {timeout:?}"
    )]
    Blocked {
        /// The task id.
        id: TaskId,
        /// How long the publish waited.
        timeout: Duration,
    },
    /// No connection to the broker could be made in time.
    #[error("no broker connection for task {id} within {timeout:?}")]
    Unavailable {
        /// The task id.
        id: TaskId,
        /// How long the publish waited.
        timeout: Duration,
    },
    /// The delay is longer than the delay cascade can hold.
    #[error("a delay of {requested:?} is longer than the longest Warren can hold ({max:?})")]
    DelayTooLong {
        /// The delay asked for.
        requested: Duration,
        /// The longest delay possible.
        max: Duration,
    },
    /// Connecting was abandoned.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The topology could not be declared.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

impl PublishError {
    /// A short label for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Nacked { .. } => "nack",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::Timeout { .. } => "timeout",
            PublishError::Blocked { .. } => "blocked",
            PublishError::Connection { .. }
            | PublishError::Connect(_)
            | PublishError::Unavailable { .. } => "connection",
            PublishError::Envelope(_)
            | PublishError::Codec(_)
            | PublishError::DelayTooLong { .. } => "invalid",
            PublishError::Topology(_) => "topology",
        }
    }
}
