//! The web console of `warren-producer serve --console` (docs/console.md): pages under
//! `/console` that show an operator the Warren queues, the workers, the tasks and the dead
//! letters, and, when actions are enabled, pause and resume queues, cancel tasks and replay or
//! purge dead letters through the same operations as the CLI.
//!
//! Everything is served by the ingest's process from what it already has: the status index
//! (statuses, timelines, throughput, dead letters, heartbeats), passive declares of the queues
//! (ready messages and consumers) and, when given, the management API. Pages are HTML rendered
//! on the server ([`maud`], escaped by default) with one stylesheet and one small script of
//! Warren's own, both compiled in; the script only refreshes a page's live part every few
//! seconds. Nothing is loaded from elsewhere, and the content security policy says so.

mod actions;
mod assets;
mod chart;
mod figures;
mod format;
mod jobs;
mod layout;
mod management;
mod overview;
mod queue;
mod replay;
mod security;
mod tasks;
mod workers;

use super::handlers::AppState;
use super::BearerToken;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use management::vhost_of;
pub use management::ManagementUrl;

/// Settings of the console.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// Whether pages offer actions (pause, resume, cancel, replay, purge). Actions need the
    /// ingest's bearer token: without one they stay off.
    pub actions: bool,
    /// How often a page refreshes its figures.
    pub refresh: Duration,
    /// The RabbitMQ management API, for exact per-queue figures (unacked, rates).
    pub management: Option<ManagementUrl>,
}

impl Default for ConsoleConfig {
    /// Read-only, refreshing every 5 seconds, without the management API.
    fn default() -> Self {
        ConsoleConfig {
            actions: false,
            refresh: crate::defaults::console::REFRESH,
            management: None,
        }
    }
}

/// What the console's handlers share.
pub(crate) struct Console {
    app: AppState,
    config: ConsoleConfig,
    /// The token that logs in, if the ingest has one: then every page needs a session.
    token: Option<BearerToken>,
    keys: security::Keys,
    jobs: Arc<jobs::Jobs>,
    figures: figures::Figures,
    /// The task exchange replays publish to.
    exchange: String,
    /// The dead-letter queues' retention, as the workers declare it.
    retention: warren_common::Retention,
    /// The events stream broker dead letters met by a replay or purge are recorded in.
    events_stream: Option<String>,
}

/// The console's handlers' state.
pub(crate) type Shared = Arc<Console>;

/// What the ingest passes to [`router`].
pub(crate) struct Parts {
    pub(crate) app: AppState,
    pub(crate) config: ConsoleConfig,
    pub(crate) token: Option<BearerToken>,
    pub(crate) exchange: String,
    pub(crate) retention: warren_common::Retention,
    pub(crate) events_stream: Option<String>,
    /// The broker's virtual host, for the management API.
    pub(crate) vhost: String,
}

/// The console's routes, all under `/console`.
pub(crate) fn router(parts: Parts) -> Router {
    let actions = parts.config.actions && parts.token.is_some();
    if parts.config.actions && !actions {
        tracing::warn!("console actions need --auth-token-file: the console is read-only");
    }
    let management = parts.config.management.as_ref().and_then(|url| {
        management::Management::new(url, &parts.vhost)
            .map_err(|error| tracing::warn!(%error, management = %url, "console: cannot use the management API"))
            .ok()
    });
    let console = Arc::new(Console {
        figures: figures::Figures::new(parts.app.broker.clone(), management),
        app: parts.app,
        config: ConsoleConfig {
            actions,
            ..parts.config
        },
        token: parts.token,
        keys: security::Keys::generate(),
        jobs: Arc::default(),
        exchange: parts.exchange,
        retention: parts.retention,
        events_stream: parts.events_stream,
    });
    let pages = Router::new()
        .route("/console", get(overview::page))
        .route("/console/", get(overview::page))
        .route("/console/queues/{queue}", get(queue::page))
        .route("/console/tasks", get(tasks::list))
        .route("/console/tasks/{id}", get(tasks::page))
        .route("/console/workers", get(workers::page))
        .merge(actions::routes())
        .merge(security::session_routes())
        .route_layer(from_fn_with_state(
            console.clone(),
            security::require_session,
        ))
        .merge(security::login_routes())
        .merge(assets::routes())
        .layer(DefaultBodyLimit::max(security::MAX_FORM_BYTES))
        .layer(from_fn(security::headers))
        .with_state(console);
    tracing::info!(actions, "console enabled at /console");
    pages
}
