//! `warren-bench`: Warren against a hand-written lapin baseline on the same broker, with the
//! same settings, measured the same way. Nine workloads (W1 throughput, W2 sleeping tasks,
//! W3 latency, W4 scale-out, memory, W1 and W2 again with Warren's defaults, call round
//! trips, and two without a baseline: the status index alone, and its lag behind W1), each
//! repeated and reported as median, min and max with Warren/baseline ratios, as a markdown
//! table on stdout and a JSON file.
//!
//! Every queue it creates is uniquely named and deleted at the end, also after an error or
//! Ctrl-C; every worker process it starts is killed if the run is abandoned.

mod args;
mod baseline;
mod broker;
mod calls;
mod console;
mod context;
mod defaults;
mod drain;
mod http;
mod index;
mod lag;
mod latency;
mod launch;
mod memory;
mod payload;
mod process;
mod report;
mod sleep;
mod stats;
mod throughput;
mod warren;

pub use args::{BenchArgs, Cli, Lifecycle, Role, Tuning, WorkerRoleArgs, WorkloadChoice};
pub use report::{Report, Row, WorkloadReport};
pub use stats::Summary;

use anyhow::Context;
use broker::Broker;
use context::{Ctx, Sizes};
use futures::FutureExt;
use launch::Launcher;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

/// Runs a hidden child role.
pub async fn run_role(role: Role) -> anyhow::Result<()> {
    match role {
        Role::BaselineWorker(args) => baseline::run_worker(args).await,
        Role::WarrenLatencyWorker(args) => warren::run_latency_worker(args).await,
    }
}

/// Runs the chosen workloads, prints the table, writes the JSON file, and deletes every
/// queue it created (whatever happened).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let broker = Broker::new(&args.amqp_url);
    // A panic or Ctrl-C drops the workloads (killing their worker processes) and still
    // reaches the cleanup below.
    let work = AssertUnwindSafe(run_workloads(args.clone(), broker.clone())).catch_unwind();
    let result = tokio::select! {
        done = work => done.unwrap_or_else(|_| Err(anyhow::anyhow!("the benchmark panicked"))),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let queues = broker.cleanup().await;
    let mut report = result?;
    report.queues = queues;
    println!("{}", report.markdown());
    report
        .write_json(&args.json)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}

async fn run_workloads(args: BenchArgs, broker: Broker) -> anyhow::Result<Report> {
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => tokio::task::spawn_blocking(build_worker).await??,
    };
    let launcher = Launcher {
        worker_bin,
        self_exe: std::env::current_exe().context("locating this binary")?,
        url: args.amqp_url.clone(),
        events_stream: None,
    };
    let ctx = Ctx {
        conn: broker.connect("warren-bench").await?,
        broker,
        launcher,
        sizes: Sizes::new(args.tuning.tasks, &args.lifecycle, args.smoke),
        tuning: args.tuning.clone(),
        reps: if args.smoke { 1 } else { args.reps },
    };
    use WorkloadChoice::*;
    let chosen = match args.workload {
        All => vec![W1, W2, W3, W4, Memory, Defaults, Calls],
        one => vec![one],
    };
    let mut workloads = BTreeMap::new();
    for workload in chosen {
        let (key, result) = match workload {
            W1 => ("w1", throughput::w1(&ctx).await),
            W2 => ("w2", sleep::w2(&ctx).await),
            W3 => ("w3", latency::w3(&ctx).await),
            W4 => ("w4", throughput::w4(&ctx).await),
            Defaults => ("defaults", defaults::defaults(&ctx).await),
            Calls => ("calls", calls::calls(&ctx).await),
            Index => ("index", index::index(&ctx).await),
            Console => ("console", console::console(&ctx).await),
            Lag => ("lag", lag::lag(&ctx).await),
            Memory | All => ("memory", memory::memory(&ctx).await),
        };
        workloads.insert(
            key.to_owned(),
            result.with_context(|| format!("workload {key}"))?,
        );
    }
    let _ = ctx.conn.close(200, "done".into()).await;
    Ok(Report {
        date: report::utc_now(),
        machine: report::Machine::detect(),
        broker: broker::broker_version().await,
        command: command_line(),
        reps: ctx.reps,
        smoke: args.smoke,
        workloads,
        queues: Vec::new(),
    })
}

/// Builds `warren-worker` in this binary's profile and returns its path.
fn build_worker() -> anyhow::Result<PathBuf> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut build = escargot::CargoBuild::new()
        .package("warren-cli")
        .bin("warren-worker")
        .manifest_path(manifest);
    // `cargo run` gives this process the package's own variables; a build script that
    // watches one (ring's watches `CARGO_MANIFEST_DIR`) would see it change and rebuild
    // half the dependency tree on every run (~1.5 minutes) if the nested build inherited them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo_run = name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            );
        if set_by_cargo_run {
            build = build.env_remove(&*name);
        }
    }
    if !cfg!(debug_assertions) {
        build = build.release();
    }
    eprintln!("building warren-worker ...");
    let run = build
        .run()
        .context("building warren-worker (or pass --worker-bin)")?;
    Ok(run.path().to_owned())
}

/// How this run was started, as a cargo command.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    format!("cargo run{profile} -p warren-bench -- {}", args.join(" "))
}
