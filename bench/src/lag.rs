//! `lag`: the status index's lag while W1 runs with events on (Warren only: the baseline
//! records nothing). Each repetition declares a fresh events stream and starts an index
//! following it from its start (`serve_ingest` with an `IndexConfig` and a fresh SQLite
//! file, in this process, as in the `index` workload); then W1's Warren side writes to it:
//! `--tasks` no-op tasks published with `published` events, drained by `warren-worker
//! --events-stream`. The index's `warren_index_lag_seconds` (at its last commit: its clock
//! minus the newest event it applied) is sampled every 100 ms from the first publish to the
//! end of the drain, and the time from the drain's end until the index shows every task
//! `succeeded` is measured. The stream, queues and index file are deleted afterwards.

use crate::context::{progress, retry_once, Ctx, Samples};
use crate::drain::{drain, DrainSpec};
use crate::index::{remove_index, start_index};
use crate::launch::{Launcher, Side};
use crate::payload::{Filler, NOOP};
use crate::report::{Row, WorkloadReport};
use crate::stats::percentile;
use crate::throughput::BODY_BYTES;
use crate::warren;
use anyhow::{bail, ensure};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_common::events::declare_events_stream;

/// How often the lag is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the index's task counts are read to see it catch up.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long the index may take to catch up after the drain before the run fails.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// The `lag` workload.
pub async fn lag(ctx: &Ctx) -> anyhow::Result<WorkloadReport> {
    let mut samples = Samples::default();
    for rep in 0..ctx.reps {
        let what = format!("lag rep {}", rep + 1);
        let run = retry_once(&what, || run_once(ctx, rep)).await?;
        for (key, value) in [
            ("p50", run.p50_lag),
            ("max", run.max_lag),
            ("p99", run.p99_lag),
            ("catch_up", run.catch_up),
            ("drain", run.drain_rate),
        ] {
            samples.push(key, Side::Warren, value);
        }
        progress(
            "lag",
            rep,
            Side::Warren,
            &format!(
                "drain {:.0}/s; index lag p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} samples); caught up {:.3} s after the drain",
                run.drain_rate, run.p50_lag, run.p99_lag, run.max_lag, run.lag_samples, run.catch_up
            ),
        );
    }
    let mut row = |key: &str, metric: &str, unit: &str| {
        let (w, _) = samples.take(key);
        Row::new(metric, unit, w, Vec::new(), None)
    };
    let rows = vec![
        row("p50", "index lag during W1, p50", "s"),
        row("p99", "index lag during W1, p99", "s"),
        row("max", "index lag during W1, max", "s"),
        row("catch_up", "index caught up after the drain", "s"),
        row("drain", "drain, with the index running", "tasks/s"),
    ];
    let t = &ctx.tuning;
    Ok(WorkloadReport {
        title: format!(
            "the status index following W1 with events on: {} tasks published with `published` events, then drained by one `warren-worker --events-stream`",
            ctx.sizes.tasks
        ),
        settings: vec![
            format!("W1's Warren side: publisher window {}, worker prefetch {}, concurrency {}; `published` events with a payload copy of at most `WARREN_EVENTS_PAYLOAD_BYTES` (default 1024)", t.window, t.prefetch, t.concurrency),
            "index: `serve_ingest` with an `IndexConfig` (a fresh SQLite file in the temporary directory) in the benchmark's process, following a fresh stream from its start".to_owned(),
            format!("lag: `warren_index_lag_seconds` sampled every {} ms from the first publish to the last task finished (with fewer than 100 samples, p99 is the max); caught up: from the last task finished until `warren_index_tasks{{state=\"succeeded\"}}` of the queue counts every task (polled every {} ms)", SAMPLE_EVERY.as_millis(), POLL_EVERY.as_millis()),
        ],
        rows,
    })
}

/// One repetition's figures.
struct Run {
    p50_lag: f64,
    max_lag: f64,
    p99_lag: f64,
    lag_samples: usize,
    catch_up: f64,
    drain_rate: f64,
}

