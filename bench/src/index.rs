//! `index`: the status index alone (no worker, no baseline). A backlog of `succeeded` events,
//! one task each, is written to a fresh events stream in batches of 100 in the documented
//! format (docs/wire-format.md §11.2), as a worker writes them; then the ingest is started
//! in this process with the index (`serve_ingest` with an `IndexConfig`, a fresh SQLite
//! file) and timed until its `warren_index_events_total` counts every event. With the whole
//! backlog indexed, `GET /v1/tasks/{id}` of random ids is timed one request after the other.
//! The stream, the ingest's queue and the index file are deleted afterwards.

use crate::context::{progress, retry_once, Ctx, Samples};
use crate::http;
use crate::launch::Side;
use crate::report::{Row, Target, WorkloadReport};
use crate::stats::latency_figures;
use anyhow::{bail, ensure, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_common::events::{
    declare_events_stream, Event, EventKind, EVENTS_CONTENT_TYPE, FIRST_SEQ_HEADER, SOURCE_HEADER,
};
use warren_common::{int_value, text_value};
use warren_producer::status::IndexConfig;
use warren_producer::{serve_ingest, IngestConfig, IngestError, PublisherConfig};

/// Events in one batch (one stream message), as a busy worker writes them.
const BATCH: usize = 100;
/// The metric counting the events the index has read.
const EVENTS_METRIC: &str = "warren_index_events_total";
/// The task name of the synthetic events.
const TASK: &str = "bench.indexed";
/// The targets: events applied per second, and seconds for a million.
const TARGET_RATE: f64 = 20_000.0;
const TARGET_MILLION_S: f64 = 60.0;

/// The `index` workload.
pub async fn index(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    let n = ctx.sizes.index_events;
    ensure!(n > 0, "--index-events must be at least 1");
    for rep in 0..ctx.reps {
        let what = format!("index rep {}", rep + 1);
        let run = retry_once(&what, || run_once(ctx, rep)).await?;
        let (p50, p99, max) = latency_figures(run.gets).context("no GET was timed")?;
        let rate = n as f64 / run.apply_s;
        for (key, value) in [
            ("write", run.write_s),
            ("apply", run.apply_s),
            ("rate", rate),
            ("p50", p50 / 1000.0),
            ("p99", p99 / 1000.0),
            ("max", max / 1000.0),
        ] {
            samples.push(key, Side::Warren, value);
        }
        progress(
            "index",
            rep,
            Side::Warren,
            &format!(
                "{n} events written in {:.1} s, applied in {:.1} s ({rate:.0}/s); GET p50 {:.2} ms, p99 {:.2} ms",
                run.write_s, run.apply_s, p50 / 1000.0, p99 / 1000.0
            ),
        );
    }
    let million = (n >= 1_000_000).then_some(Target::WarrenAtMost(TARGET_MILLION_S));
    let mut row = |key: &str, metric: &str, unit: &str, target| {
        let (w, _) = samples.take(key);
        Row::new(metric, unit, w, Vec::new(), target)
    };
    let rows = vec![
        row(
            "rate",
            "events applied",
            "events/s",
            Some(Target::WarrenAtLeast(TARGET_RATE)),
        ),
        row(
            "apply",
            "backlog applied (index start to last event)",
            "s",
            million,
        ),
        row(
            "write",
            "backlog written to the stream (not the index)",
            "s",
            None,
        ),
        row("p50", "GET /v1/tasks/{id} p50", "ms", None),
        row("p99", "GET /v1/tasks/{id} p99", "ms", None),
        row("max", "GET /v1/tasks/{id} max", "ms", None),
    ];
    Ok(WorkloadReport {
        title: format!(
            "the status index alone: a backlog of {n} events (one succeeded task each) applied from a fresh file, then GET /v1/tasks/{{id}} with all {n} tasks indexed"
        ),
        settings: vec![
            format!("backlog: `succeeded` events of distinct tasks (UUIDv7 ids, attempt 1, delivery count 0), {BATCH} to a batch from one source, written with confirms ({} in flight) to a fresh stream before the index starts", ctx.tuning.window),
            "index: `serve_ingest` with an `IndexConfig` (a fresh SQLite file in the temporary directory) in the benchmark's process; applied = from its start until `warren_index_events_total` counts every event (polled every 20 ms), and every event counted as applied".to_owned(),
            format!("GET: {} requests of random indexed ids, one after the other, each on a new HTTP/1.1 connection (the benchmark's minimal client); every answer checked to be 200 and `succeeded`", ctx.sizes.index_gets),
            format!("targets (issue 20): ≥ {TARGET_RATE} events/s applied, a 1,000,000-event backlog in under {TARGET_MILLION_S} s"),
        ],
        rows,
    })
}

/// One repetition's figures.
struct Run {
    write_s: f64,
    apply_s: f64,
    /// Microseconds.
    gets: Vec<f64>,
}

/// Writes the backlog, indexes it and times the GETs; stops the index and deletes its file
/// whatever happened (the stream and queue go with the run's cleanup).
async fn run_once(ctx: &Ctx, rep: u32) -> anyhow::Result<Run> {
    let stream = ctx.broker.queue(&format!("index.r{rep}.events"));
    let (ids, write_s) = write_backlog(ctx, &stream).await?;
    let path = std::env::temp_dir().join(format!("{stream}.sqlite"));
    let stop = CancellationToken::new();
    let result = index_and_query(ctx, &stream, &path, &ids, &stop).await;
    stop.cancel();
    remove_index(&path);
    let (apply_s, gets) = result?;
    Ok(Run {
        write_s,
        apply_s,
        gets,
    })
}

/// Writes `index_events` `succeeded` events to a fresh stream `stream`, in batches of
/// [`BATCH`]; returns the task ids and how long writing took (seconds).
async fn write_backlog(ctx: &Ctx, stream: &str) -> anyhow::Result<(Vec<String>, f64)> {
    let n = ctx.sizes.index_events;
    declare_events_stream(&ctx.conn, stream).await?;
    let channel = ctx.conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let source = format!("{stream}.source");
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let window = ctx.tuning.window.max(1);
    let mut in_flight = VecDeque::with_capacity(window);
    let start = Instant::now();
    for (b, chunk) in ids.chunks(BATCH).enumerate() {
        let mut body = Vec::with_capacity(chunk.len() * 160);
        for id in chunk {
            let mut event = Event::new(EventKind::Succeeded, id, TASK, stream);
            event.attempt = Some(1);
            event.delivery_count = Some(0);
            serde_json::to_writer(&mut body, &event)?;
            body.push(b'\n');
        }
        let mut headers = FieldTable::default();
        headers.insert(SOURCE_HEADER.into(), text_value(&source));
        headers.insert(FIRST_SEQ_HEADER.into(), int_value((b * BATCH) as u64));
        let props = BasicProperties::default()
            .with_content_type(EVENTS_CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if in_flight.len() >= window {
            let oldest: lapin::PublisherConfirm =
                in_flight.pop_front().expect("the window is full");
            crate::baseline::check(oldest.await?)?;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .context("publishing a batch of events")?;
        in_flight.push_back(confirm);
    }
    for confirm in in_flight {
        crate::baseline::check(confirm.await?)?;
    }
    let took = start.elapsed().as_secs_f64();
    let _ = channel.close(200, "written".into()).await;
    Ok((ids, took))
}

/// An ingest with the index, started in this process.
pub(crate) struct Index {
    /// Its metrics.
    pub registry: prometheus::Registry,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// The server, which runs until the `stop` it was started with fires.
    pub server: JoinHandle<Result<(), IngestError>>,
}

/// Starts the ingest with the index of `stream` (followed from its start) in a fresh file
/// `path`, until `stop` fires.
pub(crate) async fn start_index(
    ctx: &Ctx,
    stream: &str,
    path: &Path,
    stop: &CancellationToken,
) -> anyhow::Result<Index> {
    let publisher = PublisherConfig {
        amqp: crate::warren::amqp(&ctx.broker.url)?,
        default_queue: ctx.broker.queue("index.ingest"),
        connection_name: "warren-bench index".to_owned(),
        ..PublisherConfig::default()
    };
    let mut config = IngestConfig::new(publisher);
    config.index = Some(IndexConfig::new(stream, path));
    let registry = config.registry.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(serve_ingest(listener, config, stop.clone()));
    Ok(Index {
        registry,
        addr,
        server,
    })
}

/// Starts the ingest with the index of `stream` in `path`, waits until it has read every
/// event, then times the GETs. Returns the seconds to apply the backlog and the GET
/// latencies (microseconds). The ingest runs until `stop` fires.
async fn index_and_query(
    ctx: &Ctx,
    stream: &str,
    path: &Path,
    ids: &[String],
    stop: &CancellationToken,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let Index {
        registry,
        addr,
        mut server,
    } = start_index(ctx, stream, path, stop).await?;
    let n = ids.len() as f64;
    // Generous: ten times slower than the target still finishes.
    let deadline = Duration::from_secs_f64(60.0 + 10.0 * n / TARGET_RATE);
    loop {
        if events_read(&registry, None) >= n {
            break;
        }
        if server.is_finished() {
            let ended = (&mut server).await.context("the ingest panicked")?;
            bail!("the ingest stopped before indexing the backlog: {ended:?}");
        }
        ensure!(
            start.elapsed() < deadline,
            "the index read {} of {n} events within {deadline:?}",
            events_read(&registry, None)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let apply_s = start.elapsed().as_secs_f64();
    let applied = events_read(&registry, Some("applied"));
    ensure!(applied == n, "the index applied {applied} of {n} events");
    let gets = time_gets(addr, ids, ctx.sizes.index_gets).await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    Ok((apply_s, gets))
}

/// The events the index has read (with `outcome`, only those of that outcome).
fn events_read(registry: &prometheus::Registry, outcome: Option<&str>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == EVENTS_METRIC)
        .flat_map(|family| family.get_metric().iter())
        .filter(|m| {
            outcome.is_none_or(|o| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "outcome" && l.value() == o)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// `GET /v1/tasks/{id}` of `count` random ids of `ids`, one after the other; each answer
/// must be 200 and say `succeeded`. Returns the latencies in microseconds.
async fn time_gets(addr: SocketAddr, ids: &[String], count: usize) -> anyhow::Result<Vec<f64>> {
    let mut pick = Picker::new(ids.len());
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let id = &ids[pick.next()];
        let path = format!("/v1/tasks/{id}");
        let start = Instant::now();
        let (status, body) = http::get(addr, &path).await?;
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {path} answered {body}"))?;
        ensure!(
            answer["state"] == "succeeded" && answer["id"] == id.as_str(),
            "GET {path} answered {body}"
        );
    }
    Ok(latencies)
}

/// Random indices below `len` (xorshift64*, seeded from a fresh UUID): enough to spread the
/// GETs over the index, no dependency.
struct Picker {
    state: u64,
    len: usize,
}

impl Picker {
    fn new(len: usize) -> Picker {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Picker { state: seed, len }
    }

    fn next(&mut self) -> usize {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x % self.len as u64) as usize
    }
}

/// Deletes the index file and SQLite's files beside it; reports what it could not delete.
pub(crate) fn remove_index(path: &Path) {
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: could not delete {}: {e}", file.display()),
        }
    }
}
