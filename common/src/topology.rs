//! Queue topology: the durable direct exchange tasks are published to, each work queue, and
//! the dead-letter queue beside it. Workers and producers declare through this one module, so
//! they can never disagree about a queue's arguments.

use crate::declare::{
    bind_queue, declare_exchange, declare_queue, inspect_queue, open, QueueState, TopologyError,
};
use crate::delay;
use crate::fault::Operation;
use crate::queue::{dead_letter_queue_name, QueueSpec};
use lapin::{Connection, ExchangeKind};

/// Name of the exchange tasks are published to unless configured otherwise.
pub const DEFAULT_EXCHANGE: &str = "warren";

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
        spec.validate().map_err(|problem| TopologyError::Invalid {
            queue: spec.name.clone(),
            problem,
        })?;
        let channel = open(conn, &spec.name).await?;
        declare_exchange(&channel, &self.exchange, ExchangeKind::Direct).await?;
        let deliver = delay::delay_deliver_exchange();
        crate::cascade::declare_deliver(conn, &channel).await?;
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

    /// Declares the fixed delay cascade (see [`crate::delay`] and `cascade.rs`): one
    /// exchange and one quorum queue per level. Idempotent; every process that publishes
    /// retries or delayed tasks calls it once per connection.
    pub async fn declare_delays(conn: &Connection) -> Result<(), TopologyError> {
        crate::cascade::declare(conn).await
    }

    /// Reads a queue's ready count and consumer count with a passive declare (see
    /// [`inspect_queue`]), on a channel of its own.
    pub async fn inspect(conn: &Connection, queue: &str) -> Result<QueueState, TopologyError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| TopologyError::from_lapin(queue, e, Operation::Inspect))?;
        let state = inspect_queue(&channel, queue).await?;
        let _ = channel.close(200, "inspected".into()).await;
        Ok(state)
    }

    /// Whether `queue` exists: [`inspect`](Self::inspect), with a missing queue as `false`.
    pub async fn queue_exists(conn: &Connection, queue: &str) -> Result<bool, TopologyError> {
        match Self::inspect(conn, queue).await {
            Ok(_) => Ok(true),
            Err(TopologyError::NotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}
