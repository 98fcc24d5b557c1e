//! One queue's consume loop on one channel. Deliveries are taken as the prefetch allows,
//! wait in order for a concurrency permit, and run as futures inside the loop itself, which
//! also settles them: finishing a task, acking it and starting the next involve no other
//! task, channel or thread (a handler registered with `spawn` runs on a task of its own).
//! On stop the consumer is cancelled and every delivery not yet started goes back to the
//! queue, while the running ones finish and are settled.

use crate::acks::{Acks, Settle, QUIET};
use crate::execute::{self, Run};
use crate::metrics::{QueueMetrics, TaskMetrics};
use crate::{routing, Outcome, Shared};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use governor::DefaultDirectRateLimiter as RateLimiter;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use warren_common::{Envelope, EnvelopeError};
use warren_producer::Publisher;

/// How long a stopping consumer keeps returning deliveries the broker had already sent.
const RETURN_WINDOW: Duration = Duration::from_secs(5);

/// Why a consume loop stopped taking deliveries.
pub(crate) enum ConsumerEnd {
    /// Asked to stop. The handle resolves, to the number of settlements that could not be
    /// sent, once every running task has finished and been settled.
    Stopped(JoinHandle<u64>),
    /// The channel, the connection or the subscription was lost. Running tasks still finish
    /// (their acks fail: the broker redelivers them).
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
    let (ended, end) = oneshot::channel();
    let lane = Owned {
        shared,
        publisher: link.publisher.clone(),
        queue: queue.clone(),
        stop: link.stop.clone(),
    };
    let running = tokio::spawn(lane.run(channel, consumer, ended));
    match end.await {
        Ok(None) => ConsumerEnd::Stopped(running),
        Ok(Some(reason)) => ConsumerEnd::Lost(reason),
        Err(_) => ConsumerEnd::Lost(format!("the consume loop of `{queue}` ended unexpectedly")),
    }
}

async fn subscribe(
    shared: &Shared,
    conn: &Connection,
    queue: &str,
) -> Result<(Consumer, Channel), lapin::Error> {
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

/// What a consume loop owns, so that it can run as a task of its own.
struct Owned {
    shared: Arc<Shared>,
    publisher: Publisher,
    queue: Arc<str>,
    stop: CancellationToken,
}

/// What every delivery of one consume loop borrows.
#[derive(Clone, Copy)]
struct Lane<'a> {
    shared: &'a Shared,
    publisher: &'a Publisher,
    queue: &'a Arc<str>,
    metrics: &'a QueueMetrics,
    stop: &'a CancellationToken,
}

/// Where a consume loop is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking deliveries and running them.
    Taking,
    /// Stopped: returning deliveries the broker still sends, finishing the running ones.
    Returning,
    /// Finishing the running ones.
    Finishing,
}

