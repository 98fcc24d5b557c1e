//! Warren's side through its public API only: publishing with [`Publisher`], and (for W3)
//! a [`Worker`] run in a child process with the benchmark's own stamp handler.

use crate::args::WorkerRoleArgs;
use crate::broker::Broker;
use crate::payload::{now_us, Stamp, STAMP};
use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use warren_common::events::PublishedEvents;
use warren_common::{serve_admin, shutdown_signal, Amqp, Codec, QueueKind, QueueSpec};
use warren_producer::{Publisher, PublisherConfig, TaskOptions};
use warren_worker::{Registry, TaskContext, TaskError, Worker, WorkerConfig};

/// The broker at `url`, for Warren's configuration structs.
pub fn amqp(url: &str) -> anyhow::Result<Amqp> {
    url.parse()
        .map_err(|e: String| anyhow::anyhow!("--amqp-url: {e}"))
}

/// A Warren publisher for `queue`, with the queue declared as a worker would declare it,
/// recording `published` events if the environment says so ([`published_events`]).
pub async fn publisher(broker: &Broker, queue: &str) -> anyhow::Result<Publisher> {
    publisher_with(broker, queue, published_events()?).await
}

/// A Warren publisher for `queue`, with the queue declared as a worker would declare it,
/// recording `events`.
pub async fn publisher_with(
    broker: &Broker,
    queue: &str,
    events: Option<PublishedEvents>,
) -> anyhow::Result<Publisher> {
    let config = PublisherConfig {
        amqp: amqp(&broker.url)?,
        default_queue: queue.to_owned(),
        connection_name: "warren-bench publisher".to_owned(),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &Default::default()).await?;
    publisher
        .declare(&QueueSpec::new(queue, QueueKind::Quorum))
        .await?;
    Ok(match events {
        Some(events) => publisher.with_events(events),
        None => publisher,
    })
}

/// The `published` events Warren's publisher records, from the environment as
/// `warren-producer publish` reads it: `WARREN_EVENTS_STREAM` (the workers inherit it too)
/// and `WARREN_EVENTS_PAYLOAD_BYTES`. None without a stream: the baseline records nothing.
fn published_events() -> anyhow::Result<Option<PublishedEvents>> {
    match events_stream() {
        Some(stream) => published_events_to(&stream).map(Some),
        None => Ok(None),
    }
}

/// `WARREN_EVENTS_STREAM`, unless unset or empty.
fn events_stream() -> Option<String> {
    std::env::var("WARREN_EVENTS_STREAM")
        .ok()
        .filter(|s| !s.is_empty())
}

/// `published` events to `stream`, with the payload copy's size from
/// `WARREN_EVENTS_PAYLOAD_BYTES` (default [`warren_common::events::DEFAULT_PAYLOAD_BYTES`]).
pub fn published_events_to(stream: &str) -> anyhow::Result<PublishedEvents> {
    let events = PublishedEvents::new(stream);
    Ok(match std::env::var("WARREN_EVENTS_PAYLOAD_BYTES") {
        Ok(bytes) => events.payload_bytes(
            bytes
                .parse()
                .with_context(|| format!("WARREN_EVENTS_PAYLOAD_BYTES={bytes}"))?,
        ),
        Err(_) => events,
    })
}

/// JSON payloads: Warren's `demo.noop` takes any payload, which needs a self-describing
/// codec, and the baseline sends the same JSON bytes.
pub fn json_options() -> TaskOptions {
    TaskOptions {
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    }
}

/// Publishes `count` tasks with `publish_all`, `window` confirms in flight.
pub async fn publish_many<T: Serialize + Sync>(
    publisher: &Publisher,
    task: &str,
    payload: &T,
    count: usize,
    window: usize,
) -> anyhow::Result<()> {
    let options = json_options();
    let tasks = (0..count).map(|_| (task.to_owned(), payload, options.clone()));
    let mut results = publisher.publish_all(tasks, window);
    while let Some(result) = results.next().await {
        result.context("Warren publish")?;
    }
    Ok(())
}

/// Runs a Warren worker with the stamp handler until `expect_stamps` probes have run, then
/// prints their latencies (microseconds, JSON array) on stdout. Announces its admin port on
/// stderr like `warren-worker`.
pub async fn run_latency_worker(args: WorkerRoleArgs) -> anyhow::Result<()> {
    warren_common::init_tracing(warren_common::LogFormat::Pretty);
    let expect = args.expect_stamps.unwrap_or(usize::MAX);
    let stamps = Arc::new(Mutex::new(Vec::with_capacity(expect.min(1 << 20))));
    let shutdown = warren_common::Shutdown::new();
    let mut registry = Registry::new();
    let (sink, done) = (stamps.clone(), shutdown.drain.clone());
    registry.register(STAMP, move |_ctx: TaskContext, stamp: Stamp| {
        let latency = now_us().saturating_sub(stamp.created_us) as f64;
        let mut stamps = sink.lock().expect("never poisoned");
        stamps.push(latency);
        if stamps.len() >= expect {
            done.cancel();
        }
        async { Ok::<_, TaskError>(()) }
    });
    let mut config = WorkerConfig::new([args.queue.clone()]);
    config.amqp = amqp(&args.amqp_url)?;
    config.concurrency = args.concurrency;
    config.prefetch = args.prefetch;
    // Like `warren-worker`, which the W1 workers are: events on when the environment says.
    config.events_stream = events_stream();
    let metrics = prometheus::Registry::new();
    let worker = Worker::new(registry, config, &metrics)?;
    let admin = "127.0.0.1:0".parse().expect("a valid socket address");
    let stop_admin = shutdown.abort.child_token();
    // The address is logged (info, target warren_common::admin) like in warren-worker.
    serve_admin(admin, metrics, worker.health(), stop_admin).await?;
    tokio::spawn(shutdown_signal(shutdown.clone()));
    worker.run(shutdown).await?;
    let stamps = std::mem::take(&mut *stamps.lock().expect("never poisoned"));
    println!("{}", serde_json::to_string(&stamps)?);
    Ok(())
}
