//! The stock `warren-worker` binary: the built-in demo tasks on the configured queues.

use clap::Parser;
use std::process::ExitCode;
use warren_common::{init_tracing, serve_admin, shutdown_signal, Shutdown};
use warren_worker::{demo, Registry, Worker, WorkerArgs, WorkerConfig};

/// Exit code when tasks were still running at the shutdown timeout.
const EXIT_ABANDONED: u8 = 3;
/// Exit code for a configuration the broker or the flags refuse (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let args = WorkerArgs::parse();
    init_tracing(args.log_format);
    let config = match WorkerConfig::try_from(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let metrics = prometheus::Registry::new();
    let worker = match Worker::new(registry, config, &metrics) {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let stop_admin = shutdown.abort.child_token();
    if let Err(error) = serve_admin(args.admin_addr, metrics, worker.health(), stop_admin).await {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let abort = shutdown.abort.clone();
    let run = worker.run(shutdown);
    tokio::select! {
        result = run => match result {
            Ok(report) if report.abandoned > 0 => ExitCode::from(EXIT_ABANDONED),
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "worker stopped");
                eprintln!("error: {error}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        _ = async { abort.cancelled().await; tokio::time::sleep(std::time::Duration::from_secs(1)).await } => ExitCode::from(130),
    }
}