impl Owned {
    /// The consume loop. Tells `ended` why it stopped taking deliveries (`None`: asked to),
    /// then finishes and settles what runs. Returns how many settlements could not be sent.
    async fn run(
        self,
        channel: Channel,
        mut consumer: Consumer,
        ended: oneshot::Sender<Option<String>>,
    ) -> u64 {
        let lane = Lane {
            shared: &self.shared,
            publisher: &self.publisher,
            queue: &self.queue,
            metrics: &self.shared.queue_metrics[&*self.queue],
            stop: &self.stop,
        };
        let permits = &*self.shared.permits;
        // One `multiple` ack at least every tenth of the window while tasks keep finishing.
        let ack_every = u64::from(self.shared.config.prefetch / 10).max(1);
        let mut acks = Acks::new(&channel, ack_every);
        let mut ended = Some(ended);
        let mut phase = Phase::Taking;
        let mut waiting: VecDeque<Delivery> = VecDeque::new();
        let mut running = FuturesUnordered::new();
        let stopped = self.stop.cancelled();
        let quiet = tokio::time::sleep(Duration::ZERO);
        let linger = tokio::time::sleep(Duration::ZERO);
        let returned = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stopped, quiet, linger, returned);
        let (mut quiet_armed, mut linger_armed) = (false, false);
        loop {
            let taking = phase == Phase::Taking;
            let receiving = phase != Phase::Finishing;
            tokio::select! {
                biased;
                _ = &mut stopped, if taking => {
                    phase = Phase::Returning;
                    returned.as_mut().reset(Instant::now() + RETURN_WINDOW);
                    let _ = channel
                        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                        .await;
                    for delivery in waiting.drain(..) {
                        lane.returned(&mut acks, &delivery);
                    }
                    if let Some(ended) = ended.take() {
                        let _ = ended.send(None);
                    }
                }
                Some(settle) = running.next(), if !running.is_empty() => {
                    acks.settle(settle);
                }
                _ = &mut quiet, if quiet_armed => {
                    quiet_armed = false;
                    acks.flush(true);
                }
                _ = &mut linger, if linger_armed => {
                    linger_armed = false;
                    acks.flush(false);
                }
                permit = permits.acquire(), if taking && !waiting.is_empty() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let delivery = waiting.pop_front().expect("checked non-empty");
                    match lane.start(delivery, permit) {
                        Step::Settled(settle) => acks.settle(settle),
                        Step::Running(task) => running.push(task),
                    }
                }
                next = consumer.next(), if receiving => match (phase, next) {
                    (Phase::Taking, Some(Ok(delivery))) => waiting.push_back(lane.taken(delivery)),
                    (_, Some(Ok(delivery))) => lane.returned(&mut acks, &delivery),
                    (Phase::Taking, end) => {
                        let reason = match end {
                            Some(Err(error)) => format!("consumer of `{}` failed: {error}", lane.queue),
                            _ => format!("the broker cancelled the consumer of `{}`", lane.queue),
                        };
                        phase = Phase::Finishing;
                        lane.metrics.held.sub(waiting.len() as i64);
                        waiting.clear();
                        if let Some(ended) = ended.take() {
                            let _ = ended.send(Some(reason));
                        }
                    }
                    (_, _) => phase = Phase::Finishing,
                },
                _ = &mut returned, if phase == Phase::Returning => phase = Phase::Finishing,
                else => break,
            }
            // Take whatever else is ready without waiting (acks go out as the batch grows).
            loop {
                let mut progressed = false;
                while let Some(Some(settle)) = running.next().now_or_never() {
                    acks.settle(settle);
                    progressed = true;
                }
                if phase == Phase::Taking {
                    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                        waiting.push_back(lane.taken(delivery));
                        progressed = true;
                    }
                    while !waiting.is_empty() {
                        let Ok(permit) = permits.try_acquire() else {
                            break;
                        };
                        let delivery = waiting.pop_front().expect("checked non-empty");
                        match lane.start(delivery, permit) {
                            Step::Settled(settle) => acks.settle(settle),
                            Step::Running(task) => running.push(task),
                        }
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            // About to wait: what is done is acked (at most one such ack per LINGER), and a
            // gap gets its deadline.
            if let Some(due) = acks.flush_or_defer() {
                if !linger_armed {
                    linger_armed = true;
                    linger.as_mut().reset(due);
                }
            }
            if !acks.holding() {
                quiet_armed = false;
            } else if !quiet_armed {
                quiet_armed = true;
                quiet.as_mut().reset(Instant::now() + QUIET);
            }
        }
        let lost = acks.finish().await;
        self.shared
            .metrics
            .acks_lost
            .with_label_values(&[&*self.queue])
            .inc_by(lost);
        lost
    }
}

/// What starting a delivery came to.
enum Step<'a> {
    /// Settled without waiting (most short tasks).
    Settled(Settle),
    /// Still running (a handler waiting on something, a rate limit, a retry being
    /// published): the consume loop polls it to its settlement.
    Running(BoxFuture<'a, Settle>),
}

impl Step<'_> {
    /// The settlement, once there is one.
    async fn settled(self) -> Settle {
        match self {
            Step::Settled(settle) => settle,
            Step::Running(running) => running.await,
        }
    }
}

impl<'a> Lane<'a> {
    /// Counts a delivery taken from the consumer.
    fn taken(self, delivery: Delivery) -> Delivery {
        self.metrics.held.inc();
        self.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
        delivery
    }

    /// Returns a delivery that was never started to its queue.
    fn returned(self, acks: &mut Acks<'_>, delivery: &Delivery) {
        self.metrics.requeued.inc();
        self.metrics.held.dec();
        acks.settle(Settle::Requeue(delivery.delivery_tag));
    }

