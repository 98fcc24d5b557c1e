//! The stock worker process: [`run`] is a whole worker `main`.

use crate::{Registry, Worker, WorkerArgs, WorkerConfig};
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;
use warren_common::process::{exit, run_process, ProcessOptions};
use warren_common::serve_admin;

/// Runs `registry`'s handlers as `warren-worker` runs its demo tasks: every flag and
/// `WARREN_*` variable of `warren-worker --help`, the admin server (`/metrics`, `/healthz`,
/// `/readyz`), logs, a graceful drain on SIGTERM and the stock exit codes (0 drained, 2
/// invalid flags, 3 tasks abandoned at the drain timeout, 78 a configuration the broker
/// refuses, 130 stopped by a second signal).
///
/// ```no_run
/// # use warren_worker::Registry;
/// fn main() -> std::process::ExitCode {
///     let registry = Registry::new(); // register your handlers here
///     warren_worker::run(registry)
/// }
/// ```
pub fn run(registry: Registry) -> ExitCode {
    run_with(registry, WorkerArgs::parse())
}

/// [`run`] with flags parsed already (or built by the program).
pub fn run_with(registry: Registry, args: WorkerArgs) -> ExitCode {
    let options = ProcessOptions {
        // A second signal gives running tasks a moment to be counted as abandoned.
        abort_grace: Duration::from_secs(1),
        ..ProcessOptions::service(args.log_format)
    };
    run_process(options, |shutdown| async move {
        let config = match WorkerConfig::try_from(&args) {
            Ok(config) => config,
            Err(error) => return usage(error),
        };
        let metrics = prometheus::Registry::new();
        let worker = match Worker::new(registry, config, &metrics) {
            Ok(worker) => worker,
            Err(error) => return usage(error),
        };
        let stop_admin = shutdown.abort.child_token();
        if let Err(error) = serve_admin(args.admin_addr, metrics, worker.health(), stop_admin).await
        {
            return usage(error);
        }
        match worker.run(shutdown).await {
            Ok(report) if report.abandoned > 0 => ExitCode::from(exit::ABANDONED),
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "worker stopped");
                eprintln!("error: {error}");
                ExitCode::from(exit::CONFIG)
            }
        }
    })
}

fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(exit::USAGE)
}
