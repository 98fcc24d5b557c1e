//! Declaring the delay cascade (see [`crate::delay`] for how it routes), and moving a broker
//! off the classic level queues of earlier versions.
//!
//! Each level's queue is a quorum queue, so the cascade survives the loss of any one node of
//! a cluster with its messages: `x-message-ttl` holds a message for the level's time, then
//! it is dead-lettered (at-most-once: see `declare_level` for why) into the exchange of the
//! level below.
//!
//! The exchanges and routing keys are those of every earlier version; only the level queues
//! are new (`warren.delay.NN.quorum`). Earlier versions bound a classic queue
//! `warren.delay.NN` where the quorum one is now bound. Declaring the cascade unbinds those
//! (a task would otherwise be delivered twice: once through each queue); what they hold
//! drains down into the new levels on its own, since their dead-letter exchange is the level
//! below. Every declaration unbinds them again, so one that an older Warren still running
//! bound again is unbound at the next start of a newer process; deleting them once empty is
//! left to the operator (docs/operations.md).
//!
//! The deliver exchange has an alternate exchange leading to the queue
//! `warren.delay.unroutable`: a task whose delay ends for a queue that no longer exists is
//! kept and counted there instead of being dropped. A deliver exchange an earlier version
//! created has none and cannot get one by declaration: a policy gives it one.

use crate::declare::{bind_queue, declare_exchange, declare_queue, open, TopologyError};
use crate::delay::{self, DELAY_LEVELS};
use crate::fault::{classify, Fault, Operation};
use crate::header_value::{int_value, text_value};
use futures::future::{join_all, try_join_all};
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions};
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
/// needs the policy `docs/operations.md` gives, which this logs once.
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
            // Once per process: every declaration of the cascade and of a queue comes here.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(
                    exchange = %deliver,
                    "the deliver exchange was declared by an earlier Warren without an alternate \
                     exchange: a task delayed for a queue that no longer exists is dropped unless a \
                     policy sets one (docs/operations.md, `Running on a RabbitMQ cluster`)"
                );
            }
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
///
/// Dead-lettering is at-most-once. At-least-once (`x-dead-letter-strategy`) was tried and
/// measured on a private 3-node RabbitMQ 3.10.8 cluster: after a SIGKILL of the node leading
/// the levels, a level was left with its messages neither ready nor unacked and delivered
/// nothing more, not even after the node came back (2 of 4 runs; rabbitmq-server#16652
/// describes the same stranding on 4.2). At-most-once levels recovered every time, at the
/// price of the tasks dead-lettered into a level while it had no leader (the ~3 s election):
/// 4 of ~110 exposed per kill at ~15 delayed tasks per second. What waits in a level survives
/// the loss of any node either way.
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
