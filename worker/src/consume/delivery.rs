//! One delivery's way through a consume loop, from the moment it is taken to its settlement.
//! Its stages are the variants of one type, [`Stage`]:
//!
//! 1. **Taken** from the consumer and counted; the consume loop gives it a concurrency permit
//!    in the order deliveries came ([`Deliveries::begin`]).
//! 2. **Its turn**: its task type's rate limit, and a CPU permit if its handler is CPU-bound.
//!    While either makes it wait it is [`Stage::Queued`], holding no concurrency permit.
//! 3. **Admitted and run** ([`execute`]): the checks, then the handler. A handler still
//!    waiting on something after its first poll is [`Stage::Running`].
//! 4. **Settled**: an ack at once on success, else once its retry, dead letter or move to run
//!    alone is published ([`Stage::Routing`], through [`routing`]). When the worker records
//!    events, the settlement carries the [`Ticket`] of the event saying so ([`report`], which
//!    also answers a waiting caller), and the ack waits for its confirmation
//!    ([`Acks::settle_after`]).
//!
//! A delivery that never waits (most short tasks) goes through all of it in one call with no
//! future, allocation or wake-up of its own; one that waits moves into a future the consume
//! loop polls until its stage is [`Stage::Settled`].

use crate::consume::acks::{Acks, Settle};
use crate::consume::execute::{self, Handler, Ran};
use crate::consume::isolation::Mode;
use crate::consume::report::{record_event, report};
use crate::consume::routing;
use crate::heartbeat::Listed;
use crate::metrics::{QueueMetrics, TaskMetrics};
use crate::registry::Entry;
use crate::{Outcome, Shared};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::FutureExt;
use governor::DefaultDirectRateLimiter as RateLimiter;
use lapin::message::Delivery;
use lapin::options::BasicQosOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Instrument, Span};
use warren_common::events::{EventKind, Ticket};
use warren_common::Publisher;
use warren_common::{headers_without, republished, BROKER_HEADERS};
use warren_common::{Claimed, Envelope, EnvelopeError};

/// What every delivery of one consume loop borrows.
#[derive(Clone, Copy)]
pub(crate) struct Deliveries<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) publisher: &'a Publisher,
    pub(crate) queue: &'a Arc<str>,
    pub(crate) metrics: &'a QueueMetrics,
    pub(crate) stop: &'a CancellationToken,
    /// The consume loop's channel.
    pub(crate) channel: &'a lapin::Channel,
    /// Set when the loop was stopped by a pause of its queue.
    pub(crate) pausing: &'a AtomicBool,
}

/// Where a delivery is after taking it as far as it could go without waiting. The delivery
/// itself is borrowed until then, and moved only into the future that waits (so the common
/// path never copies it around).
enum Stage<'a> {
    /// Waiting for its task type's rate limit, or a CPU permit (a CPU-bound handler), or
    /// both; it holds no concurrency permit meanwhile.
    Queued {
        limiter: Option<&'a RateLimiter>,
        cpu: Option<&'a Semaphore>,
        envelope: Result<Envelope, EnvelopeError>,
        entry: Option<&'a Entry>,
        metrics: &'a TaskMetrics,
    },
    /// Its handler is waiting on something (or runs as a task of its own).
    Running {
        handler: Handler,
        permit: SemaphorePermit<'a>,
        /// A CPU-bound handler's CPU permit.
        cpu: Option<SemaphorePermit<'a>>,
        /// Counts it among the running tasks a drain waits for.
        running: TaskTrackerToken,
        /// Lists it in the heartbeats, when the worker records events.
        listed: Option<Listed<'a>>,
        metrics: &'a TaskMetrics,
    },
    /// The publish of its retry, dead letter or move to run alone (rare).
    Routing {
        outcome: Outcome,
        metrics: &'a TaskMetrics,
        /// The concurrency permit of a task being moved to run alone, held until the original
        /// is acked: the copy runs only once every permit is free.
        hold: Option<SemaphorePermit<'a>>,
    },
    /// Done with: how to settle it, once the event recording it (if any) is confirmed.
    Settled(Settle, Option<Ticket>),
}

/// What a delivery's future resolves to: how to settle it, after which event.
pub(crate) type Settled = (Settle, Option<Ticket>);

