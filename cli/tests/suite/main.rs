//! Warren end to end: the stock binaries as an operator runs them and the libraries as a
//! program uses them, against a real RabbitMQ broker (private nodes and clusters where a test
//! restarts or kills one). One test binary: cargo builds the stock binaries before it.

mod binaries;
mod blocked;
mod broker_restart;
mod browser;
mod calls;
mod cluster;
mod console;
mod consume_loop;
mod control;
mod crash;
mod dead_letters;
mod dependencies;
mod deploy;
mod docs;
mod events;
mod examples;
mod failures;
mod http_ingest;
mod invalid_messages;
mod isolation;
mod nested_payloads;
mod one_shot;
mod operations;
mod pipeline;
mod process;
mod prometheus_server;
mod python_example;
mod scaling;
mod scheduler;
mod scheduling;
mod stall;
mod stats;
mod status;
mod tls;
mod trace_context;
mod typed_tasks;

pub use process::{binary, example, WorkerProcess, TASK_LOG};