    /// Starts one delivery, holding `permit`. A handler that finishes on its first poll is
    /// settled right here: no future, allocation or wake-up of its own.
    fn start(self, delivery: Delivery, permit: SemaphorePermit<'a>) -> Step<'a> {
        let envelope = Envelope::from_properties(&delivery.properties);
        let span = task_span(self.queue, &delivery, &envelope);
        let task = envelope.as_ref().map_or("", |e| e.task.as_str());
        let metrics = self.metrics.task(task);
        metrics.received.inc();
        match self.shared.rate_limits.get(task) {
            Some(limiter) if limiter.check().is_err() => {
                drop(permit);
                let turn = async move {
                    // Stopped while waiting for its turn: it never started.
                    let Some(permit) = self.turn(limiter).await else {
                        self.metrics.requeued.inc();
                        self.metrics.held.dec();
                        return Settle::Requeue(delivery.delivery_tag);
                    };
                    self.run(delivery, envelope, permit, metrics, &Span::current())
                        .settled()
                        .await
                };
                Step::Running(turn.instrument(span).boxed())
            }
            _ => span.in_scope(|| self.run(delivery, envelope, permit, metrics, &span)),
        }
    }

    /// Runs a delivery's handler (inside `span`) once it may.
    fn run(
        self,
        delivery: Delivery,
        envelope: Result<Envelope, EnvelopeError>,
        permit: SemaphorePermit<'a>,
        metrics: &'a TaskMetrics,
        span: &Span,
    ) -> Step<'a> {
        let in_progress = &self.metrics.in_progress;
        in_progress.inc();
        match execute::run(self.shared, self.queue, &delivery, envelope, metrics) {
            Run::Done(outcome) => {
                in_progress.dec();
                drop(permit);
                self.settle(delivery, outcome, metrics, span)
            }
            Run::Waiting(started) => {
                let running = self.shared.tasks.token();
                let finish = async move {
                    let outcome = started.finish(self.shared, metrics).await;
                    in_progress.dec();
                    drop(permit);
                    drop(running);
                    self.settle(delivery, outcome, metrics, &Span::current())
                        .settled()
                        .await
                };
                Step::Running(finish.instrument(span.clone()).boxed())
            }
        }
    }

    /// Settles a delivery whose handler ran (or was refused): an ack at once, or a retry or
    /// dead letter published first (rare).
    fn settle(
        self,
        delivery: Delivery,
        outcome: Outcome,
        metrics: &'a TaskMetrics,
        span: &Span,
    ) -> Step<'a> {
        if let Outcome::Ack = outcome {
            let settle = Settle::Ack(delivery.delivery_tag);
            record(metrics, &outcome, settle);
            self.metrics.held.dec();
            return Step::Settled(settle);
        }
        let route = async move {
            // The handler took the envelope's strings; read it again for the headers.
            let envelope = Envelope::from_properties(&delivery.properties).ok();
            let settle = routing::route(
                self.shared,
                self.publisher,
                self.queue,
                &delivery,
                envelope.as_ref(),
                &outcome,
            )
            .await;
            record(metrics, &outcome, settle);
            if let Settle::Requeue(_) = settle {
                self.metrics.requeued.inc();
            }
            self.metrics.held.dec();
            settle
        };
        Step::Running(route.instrument(span.clone()).boxed())
    }

    /// Waits for a rate-limited task's turn, giving its concurrency permit back meanwhile so
    /// other task types keep running. `None` if the worker stops meanwhile.
    async fn turn(self, limiter: &RateLimiter) -> Option<SemaphorePermit<'a>> {
        let turn = async {
            limiter.until_ready().await;
            self.shared.permits.acquire().await
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            permit = turn => Some(permit.expect("the semaphore is never closed")),
        }
    }
}

/// The span every log line of a task carries, joined to the publisher's trace.
fn task_span(queue: &str, delivery: &Delivery, envelope: &Result<Envelope, EnvelopeError>) -> Span {
    let (task, id, attempt) = match envelope {
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
fn record(metrics: &TaskMetrics, outcome: &Outcome, settle: Settle) {
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