impl<'a> Deliveries<'a> {
    /// Counts a delivery taken from the consumer.
    pub(crate) fn taken(self) {
        self.metrics.held.inc();
        self.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns a delivery that was never started to its queue: requeued, or, when its queue
    /// is paused, copied back to it (see [`give_back`](Self::give_back)) in a future added to
    /// `running`.
    pub(crate) fn returned(
        self,
        acks: &mut Acks<'_>,
        delivery: Delivery,
        running: &mut FuturesUnordered<BoxFuture<'a, Settled>>,
    ) {
        if self.pausing.load(Ordering::Acquire) {
            running.push(self.give_back(delivery).boxed());
            return;
        }
        self.metrics.requeued.inc();
        self.metrics.held.dec();
        acks.settle(Settle::Requeue(delivery.delivery_tag));
    }

    /// Whether this loop's queue is paused through the control stream.
    pub(crate) fn is_paused(self) -> bool {
        self.shared
            .control
            .as_ref()
            .is_some_and(|control| control.is_paused(self.queue))
    }

    /// Gives a delivery that never started back to its paused queue without raising its
    /// delivery count (a requeue would: a few pauses would dead-letter it as a crash loop):
    /// publishes a copy (same body, properties and headers but the broker's) with a confirm,
    /// then acks it. A copy that cannot be published falls back to a requeue.
    async fn give_back(self, delivery: Delivery) -> Settled {
        let properties = &delivery.properties;
        let copy = republished(properties, headers_without(properties, &BROKER_HEADERS));
        let id = Claimed::from_properties(properties).id.unwrap_or("");
        let published = self
            .publisher
            .publish_raw("", self.queue, &delivery.data, copy, id)
            .await;
        self.metrics.requeued.inc();
        self.metrics.held.dec();
        match published {
            Ok(()) => (Settle::Ack(delivery.delivery_tag), None),
            Err(error) => {
                tracing::warn!(queue = %self.queue, task_id = id, %error,
                    "could not give a task back to its paused queue; requeueing it");
                (Settle::Requeue(delivery.delivery_tag), None)
            }
        }
    }

    /// Starts one delivery, holding `permit`, and takes it as far as it goes without
    /// waiting: settled right here, or moved into a future added to the loop's `running`.
    pub(crate) fn begin(
        self,
        delivery: Delivery,
        permit: SemaphorePermit<'a>,
        acks: &mut Acks<'_>,
        running: &mut FuturesUnordered<BoxFuture<'a, Settled>>,
    ) {
        let envelope = Envelope::from_properties(&delivery.properties);
        let span = task_span(self.queue, &delivery, &envelope);
        match span.in_scope(|| self.start(&delivery, envelope, permit)) {
            Stage::Settled(settle, after) => acks.settle_after(settle, after),
            stage => running.push(self.resume(delivery, stage).instrument(span).boxed()),
        }
    }

    /// Its turn, unless its task type's rate limit says wait or its handler is CPU-bound and
    /// every CPU permit is taken; then run.
    fn start(
        self,
        delivery: &Delivery,
        envelope: Result<Envelope, EnvelopeError>,
        permit: SemaphorePermit<'a>,
    ) -> Stage<'a> {
        let task = envelope.as_ref().map_or("", |e| e.task.as_str());
        // An invalid message is counted under the task it names when this worker registers
        // that name (else `<unknown>`), so its dead letter shows where it belongs.
        let claimed = envelope
            .is_err()
            .then(|| Claimed::from_properties(&delivery.properties));
        let metrics = self
            .metrics
            .task(claimed.and_then(|c| c.task).unwrap_or(task));
        metrics.received.inc();
        let shared = self.shared;
        let entry = shared.registry.get(task);
        let limiter = shared
            .rate_limits
            .get(task)
            .filter(|limiter| limiter.check().is_err());
        let cpu = shared
            .cpu_permits
            .as_ref()
            .filter(|_| entry.is_some_and(|entry| entry.options.cpu_bound));
        if limiter.is_none() {
            match cpu.map(Semaphore::try_acquire) {
                None => return self.run(delivery, envelope, entry, permit, None, metrics),
                Some(Ok(cpu)) => {
                    return self.run(delivery, envelope, entry, permit, Some(cpu), metrics)
                }
                Some(Err(_)) => {}
            }
        }
        drop(permit);
        Stage::Queued {
            limiter,
            cpu,
            envelope,
            entry,
            metrics,
        }
    }

