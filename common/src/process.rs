//! The process around a Warren service, the same for `warren-worker`, `warren-producer` and
//! `warren-scheduler` and for a worker `main` of your own: logs set up first, a tokio runtime,
//! signals (the first SIGTERM or SIGINT drains, a second stops at once) and exit codes.

use crate::{init_command_tracing, init_tracing, shutdown_signal, LogFormat, Shutdown};
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Exit codes of Warren's processes (`--help` of each binary lists its own).
pub mod exit {
    /// Something failed; the message says what.
    pub const FAILURE: u8 = 1;
    /// Invalid flags or settings (clap's own code for a bad command line).
    pub const USAGE: u8 = 2;
    /// Tasks were still running when the drain's timeout ran out.
    pub const ABANDONED: u8 = 3;
    /// No broker URL accepted a connection in time (sysexits' EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// The broker refused the configuration: a queue's arguments, a permission, a name
    /// (sysexits' EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// A second signal stopped the process before it had drained (128 + SIGINT).
    pub const ABORTED: u8 = 130;
}

/// How a process logs and stops.
#[derive(Clone, Copy, Debug)]
pub struct ProcessOptions {
    /// Log output format.
    pub log_format: LogFormat,
    /// A command that does one thing and exits: unless `RUST_LOG` says otherwise, lapin's own
    /// log lines are left out (its message already says what happened).
    pub one_shot: bool,
    /// After a second signal, how long the service may take to return its own exit code
    /// (a worker reports the tasks it abandoned) before the process exits with
    /// [`exit::ABORTED`].
    pub abort_grace: Duration,
}

impl ProcessOptions {
    /// A service that runs until it is stopped, logging in `log_format`.
    pub fn service(log_format: LogFormat) -> Self {
        ProcessOptions {
            log_format,
            one_shot: false,
            abort_grace: Duration::ZERO,
        }
    }
}

/// Runs `service` as a Warren process: installs the log subscriber, starts a multi-threaded
/// tokio runtime, listens for signals (they fire the [`Shutdown`] handed to `service`), and
/// returns `service`'s exit code, or [`exit::ABORTED`] once a second signal's grace has passed.
/// Call it from a synchronous `main` (no `#[tokio::main]`).
pub fn run_process<F, Fut>(options: ProcessOptions, service: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    if options.one_shot {
        init_command_tracing(options.log_format);
    } else {
        init_tracing(options.log_format);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = Shutdown::new();
        tokio::spawn(shutdown_signal(shutdown.clone()));
        let abort = shutdown.abort.clone();
        tokio::select! {
            code = service(shutdown) => code,
            _ = async {
                abort.cancelled().await;
                tokio::time::sleep(options.abort_grace).await;
            } => ExitCode::from(exit::ABORTED),
        }
    });
    // A handler blocked in `spawn_blocking` cannot be cancelled: do not wait for it forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
