//! Telling a task that crashes its worker from the tasks that were merely beside it.
//!
//! A process that dies returns every delivery it held, and the broker raises the
//! `x-delivery-count` of each, so the count cannot say which one killed the process. A quorum
//! work queue's delivery returned [`SUSPECT_AFTER`] times or more is therefore not run beside
//! others: it is moved (republished, confirmed, then acked) to the queue's isolation queue,
//! `<queue>.isolation`. Each worker consumes that queue with a prefetch of 1 and runs what it
//! receives alone: once every running task of the process has finished, and while nothing
//! else starts. Held back there, a task that crashes the process is the only delivery of the
//! isolation queue the process held (the bystanders it also held were work-queue deliveries),
//! so the isolation queue's redelivery count is the number of times the task itself took its
//! worker down; past the crash budget it is dead-lettered as `crash_loop`
//! (docs/failures.md, "The crash budget").

use crate::consume::acks::Settle;
use crate::consume::consumer::SessionLink;
use crate::consume::delivery::{record, task_span};
use crate::consume::execute;
use crate::consume::report::report;
use crate::consume::routing;
use crate::metrics::QueueMetrics;
use crate::{Outcome, Shared};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::sync::Arc;
use tokio::sync::SemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_common::events::Ticket;
use warren_common::Publisher;
use warren_common::{isolation_queue_name, Envelope, QueueKind, QueueSpec};

/// Returns to the work queue after which a delivery runs only alone. Not 1: a broker restart,
/// a reconnection or a worker's drain returns every delivery a worker held (a whole prefetch
/// window per consumer) once, and those would then all queue up to run one at a time, each
/// waiting for every running task of its worker to finish. A task that crashes its workers
/// comes back a second time within seconds; a bystander of those two crashes, too, and it
/// then runs alone once, successfully.
pub(crate) const SUSPECT_AFTER: u64 = 2;

/// The consumer tag of isolation queue consumers.
const CONSUMER_TAG: &str = "warren-isolation";

/// Where a delivery runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Beside other tasks, taken from the work queue.
    Shared,
    /// Alone in its process, taken from the isolation queue.
    Alone,
}

/// What the broker's redelivery count says about a delivery before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run it.
    Run,
    /// Move it to the isolation queue without running it.
    Isolate { returns: u64 },
    /// Dead-letter it as `crash_loop`: it used up the crash budget.
    CrashLoop { returns: u64 },
}

/// Judges a delivery returned `returns` times (`None`: the broker does not count, as on a
/// classic queue) in `mode`, against the crash budget.
pub(crate) fn judge(mode: Mode, kind: QueueKind, returns: Option<u64>, budget: u64) -> Verdict {
    let Some(returns) = returns else {
        return Verdict::Run;
    };
    match (mode, kind) {
        (Mode::Shared, QueueKind::Quorum) if returns >= SUSPECT_AFTER => {
            Verdict::Isolate { returns }
        }
        // Only the returns of runs alone count against the budget: in the work queue a count
        // cannot tell a culprit from its bystanders.
        (Mode::Shared, QueueKind::Quorum) => Verdict::Run,
        // Classic queues have no isolation queue (and their broker sets no count).
        (Mode::Shared, QueueKind::Classic) | (Mode::Alone, _) if returns > budget => {
            Verdict::CrashLoop { returns }
        }
        _ => Verdict::Run,
    }
}

/// Declares `queue`'s isolation queue and starts its consumer, which runs until `link.stop`
/// fires (or, if it is lost, fires it so the session is rebuilt). Only quorum queues have one.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    link: &SessionLink<'_>,
    queue: &Arc<str>,
) -> Result<(), String> {
    if shared.config.queue_type != QueueKind::Quorum {
        return Ok(());
    }
    let name = isolation_queue_name(queue);
    let subscribed = async {
        let channel = link.conn.create_channel().await?;
        let spec = QueueSpec::new(&**queue, QueueKind::Quorum);
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), options, spec.isolation_arguments())
            .await?;
        // One at a time: an isolated task that crashes the process must be the only
        // delivery of this queue it held.
        channel
            .basic_qos(1, BasicQosOptions { global: false })
            .await?;
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    let (channel, consumer) = subscribed
        .await
        .map_err(|error| format!("subscribing to `{name}` failed: {error}"))?;
    let isolation = Isolation {
        shared: shared.clone(),
        publisher: link.publisher.clone(),
        queue: queue.clone(),
        stop: link.stop.clone(),
        channel,
    };
    tokio::spawn(isolation.run(consumer));
    Ok(())
}

/// One queue's isolation consumer.
struct Isolation {
    shared: Arc<Shared>,
    publisher: Publisher,
    queue: Arc<str>,
    stop: CancellationToken,
    channel: Channel,
}