    /// Admits a delivery and runs its handler, holding `permit` (and `cpu`, the CPU permit
    /// of a CPU-bound handler) while it runs; a handler finished on its first poll is settled.
    fn run(
        self,
        delivery: &Delivery,
        envelope: Result<Envelope, EnvelopeError>,
        entry: Option<&'a Entry>,
        permit: SemaphorePermit<'a>,
        cpu: Option<SemaphorePermit<'a>>,
        metrics: &'a TaskMetrics,
    ) -> Stage<'a> {
        let shared = self.shared;
        let in_progress = &self.metrics.in_progress;
        in_progress.inc();
        let arrival = delivery.into();
        let started = execute::admit(shared, arrival, envelope, entry, Mode::Shared).and_then(
            |(envelope, entry)| {
                Handler::start(shared, self.queue, arrival, envelope, entry, metrics)
            },
        );
        let ran = match started.map(|handler| handler.poll_once(shared, metrics)) {
            Err(refused) => (refused, None),
            Ok(Ok(ran)) => ran,
            Ok(Err(handler)) => {
                let listed = record_event(shared, self.queue, delivery, EventKind::Started)
                    .and(Claimed::from_properties(&delivery.properties).id)
                    .map(|id| shared.running.list(id));
                return Stage::Running {
                    handler,
                    permit,
                    cpu,
                    running: shared.tasks.token(),
                    listed,
                    metrics,
                };
            }
        };
        in_progress.dec();
        drop(cpu);
        let hold = matches!(ran.0, Outcome::Isolate { .. }).then_some(permit);
        self.settle(delivery, ran, metrics, hold)
    }

    /// Settles a delivery whose handler ran (or was refused): an ack at once, or a retry or
    /// dead letter to publish first (rare).
    fn settle(
        self,
        delivery: &Delivery,
        (outcome, output): Ran,
        metrics: &'a TaskMetrics,
        hold: Option<SemaphorePermit<'a>>,
    ) -> Stage<'a> {
        if let Outcome::Ack | Outcome::Cancelled = outcome {
            let settle = Settle::Ack(delivery.delivery_tag);
            record(metrics, &outcome, settle);
            self.metrics.held.dec();
            let ran = (&outcome, output);
            let after = report(
                self.shared,
                self.publisher,
                self.queue,
                delivery,
                ran,
                settle,
            );
            return Stage::Settled(settle, after);
        }
        Stage::Routing {
            outcome,
            metrics,
            hold,
        }
    }

    /// Takes a delivery that had to wait through its stages to its settlement.
    async fn resume(self, delivery: Delivery, mut stage: Stage<'a>) -> Settled {
        loop {
            stage = match stage {
                Stage::Queued {
                    limiter,
                    cpu,
                    envelope,
                    entry,
                    metrics,
                } => {
                    // Stopped while waiting for its turn: it never started.
                    let Some((permit, cpu)) = self.turn(limiter, cpu).await else {
                        if self.pausing.load(Ordering::Acquire) {
                            return self.give_back(delivery).await;
                        }
                        self.metrics.requeued.inc();
                        self.metrics.held.dec();
                        return (Settle::Requeue(delivery.delivery_tag), None);
                    };
                    self.run(&delivery, envelope, entry, permit, cpu, metrics)
                }
                Stage::Running {
                    handler,
                    permit,
                    cpu,
                    running,
                    listed,
                    metrics,
                } => {
                    let ran = handler.finish(self.shared, metrics).await;
                    self.metrics.in_progress.dec();
                    drop(cpu);
                    drop(permit);
                    drop(running);
                    drop(listed);
                    self.settle(&delivery, ran, metrics, None)
                }
                Stage::Routing {
                    outcome,
                    metrics,
                    hold,
                } => {
                    let settle = self.route(&delivery, &outcome, metrics).await;
                    drop(hold);
                    let (shared, publisher) = (self.shared, self.publisher);
                    let ran = (&outcome, None);
                    let after = report(shared, publisher, self.queue, &delivery, ran, settle);
                    Stage::Settled(settle, after)
                }
                Stage::Settled(settle, after) => return (settle, after),
            }
        }
    }

    /// Publishes a failed task's retry or dead letter, then settles it.
    async fn route(self, delivery: &Delivery, outcome: &Outcome, metrics: &TaskMetrics) -> Settle {
        // The handler took the envelope's strings; read it again for the headers.
        let envelope = Envelope::from_properties(&delivery.properties).ok();
        let settle = routing::route(
            self.shared,
            self.publisher,
            self.queue,
            delivery,
            envelope.as_ref(),
            outcome,
        )
        .await;
        if let Settle::Acked(_) = settle {
            // A task moved to run alone was acked on its own. The broker handles a channel's
            // frames in order, so once this round trip is answered it has taken that ack: the
            // copy cannot run (and crash the process, resetting its connection with the ack
            // unsent) while the original still counts as held.
            let qos = BasicQosOptions { global: false };
            if let Err(error) = self
                .channel
                .basic_qos(self.shared.config.prefetch, qos)
                .await
            {
                tracing::warn!(%error, "could not make sure the moved task's ack arrived");
            }
        }
        record(metrics, outcome, settle);
        if let Settle::Requeue(_) = settle {
            self.metrics.requeued.inc();
        }
        self.metrics.held.dec();
        settle
    }

    /// Waits for a task's turn: its rate limit's token, then its CPU permit if it needs one,
    /// then a concurrency permit. It holds no concurrency permit meanwhile, so other task
    /// types keep running. `None` if the worker stops meanwhile.
    async fn turn(
        self,
        limiter: Option<&RateLimiter>,
        cpu: Option<&'a Semaphore>,
    ) -> Option<(SemaphorePermit<'a>, Option<SemaphorePermit<'a>>)> {
        const OPEN: &str = "the semaphore is never closed";
        let turn = async {
            if let Some(limiter) = limiter {
                limiter.until_ready().await;
            }
            // CPU permit first: whoever holds one waits only for a concurrency permit, which
            // running tasks give back without waiting for anything.
            let cpu = match cpu {
                Some(cpu) => Some(cpu.acquire().await.expect(OPEN)),
                None => None,
            };
            (self.shared.permits.acquire().await.expect(OPEN), cpu)
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            permits = turn => Some(permits),
        }
    }
}

