//! The broker operations every declaration is made of (open a channel, declare an exchange
//! or a queue, bind, ask about a queue), each with its error classified once
//! ([`crate::fault`]) into a [`TopologyError`].

use crate::fault::{classify, reply_text, Fault, Operation};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

/// The broker's view of a queue, from a passive declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (never counts delivered-but-unacked ones).
    pub ready: u32,
    /// Consumers subscribed to the queue.
    pub consumers: u32,
}

/// A topology that could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The queue exists with other arguments. Declaring again will not help: the queue must
    /// be deleted (losing its messages) or Warren configured to match it.
    #[error(
        "queue `{queue}` already exists with a different `{setting}`; \
         delete it or configure Warren to match it (broker said: {detail})"
    )]
    Mismatch {
        /// The queue (or exchange) declared.
        queue: String,
        /// The argument that differs, as the broker names it.
        setting: String,
        /// The broker's message.
        detail: String,
    },
    /// The queue does not exist (from a passive declare).
    #[error("queue `{0}` does not exist")]
    NotFound(String),
    /// The broker cannot serve the queue now (its home node is down, it has no leader):
    /// an outage, retried with backoff.
    #[error("queue `{queue}` is unavailable: {detail}")]
    Unavailable {
        /// The queue (or exchange) declared.
        queue: String,
        /// The broker's message.
        detail: String,
    },
    /// The broker's user may not declare or use the queue.
    #[error("not allowed to use `{queue}`: {detail}")]
    Forbidden {
        /// The queue (or exchange) declared.
        queue: String,
        /// The broker's message.
        detail: String,
    },
    /// The queue name or settings cannot be used.
    #[error("invalid queue `{queue}`: {problem}")]
    Invalid {
        /// The name given.
        queue: String,
        /// Why it cannot be used.
        problem: &'static str,
    },
    /// Any other broker or connection error.
    #[error("declaring `{queue}` failed: {source}")]
    Broker {
        /// The queue or exchange being declared.
        queue: String,
        /// The error.
        source: lapin::Error,
    },
}

impl TopologyError {
    /// True when retrying cannot help (a configuration problem, not a broker outage).
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            TopologyError::Broker { .. } | TopologyError::Unavailable { .. }
        )
    }

    /// What went wrong, without the queue's name: the broker's words for an outage.
    pub fn reason(&self) -> String {
        match self {
            TopologyError::Unavailable { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    /// Whether the connection has no channel left to open (lapin never reuses the id of a
    /// channel the broker closed): only a new connection helps.
    pub fn is_channels_exhausted(&self) -> bool {
        matches!(self, TopologyError::Broker { source, .. }
            if matches!(source.kind(), lapin::ErrorKind::ChannelsLimitReached))
    }

    /// Classifies `source`, which `operation` on `queue` got (see [`crate::fault`]).
    pub fn from_lapin(queue: &str, source: lapin::Error, operation: Operation) -> Self {
        let queue = queue.to_owned();
        let Some(detail) = reply_text(&source).map(str::to_owned) else {
            return TopologyError::Broker { queue, source };
        };
        match classify(&source, operation) {
            Fault::Mismatch => {
                let setting = inequivalent_setting(&detail)
                    .unwrap_or("arguments")
                    .to_owned();
                TopologyError::Mismatch {
                    queue,
                    setting,
                    detail,
                }
            }
            Fault::Missing => TopologyError::NotFound(queue),
            Fault::Forbidden => TopologyError::Forbidden { queue, detail },
            Fault::Unavailable => TopologyError::Unavailable { queue, detail },
        }
    }
}

/// Extracts `x-queue-type` from "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for ...".
fn inequivalent_setting(detail: &str) -> Option<&str> {
    let rest = detail.split("inequivalent arg '").nth(1)?;
    rest.split('\'').next()
}

/// Asks the broker about `queue` with a passive declare on `channel`: its ready and consumer
/// counts, or [`TopologyError::NotFound`] when it does not exist. Every question "does this
/// queue exist, how full is it" goes through here, so a 404 is told apart from a node that
/// is down (an outage, [`TopologyError::Unavailable`]) in one place ([`crate::fault`]).
///
/// On an error the broker has closed `channel`; on success it stays open for the caller
/// (who closes it, or goes on using it for the same queue).
pub async fn inspect_queue(channel: &Channel, queue: &str) -> Result<QueueState, TopologyError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let state = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(|e| TopologyError::from_lapin(queue, e, Operation::Inspect))?;
    Ok(QueueState {
        ready: state.message_count(),
        consumers: state.consumer_count(),
    })
}

pub(crate) async fn open(conn: &Connection, what: &str) -> Result<Channel, TopologyError> {
    conn.create_channel()
        .await
        .map_err(|e| TopologyError::from_lapin(what, e, Operation::Use))
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), TopologyError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            ShortString::from(name),
            kind,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::from_lapin(name, e, Operation::Use))
}

pub(crate) async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), TopologyError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), durable, args)
        .await
        .map(|_| ())
        .map_err(|e| TopologyError::from_lapin(name, e, Operation::Use))
}

pub(crate) async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), TopologyError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::from_lapin(queue, e, Operation::Use))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_differing_setting_is_named() {
        let detail = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in \
                      vhost '/': received the value 'quorum' of type 'longstr' but current is none";
        assert_eq!(inequivalent_setting(detail), Some("x-queue-type"));
        assert_eq!(inequivalent_setting("something else"), None);
    }
}
