//! Queue topology: the durable direct exchange tasks are published to, each work queue, and
//! the dead-letter queue beside it. Workers and producers declare through this one module, so
//! they can never disagree about a queue's arguments.

use crate::delay::{self, DELAY_LEVELS};
use crate::envelope::{int_value, text_value};
use crate::queue::{dead_letter_queue_name, QueueSpec};
use futures::future::{join_all, try_join_all};
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

/// Name of the exchange tasks are published to unless configured otherwise.
pub const DEFAULT_EXCHANGE: &str = "warren";

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
        !matches!(self, TopologyError::Broker { .. })
    }

    fn from_lapin(queue: &str, source: lapin::Error) -> Self {
        let queue = queue.to_owned();
        let lapin::ErrorKind::ProtocolError(amqp) = source.kind() else {
            return TopologyError::Broker { queue, source };
        };
        let detail = amqp.get_message().as_str().to_owned();
        match amqp.get_id() {
            406 => {
                let setting = inequivalent_setting(&detail)
                    .unwrap_or("arguments")
                    .to_owned();
                TopologyError::Mismatch {
                    queue,
                    setting,
                    detail,
                }
            }
            404 => TopologyError::NotFound(queue),
            _ => TopologyError::Broker { queue, source },
        }
    }
}

/// Extracts `x-queue-type` from "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for ...".
fn inequivalent_setting(detail: &str) -> Option<&str> {
    let rest = detail.split("inequivalent arg '").nth(1)?;
    rest.split('\'').next()
}

/// Declares and inspects Warren's topology.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The direct exchange tasks are published to.
    pub exchange: String,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            exchange: DEFAULT_EXCHANGE.to_owned(),
        }
    }
}

impl Topology {
    /// A topology publishing through `exchange`.
    pub fn new(exchange: impl Into<String>) -> Self {
        Topology {
            exchange: exchange.into(),
        }
    }

    /// Declares the exchange, the work queue, its dead-letter queue and their bindings (to
    /// the task exchange and to the delay cascade's deliver exchange). Idempotent. Uses a
    /// channel of its own, since a refused declare closes the channel it was made on.
    pub async fn declare(&self, conn: &Connection, spec: &QueueSpec) -> Result<(), TopologyError> {
        spec.validate()?;
        let channel = open(conn, &spec.name).await?;
        declare_exchange(&channel, &self.exchange, ExchangeKind::Direct).await?;
        let deliver = delay::delay_deliver_exchange();
        declare_exchange(&channel, &deliver, ExchangeKind::Topic).await?;
        // The work queue first, so a mismatch names the queue the user configured.
        declare_queue(&channel, &spec.name, spec.work_arguments()).await?;
        let dlq = dead_letter_queue_name(&spec.name);
        declare_queue(&channel, &dlq, spec.dead_letter_arguments()).await?;
        bind_queue(&channel, &spec.name, &self.exchange, &spec.name).await?;
        bind_queue(
            &channel,
            &spec.name,
            &deliver,
            &delay::deliver_pattern(&spec.name),
        )
        .await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Declares the fixed delay cascade (see the `delay` module): one exchange and one queue
    /// per level. Idempotent; every process that publishes retries or delayed tasks calls it
    /// once at start-up.
    ///
    /// That is over a hundred declarations, each a round trip, so the levels are declared
    /// side by side, each on a channel of its own: first every exchange (a level's queue is
    /// bound into the exchange below it), then each level's queue and bindings. A start-up
    /// takes a few round trips instead of a hundred.
    pub async fn declare_delays(conn: &Connection) -> Result<(), TopologyError> {
        let deliver = delay::delay_deliver_exchange();
        let channels = try_join_all((0..DELAY_LEVELS).map(|_| open(conn, &deliver))).await?;
        declare_exchange(&channels[0], &deliver, ExchangeKind::Topic).await?;
        try_join_all((0..DELAY_LEVELS).zip(&channels).map(|(level, channel)| {
            let name = delay::level_name(level);
            async move { declare_exchange(channel, &name, ExchangeKind::Topic).await }
        }))
        .await?;
        try_join_all((0..DELAY_LEVELS).zip(&channels).map(|(level, channel)| {
            let below = match level {
                0 => deliver.clone(),
                _ => delay::level_name(level - 1),
            };
            declare_level(channel, level, below)
        }))
        .await?;
        join_all(
            channels
                .iter()
                .map(|channel| channel.close(200, "declared".into())),
        )
        .await;
        Ok(())
    }

    /// Reads a queue's ready count and consumer count with a passive declare.
    pub async fn inspect(conn: &Connection, queue: &str) -> Result<QueueState, TopologyError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| TopologyError::from_lapin(queue, e))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let state = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(|e| TopologyError::from_lapin(queue, e))?;
        let _ = channel.close(200, "inspected".into()).await;
        Ok(QueueState {
            ready: state.message_count(),
            consumers: state.consumer_count(),
        })
    }
}

/// A delay level's queue (holding messages for the level's time, then dead-lettering them to
/// the exchange `below`), its binding, and its exchange's binding into `below`. The
/// exchanges exist already.
async fn declare_level(channel: &Channel, level: u32, below: String) -> Result<(), TopologyError> {
    let name = delay::level_name(level);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text_value("classic"));
    args.insert(
        "x-message-ttl".into(),
        int_value(delay::level_ttl_ms(level)),
    );
    args.insert("x-dead-letter-exchange".into(), text_value(&below));
    declare_queue(channel, &name, args).await?;
    bind_queue(channel, &name, &name, &delay::level_pattern(level, '1')).await?;
    channel
        .exchange_bind(
            below.as_str().into(),
            name.as_str().into(),
            delay::level_pattern(level, '0').into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::from_lapin(&name, e))
}

async fn open(conn: &Connection, what: &str) -> Result<Channel, TopologyError> {
    conn.create_channel()
        .await
        .map_err(|e| TopologyError::from_lapin(what, e))
}

async fn declare_exchange(
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
        .map_err(|e| TopologyError::from_lapin(name, e))
}

async fn declare_queue(
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
        .map_err(|e| TopologyError::from_lapin(name, e))
}

async fn bind_queue(
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
        .map_err(|e| TopologyError::from_lapin(queue, e))
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
