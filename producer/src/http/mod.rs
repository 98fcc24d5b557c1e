//! The HTTP ingest behind `warren-producer serve`: services in any language publish tasks
//! with `POST /v1/tasks` and `POST /v1/tasks:batch`, and get `202` only for tasks the broker
//! confirmed; with a status index (the `status` feature), `GET /v1/tasks/{id}` and
//! `GET /v1/tasks` answer what became of them, and `GET /v1/workers` who runs them. The same
//! listener serves `/metrics`, `/healthz` and `/readyz`.
//!
//! The server starts answering at once; the publisher connects in the background, and until
//! it has (and whenever it cannot publish) `/v1` answers 503 and `/readyz` fails. The API is
//! documented in `docs/openapi.yaml`.

mod auth;
mod body;
mod broker;
mod conn;
#[cfg(feature = "console")]
mod console;
mod control;
mod error;
mod handlers;
mod json;
mod metrics;
mod request;
mod server;
#[cfg(feature = "status")]
mod status;
mod time;
#[cfg(feature = "status")]
mod workers;

pub use auth::BearerToken;
#[cfg(feature = "console")]
pub use console::{ConsoleConfig, ManagementUrl};
pub use request::read_task_body;
pub use server::ConnectionLimits;

use crate::defaults::ingest as defaults;
use crate::{PublishError, PublisherConfig};
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use broker::Broker;
use handlers::AppState;
use metrics::HttpMetrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_common::{admin_router, Health, QueueKind, QueueSpec, Readiness};

/// Settings of the HTTP ingest.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// How to connect and publish; its `default_queue` is used for tasks that name no queue
    /// and is declared at start. Its `metrics` is replaced by `registry`.
    pub publisher: PublisherConfig,
    /// Type of the default queue, when it has to be declared.
    pub queue_kind: QueueKind,
    /// Declare the default queue as a priority queue with this maximum priority.
    pub max_priority: Option<u8>,
    /// Dead-letter retention used when declaring the default queue.
    pub retention: warren_common::Retention,
    /// Token required on `/v1` requests; none means `/v1` is open.
    pub auth_token: Option<BearerToken>,
    /// Largest request body accepted; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Most tasks in one batch.
    pub max_batch: usize,
    /// Longest wait of `POST /v1/tasks?wait=` (a longer one is cut to it): a waiting request
    /// holds one of the connections.
    pub max_wait: std::time::Duration,
    /// Timeouts of slow or idle clients and the most connections served at once.
    pub connections: ConnectionLimits,
    /// Registry for the producer's and the server's metrics, served on `/metrics`.
    pub registry: prometheus::Registry,
    /// Record a `published` event for each task accepted (docs/wire-format.md §11.4); none:
    /// record nothing.
    pub events: Option<warren_common::events::PublishedEvents>,
    /// The status index to keep and answer `GET /v1/tasks` from; none: those answer 501.
    #[cfg(feature = "status")]
    pub index: Option<crate::status::IndexConfig>,
    /// The control stream `POST /v1/tasks/{id}/cancel` and `/v1/queues/{queue}/pause|resume`
    /// write to (the workers' `--control-stream`); default `warren.control`.
    pub control_stream: String,
    /// The web console under `/console` (docs/console.md); none: no console.
    #[cfg(feature = "console")]
    pub console: Option<ConsoleConfig>,
}

impl IngestConfig {
    /// The defaults of [`crate::defaults::ingest`] around a publisher configuration, used as
    /// given: quorum queue, no token, 1 MiB bodies, batches of up to 1000 tasks, the default
    /// [`ConnectionLimits`], a fresh registry.
    pub fn new(publisher: PublisherConfig) -> Self {
        IngestConfig {
            publisher,
            queue_kind: QueueKind::default(),
            max_priority: None,
            retention: warren_common::Retention::default(),
            auth_token: None,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_batch: defaults::MAX_BATCH,
            max_wait: defaults::MAX_WAIT,
            connections: ConnectionLimits::default(),
            registry: prometheus::Registry::new(),
            events: None,
            #[cfg(feature = "status")]
            index: None,
            control_stream: crate::DEFAULT_CONTROL_STREAM.to_owned(),
            #[cfg(feature = "console")]
            console: None,
        }
    }
}

