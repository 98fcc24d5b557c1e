//! Declaring the delay cascade (see [`crate::delay`] for how it routes), and moving a broker
//! off the classic level queues of earlier versions.
//!
//! Each level's queue is a quorum queue, so the cascade survives the loss of any one node of
//! a cluster with its messages: `x-message-ttl` holds a message for the level's time, then
//! it is dead-lettered `at-least-once` (which needs `x-overflow: reject-publish`; without it
//! RabbitMQ silently falls back to at-most-once) into the exchange of the level below.
//!
//! The exchanges and routing keys are those of every earlier version; only the level queues
//! are new (`warren.delay.NN.quorum`). Earlier versions bound a classic queue
//! `warren.delay.NN` where the quorum one is now bound. Declaring the cascade unbinds those
//! (a task would otherwise be delivered twice: once through each queue); what they hold
//! drains down into the new levels on its own, since their dead-letter exchange is the level
//! below. [`sweep_legacy`] deletes them once empty, and unbinds again any that an older
//! Warren still running declared and bound again.
//!
//! With at-least-once dead-lettering, a message whose queue no longer exists is not dropped:
//! it would stay in its level queue, retried forever and invisible. The deliver exchange
//! therefore has an alternate exchange leading to the queue `warren.delay.unroutable`, where
//! such tasks are kept and counted.

use crate::delay::{self, DELAY_LEVELS};
use crate::fault::{classify, Fault, Operation};
use crate::header_value::{int_value, text_value};
use crate::topology::{bind_queue, declare_exchange, declare_queue, open, TopologyError};
use futures::future::{join_all, try_join_all};
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};

/// Declares the cascade: one exchange and one quorum queue per level, the deliver exchange
/// and its alternate exchange and queue, and unbinds the classic level queues of earlier
/// versions. Idempotent; every process that publishes retries or delayed tasks calls it
/// once per connection.
///
/// That is over a hundred declarations, each a round trip, so the levels are declared side by
/// side, each on a channel of its own: first every exchange (a level's queue is bound into
/// the exchange below it), then each level's queue and bindings.
pub(crate) async fn declare(conn: &Connection) -> Result<(), TopologyError> {
    let deliver = delay::delay_deliver_exchange();
    let channels = try_join_all((0..DELAY_LEVELS).map(|_| open(conn, &deliver))).await?;
    declare_unroutable(&channels[0]).await?;
    declare_deliver(conn, &channels[1]).await?;
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

/// The deliver exchange, with its alternate exchange when Warren creates it. One that an
/// earlier version created has none, and an exchange's arguments cannot change: such a broker
/// needs the policy `docs/operations.md` gives, which this logs once per declaration.
pub(crate) async fn declare_deliver(
    conn: &Connection,
    channel: &Channel,
) -> Result<(), TopologyError> {
    let deliver = delay::delay_deliver_exchange();
    let mut args = FieldTable::default();
    args.insert("alternate-exchange".into(), text_value(delay::UNROUTABLE));
    // On a channel of its own: a refused declare closes the channel.
    let probe = open(conn, &deliver).await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = probe
        .exchange_declare(deliver.as_str().into(), ExchangeKind::Topic, options, args)
        .await;
    match declared {
        Ok(()) => {
            let _ = probe.close(200, "declared".into()).await;
            Ok(())
        }
        Err(error) if classify(&error, Operation::Use) == Fault::Mismatch => {
            tracing::info!(
                exchange = %deliver,
                "the deliver exchange was declared by an earlier Warren without an alternate \
                 exchange: unless a policy sets one, a task delayed for a queue that no longer \
                 exists stays in the delay cascade (docs/operations.md, `Running on a RabbitMQ \
                 cluster`, gives the policy)"
            );
            declare_exchange(channel, &deliver, ExchangeKind::Topic).await
        }
        Err(error) => Err(TopologyError::from_lapin(&deliver, error, Operation::Use)),
    }
}

/// The alternate exchange of the deliver exchange (fanout) and the quorum queue it fills.
async fn declare_unroutable(channel: &Channel) -> Result<(), TopologyError> {
    let name = delay::UNROUTABLE;
    declare_exchange(channel, name, ExchangeKind::Fanout).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text_value("quorum"));
    declare_queue(channel, name, args).await?;
    bind_queue(channel, name, name, "").await
}

