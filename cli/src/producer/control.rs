//! `warren-producer tasks cancel ID` and `warren-producer queues pause|resume QUEUE`: control
//! records written to the control stream over AMQP (docs/wire-format.md §13), confirmed by
//! the broker before the command returns. Workers following the stream act on them.

use super::tasks::ServerArgs;
use anyhow::Context;
use std::process::ExitCode;
use warren_common::{Amqp, Shutdown};
use warren_producer::{Control, ControlError, Publisher, PublisherConfig};

/// Which control stream, and how long to try the broker.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The control stream the workers follow (their --control-stream).
    #[arg(long, env = "WARREN_CONTROL_STREAM", default_value = warren_producer::DEFAULT_CONTROL_STREAM)]
    control_stream: String,
    #[command(flatten)]
    pub(super) connect: super::ConnectTimeout,
}

/// Arguments of `tasks cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The task's id.
    id: String,
    #[command(flatten)]
    control: ControlArgs,
}

/// Arguments of `queues`.
#[derive(Debug, clap::Args)]
pub struct QueuesArgs {
    #[command(subcommand)]
    command: QueuesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum QueuesCommand {
    /// Stop every worker consuming the queue until it is resumed: running tasks finish,
    /// prefetched ones go back to the queue (their delivery count unchanged).
    Pause(QueueArgs),
    /// Let workers consume the queue again.
    Resume(QueueArgs),
}

#[derive(Debug, clap::Args)]
struct QueueArgs {
    /// The work queue.
    queue: String,
    #[command(flatten)]
    control: ControlArgs,
}

impl QueuesArgs {
    #[cfg(test)]
    pub(super) fn connect(&self) -> &super::ConnectTimeout {
        match &self.command {
            QueuesCommand::Pause(q) | QueuesCommand::Resume(q) => &q.control.connect,
        }
    }
}

/// Connects a [`Control`] writing to `args`' stream.
async fn control(args: &ControlArgs, amqp: &Amqp, shutdown: &Shutdown) -> anyhow::Result<Control> {
    let config = PublisherConfig {
        amqp: amqp.clone(),
        connection_name: "warren-producer control".to_owned(),
        ..PublisherConfig::default()
    };
    let connecting = Publisher::connect(config, &shutdown.drain);
    let publisher = args.connect.bound(amqp, connecting).await??;
    Ok(Control::new(publisher, &args.control_stream))
}

/// `tasks cancel ID`: writes the cancellation, then, if the status server answers, says
/// whether the task had already ended (the cancel lost the race). Exit codes: 0 written, 1
/// refused or not confirmed, 69 no broker.
pub async fn cancel(
    args: CancelArgs,
    server: &ServerArgs,
    amqp: &Amqp,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    if args.id.trim().is_empty() {
        eprintln!("error: {}", ControlError::EmptyId);
        return Ok(ExitCode::from(warren_common::process::exit::USAGE));
    }
    let control = control(&args.control, amqp, shutdown).await?;
    let cancel = control
        .cancel(&args.id)
        .await
        .with_context(|| format!("cancelling task {}", args.id))?;
    let ended = super::tasks::ended_state(server, &args.id).await;
    if server.json {
        let answer = serde_json::json!({
            "id": cancel.id,
            "cancelled_at_ms": cancel.at_ms,
            "expires_ms": cancel.expires_ms,
            "stream": control.stream(),
            "finished_before_cancel": ended,
        });
        println!("{answer}");
    } else {
        println!("cancel of {} recorded in `{}`", cancel.id, control.stream());
        if let Some(state) = ended {
            println!("finished before the cancel: {state}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `queues pause|resume QUEUE`. Exit codes: 0 written, 1 refused (an unknown queue) or not
/// confirmed, 69 no broker.
pub async fn queues(
    args: QueuesArgs,
    amqp: &Amqp,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    let (queue, pause) = match &args.command {
        QueuesCommand::Pause(q) => (q, true),
        QueuesCommand::Resume(q) => (q, false),
    };
    let control = control(&queue.control, amqp, shutdown).await?;
    let written = if pause {
        control.pause(&queue.queue).await
    } else {
        control.resume(&queue.queue).await
    };
    match written {
        Ok(()) => {
            let done = if pause { "paused" } else { "resumed" };
            println!(
                "queue `{}` {done} (recorded in `{}`)",
                queue.queue,
                control.stream()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ ControlError::UnknownQueue(_)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}
