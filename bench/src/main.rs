//! `warren-bench`: `cargo run --release -p warren-bench -- --workload all`. See
//! `docs/performance.md` for what it measures and the results.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = warren_bench::Cli::parse();
    let result = match cli.role {
        Some(role) => warren_bench::run_role(role).await,
        None => warren_bench::run(cli.bench).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
