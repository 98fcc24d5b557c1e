//! The session monitor: polls the broker's view of each consumed queue (ready messages and
//! consumers, by passive declare) for the autoscaling gauges, and watches for silent stalls:
//! a consumer with free prefetch that receives nothing while its queue has ready messages
//! is re-subscribed (that queue alone) and the stall is logged and counted.

use crate::consume::subscription::QueueStates;
use crate::Shared;
use lapin::Connection;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use warren_common::{delay, Topology, TopologyError};

/// Polls after which an unexplained silence counts as a stall.
const STALL_POLLS: u32 = 2;

/// What the monitor saw of one queue at the previous poll.
#[derive(Default)]
struct Seen {
    deliveries: u64,
    silent_polls: u32,
    /// Set while a re-subscription asked for has not happened: the subscription count it
    /// waits to grow past.
    resubscribing: Option<u64>,
}

/// Runs until `stop` fires; has a stalled queue re-subscribed.
pub(crate) async fn monitor(
    shared: &Shared,
    conn: &Connection,
    states: &QueueStates,
    stop: &CancellationToken,
) {
    let interval = shared.config.poll_interval;
    let mut seen: HashMap<&str, Seen> = HashMap::new();
    // Polled while it exists: looking for a queue that does not closes a channel each time.
    let mut unroutable = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if unroutable && states.is_cascade_declared() {
            match Topology::inspect(conn, delay::UNROUTABLE).await {
                Ok(state) => shared.metrics.delay_unroutable.set(state.ready.into()),
                Err(TopologyError::NotFound(_)) => unroutable = false,
                Err(error) => tracing::debug!(%error, "could not poll the unroutable queue"),
            }
        }
        for queue in &shared.config.queues {
            if !states.is_consumed(queue) {
                continue;
            }
            let state = match Topology::inspect(conn, queue).await {
                Ok(state) => state,
                Err(error) => {
                    tracing::debug!(%queue, %error, "could not poll the queue");
                    continue;
                }
            };
            shared
                .metrics
                .queue_ready
                .with_label_values(&[queue])
                .set(state.ready.into());
            shared
                .metrics
                .queue_consumers
                .with_label_values(&[queue])
                .set(state.consumers.into());
            let metrics = &shared.queue_metrics[queue.as_str()];
            let deliveries = metrics.deliveries.load(Ordering::Relaxed);
            let entry = seen.entry(queue.as_str()).or_default();
            let subscribed = states.subscriptions(queue);
            if entry
                .resubscribing
                .is_some_and(|asked_at| subscribed <= asked_at)
            {
                // The stalled consumer is still being cancelled: nothing to judge yet.
                entry.deliveries = deliveries;
                continue;
            }
            entry.resubscribing = None;
            let has_room = metrics.held.get() < i64::from(shared.config.prefetch);
            let silent = deliveries == entry.deliveries && state.ready > 0 && has_room;
            entry.deliveries = deliveries;
            entry.silent_polls = if silent { entry.silent_polls + 1 } else { 0 };
            if entry.silent_polls >= STALL_POLLS {
                tracing::warn!(
                    %queue, ready = state.ready, consumers = state.consumers,
                    silent_for = ?interval * STALL_POLLS,
                    "consumer stalled: nothing received while messages are ready; re-subscribing"
                );
                shared.metrics.stalls.with_label_values(&[queue]).inc();
                entry.silent_polls = 0;
                entry.resubscribing = Some(subscribed);
                states.resubscribe(queue);
            }
        }
    }
}
