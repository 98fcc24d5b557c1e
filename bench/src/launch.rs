//! Which side a measurement is for, and how each side's worker process is started: the real
//! `warren-worker` binary for Warren, this binary's hidden roles for the baseline and for
//! Warren's W3 latency worker.

use crate::baseline::SUCCEEDED_METRIC;
use crate::process::Proc;
use serde::Serialize;
use std::path::PathBuf;
use tokio::process::Command;

/// Logs of every worker process: warnings only, plus the one line announcing the admin
/// address (which `warren-worker` logs at info).
pub const LOG_FILTER: &str = "warn,warren_common::admin=info";

/// Warren's success counter.
pub const WARREN_METRIC: &str = "warren_tasks_succeeded_total";

/// Environment variable naming a command to run every worker process under, for profiling:
/// `WARREN_BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p"`.
pub const WRAP_ENV: &str = "WARREN_BENCH_WRAP";

/// A command running `program`, under the wrapper of [`WRAP_ENV`] if one is set.
fn wrapped(program: &std::path::Path) -> Command {
    let wrap = std::env::var(WRAP_ENV).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        None => Command::new(program),
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(program);
            cmd
        }
    }
}

/// The two sides of every comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Side {
    /// Warren's publisher and worker.
    Warren,
    /// The hand-written lapin baseline.
    Baseline,
}

impl Side {
    /// The side's name in progress lines.
    pub fn label(self) -> &'static str {
        match self {
            Side::Warren => "warren",
            Side::Baseline => "baseline",
        }
    }

    /// Both sides, alternating which goes first from one repetition to the next, so that a
    /// drift in the machine's load does not always favour the same side.
    pub fn order(rep: u32) -> [Side; 2] {
        if rep.is_multiple_of(2) {
            [Side::Warren, Side::Baseline]
        } else {
            [Side::Baseline, Side::Warren]
        }
    }
}

/// A worker's settings, the same on both sides.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WorkerSettings {
    /// Handlers at once.
    pub concurrency: usize,
    /// Prefetch.
    pub prefetch: u16,
    /// Baseline only: `multiple` ack at least every this many completions (Warren batches
    /// acks by itself).
    pub ack_every: u64,
    /// Warren only: run `warren-worker` as shipped, without `--concurrency`, `--prefetch`
    /// or `RUST_LOG` (the other fields are then only what its defaults are on this machine).
    pub stock: bool,
}

impl WorkerSettings {
    /// Warren's worker with its defaults.
    pub fn stock() -> WorkerSettings {
        let concurrency = warren_worker::defaults::concurrency();
        WorkerSettings {
            concurrency,
            prefetch: warren_worker::defaults::prefetch(concurrency),
            ack_every: 0,
            stock: true,
        }
    }
}

/// Starts worker processes.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The `warren-worker` binary.
    pub worker_bin: PathBuf,
    /// This binary, for the hidden roles.
    pub self_exe: PathBuf,
    /// The broker URL.
    pub url: String,
    /// Warren's drain workers record events in this stream (`--events-stream`; without
    /// it, they inherit `WARREN_EVENTS_STREAM` if set).
    pub events_stream: Option<String>,
}

impl Launcher {
    /// A worker draining `queue` with the built-in tasks (`demo.noop`, `demo.sleep`).
    pub async fn drain_worker(
        &self,
        side: Side,
        queue: &str,
        settings: WorkerSettings,
    ) -> anyhow::Result<Proc> {
        match side {
            Side::Warren => {
                let mut cmd = wrapped(&self.worker_bin);
                cmd.args(["--queue", queue, "--admin-addr", "127.0.0.1:0"])
                    .args(["--amqp-url", &self.url]);
                if let Some(stream) = &self.events_stream {
                    cmd.args(["--events-stream", stream]);
                }
                if settings.stock {
                    // Its default filter (info) logs the admin address too.
                    cmd.env_remove("RUST_LOG");
                } else {
                    cmd.args(["--concurrency", &settings.concurrency.to_string()])
                        .args(["--prefetch", &settings.prefetch.to_string()])
                        .args(["--log-format", "pretty"])
                        .env("RUST_LOG", LOG_FILTER);
                }
                Proc::spawn("warren-worker", cmd, WARREN_METRIC).await
            }
            Side::Baseline => {
                let cmd = self.role("baseline-worker", queue, settings, None);
                Proc::spawn("baseline worker", cmd, SUCCEEDED_METRIC).await
            }
        }
    }

    /// A worker running `bench.stamp` probes that exits after `expect` of them, printing
    /// their latencies.
    pub async fn latency_worker(
        &self,
        side: Side,
        queue: &str,
        settings: WorkerSettings,
        expect: usize,
    ) -> anyhow::Result<Proc> {
        match side {
            Side::Warren => {
                let cmd = self.role("warren-latency-worker", queue, settings, Some(expect));
                Proc::spawn("Warren latency worker", cmd, WARREN_METRIC).await
            }
            Side::Baseline => {
                let cmd = self.role("baseline-worker", queue, settings, Some(expect));
                Proc::spawn("baseline latency worker", cmd, SUCCEEDED_METRIC).await
            }
        }
    }

    fn role(
        &self,
        role: &str,
        queue: &str,
        settings: WorkerSettings,
        expect: Option<usize>,
    ) -> Command {
        let mut cmd = wrapped(&self.self_exe);
        cmd.args([role, "--queue", queue, "--amqp-url", &self.url])
            .args(["--concurrency", &settings.concurrency.to_string()])
            .args(["--prefetch", &settings.prefetch.to_string()])
            .args(["--ack-every", &settings.ack_every.to_string()])
            .env("RUST_LOG", LOG_FILTER);
        if let Some(n) = expect {
            cmd.args(["--expect-stamps", &n.to_string()]);
        }
        cmd
    }
}
