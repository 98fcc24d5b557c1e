//! The `warren-producer` binary: parse the command line and run it.

use clap::Parser;
use std::process::ExitCode;
use warren_cli::producer::{self, Cli};
use warren_common::process::{exit, run_process, ProcessOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = ProcessOptions {
        one_shot: cli.is_one_shot(),
        ..ProcessOptions::service(cli.log_format)
    };
    run_process(options, |shutdown| async move {
        match producer::run(cli, shutdown).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(exit::FAILURE)
            }
        }
    })
}
