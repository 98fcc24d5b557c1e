//! Running one delivery: every check that decides whether the task may run at all
//! ([`admit`]), then its [`Handler`] under its timeout with panics caught. Produces an
//! [`Outcome`]; nothing here talks to the broker.

use crate::consume::isolation::{self, Mode, Verdict};
use crate::metrics::TaskMetrics;
use crate::outcome::{Failure, Outcome, ReasonKind};
use crate::output::Output;
use crate::registry::{Entry, HandlerResult, TaskContext};
use crate::{Cancellation, Shared};
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::BasicProperties;
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::error::Elapsed;
use tokio::time::Instant;
use warren_common::{headers, now_ms, Envelope, EnvelopeError};

/// What the checks and the handler read of a delivery: its body, its properties and whether
/// the broker delivered it before.
#[derive(Clone, Copy)]
pub(crate) struct Arrival<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) properties: &'a BasicProperties,
    pub(crate) redelivered: bool,
}

impl<'a> From<&'a Delivery> for Arrival<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Arrival {
            data: &delivery.data,
            properties: &delivery.properties,
            redelivered: delivery.redelivered,
        }
    }
}

/// The checks made before a handler runs, in the order of wire-format §8.1; each refusal is
/// final (a dead letter, or the move of a suspect delivery to run alone). `entry` is the
/// registry's entry for the task the envelope names, looked up once by the caller.
pub(crate) fn admit<'a>(
    shared: &Shared,
    delivery: Arrival<'_>,
    envelope: Result<Envelope, EnvelopeError>,
    entry: Option<&'a Entry>,
    mode: Mode,
) -> Result<(Envelope, &'a Entry), Outcome> {
    let dead = |kind, reason: String| Outcome::DeadLetter(Failure::new(kind, reason));
    let limit = shared.config.max_payload_bytes;
    if delivery.data.len() > limit {
        let reason = format!(
            "payload of {} bytes exceeds the limit of {limit}",
            delivery.data.len()
        );
        return Err(dead(ReasonKind::TooLarge, reason));
    }
    let envelope = envelope.map_err(|e| match e {
        EnvelopeError::Codec(_) => dead(ReasonKind::UnsupportedContentType, e.to_string()),
        _ => dead(ReasonKind::InvalidMessage, e.to_string()),
    })?;
    let returns = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|table| warren_common::header_u64(table, headers::X_DELIVERY_COUNT).ok())
        .flatten();
    let budget = shared.config.crash_budget;
    match isolation::judge(mode, shared.config.queue_type, returns, budget) {
        Verdict::Run => {}
        Verdict::Isolate { returns } => return Err(Outcome::Isolate { returns }),
        Verdict::CrashLoop { returns } => {
            let alone = if mode == Mode::Alone {
                " while running alone"
            } else {
                ""
            };
            let reason = format!(
                "returned {returns} times without being settled{alone} (crash budget {budget}): it keeps crashing its workers"
            );
            return Err(dead(ReasonKind::CrashLoop, reason));
        }
    }
    if let Some(expires) = envelope.expires_ms.filter(|&e| e <= now_ms()) {
        return Err(dead(
            ReasonKind::Expired,
            format!("expired at {expires} ms"),
        ));
    }
    if let Some(control) = &shared.control {
        if control.is_cancelled(&envelope.id, envelope.created_ms) {
            tracing::info!(outcome = "cancelled", "task cancelled before it ran");
            return Err(Outcome::Cancelled);
        }
    }
    let entry = entry.ok_or_else(|| {
        dead(
            ReasonKind::UnknownTask,
            format!("no handler for task `{}`", envelope.task),
        )
    })?;
    Ok((envelope, entry))
}

/// What an attempt came to: the delivery's fate, and the handler's result if it succeeded.
pub(crate) type Ran = (Outcome, Option<Output>);

/// Admits a delivery and runs its handler to its end, in one go: for runs alone and the
/// testing API, which wait for each task anyway. The consume loop goes through the same steps
/// one at a time ([`crate::consume::delivery`]), so that a handler finished on its first poll
/// needs no future of its own.
pub(crate) async fn run(
    shared: &Shared,
    queue: &Arc<str>,
    delivery: Arrival<'_>,
    envelope: Result<Envelope, EnvelopeError>,
    metrics: &TaskMetrics,
    mode: Mode,
) -> Ran {
    let task = envelope.as_ref().map_or("", |e| e.task.as_str());
    let entry = shared.registry.get(task);
    let (envelope, entry) = match admit(shared, delivery, envelope, entry, mode) {
        Ok(admitted) => admitted,
        Err(refused) => return (refused, None),
    };
    match Handler::start(shared, queue, delivery, envelope, entry, metrics) {
        Ok(handler) => handler.finish(shared, metrics).await,
        Err(outcome) => (outcome, None),
    }
}

/// A task's handler, started: its future and what concluding the attempt needs.
pub(crate) struct Handler {
    future: BoxFuture<'static, HandlerResult>,
    attempt: Attempt,
    cancellation: Cancellation,
}

/// What concluding an attempt needs to know of it.
#[derive(Clone, Copy)]
struct Attempt {
    started: Instant,
    timeout: Duration,
    spawn: bool,
    number: u32,
    max_attempts: u32,
}

/// What a handler's run came to: its result, a panic, or the timeout.
type Ended = Result<Result<HandlerResult, Box<dyn Any + Send>>, Elapsed>;