impl Isolation {
    /// Runs each delivery alone, one after the other, until stopped or lost.
    async fn run(self, mut consumer: Consumer) {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                end => {
                    let reason = match end {
                        Some(Err(error)) => error.to_string(),
                        _ => "the broker cancelled the consumer".to_owned(),
                    };
                    tracing::warn!(queue = %self.queue, %reason, "isolation consumer lost");
                    self.stop.cancel();
                    return;
                }
            };
            // Counts it among the running tasks a drain waits for, until it is settled.
            let running = self.shared.tasks.token();
            let (settle, after) = self.run_alone(&delivery).await;
            if let (Some(ticket), Some(events)) = (after, &self.shared.events) {
                // Stopped before its ending was recorded: left unacked, it runs again.
                tokio::select! {
                    biased;
                    () = events.confirmed(ticket) => {}
                    _ = self.stop.cancelled() => break,
                }
            }
            self.send(settle).await;
            drop(running);
        }
        // Returns a delivery received meanwhile, if any (as a drain returns prefetched ones).
        let _ = self.channel.close(200, "stopped".into()).await;
    }

    /// Waits until the delivery may run alone, runs it, and routes its outcome.
    async fn run_alone(&self, delivery: &Delivery) -> (Settle, Option<Ticket>) {
        let envelope = Envelope::from_properties(&delivery.properties);
        let span = task_span(&self.queue, delivery, &envelope);
        let task = envelope.as_ref().map_or("", |e| e.task.as_str()).to_owned();
        let queue_metrics = self.queue_metrics();
        let metrics = queue_metrics.task(&task);
        let Some(alone) = self.solitude(&task).await else {
            queue_metrics.requeued.inc();
            return (Settle::Requeue(delivery.delivery_tag), None);
        };
        metrics.received.inc();
        queue_metrics.in_progress.inc();
        let shared = &*self.shared;
        let (outcome, output) = async {
            tracing::info!("running alone");
            execute::run(
                shared,
                &self.queue,
                delivery.into(),
                envelope,
                metrics,
                Mode::Alone,
            )
            .await
        }
        .instrument(span.clone())
        .await;
        queue_metrics.in_progress.dec();
        drop(alone);
        let settle = match outcome {
            Outcome::Ack => Settle::Ack(delivery.delivery_tag),
            _ => {
                let envelope = Envelope::from_properties(&delivery.properties).ok();
                let route = routing::route(
                    shared,
                    &self.publisher,
                    &self.queue,
                    delivery,
                    envelope.as_ref(),
                    &outcome,
                );
                route.instrument(span.clone()).await
            }
        };
        span.in_scope(|| record(metrics, &outcome, settle));
        if let Settle::Requeue(_) = settle {
            queue_metrics.requeued.inc();
        }
        let ran = (&outcome, output);
        let after = report(shared, &self.publisher, &self.queue, delivery, ran, settle);
        (settle, after)
    }

    /// Every concurrency permit of the process, once the task's rate limit allows it: the
    /// running tasks have finished and no other starts until the permits are dropped. `None`
    /// if the worker stops meanwhile.
    async fn solitude(&self, task: &str) -> Option<SemaphorePermit<'_>> {
        let permits = u32::try_from(self.shared.config.concurrency).unwrap_or(u32::MAX);
        let wait = async {
            if let Some(limiter) = self.shared.rate_limits.get(task) {
                limiter.until_ready().await;
            }
            self.shared.permits.acquire_many(permits).await
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            alone = wait => Some(alone.expect("the semaphore is never closed")),
        }
    }

    /// Sends a settlement and waits until it is written.
    async fn send(&self, settle: Settle) {
        let (action, sent) = match settle {
            // Runs alone are never moved again: nothing is acked beforehand.
            Settle::Acked(_) => return,
            Settle::Ack(tag) => (
                "ack",
                self.channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await,
            ),
            Settle::Requeue(tag) => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                ("requeue", self.channel.basic_nack(tag, options).await)
            }
        };
        if let Err(error) = sent {
            tracing::warn!(queue = %self.queue, action, %error,
                "could not settle an isolated delivery; the broker will redeliver it");
            self.shared
                .metrics
                .acks_lost
                .with_label_values(&[&*self.queue])
                .inc();
        }
    }

    fn queue_metrics(&self) -> &QueueMetrics {
        &self.shared.queue_metrics[&*self.queue]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::*;
    use QueueKind::*;

    #[test]
    fn a_work_queue_delivery_returned_twice_runs_alone_never_dead_lettered() {
        assert_eq!(judge(Shared, Quorum, None, 5), Verdict::Run);
        assert_eq!(judge(Shared, Quorum, Some(0), 5), Verdict::Run);
        assert_eq!(judge(Shared, Quorum, Some(1), 0), Verdict::Run);
        assert_eq!(
            judge(Shared, Quorum, Some(2), 5),
            Verdict::Isolate { returns: 2 }
        );
        assert_eq!(
            judge(Shared, Quorum, Some(49), 5),
            Verdict::Isolate { returns: 49 }
        );
    }

    #[test]
    fn alone_the_returns_count_against_the_budget() {
        assert_eq!(judge(Alone, Quorum, Some(0), 0), Verdict::Run);
        assert_eq!(judge(Alone, Quorum, Some(5), 5), Verdict::Run);
        assert_eq!(
            judge(Alone, Quorum, Some(6), 5),
            Verdict::CrashLoop { returns: 6 }
        );
        assert_eq!(
            judge(Alone, Quorum, Some(1), 0),
            Verdict::CrashLoop { returns: 1 }
        );
    }

    #[test]
    fn classic_queues_keep_the_plain_budget() {
        assert_eq!(judge(Shared, Classic, None, 5), Verdict::Run);
        assert_eq!(judge(Shared, Classic, Some(5), 5), Verdict::Run);
        assert_eq!(
            judge(Shared, Classic, Some(6), 5),
            Verdict::CrashLoop { returns: 6 }
        );
    }
}
