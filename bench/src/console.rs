//! `console`: the web console's pages on a large index (Warren only, no baseline). An index
//! file is filled through the index's own apply path (`status::seed_index`) with
//! `--console-tasks` succeeded tasks and `--console-dead-letters` dead letters in one queue,
//! whose dead-letter queue on the broker gets as many messages; then the ingest is started in
//! this process on that file with the console on, and each page is fetched
//! `--console-gets` times, one request after the other. The figure is the server's own time
//! (its `Server-Timing` header), with the request's wall time beside it.

use crate::context::{progress, Ctx, Samples};
use crate::launch::Side;
use crate::report::{Row, Target, WorkloadReport};
use crate::stats::latency_figures;
use anyhow::{ensure, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_common::{dead_letter_queue_name, QueueKind, QueueSpec};
use warren_producer::status::{seed_index, IndexConfig, Seed};
use warren_producer::{serve_ingest, ConsoleConfig, IngestConfig, Publisher, PublisherConfig};

/// The target: every page within 200 ms of server time.
const TARGET_MS: f64 = 200.0;

/// The `console` workload.
pub async fn console(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let (tasks, dead) = (ctx.sizes.console_tasks, ctx.sizes.console_dead_letters);
    let queue = ctx.broker.queue("console");
    let stream = ctx.broker.queue("console.events");
    let path = std::env::temp_dir().join(format!("{stream}.sqlite"));
    let seeded = Instant::now();
    let seed = Seed {
        queue: queue.clone(),
        tasks,
        dead_letters: dead,
        now_ms: warren_common::now_ms(),
        span_ms: 3_600_000,
    };
    let (index_path, seed_stream) = (path.clone(), stream.clone());
    tokio::task::spawn_blocking(move || seed_index(&index_path, &seed_stream, &seed))
        .await?
        .context("seeding the index")?;
    let seed_s = seeded.elapsed().as_secs_f64();
    let filled = Instant::now();
    fill_dead_letter_queue(ctx, &queue, dead).await?;
    let fill_s = filled.elapsed().as_secs_f64();
    progress(
        "console",
        0,
        Side::Warren,
        &format!("index of {tasks} tasks and {dead} dead letters seeded in {seed_s:.1} s; {dead} dead letters written to the broker in {fill_s:.1} s"),
    );
    let stop = CancellationToken::new();
    let result = measure(ctx, &queue, &stream, &path, &stop).await;
    stop.cancel();
    crate::index::remove_index(&path);
    let mut samples = result?;
    let rows = pages(&queue)
        .iter()
        .flat_map(|(label, _)| {
            let (server, _) = samples.take(&format!("{label} server"));
            let (wall, _) = samples.take(&format!("{label} wall"));
            [
                Row::new(
                    &format!("{label}: server time, max"),
                    "ms",
                    server,
                    Vec::new(),
                    Some(Target::WarrenAtMost(TARGET_MS)),
                ),
                Row::new(
                    &format!("{label}: request p50"),
                    "ms",
                    wall,
                    Vec::new(),
                    None,
                ),
            ]
        })
        .collect();
    Ok(WorkloadReport {
        title: format!(
            "the web console on an index of {tasks} tasks with {dead} dead letters in one queue"
        ),
        settings: vec![
            format!("index: `status::seed_index` ({tasks} succeeded tasks, then {dead} dead letters in the same queue, a retrying and an ending event each, over the last hour), the file then opened by `serve_ingest`; the queue's dead-letter queue holds {dead} messages on the broker"),
            format!("console: `serve_ingest` with `--console` (read-only, no token) in the benchmark's process; each page fetched {} times one after the other, each on a new HTTP/1.1 connection", ctx.sizes.console_gets),
            "server time: the page's `Server-Timing: app;dur=` (from the request reaching the console to its answer, passive declares of the queues included); the row is the largest of a repetition".to_owned(),
            format!("target (issue 21): every page within {TARGET_MS} ms of server time"),
        ],
        rows,
    })
}

/// The pages fetched: a label and a path.
fn pages(queue: &str) -> Vec<(&'static str, String)> {
    vec![
        ("overview", "/console".to_owned()),
        ("queue", format!("/console/queues/{queue}")),
        (
            "queue by reason kind",
            format!("/console/queues/{queue}?kind=crash_loop"),
        ),
        (
            "queue by task",
            format!("/console/queues/{queue}?task=seed.b"),
        ),
        ("tasks", "/console/tasks".to_owned()),
        (
            "tasks dead-lettered",
            format!("/console/tasks?state=dead_lettered&queue={queue}"),
        ),
        (
            "task (succeeded)",
            "/console/tasks/seed-task-500000".to_owned(),
        ),
        (
            "task (dead letter)",
            "/console/tasks/seed-dead-50000".to_owned(),
        ),
        ("workers", "/console/workers".to_owned()),
    ]
}

/// Starts the ingest with the console on the index at `path` and fetches every page,
/// `reps` rounds of `console_gets` each.
async fn measure(
    ctx: &Ctx,
    queue: &str,
    stream: &str,
    path: &Path,
    stop: &CancellationToken,
) -> anyhow::Result<Samples> {
    let publisher = PublisherConfig {
        amqp: crate::warren::amqp(&ctx.broker.url)?,
        default_queue: queue.to_owned(),
        connection_name: "warren-bench console".to_owned(),
        ..PublisherConfig::default()
    };
    let mut config = IngestConfig::new(publisher);
    config.index = Some(IndexConfig::new(stream, path));
    config.console = Some(ConsoleConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve_ingest(listener, config, stop.clone()));
    wait_ready(addr).await?;
    let mut samples = Samples::default();
    for rep in 0..ctx.reps {
        for (label, page) in pages(queue) {
            let (mut server_ms, mut wall_ms) = (Vec::new(), Vec::new());
            for _ in 0..ctx.sizes.console_gets {
                let start = Instant::now();
                let (status, timing) = fetch(addr, &page).await?;
                wall_ms.push(start.elapsed().as_secs_f64() * 1e3);
                ensure!(status == 200, "GET {page} answered {status}");
                server_ms.push(timing);
            }
            let most = server_ms.iter().copied().fold(0.0, f64::max);
            let (p50, _, _) = latency_figures(wall_ms).context("no request timed")?;
            samples.push(&format!("{label} server"), Side::Warren, most);
            samples.push(&format!("{label} wall"), Side::Warren, p50);
            progress(
                "console",
                rep,
                Side::Warren,
                &format!("{label}: server max {most:.1} ms, request p50 {p50:.1} ms"),
            );
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    Ok(samples)
}

/// Waits until the console answers (the publisher connected, the index opened).
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = crate::http::get(addr, "/readyz").await {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the console was not ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path`: the status and the server's time (`Server-Timing: app;dur=`), in ms.
async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, f64)> {
    let (status, head, _) = crate::http::get_with_head(addr, path).await?;
    let timing = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("server-timing: app;dur=")
                .map(str::to_owned)
        })
        .and_then(|ms| ms.trim().parse().ok())
        .with_context(|| format!("GET {path}: no Server-Timing in {head:?}"))?;
    Ok((status, timing))
}

/// Declares `queue` as a worker would and writes `n` dead letters into its dead-letter queue.
async fn fill_dead_letter_queue(ctx: &Ctx, queue: &str, n: u64) -> anyhow::Result<()> {
    let config = PublisherConfig {
        amqp: crate::warren::amqp(&ctx.broker.url)?,
        default_queue: queue.to_owned(),
        connection_name: "warren-bench console seed".to_owned(),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect(config, &CancellationToken::new()).await?;
    publisher
        .declare(&QueueSpec::new(queue, QueueKind::default()))
        .await?;
    publisher.close().await;
    let dlq = dead_letter_queue_name(queue);
    let channel = ctx.conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let window = ctx.tuning.window.max(1);
    let mut in_flight = VecDeque::with_capacity(window);
    for n in 0..n {
        if in_flight.len() >= window {
            let oldest: lapin::PublisherConfirm =
                in_flight.pop_front().expect("the window is full");
            crate::baseline::check(oldest.await?)?;
        }
        let body = format!("{{\"n\":{n}}}");
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                "".into(),
                dlq.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await?;
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        crate::baseline::check(confirm.await?)?;
    }
    let _ = channel.close(200, "filled".into()).await;
    Ok(())
}