/// A delay level's quorum queue (holding messages for the level's time, then dead-lettering
/// them to the exchange `below`), its binding, and its exchange's binding into `below`. The
/// exchanges exist already. Also unbinds the level's classic queue of earlier versions.
async fn declare_level(channel: &Channel, level: u32, below: String) -> Result<(), TopologyError> {
    let exchange = delay::level_name(level);
    let queue = delay::level_queue_name(level);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text_value("quorum"));
    args.insert(
        "x-message-ttl".into(),
        int_value(delay::level_ttl_ms(level)),
    );
    args.insert("x-dead-letter-exchange".into(), text_value(&below));
    args.insert("x-dead-letter-strategy".into(), text_value("at-least-once"));
    args.insert("x-overflow".into(), text_value("reject-publish"));
    declare_queue(channel, &queue, args).await?;
    let pattern = delay::level_pattern(level, '1');
    bind_queue(channel, &queue, &exchange, &pattern).await?;
    channel
        .exchange_bind(
            below.as_str().into(),
            exchange.as_str().into(),
            delay::level_pattern(level, '0').into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::from_lapin(&exchange, e, Operation::Use))?;
    unbind_legacy(channel, level).await
}

/// Unbinds the classic level queue of earlier versions (its name is the level's exchange's).
/// Unbinding what is not bound, or a queue that does not exist, succeeds.
async fn unbind_legacy(channel: &Channel, level: u32) -> Result<(), TopologyError> {
    let name = delay::level_name(level);
    channel
        .queue_unbind(
            name.as_str().into(),
            name.as_str().into(),
            delay::level_pattern(level, '1').into(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::from_lapin(&name, e, Operation::Use))
}

/// What [`sweep_legacy`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegacySweep {
    /// Classic level queues of earlier versions still there (unbound again).
    pub remaining: u32,
    /// Messages they still hold (draining into the quorum levels).
    pub holding: u64,
    /// Queues deleted by this sweep because they were empty.
    pub deleted: u32,
}

/// Unbinds again every classic level queue of earlier versions that exists, and deletes those
/// that are empty. Meant for a connection of its own, run now and then: looking for a queue
/// that does not exist closes a channel, and lapin never reuses the id of a channel the
/// broker closed. A level whose queue cannot be reached (its node is down) is skipped.
pub async fn sweep_legacy(conn: &Connection) -> Result<LegacySweep, TopologyError> {
    let mut sweep = LegacySweep::default();
    for level in 0..DELAY_LEVELS {
        let name = delay::level_name(level);
        let channel = open(conn, &name).await?;
        let found = match crate::Topology::inspect_on(&channel, &name).await {
            Ok(found) => found,
            Err(TopologyError::NotFound(_)) => continue,
            Err(error) if error.is_permanent() => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "cannot look at a legacy delay level now");
                continue;
            }
        };
        let channel = open(conn, &name).await?;
        unbind_legacy(&channel, level).await?;
        if found.ready == 0 && found.consumers == 0 {
            let options = QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            };
            // A message that arrived since is kept: the delete is refused and the queue stays.
            if channel
                .queue_delete(name.as_str().into(), options)
                .await
                .is_ok()
            {
                sweep.deleted += 1;
                let _ = channel.close(200, "swept".into()).await;
                continue;
            }
        } else {
            let _ = channel.close(200, "swept".into()).await;
        }
        sweep.remaining += 1;
        sweep.holding += u64::from(found.ready);
    }
    Ok(sweep)
}
