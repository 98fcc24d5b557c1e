//! The `warren-producer` command line: publish tasks, inspect queues, serve the HTTP API and
//! ask it what became of tasks.

mod control;
mod dead_letters;
pub mod events;
mod publish;
mod serve;
mod stats;
mod tasks;
mod wait;
mod workers;

use clap::{Parser, Subcommand};
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;
use warren_common::process::exit;
use warren_common::{give_up_after, Amqp, AmqpArgs, LogFormat, Shutdown, Unreachable};

/// Exit codes, as `--help` lists them.
const EXIT_CODES: &str = "Exit codes: 0 done; 1 failed (the message says why); 2 invalid flags \
    or a refused command; 69 publish, stats, dead-letters, tasks cancel or queues could not \
    connect to the broker within --connect-timeout, or tasks status|list could not reach the \
    server; 130 a second signal aborted the command.";

/// Publish Warren tasks and inspect Warren queues.
#[derive(Debug, Parser)]
#[command(name = "warren-producer", version, about, after_help = EXIT_CODES)]
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
    /// Show a queue's ready messages, consumers and dead letters, and the delayed tasks whose
    /// queue is gone (in `warren.delay.unroutable`).
    Stats(stats::StatsArgs),
    /// List, replay and purge a queue's dead letters.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Serve the HTTP ingest: publish tasks posted as JSON (see docs/openapi.yaml); with
    /// --index, also keep the status index and answer what became of tasks.
    Serve(serve::ServeArgs),
    /// Ask a `serve` with --index what became of tasks: `tasks status ID`, `tasks list`;
    /// cancel one through the control stream: `tasks cancel ID`.
    Tasks(tasks::TasksArgs),
    /// Pause or resume consuming a queue, through the control stream: `queues pause Q`,
    /// `queues resume Q`.
    Queues(control::QueuesArgs),
    /// Ask a `serve` with --index which workers it heard from: alive, or gone (drained, or
    /// silent for three heartbeat intervals) within the last hour.
    Workers(workers::WorkersArgs),
}

impl Cli {
    /// Whether the command does one thing and exits (`publish`, `stats`, `dead-letters`,
    /// `tasks`, `queues`, `workers`), rather than serving until stopped.
    pub fn is_one_shot(&self) -> bool {
        !matches!(self.command, Command::Serve(_))
    }
}

/// How long a one-shot command tries to connect to the broker.
#[derive(Clone, Copy, Debug, clap::Args)]
struct ConnectTimeout {
    /// Give up with exit code 69 when no broker URL accepts a connection within this time
    /// (e.g. 1s, 2m); until then every URL is tried in turn, with backoff.
    #[arg(
        long = "connect-timeout",
        env = "WARREN_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = parse_timeout,
        global = true
    )]
    connect_timeout: Duration,
}

impl ConnectTimeout {
    /// Runs `connecting` (which connects to `amqp`, retrying) for at most the timeout.
    async fn bound<F: Future>(&self, amqp: &Amqp, connecting: F) -> Result<F::Output, Unreachable> {
        give_up_after(self.connect_timeout, amqp, connecting).await
    }
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(timeout) if timeout.is_zero() => Err("must be longer than 0s".into()),
        Ok(timeout) => Ok(timeout),
        Err(error) => Err(error.to_string()),
    }
}

/// Runs the parsed command line until it is done or `shutdown` fires.
pub async fn run(cli: Cli, shutdown: Shutdown) -> anyhow::Result<ExitCode> {
    // Read --amqp-url-file and the TLS files once, before any command connects.
    let amqp = match cli.amqp.resolve() {
        Ok(amqp) => amqp,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
    let result = match cli.command {
        Command::Publish(args) => {
            publish::run(args, &amqp, &cli.exchange, cli.via_exchange, &shutdown).await
        }
        Command::Stats(args) => stats::run(args, &amqp, &shutdown).await,
        Command::DeadLetters(args) => {
            dead_letters::run(args, &amqp, &cli.exchange, &shutdown).await
        }
        Command::Serve(args) => {
            serve::run(args, &amqp, &cli.exchange, cli.via_exchange, &shutdown).await
        }
        Command::Tasks(args) => tasks::run(args, &amqp, &shutdown).await,
        Command::Queues(args) => control::queues(args, &amqp, &shutdown).await,
        Command::Workers(args) => workers::run(args).await,
    };
    match result.map_err(anyhow::Error::downcast::<Unreachable>) {
        Err(Ok(unreachable)) => {
            eprintln!("error: {unreachable}");
            Ok(ExitCode::from(exit::UNAVAILABLE))
        }
        Err(Err(error)) => Err(error),
        Ok(code) => Ok(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("warren-producer").chain(args.iter().copied()))
    }

    fn timeout(cli: &Cli) -> Duration {
        match &cli.command {
            Command::Publish(a) => a.connect.connect_timeout,
            Command::Stats(a) => a.connect.connect_timeout,
            Command::DeadLetters(a) => a.connect.connect_timeout,
            Command::Queues(a) => a.connect().connect_timeout,
            Command::Serve(_) | Command::Tasks(_) | Command::Workers(_) => {
                panic!("no broker connect timeout")
            }
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn one_shot_commands_take_a_connect_timeout_and_serve_does_not() {
        let stats = parse(&["stats", "--queue", "q"]).unwrap();
        assert_eq!(timeout(&stats), Duration::from_secs(10));
        let publish = parse(&["publish", "--task", "t", "--connect-timeout", "1s"]).unwrap();
        assert_eq!(timeout(&publish), Duration::from_secs(1));
        let list = parse(&[
            "dead-letters",
            "list",
            "--queue",
            "q",
            "--connect-timeout",
            "2m",
        ]);
        assert_eq!(timeout(&list.unwrap()), Duration::from_secs(120));
        assert!(parse(&["stats", "--connect-timeout", "0s"]).is_err());
        assert!(parse(&["serve", "--connect-timeout", "1s"]).is_err());
        assert!(!parse(&["serve"]).unwrap().is_one_shot());
        assert!(stats.is_one_shot());
    }
}
