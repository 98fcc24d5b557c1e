//! The `warren-producer` command line: publish tasks and inspect queues.

mod dead_letters;
mod publish;
mod serve;
mod stats;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use warren_common::{AmqpArgs, LogFormat, Shutdown};

/// Publish Warren tasks and inspect Warren queues.
#[derive(Debug, Parser)]
#[command(name = "warren-producer", version, about)]
pub struct Cli {
    #[command(flatten)]
    amqp: AmqpArgs,
    /// The task exchange: work queues are bound to it (tasks go through it with --via-exchange).
    #[arg(long, env = "WARREN_EXCHANGE", default_value = warren_common::DEFAULT_EXCHANGE, global = true)]
    exchange: String,
    /// Publish tasks through --exchange instead of straight to their queue (the default
    /// exchange): only then do queues you bound to the exchange yourself see them.
    #[arg(long, env = "WARREN_VIA_EXCHANGE", global = true)]
    via_exchange: bool,
    /// Log output format.
    #[arg(
        long,
        env = "WARREN_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one task (printing its id) or many (with --count).
    Publish(publish::PublishArgs),
    /// Show a queue's ready messages, consumers and dead letters.
    Stats(stats::StatsArgs),
    /// List, replay and purge a queue's dead letters.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Serve the HTTP ingest: publish tasks posted as JSON (see docs/openapi.yaml).
    Serve(serve::ServeArgs),
}

/// Runs the parsed command line until it is done or `shutdown` fires.
pub async fn run(mut cli: Cli, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    // Read --amqp-url-file and the TLS files once, before any command connects.
    cli.amqp = match cli.amqp.resolve() {
        Ok(amqp) => amqp,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    match cli.command {
        Command::Publish(args) => {
            publish::run(args, &cli.amqp, &cli.exchange, cli.via_exchange, &shutdown).await
        }
        Command::Stats(args) => stats::run(args, &cli.amqp, &shutdown).await,
        Command::DeadLetters(args) => {
            dead_letters::run(args, &cli.amqp, &cli.exchange, &shutdown).await
        }
        Command::Serve(args) => {
            serve::run(args, &cli.amqp, &cli.exchange, cli.via_exchange, &shutdown).await
        }
    }
}
