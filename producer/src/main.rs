//! The `warren-producer` binary: parse the command line and run it.

use clap::Parser;
use std::process::ExitCode;
use warren_common::{init_command_tracing, init_tracing, shutdown_signal, Shutdown};
use warren_producer::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command's own message says what happened; lapin's lines would only add noise.
    if cli.is_one_shot() {
        init_command_tracing(cli.log_format);
    } else {
        init_tracing(cli.log_format);
    }
    let shutdown = Shutdown::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let abort = shutdown.abort.clone();
    tokio::select! {
        result = cli::run(cli, shutdown) => match result {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        _ = abort.cancelled() => ExitCode::from(130),
    }
}
