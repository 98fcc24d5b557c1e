//! `warren-producer publish`: one task (printing its id) or many, paced and pipelined, with a
//! progress bar on a terminal and a summary.

use super::wait;
use anyhow::Context;
use futures::{stream, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use warren_common::reply::{Reply, ReplyStatus};
use warren_common::{Amqp, CallError, Codec, QueueKind, QueueSpec, Retention, Shutdown};
use warren_producer::{PublishError, Publisher, PublisherConfig, TaskOptions};

/// Arguments of `publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Task name (selects the worker's handler), e.g. `demo.sleep`.
    #[arg(long)]
    task: String,
    /// Payload as JSON, e.g. '{"ms": 10}'. Published with content type application/json.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Queue to publish to.
    #[arg(long, env = "WARREN_QUEUE", default_value = "default")]
    queue: String,
    /// Type of the queue, if it has to be declared.
    #[arg(long, env = "WARREN_QUEUE_TYPE", value_enum, default_value = "quorum")]
    queue_type: QueueKind,
    /// Declare the queue as a priority queue with this maximum priority (classic only).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
    max_priority: Option<u8>,
    /// Dead-letter retention, if the queue has to be declared (must match the workers').
    #[command(flatten)]
    retention: Retention,
    /// Publish this many tasks (each with its own id), showing progress and a summary.
    #[arg(long)]
    count: Option<u64>,
    /// Publish at most this many tasks per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Task id to use (only for a single task).
    #[arg(long, conflicts_with = "count")]
    id: Option<String>,
    /// Hold the task in the broker this long before it runs (e.g. 30s, 2h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Run the task not before this time (RFC 3339 with a zone, e.g. 2026-12-01T09:00:00Z or
    /// 2026-12-01T10:00:00+01:00).
    #[arg(long, value_parser = parse_time)]
    at: Option<SystemTime>,
    /// Do not run the task after this much time has passed (it is dead-lettered as expired).
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<Duration>,
    /// Attempts allowed for this task (overrides the worker's setting).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// Handler timeout for this task (overrides the worker's setting).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Priority 0-9 (only priority queues honour it).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Wait this long for the task to end, then print its reply (its result, or why it
    /// failed) as JSON. Exit codes as `tasks wait`: 0 succeeded, 4 dead-lettered, 5 expired,
    /// 75 no reply in time (the task was published and may still run). Only for one task.
    #[arg(long, value_name = "TIMEOUT", value_parser = super::parse_timeout, conflicts_with = "count")]
    wait: Option<Duration>,
    /// Maximum number of confirms in flight.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// How long to wait for each confirm.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    confirm_timeout: Duration,
    #[command(flatten)]
    events: super::events::PublishedEventsArgs,
    #[command(flatten)]
    pub(super) connect: super::ConnectTimeout,
}

pub async fn run(
    args: PublishArgs,
    amqp: &Amqp,
    exchange: &str,
    via_exchange: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .with_context(|| format!("--payload is not valid JSON: {}", args.payload))?;
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number"
        );
    }
    let config = PublisherConfig {
        amqp: amqp.clone(),
        exchange: exchange.to_owned(),
        via_exchange,
        default_queue: args.queue.clone(),
        confirm_timeout: args.confirm_timeout,
        connection_name: "warren-producer publish".to_owned(),
        metrics: None,
    };
    let connecting = Publisher::connect(config, &shutdown.drain);
    let publisher = args.connect.bound(amqp, connecting).await??;
    let publisher = match args.events.config() {
        Some(events) => publisher.with_events(events),
        None => publisher,
    };
    publisher
        .declare(
            &QueueSpec::new(&args.queue, args.queue_type)
                .with_max_priority(args.max_priority)
                .with_retention(args.retention),
        )
        .await?;
    let delay = match args.at {
        Some(at) => Some(at.duration_since(SystemTime::now()).unwrap_or_default()),
        None => args.delay,
    };
    let options = TaskOptions {
        id: args.id.clone(),
        codec: Some(Codec::Json),
        delay,
        expires_at: args
            .expires_in
            .map(|after| expires_at(SystemTime::now(), after))
            .transpose()?,
        max_attempts: args.max_attempts,
        timeout: args.timeout,
        priority: args.priority,
        ..TaskOptions::default()
    };
    let code = match (args.count, args.wait) {
        (None, Some(timeout)) => {
            let called = publisher.call_named(&args.task, &payload, &options, timeout);
            answered(called.await)?
        }
        (None, None) => {
            let id = publisher.publish(&args.task, &payload, &options).await?;
            println!("{id}");
            ExitCode::SUCCESS
        }
        (Some(count), _) => {
            publish_many(&publisher, &args, &payload, &options, count, shutdown).await
        }
    };
    publisher.close().await;
    Ok(code)
}