/// Runs W1's Warren side into a fresh stream that a fresh index follows; stops the index and
/// deletes its file whatever happened (the stream and queues go with the run's cleanup).
async fn run_once(ctx: &Ctx, rep: u32) -> anyhow::Result<Run> {
    let stream = ctx.broker.queue(&format!("lag.r{rep}.events"));
    declare_events_stream(&ctx.conn, &stream).await?;
    let path = std::env::temp_dir().join(format!("{stream}.sqlite"));
    let stop = CancellationToken::new();
    let result = follow_w1(ctx, rep, &stream, &path, &stop).await;
    stop.cancel();
    remove_index(&path);
    result
}

async fn follow_w1(
    ctx: &Ctx,
    rep: u32,
    stream: &str,
    path: &std::path::Path,
    stop: &CancellationToken,
) -> anyhow::Result<Run> {
    let index = start_index(ctx, stream, path, stop).await?;
    let queue = ctx.broker.queue(&format!("lag.r{rep}.tasks"));
    let tasks = ctx.sizes.tasks;
    let events = warren::published_events_to(stream)?;
    let publisher = warren::publisher_with(&ctx.broker, &queue, Some(events)).await?;
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(watch_index(
        index.registry.clone(),
        queue.clone(),
        tasks as f64,
        watching.clone(),
    ));
    let filler = Filler::of_size(BODY_BYTES);
    let published = warren::publish_many(&publisher, NOOP, &filler, tasks, ctx.tuning.window).await;
    publisher.close().await;
    let drained = match published {
        Ok(()) => {
            let launcher = Launcher {
                events_stream: Some(stream.to_owned()),
                ..ctx.launcher.clone()
            };
            let spec = DrainSpec {
                side: Side::Warren,
                queue: &queue,
                tasks: tasks as u64,
                processes: 1,
                settings: ctx.throughput_settings(),
            };
            drain(&launcher, &ctx.broker, &ctx.conn, spec).await
        }
        Err(error) => Err(error),
    };
    let drained = match drained {
        Ok(drained) => drained,
        Err(error) => {
            watching.cancel();
            return Err(error);
        }
    };
    let watched = tokio::time::timeout(CATCH_UP_LIMIT, watcher).await;
    watching.cancel();
    let Ok(Ok(Some(Watched { lags, caught_up }))) = watched else {
        bail!("the index did not show every task succeeded within {CATCH_UP_LIMIT:?} of the drain's end");
    };
    // The samples taken after the last task finished (while the worker stopped) are not W1's.
    let mut values: Vec<f64> = lags
        .into_iter()
        .filter(|(at, _)| *at <= drained.done_at)
        .map(|(_, lag)| lag)
        .collect();
    ensure!(!values.is_empty(), "no lag was sampled");
    values.sort_by(f64::total_cmp);
    Ok(Run {
        p50_lag: percentile(&values, 50.0),
        max_lag: values[values.len() - 1],
        p99_lag: percentile(&values, 99.0),
        lag_samples: values.len(),
        catch_up: caught_up
            .saturating_duration_since(drained.done_at)
            .as_secs_f64(),
        drain_rate: tasks as f64 / drained.drain.as_secs_f64(),
    })
}

/// What [`watch_index`] saw.
struct Watched {
    /// The lag gauge every [`SAMPLE_EVERY`], with when it was read.
    lags: Vec<(Instant, f64)>,
    /// When the index first showed every task succeeded.
    caught_up: Instant,
}

/// Reads the index's metrics every [`POLL_EVERY`] (its lag every [`SAMPLE_EVERY`]) until it
/// shows `tasks` tasks of `queue` succeeded; `None` if `stop` fires first.
async fn watch_index(
    registry: prometheus::Registry,
    queue: String,
    tasks: f64,
    stop: CancellationToken,
) -> Option<Watched> {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    let every = (SAMPLE_EVERY.as_millis() / POLL_EVERY.as_millis()).max(1);
    let mut lags = Vec::new();
    let mut tick = 0u128;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        if tick.is_multiple_of(every) {
            lags.push((now, gauge(&registry, "warren_index_lag_seconds", &[])));
        }
        tick += 1;
        let labels = [("queue", queue.as_str()), ("state", "succeeded")];
        if gauge(&registry, "warren_index_tasks", &labels) >= tasks {
            return Some(Watched {
                lags,
                caught_up: now,
            });
        }
    }
}

/// The value of the gauge `name` whose labels include `labels` (0 when there is none).
fn gauge(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *name && l.value() == *value)
            })
        })
        .map(|m| m.get_gauge().get_value())
        .sum()
}