/// Why the ingest stopped other than by being told to.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The default queue can never be declared (it exists with other arguments, or its name
    /// is invalid).
    #[error("cannot use the default queue: {0}")]
    DefaultQueue(#[source] PublishError),
    /// The metrics could not be registered (the registry already holds them).
    #[error("cannot register the HTTP metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The status index file cannot be used.
    #[cfg(feature = "status")]
    #[error("cannot open the status index: {0}")]
    Index(#[from] crate::status::IndexError),
}

/// Serves the ingest on `listener` until `stop` fires, then stops accepting connections,
/// finishes the requests in flight, and closes the publisher after its last confirm.
pub async fn serve_ingest(
    listener: TcpListener,
    mut config: IngestConfig,
    stop: CancellationToken,
) -> Result<(), IngestError> {
    let health = Health::new();
    let http_metrics = HttpMetrics::new(&config.registry)?;
    config.publisher.metrics = Some(config.registry.clone());
    let default_queue = config.publisher.default_queue.clone();
    let spec = QueueSpec::new(&default_queue, config.queue_kind)
        .with_max_priority(config.max_priority)
        .with_retention(config.retention);
    #[cfg(feature = "status")]
    let index = match &config.index {
        Some(index) => Some(crate::status::StatusIndex::start(
            index,
            config.publisher.amqp.clone(),
            &config.registry,
            stop.clone(),
        )?),
        None => None,
    };
    let failed = CancellationToken::new();
    let broker = Broker::start(
        config.publisher.clone(),
        config.events.clone(),
        spec,
        health.clone(),
        stop.clone(),
        failed.clone(),
    );
    let state = AppState {
        broker: broker.clone(),
        default_queue: default_queue.as_str().into(),
        max_batch: config.max_batch,
        max_wait: config.max_wait,
        control_stream: config.control_stream.as_str().into(),
        #[cfg(feature = "status")]
        index: index.as_ref().map(|i| i.readers.clone()),
    };
    let app = router(state, &config, health.clone(), http_metrics);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            listen = %addr,
            queue = %default_queue,
            auth = config.auth_token.is_some(),
            "HTTP ingest listening"
        );
    }
    let drain = CancellationToken::new();
    let draining = drain.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = failed.cancelled() => {}
        }
        health.set(Readiness::Draining);
        tracing::info!("HTTP ingest draining: no new connections, finishing requests in flight");
        draining.cancel();
    });
    server::serve(listener, app, config.connections, drain).await;
    broker.close().await;
    #[cfg(feature = "status")]
    if let Some(index) = index {
        index.stopped().await;
    }
    match broker.take_fatal() {
        Some(error) => Err(IngestError::DefaultQueue(error)),
        None => {
            tracing::info!("HTTP ingest stopped");
            Ok(())
        }
    }
}

/// The virtual host of the ingest's broker, for the console's management API queries.
#[cfg(feature = "console")]
fn console_vhost(config: &IngestConfig) -> String {
    let url = config.publisher.amqp.urls().first();
    console::vhost_of(url.map_or("", |u| u.expose()))
}

/// The read routes: the status index's, or answers that there is none.
#[cfg(feature = "status")]
mod reads {
    pub(crate) use super::status::{get_task, get_timeline, list_tasks};
    pub(crate) use super::workers::list_workers;
}
#[cfg(not(feature = "status"))]
mod reads {
    pub(crate) use super::handlers::no_index as get_task;
    pub(crate) use super::handlers::no_index as get_timeline;
    pub(crate) use super::handlers::no_index as list_tasks;
    pub(crate) use super::handlers::no_index as list_workers;
}

fn router(state: AppState, config: &IngestConfig, health: Health, metrics: HttpMetrics) -> Router {
    let body_limits = body::BodyLimits {
        max_bytes: config.max_body_bytes,
        read_timeout: config.connections.body_read_timeout,
    };
    let v1 = Router::new()
        .route("/v1/tasks", post(handlers::publish_one))
        .route("/v1/tasks:batch", post(handlers::publish_batch))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .route_layer(from_fn_with_state(body_limits, body::read_within_limits))
        .route("/v1/tasks", get(reads::list_tasks))
        .route("/v1/tasks/{id}", get(reads::get_task))
        .route("/v1/tasks/{id}/timeline", get(reads::get_timeline))
        .route("/v1/workers", get(reads::list_workers))
        .route("/v1/tasks/{id}/cancel", post(control::cancel))
        .route("/v1/queues/{queue}/pause", post(control::pause))
        .route("/v1/queues/{queue}/resume", post(control::resume))
        // Added last, so it runs first: nothing of an unauthorised body is read.
        .route_layer(from_fn_with_state(
            config.auth_token.clone(),
            auth::require_token,
        ))
        .with_state(state.clone());
    #[cfg(feature = "console")]
    let console_state = state;
    #[cfg(feature = "console")]
    let v1 = match &config.console {
        Some(console) => v1.merge(console::router(console::Parts {
            app: console_state,
            config: console.clone(),
            token: config.auth_token.clone(),
            exchange: config.publisher.exchange.clone(),
            retention: config.retention,
            events_stream: config.events.as_ref().map(|e| e.stream.clone()),
            vhost: console_vhost(config),
        })),
        None => v1,
    };
    v1.merge(admin_router(config.registry.clone(), health))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(from_fn_with_state(metrics, metrics::record))
}
