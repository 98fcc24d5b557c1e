//! Running one delivery: every check that decides whether the task may run at all, then the
//! handler itself under its timeout with panics caught. Produces an [`Outcome`]; nothing
//! here talks to the broker.

use crate::metrics::TaskMetrics;
use crate::outcome::{Failure, Outcome, ReasonKind};
use crate::registry::{Entry, TaskContext};
use crate::Shared;
use futures::FutureExt;
use lapin::message::Delivery;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};
use warren_common::{headers, now_ms, Envelope, EnvelopeError};

/// Decides and runs a delivery whose envelope was read (or not).
pub(crate) async fn execute(
    shared: &Shared,
    queue: &str,
    delivery: &Delivery,
    envelope: &Result<Envelope, EnvelopeError>,
    metrics: &TaskMetrics,
) -> Outcome {
    match admit(shared, delivery, envelope) {
        Err(failure) => Outcome::DeadLetter(failure),
        Ok((envelope, entry)) => run(shared, queue, delivery, envelope, entry, metrics).await,
    }
}

/// The checks made before a handler runs; each failure is final.
fn admit<'a>(
    shared: &'a Shared,
    delivery: &Delivery,
    envelope: &'a Result<Envelope, EnvelopeError>,
) -> Result<(&'a Envelope, &'a Entry), Failure> {
    let limit = shared.config.max_payload_bytes;
    if delivery.data.len() > limit {
        let reason = format!(
            "payload of {} bytes exceeds the limit of {limit}",
            delivery.data.len()
        );
        return Err(Failure::new(ReasonKind::TooLarge, reason));
    }
    let envelope = envelope.as_ref().map_err(|e| match e {
        EnvelopeError::Codec(_) => Failure::new(ReasonKind::UnsupportedContentType, e),
        _ => Failure::new(ReasonKind::InvalidMessage, e),
    })?;
    let empty = Default::default();
    let table = delivery.properties.headers().as_ref().unwrap_or(&empty);
    let redeliveries = warren_common::header_u64(table, headers::X_DELIVERY_COUNT)
        .ok()
        .flatten();
    if let Some(count) = redeliveries.filter(|&c| c > shared.config.crash_budget) {
        let reason = format!(
            "delivered {} times without being settled (crash budget {}): it may be crashing workers",
            count + 1,
            shared.config.crash_budget
        );
        return Err(Failure::new(ReasonKind::CrashLoop, reason));
    }
    if let Some(expires) = envelope.expires_ms.filter(|&e| e <= now_ms()) {
        return Err(Failure::new(
            ReasonKind::Expired,
            format!("expired at {expires} ms"),
        ));
    }
    let entry = shared.registry.get(&envelope.task).ok_or_else(|| {
        Failure::new(
            ReasonKind::UnknownTask,
            format!("no handler for task `{}`", envelope.task),
        )
    })?;
    Ok((envelope, entry))
}

async fn run(
    shared: &Shared,
    queue: &str,
    delivery: &Delivery,
    envelope: &Envelope,
    entry: &Entry,
    metrics: &TaskMetrics,
) -> Outcome {
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
    let ctx = TaskContext {
        id: envelope.id.clone(),
        task: envelope.task.clone(),
        attempt: envelope.attempt,
        max_attempts,
        queue: queue.to_owned(),
        schema_version: envelope.schema_version,
        created_ms: envelope.created_ms,
        redelivered: delivery.redelivered,
        traceparent: envelope.traceparent.clone(),
    };
    let future = match entry.start(ctx, envelope.codec, &delivery.data) {
        Ok(future) => future,
        Err(e) => return Outcome::DeadLetter(Failure::new(ReasonKind::Undecodable, e)),
    };
    // Latency counts from when the task could first run: its creation, or the end of a
    // broker-held delay or retry backoff.
    if let Some(ready) = envelope.created_ms.max(envelope.not_before_ms) {
        metrics
            .latency
            .observe(now_ms().saturating_sub(ready) as f64 / 1000.0);
    }
    let started = Instant::now();
    let handler = AssertUnwindSafe(future).catch_unwind();
    let result = if entry.options.spawn {
        let mut task = tokio::spawn(handler);
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(joined) => Ok(joined.unwrap_or_else(|e| Err(Box::new(e.to_string())))),
            Err(elapsed) => {
                task.abort();
                Err(elapsed)
            }
        }
    } else {
        tokio::time::timeout(timeout, handler).await
    };
    metrics.duration.observe(started.elapsed().as_secs_f64());
    let failure = match result {
        Ok(Ok(Ok(()))) => return Outcome::Ack,
        Ok(Ok(Err(error))) => error.into_failure(),
        Ok(Err(panic)) => Failure::new(ReasonKind::Panic, panic_message(panic.as_ref())),
        Err(_) => Failure::new(
            ReasonKind::Timeout,
            format!(
                "handler did not finish within {}",
                humantime::format_duration(timeout)
            ),
        ),
    };
    metrics.failed(failure.kind);
    Outcome::after_failure(failure, envelope.attempt, max_attempts, |attempt| {
        config.retry.delay_after(attempt)
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {text}")
}
