//! The stock `warren-worker` binary: the built-in demo tasks on the configured queues.

use std::process::ExitCode;
use warren_worker::Registry;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    warren_cli::demo::register(&mut registry);
    warren_worker::run(registry)
}
