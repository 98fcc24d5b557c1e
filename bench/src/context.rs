//! What every workload shares: the broker, the launcher, the sizes (full or smoke), and
//! publishing a batch of tasks from either side.

use crate::args::{Lifecycle, Tuning};
use crate::baseline::RawPublisher;
use crate::broker::Broker;
use crate::launch::{Launcher, Side, WorkerSettings};
use crate::process::cpu_seconds;
use crate::{payload, warren};
use lapin::Connection;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// How big each workload is.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// W1, W4 and memory: tasks published and drained.
    pub tasks: usize,
    /// W2: sleep tasks.
    pub sleep_tasks: usize,
    /// W2: milliseconds each sleeps.
    pub sleep_ms: u64,
    /// W3: probes published.
    pub probes: usize,
    /// W3: probes per second.
    pub probe_rate: f64,
    /// Memory: how long a fresh worker idles before its RSS is read.
    pub idle: Duration,
    /// W4: worker processes.
    pub scale_out: Vec<usize>,
    /// Defaults: `demo.cpu` tasks.
    pub cpu_tasks: usize,
    /// Defaults: SHA-256 rounds of each `demo.cpu` task.
    pub cpu_rounds: u64,
    /// Calls: sequential calls per task and side.
    pub calls: usize,
    /// Calls: callers at once in the concurrent run (0: none).
    pub callers: usize,
    /// Index: events in the backlog.
    pub index_events: usize,
    /// Index: `GET /v1/tasks/{id}` requests.
    pub index_gets: usize,
    /// Console: tasks and dead letters seeded, and requests of each page.
    pub console_tasks: u64,
    pub console_dead_letters: u64,
    pub console_gets: usize,
}

impl Sizes {
    /// The full benchmark (`tasks` from `--tasks`, the calls and index sizes from
    /// `lifecycle`), or a smoke run of ~200 tasks each (10,000 index events).
    pub fn new(tasks: usize, lifecycle: &Lifecycle, smoke: bool) -> Sizes {
        if smoke {
            return Sizes {
                tasks: 200,
                sleep_tasks: 200,
                sleep_ms: 10,
                probes: 200,
                probe_rate: 500.0,
                idle: Duration::from_millis(200),
                scale_out: vec![1, 2, 4],
                cpu_tasks: 20,
                cpu_rounds: 2_000,
                calls: 200,
                callers: 4,
                index_events: 10_000,
                index_gets: 200,
                console_tasks: 10_000,
                console_dead_letters: 1_000,
                console_gets: 5,
            };
        }
        Sizes {
            tasks,
            sleep_tasks: 2_000,
            sleep_ms: 10,
            probes: 2_000,
            probe_rate: 500.0,
            idle: Duration::from_secs(2),
            scale_out: vec![1, 2, 4],
            cpu_tasks: 200,
            cpu_rounds: 20_000,
            calls: lifecycle.calls,
            callers: lifecycle.callers,
            index_events: lifecycle.index_events,
            index_gets: lifecycle.index_gets,
            console_tasks: lifecycle.console_tasks,
            console_dead_letters: lifecycle.console_dead_letters,
            console_gets: lifecycle.console_gets,
        }
    }
}

/// The shared state of a run.
pub struct Ctx {
    /// The broker and the queues created.
    pub broker: Broker,
    /// Starts worker processes.
    pub launcher: Launcher,
    /// A connection for inspecting queues.
    pub conn: Connection,
    /// Workload sizes.
    pub sizes: Sizes,
    /// Throughput knobs.
    pub tuning: Tuning,
    /// Repetitions.
    pub reps: u32,
}

