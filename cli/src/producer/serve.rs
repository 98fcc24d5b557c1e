//! `warren-producer serve`: the HTTP ingest (see `warren_producer::serve_ingest` and
//! `docs/openapi.yaml`), on one listener with `/metrics`, `/healthz` and `/readyz`; with
//! `--events-stream`, a `published` event of each task accepted, and with `--index` too, the
//! status index and `GET /v1/tasks`.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;
use warren_common::{Amqp, QueueKind, Shutdown};
use warren_producer::defaults::{index as index_defaults, ingest as defaults};
use warren_producer::status::IndexConfig;
use warren_producer::{
    serve_ingest, BearerToken, ConnectionLimits, ConsoleConfig, IngestConfig, ManagementUrl,
    PublisherConfig,
};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve HTTP on (port 0 picks a free port, which is logged).
    #[arg(long, env = "WARREN_LISTEN", default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Queue for tasks that name none; declared at start.
    #[arg(long, env = "WARREN_QUEUE", default_value = defaults::QUEUE)]
    queue: String,
    /// Type of the default queue, if it has to be declared.
    #[arg(long, env = "WARREN_QUEUE_TYPE", value_enum, default_value_t = QueueKind::default())]
    queue_type: QueueKind,
    /// Declare the default queue as a priority queue with this maximum priority (classic only).
    #[arg(long, env = "WARREN_MAX_PRIORITY", value_parser = clap::value_parser!(u8).range(1..=9))]
    max_priority: Option<u8>,
    /// Dead-letter retention of the default queue, if it has to be declared (must match the
    /// workers').
    #[command(flatten)]
    retention: warren_common::Retention,
    /// How long a request waits for the broker's confirm (and at most for a reconnection)
    /// before it is answered 503.
    #[arg(long, env = "WARREN_CONFIRM_TIMEOUT", default_value_t = defaults::CONFIRM_TIMEOUT.into())]
    confirm_timeout: humantime::Duration,
    /// File holding the bearer token that every /v1 request must present
    /// (`Authorization: Bearer <token>`); surrounding whitespace is ignored. Without it, /v1
    /// is open.
    #[arg(long, env = "WARREN_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    #[arg(long, env = "WARREN_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most tasks accepted in one batch.
    #[arg(long, env = "WARREN_MAX_BATCH", default_value_t = defaults::MAX_BATCH,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_batch: usize,
    /// Longest wait of `POST /v1/tasks?wait=`; a longer one is cut to it (each waiting
    /// request holds one of the --max-connections).
    #[arg(long, env = "WARREN_MAX_WAIT", default_value_t = defaults::MAX_WAIT.into())]
    max_wait: humantime::Duration,
    /// Time a client has to send a request's head, from connecting (or from the first byte of
    /// its next request); slower connections are closed.
    #[arg(long, env = "WARREN_HEADER_READ_TIMEOUT",
          default_value_t = defaults::HEADER_READ_TIMEOUT.into())]
    header_read_timeout: humantime::Duration,
    /// Time a client has to send a whole /v1 request body once its head arrived; a slower
    /// body is answered 408 and the connection closed.
    #[arg(long, env = "WARREN_BODY_READ_TIMEOUT",
          default_value_t = defaults::BODY_READ_TIMEOUT.into())]
    body_read_timeout: humantime::Duration,
    /// Time a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "WARREN_IDLE_TIMEOUT", default_value_t = defaults::IDLE_TIMEOUT.into())]
    idle_timeout: humantime::Duration,
    /// Most connections served at once; further ones wait to be accepted until one closes.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// --events-stream: the events stream the workers record into (their --events-stream).
    /// The ingest records a `published` event of each task it accepts there, and --index
    /// follows it.
    #[command(flatten)]
    events: super::events::PublishedEventsArgs,
    /// The status index: an SQLite file (created if missing; one per replica, never shared)
    /// that follows --events-stream and answers GET /v1/tasks/{id} and GET /v1/tasks.
    #[arg(long, env = "WARREN_INDEX", requires = "events_stream")]
    index: Option<PathBuf>,
    /// How long a task that ended (succeeded, dead-lettered, expired) stays in the index.
    #[arg(long, env = "WARREN_INDEX_RETENTION",
          default_value_t = index_defaults::RETENTION.into())]
    index_retention: humantime::Duration,
    /// The control stream POST /v1/tasks/{id}/cancel and POST /v1/queues/{queue}/pause|resume
    /// write to (the workers' --control-stream).
    #[arg(long, env = "WARREN_CONTROL_STREAM", default_value = warren_producer::DEFAULT_CONTROL_STREAM)]
    control_stream: String,
    /// Serve the web console under /console (docs/console.md): queues, workers, tasks and
    /// dead letters from the status index and the broker. Read-only unless --console-actions.
    #[arg(long, env = "WARREN_CONSOLE", requires = "index")]
    console: bool,
    /// Let the console pause and resume queues, cancel tasks and replay or purge dead letters,
    /// after logging in with the --auth-token-file token.
    #[arg(long, env = "WARREN_CONSOLE_ACTIONS", requires_all = ["console", "auth_token_file"])]
    console_actions: bool,
    /// How often console pages refresh their figures.
    #[arg(long, env = "WARREN_CONSOLE_REFRESH",
          default_value_t = warren_producer::defaults::console::REFRESH.into())]
    console_refresh: humantime::Duration,
    /// The RabbitMQ management API (http://user:password@host:15672), for the console's exact
    /// per-queue figures (unacknowledged messages, rates). Without it the console uses what AMQP
    /// can tell.
    #[arg(long, env = "WARREN_MANAGEMENT_URL", requires = "console",
          value_parser = ManagementUrl::parse)]
    management_url: Option<ManagementUrl>,
}

/// Serves until the first shutdown signal, then drains.
pub async fn run(
    args: ServeArgs,
    amqp: &Amqp,
    exchange: &str,
    via_exchange: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitCode> {
    let auth_token = match &args.auth_token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--auth-token-file {}: cannot read", path.display()))?;
            let token = BearerToken::new(&text).with_context(|| {
                format!("--auth-token-file {}: the file is empty", path.display())
            })?;
            Some(token)
        }
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
    let publisher = PublisherConfig {
        amqp: amqp.clone(),
        exchange: exchange.to_owned(),
        via_exchange,
        default_queue: args.queue.clone(),
        confirm_timeout: args.confirm_timeout.into(),
        connection_name: "warren-producer serve".to_owned(),
        metrics: None,
    };
    let config = IngestConfig {
        queue_kind: args.queue_type,
        max_priority: args.max_priority,
        retention: args.retention,
        auth_token,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        max_wait: args.max_wait.into(),
        connections: ConnectionLimits {
            header_read_timeout: args.header_read_timeout.into(),
            body_read_timeout: args.body_read_timeout.into(),
            idle_timeout: args.idle_timeout.into(),
            max_connections: args.max_connections,
        },
        events: args.events.config(),
        index: args
            .events
            .events_stream
            .zip(args.index)
            .map(|(stream, path)| IndexConfig {
                retention: args.index_retention.into(),
                ..IndexConfig::new(stream, path)
            }),
        control_stream: args.control_stream,
        console: args.console.then(|| ConsoleConfig {
            actions: args.console_actions,
            refresh: args.console_refresh.into(),
            management: args.management_url,
        }),
        ..IngestConfig::new(publisher)
    };
    serve_ingest(listener, config, shutdown.drain.clone()).await?;
    Ok(ExitCode::SUCCESS)
}
