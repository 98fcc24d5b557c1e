//! One queue's consume loop on one channel: prefetch-limited deliveries, each waiting for its
//! task type's rate limit and then a concurrency permit, and on stop the consumer cancelled
//! and every delivery not yet started returned to the queue.

use crate::acks::{run_acker, Settle};
use crate::{execute, routing, Shared};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_common::Envelope;
use warren_producer::Publisher;

/// Why a consume loop ended.
pub(crate) enum ConsumerEnd {
    /// Asked to stop. The acker finishes once every running task has settled.
    Stopped(JoinHandle<u64>),
    /// The channel, the connection or the subscription was lost.
    Lost(String),
}

/// What a consumer needs from its session.
pub(crate) struct SessionLink<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) publisher: &'a Publisher,
    /// Fired to end the session (drain, or another consumer of the session was lost).
    pub(crate) stop: &'a CancellationToken,
}

/// Consumes `queue` until `link.stop` fires or the subscription is lost.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    link: SessionLink<'_>,
    queue: Arc<str>,
) -> ConsumerEnd {
    let (consumer, channel) = match subscribe(&shared, link.conn, &queue).await {
        Ok(pair) => pair,
        Err(error) => {
            return ConsumerEnd::Lost(format!("subscribing to `{queue}` failed: {error}"))
        }
    };
    tracing::info!(queue = %queue, prefetch = shared.config.prefetch, "consuming");
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let acks_lost = shared.metrics.acks_lost.with_label_values(&[&*queue]);
    let settling = run_acker(channel.clone(), settle_rx, shared.config.prefetch);
    let acker = tokio::spawn(async move {
        let lost = settling.await;
        acks_lost.inc_by(lost);
        lost
    });
    let mut consumer = consumer;
    let lost = receive(&shared, &link, &queue, &mut consumer, &settle_tx).await;
    if let Some(reason) = lost {
        return ConsumerEnd::Lost(reason);
    }
    // Stopping: no new deliveries, and the buffered ones go back to the queue.
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(delivery)) = consumer.next().await {
            requeue(&shared, &queue, &settle_tx, &delivery);
        }
    });
    let _ = rest.await;
    ConsumerEnd::Stopped(acker)
}

async fn subscribe(
    shared: &Shared,
    conn: &Connection,
    queue: &str,
) -> Result<(Consumer, lapin::Channel), lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions { global: false })
        .await?;
    let tag = format!("{}/{queue}", shared.config.worker_id);
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, channel))
}

/// Receives deliveries until stopped (`None`) or lost (`Some(reason)`).
async fn receive(
    shared: &Arc<Shared>,
    link: &SessionLink<'_>,
    queue: &Arc<str>,
    consumer: &mut Consumer,
    settle_tx: &mpsc::UnboundedSender<Settle>,
) -> Option<String> {
    let queue_metrics = &shared.queue_metrics[&**queue];
    let held = &queue_metrics.held;
    loop {
        let next = tokio::select! {
            biased;
            _ = link.stop.cancelled() => return None,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Some(format!("consumer of `{queue}` failed: {error}")),
            None => return Some(format!("the broker cancelled the consumer of `{queue}`")),
        };
        held.inc();
        queue_metrics
            .deliveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = process(
            shared.clone(),
            link.publisher.clone(),
            queue.clone(),
            delivery,
            link.stop.clone(),
            settle_tx.clone(),
        );
        shared.tasks.spawn(task);
    }
}

/// Waits for the task's rate limit, then for a concurrency permit.
async fn admit(shared: &Shared, task: &str) -> OwnedSemaphorePermit {
    shared.rate_limits.wait(task).await;
    let permits = shared.permits.clone();
    permits
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

fn requeue(
    shared: &Shared,
    queue: &str,
    settle_tx: &mpsc::UnboundedSender<Settle>,
    delivery: &Delivery,
) {
    let metrics = &shared.queue_metrics[queue];
    metrics.requeued.inc();
    metrics.held.dec();
    let _ = settle_tx.send(Settle::Requeue(delivery.delivery_tag));
}

/// Runs one delivery to its settlement.
async fn process(
    shared: Arc<Shared>,
    publisher: Publisher,
    queue: Arc<str>,
    delivery: Delivery,
    stop: CancellationToken,
    settle_tx: mpsc::UnboundedSender<Settle>,
) {
    let envelope = Envelope::from_properties(&delivery.properties);
    let (task, id, attempt) = match &envelope {
        Ok(e) => (e.task.as_str(), e.id.as_str(), e.attempt),
        Err(_) => (
            "",
            delivery
                .properties
                .message_id()
                .as_ref()
                .map_or("", |s| s.as_str()),
            0,
        ),
    };
    let span = tracing::info_span!(
        "task",
        task_id = id,
        task,
        attempt,
        queue = &*queue,
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    // The publisher's trace context: the task's span joins its trace.
    let trace = envelope
        .as_ref()
        .ok()
        .and_then(|e| e.traceparent.as_deref());
    if let Some(parent) = trace.and_then(warren_common::TraceParent::parse) {
        span.record("trace_id", parent.trace_id.as_str());
        span.record("parent_span_id", parent.parent_id.as_str());
    }
    let queue_metrics = &shared.queue_metrics[&*queue];
    let metrics = queue_metrics.task(task);
    async {
        metrics.received.inc();
        // Not started yet: a drain returns it to the queue.
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return requeue(&shared, &queue, &settle_tx, &delivery),
            permit = admit(&shared, task) => permit,
        };
        let in_progress = &queue_metrics.in_progress;
        in_progress.inc();
        let outcome = execute::execute(&shared, &queue, &delivery, &envelope, metrics).await;
        in_progress.dec();
        drop(permit);
        let settle = routing::route(
            &shared,
            &publisher,
            &queue,
            &delivery,
            envelope.as_ref().ok(),
            &outcome,
        )
        .await;
        record(metrics, &outcome, settle);
        if let Settle::Requeue(_) = settle {
            queue_metrics.requeued.inc();
        }
        queue_metrics.held.dec();
        if settle_tx.send(settle).is_err() {
            tracing::warn!("channel gone before the ack; the broker will redeliver this task");
        }
    }
    .instrument(span)
    .await;
}

fn record(metrics: &crate::metrics::TaskMetrics, outcome: &crate::Outcome, settle: Settle) {
    use crate::Outcome;
    if let Settle::Requeue(_) = settle {
        tracing::info!(outcome = "requeued", "task returned to its queue");
        return;
    }
    match outcome {
        Outcome::Ack => {
            metrics.succeeded.inc();
            tracing::info!(outcome = "succeeded", "task finished");
        }
        Outcome::Retry { .. } => metrics.retried.inc(),
        Outcome::DeadLetter(failure) => metrics.dead_lettered(failure.kind),
    }
}
