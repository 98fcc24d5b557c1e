//! The command line: which workloads to run and with what settings, plus the hidden roles
//! the benchmark re-executes itself as (the baseline worker and Warren's latency worker run
//! in processes of their own, like the real `warren-worker`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The broker on a developer's machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `warren-bench`: Warren against a hand-written lapin baseline.
#[derive(Debug, Parser)]
#[command(
    name = "warren-bench",
    about = "Benchmark Warren against a hand-written lapin baseline on the same broker."
)]
pub struct Cli {
    /// A child role (internal: the benchmark starts these itself).
    #[command(subcommand)]
    pub role: Option<Role>,
    /// The benchmark's own settings.
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// Which workloads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadChoice {
    /// Every workload but `index` (which writes and indexes a million events: minutes).
    All,
    /// Throughput: publish then drain no-op tasks.
    W1,
    /// 10 ms sleep tasks at concurrency 16.
    W2,
    /// Latency at a steady publish rate.
    W3,
    /// W1's drain with 1, 2 and 4 worker processes.
    W4,
    /// Worker RSS idle and after W1.
    Memory,
    /// W1 and W2 with Warren's worker as shipped (no tuning flags) against the tuned
    /// baseline, and a burst of CPU-bound `demo.cpu` tasks.
    Defaults,
    /// `Publisher::call` round trips against `warren-worker` (`demo.noop`, `demo.echo`) and a
    /// hand-written lapin RPC over direct reply-to; in `all` (a few seconds).
    Calls,
    /// The status index alone: applying a backlog of `--index-events` events, then
    /// `GET /v1/tasks/{id}` latency. Warren only; not in `all` (about a minute or more).
    Index,
    /// The web console's pages on an index of `--console-tasks` tasks with
    /// `--console-dead-letters` dead letters in one queue: the server time of each. Warren
    /// only; not in `all` (a minute or more).
    Console,
    /// The status index's lag while W1's Warren side runs with events on (`published`
    /// events and the worker's), and how soon after the drain it has caught up. Warren
    /// only; not in `all`.
    Lag,
}

/// The benchmark's settings.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Workload to run.
    #[arg(long, value_enum, default_value = "all")]
    pub workload: WorkloadChoice,
    /// Repetitions of each measurement; the table shows their median, min and max.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// Where the JSON results are written.
    #[arg(long, default_value = "target/bench-results.json")]
    pub json: PathBuf,
    /// A tiny run of every workload (~200 tasks, one repetition) to check the benchmark works.
    #[arg(long)]
    pub smoke: bool,
    /// The `warren-worker` binary to run (default: built by this command in its own profile).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Knobs of the throughput workloads.
    #[command(flatten)]
    pub tuning: Tuning,
    /// Sizes of the `calls` and `index` workloads.
    #[command(flatten)]
    pub lifecycle: Lifecycle,
}

/// Sizes of the `calls` and `index` workloads (`--smoke` replaces them with tiny ones).
#[derive(Clone, Debug, Args)]
pub struct Lifecycle {
    /// `calls`: calls made one after the other for each task and side.
    #[arg(long, default_value_t = 2_000)]
    pub calls: usize,
    /// `calls`: callers at once in the concurrent run (0 skips it).
    #[arg(long, default_value_t = 16)]
    pub callers: usize,
    /// `index`: events written to a fresh stream (one `succeeded` task each, 100 a batch)
    /// before the index starts.
    #[arg(long, default_value_t = 1_000_000)]
    pub index_events: usize,
    /// `index`: `GET /v1/tasks/{id}` requests of random indexed ids, one after the other.
    #[arg(long, default_value_t = 2_000)]
    pub index_gets: usize,
    /// `console`: succeeded tasks in the seeded index.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_tasks: u64,
    /// `console`: dead letters in the seeded index and on the broker, all in one queue.
    #[arg(long, default_value_t = 100_000)]
    pub console_dead_letters: u64,
    /// `console`: requests of each page in each repetition.
    #[arg(long, default_value_t = 20)]
    pub console_gets: usize,
}

/// Knobs of W1, W4 and the memory workload, applied to both sides alike.
#[derive(Clone, Debug, Args)]
pub struct Tuning {
    /// Tasks published and drained in W1, W4 and the memory workload.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Publisher confirms in flight.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Prefetch of each worker.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Handlers running at once in each worker.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Baseline worker: send a `multiple` ack at least every this many settled deliveries
    /// (it also acks whenever it has nothing else ready to do).
    #[arg(long, default_value_t = 100)]
    pub ack_every: u64,
    /// Baseline messages carry Warren's first-attempt envelope too (a UUIDv7 message id and
    /// a timestamp), to separate the cost of the bigger messages from the cost of the code.
    #[arg(long)]
    pub baseline_envelope: bool,
    /// Prefetch of the W2 (sleep) and W3 (latency) workers; their concurrency is 16.
    #[arg(long, default_value_t = 64)]
    pub sleep_prefetch: u16,
}

/// Processes the benchmark starts from its own binary.
#[derive(Clone, Debug, Subcommand)]
pub enum Role {
    /// The baseline worker: plain lapin, no Warren code.
    #[command(hide = true)]
    BaselineWorker(WorkerRoleArgs),
    /// A Warren worker run in-process with the benchmark's stamp handler (W3).
    #[command(hide = true)]
    WarrenLatencyWorker(WorkerRoleArgs),
}

/// Settings of a child worker.
#[derive(Clone, Debug, Args)]
pub struct WorkerRoleArgs {
    /// Broker URL.
    #[arg(long, default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Queue to consume.
    #[arg(long)]
    pub queue: String,
    /// Handlers at once.
    #[arg(long)]
    pub concurrency: usize,
    /// Prefetch.
    #[arg(long)]
    pub prefetch: u16,
    /// Multiple-ack at least every this many settled deliveries (baseline only).
    #[arg(long, default_value_t = 100)]
    pub ack_every: u64,
    /// Stop after this many `bench.stamp` tasks and print their latencies as JSON on stdout.
    #[arg(long)]
    pub expect_stamps: Option<usize>,
}