/// Prints a call's reply and says by the exit code how the task ended.
fn answered(called: Result<Reply<'static>, CallError>) -> anyhow::Result<ExitCode> {
    match called {
        Ok(reply) => {
            println!("{}", String::from_utf8_lossy(&reply.to_bytes()));
            // The codes of `tasks wait`.
            let code = match reply.status {
                ReplyStatus::Succeeded => return Ok(ExitCode::SUCCESS),
                ReplyStatus::DeadLettered => wait::DEAD_LETTERED,
                ReplyStatus::Expired => wait::EXPIRED,
                ReplyStatus::Cancelled => wait::ENDED_OTHERWISE,
            };
            eprintln!("error: task {} ended {}", reply.id, reply.status.as_str());
            Ok(ExitCode::from(code))
        }
        Err(error @ (CallError::Timeout { .. } | CallError::Disconnected { .. })) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(wait::NOT_ENDED))
        }
        Err(error) => Err(error.into()),
    }
}

async fn publish_many(
    publisher: &Publisher,
    args: &PublishArgs,
    payload: &serde_json::Value,
    options: &TaskOptions,
    count: u64,
    shutdown: &Shutdown,
) -> ExitCode {
    let progress = ProgressBar::new(count).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} confirmed  {per_sec}  eta {eta}")
            .expect("the template is valid"),
    );
    let started = Instant::now();
    let interval = args.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let results = stream::iter(0..count)
        .take_until(shutdown.drain.cancelled())
        .then(|i| async move {
            if let Some(interval) = interval {
                tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
            }
        })
        .map(|()| publisher.publish(&args.task, payload, options))
        .buffered(args.window.max(1));
    let mut results = std::pin::pin!(results);
    let mut confirmed = 0u64;
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut first_error: Option<PublishError> = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(_) => confirmed += 1,
            Err(e) => {
                *failures.entry(e.kind()).or_default() += 1;
                first_error.get_or_insert(e);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let failed: u64 = failures.values().sum();
    println!(
        "published {} tasks to `{}`: {confirmed} confirmed, {failed} not confirmed, {:.0} tasks/s",
        confirmed + failed,
        args.queue,
        confirmed as f64 / elapsed.max(1e-9)
    );
    for (kind, n) in &failures {
        println!("  {n} failed: {kind}");
    }
    if let Some(e) = first_error {
        eprintln!("first failure: {e}");
    }
    if failed == 0 && confirmed == count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// When a task expiring `after` from `now` expires. A time the system cannot represent is
/// refused; one past the year 584 million is written as the largest value the header holds.
fn expires_at(now: SystemTime, after: Duration) -> anyhow::Result<SystemTime> {
    now.checked_add(after).ok_or_else(|| {
        anyhow::anyhow!(
            "--expires-in {}: too far in the future",
            humantime::format_duration(after)
        )
    })
}

/// An RFC 3339 time with its offset honoured.
fn parse_time(value: &str) -> Result<SystemTime, String> {
    let time = chrono::DateTime::parse_from_rfc3339(value.trim()).map_err(|e| {
        format!("not an RFC 3339 time with a zone ({e}), e.g. 2026-12-01T09:00:00Z")
    })?;
    Ok(SystemTime::from(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_their_offset() {
        let utc = parse_time("2026-12-01T09:00:00Z").unwrap();
        let paris = parse_time("2026-12-01T10:00:00.5+01:00").unwrap();
        assert_eq!(
            paris.duration_since(utc).unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_time("2026-12-01T09:00:00").is_err());
    }

    #[test]
    fn expiries_at_the_extremes_are_times_or_refused() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let soon = expires_at(now, Duration::from_millis(1_500)).unwrap();
        assert_eq!(soon, now + Duration::from_millis(1_500));
        // u64::MAX milliseconds (~584 million years) is a time; its header saturates.
        assert!(expires_at(now, Duration::from_millis(u64::MAX)).is_ok());
        let refused = expires_at(now, Duration::MAX).unwrap_err().to_string();
        assert!(refused.contains("too far in the future"), "{refused}");
    }
}