impl Handler {
    /// Decodes the payload and starts the handler (nothing runs until it is polled). The
    /// envelope's strings move into the handler's [`TaskContext`].
    pub(crate) fn start(
        shared: &Shared,
        queue: &Arc<str>,
        delivery: Arrival<'_>,
        envelope: Envelope,
        entry: &Entry,
        metrics: &TaskMetrics,
    ) -> Result<Self, Outcome> {
        let config = &shared.config;
        let max_attempts = envelope
            .max_attempts
            .or(entry.options.max_attempts)
            .unwrap_or(config.max_attempts);
        let timeout = envelope
            .timeout_ms
            .map(Duration::from_millis)
            .or(entry.options.timeout)
            .unwrap_or(config.task_timeout)
            // Strictly below the broker's consumer timeout, or the two race.
            .min(
                config
                    .consumer_timeout
                    .saturating_sub(Duration::from_secs(1)),
            );
        // Latency counts from when the task could first run: its creation, or the end of a
        // broker-held delay or retry backoff.
        let ready = envelope.created_ms.max(envelope.not_before_ms);
        let attempt = envelope.attempt;
        let cancellation = Cancellation::of(shared, &envelope.id, envelope.created_ms);
        let ctx = TaskContext {
            id: envelope.id,
            task: envelope.task,
            attempt,
            max_attempts,
            queue: queue.clone(),
            schema_version: envelope.schema_version,
            created_ms: envelope.created_ms,
            redelivered: delivery.redelivered,
            traceparent: envelope.traceparent,
            cancellation: cancellation.clone(),
        };
        let future = entry
            .start(ctx, envelope.codec, delivery.data)
            .map_err(|e| Outcome::DeadLetter(Failure::new(ReasonKind::Undecodable, e)))?;
        if let Some(ready) = ready {
            metrics
                .latency
                .observe(now_ms().saturating_sub(ready) as f64 / 1000.0);
        }
        let attempt = Attempt {
            started: Instant::now(),
            timeout,
            spawn: entry.options.spawn,
            number: attempt,
            max_attempts,
        };
        Ok(Handler {
            future,
            attempt,
            cancellation,
        })
    }

    /// Polls a handler that runs inline once, with a waker that does nothing: a handler
    /// still waiting is polled again (with its own waker) by whoever runs [`finish`](Self::finish).
    /// Most short tasks end here, with no future, allocation or wake-up of their own.
    pub(crate) fn poll_once(mut self, shared: &Shared, metrics: &TaskMetrics) -> Result<Ran, Self> {
        if self.attempt.spawn {
            return Err(self);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let polled = panic::catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(&mut cx)));
        let ended = match polled {
            Ok(Poll::Pending) => return Err(self),
            Ok(Poll::Ready(result)) => Ok(Ok(result)),
            Err(panic) => Ok(Err(panic)),
        };
        Ok(self.attempt.conclude(shared, metrics, ended))
    }

    /// Runs the handler to its end, within its timeout, unless its task is cancelled
    /// meanwhile (then it is dropped, or aborted when spawned).
    pub(crate) async fn finish(self, shared: &Shared, metrics: &TaskMetrics) -> Ran {
        let cancellation = self.cancellation.clone();
        // The cancellation first: blocking code that returns because it saw the cancellation
        // ends a cancelled task, not a successful one (the token fires before it can see it).
        tokio::select! {
            biased;
            () = cancellation.cancelled() => {
                tracing::info!(outcome = "cancelled", "task cancelled while running; handler stopped");
                (Outcome::Cancelled, None)
            }
            ran = self.run(shared, metrics) => ran,
        }
    }

    async fn run(self, shared: &Shared, metrics: &TaskMetrics) -> Ran {
        let Handler {
            future, attempt, ..
        } = self;
        let deadline = attempt.started + attempt.timeout;
        let handler = AssertUnwindSafe(future).catch_unwind();
        let ended = if attempt.spawn {
            let mut task = tokio::spawn(handler);
            // Stopped with its task (a cancellation drops this future).
            let _abort = AbortOnDrop(task.abort_handle());
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(joined) => Ok(joined.unwrap_or_else(|e| Err(Box::new(e.to_string())))),
                Err(elapsed) => {
                    task.abort();
                    Err(elapsed)
                }
            }
        } else {
            tokio::time::timeout_at(deadline, handler).await
        };
        attempt.conclude(shared, metrics, ended)
    }
}

/// Aborts a spawned handler when dropped (a no-op once it has finished).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Attempt {
    /// The outcome of the attempt, counted in the task's metrics.
    fn conclude(self, shared: &Shared, metrics: &TaskMetrics, ended: Ended) -> Ran {
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        let mut asked = None;
        let failure = match ended {
            Ok(Ok(Ok(output))) => return (Outcome::Ack, Some(output)),
            Ok(Ok(Err(error))) => {
                asked = error.retry_delay();
                error.into_failure()
            }
            Ok(Err(panic)) => Failure::new(ReasonKind::Panic, panic_message(panic.as_ref())),
            Err(_) => Failure::new(
                ReasonKind::Timeout,
                format!(
                    "handler did not finish within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        metrics.failed(failure.kind);
        let retry = &shared.config.retry;
        let outcome =
            Outcome::after_failure(
                failure,
                self.number,
                self.max_attempts,
                |attempt| match asked {
                    Some(delay) => delay.min(warren_common::delay::max_delay()),
                    None => retry.delay_after(attempt),
                },
            );
        (outcome, None)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {text}")
}