impl Ctx {
    /// Settings of the throughput workers (W1, W4, memory).
    pub fn throughput_settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.tuning.concurrency,
            prefetch: self.tuning.prefetch,
            ack_every: self.tuning.ack_every,
            stock: false,
        }
    }

    /// Settings of the W2 and W3 workers: concurrency 16.
    pub fn sleep_settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: 16,
            prefetch: self.tuning.sleep_prefetch,
            ack_every: self.tuning.ack_every,
            stock: false,
        }
    }

    /// Publishes `count` copies of a task with confirms (`--window` in flight) into a fresh
    /// queue. Connecting and declaring are not timed; returns when publishing started, how
    /// long it took until the last confirm, and the CPU time this process used meanwhile.
    pub async fn publish<T: Serialize + Sync>(
        &self,
        side: Side,
        queue: &str,
        task: &str,
        payload: &T,
        count: usize,
    ) -> anyhow::Result<Published> {
        let window = self.tuning.window;
        let broker = self.broker.local_pid();
        let broker_cpu = || broker.as_deref().and_then(|pid| cpu_seconds(pid).ok());
        match side {
            Side::Warren => {
                let publisher = warren::publisher(&self.broker, queue).await?;
                let (start, cpu, broker_at) = (Instant::now(), cpu_seconds("self")?, broker_cpu());
                warren::publish_many(&publisher, task, payload, count, window).await?;
                let published = Published::since(start, cpu, broker_at.zip(broker_cpu()))?;
                publisher.close().await;
                Ok(published)
            }
            Side::Baseline => {
                let envelope = self.tuning.baseline_envelope;
                let publisher = RawPublisher::connect(&self.broker, queue, envelope).await?;
                let body = payload::json(payload);
                let (start, cpu, broker_at) = (Instant::now(), cpu_seconds("self")?, broker_cpu());
                publisher
                    .publish_many(queue, task, &body, count, window)
                    .await?;
                let published = Published::since(start, cpu, broker_at.zip(broker_cpu()))?;
                publisher.close().await;
                Ok(published)
            }
        }
    }
}

/// A timed batch of publishes.
pub struct Published {
    /// When the first publish started.
    pub start: Instant,
    /// Until the last confirm.
    pub took: Duration,
    /// CPU time the benchmark process used meanwhile (it does nothing else), seconds.
    pub cpu_seconds: f64,
    /// CPU time the broker used meanwhile, seconds, when it can be read.
    pub broker_cpu_seconds: Option<f64>,
}

impl Published {
    /// `broker` is the broker's CPU time at the start and at the end, when it can be read.
    fn since(
        start: Instant,
        cpu_at_start: f64,
        broker: Option<(f64, f64)>,
    ) -> anyhow::Result<Published> {
        Ok(Published {
            start,
            took: start.elapsed(),
            cpu_seconds: cpu_seconds("self")? - cpu_at_start,
            broker_cpu_seconds: broker.map(|(start, end)| end - start),
        })
    }
}

/// Repetitions of several figures for both sides.
#[derive(Default)]
pub struct Samples {
    figures: std::collections::BTreeMap<String, [Vec<f64>; 2]>,
}

impl Samples {
    /// Records one repetition of `figure` for `side`.
    pub fn push(&mut self, figure: &str, side: Side, value: f64) {
        let entry = self.figures.entry(figure.to_owned()).or_default();
        entry[side as usize].push(value);
    }

    /// Warren's and the baseline's repetitions of `figure`.
    pub fn take(&mut self, figure: &str) -> (Vec<f64>, Vec<f64>) {
        let [warren, baseline] = self.figures.remove(figure).unwrap_or_default();
        (warren, baseline)
    }
}

/// Runs one repetition, and once more if it fails: the machine and the broker are shared,
/// and one refused connection should not discard a whole run. A second failure is final.
pub async fn retry_once<T, F, Fut>(what: &str, mut run: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    match run().await {
        Ok(value) => Ok(value),
        Err(error) => {
            eprintln!("warning: {what} failed; retrying it once: {error:#}");
            run().await
        }
    }
}

/// A progress line on stderr.
pub fn progress(workload: &str, rep: u32, side: Side, text: &str) {
    eprintln!("[{workload} rep {}] {:<8} {text}", rep + 1, side.label());
}