/// The span every log line of a task carries, joined to the publisher's trace.
pub(crate) fn task_span(
    queue: &str,
    delivery: &Delivery,
    envelope: &Result<Envelope, EnvelopeError>,
) -> Span {
    let (task, id, attempt) = match envelope {
        Ok(e) => (e.task.as_str(), e.id.as_str(), Some(e.attempt)),
        // Not a valid task: log what it carried all the same. The strings are the publisher's
        // (AMQP bounds them at 255 bytes; the log formatters escape them); an attempt header
        // that is itself invalid is left out.
        Err(_) => {
            let claimed = Claimed::from_properties(&delivery.properties);
            let (task, id) = (claimed.task.unwrap_or(""), claimed.id.unwrap_or(""));
            (task, id, claimed.attempt)
        }
    };
    let span = tracing::info_span!(
        "task",
        task_id = id,
        task,
        attempt,
        queue,
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    let trace = envelope
        .as_ref()
        .ok()
        .and_then(|e| e.traceparent.as_deref());
    if let Some(parent) = trace.and_then(warren_common::TraceParent::parse) {
        span.record("trace_id", parent.trace_id.as_str());
        span.record("parent_span_id", parent.parent_id.as_str());
    }
    span
}

/// Counts a task's fate.
pub(crate) fn record(metrics: &TaskMetrics, outcome: &Outcome, settle: Settle) {
    if let Settle::Requeue(_) = settle {
        tracing::info!(outcome = "requeued", "task returned to its queue");
        return;
    }
    match outcome {
        Outcome::Ack => {
            metrics.succeeded.inc();
            // Debug, not info: at info, with a no-op handler, formatting and writing this one
            // line cost ~16% of the default drain rate (docs/performance.md, "Defaults").
            // Count successes with warren_tasks_succeeded_total instead.
            tracing::debug!(outcome = "succeeded", "task finished");
        }
        Outcome::Retry { .. } => metrics.retried.inc(),
        Outcome::DeadLetter(failure) => metrics.dead_lettered(failure.kind),
        Outcome::Isolate { .. } => metrics.isolated.inc(),
        Outcome::Cancelled => {}
    }
}
