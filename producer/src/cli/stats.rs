//! `warren-producer stats`: the broker's view of a work queue and its dead letters.

use anyhow::Context;
use std::process::ExitCode;
use warren_common::{connect, dead_letter_queue_name, AmqpArgs, Shutdown, Topology};

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The work queue.
    #[arg(long, env = "WARREN_QUEUE", default_value = "default")]
    queue: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) connect: super::ConnectTimeout,
}

pub async fn run(
    args: StatsArgs,
    amqp: &AmqpArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    let connecting = connect(&amqp.urls, "warren-producer stats", &shutdown.drain);
    let conn = args.connect.bound(&amqp.urls, connecting).await??;
    let work = Topology::inspect(&conn, &args.queue)
        .await
        .context("reading the work queue")?;
    let dlq = dead_letter_queue_name(&args.queue);
    let dead = Topology::inspect(&conn, &dlq)
        .await
        .context("reading the dead-letter queue")?;
    let _ = conn.close(200, "bye".into()).await;
    if args.json {
        let value = serde_json::json!({
            "queue": args.queue,
            "ready": work.ready,
            "consumers": work.consumers,
            "dead_letters": dead.ready,
        });
        println!("{value}");
    } else {
        println!(
            "queue {}: {} ready, {} consumers, {} dead letters",
            args.queue, work.ready, work.consumers, dead.ready
        );
    }
    Ok(ExitCode::SUCCESS)
}
