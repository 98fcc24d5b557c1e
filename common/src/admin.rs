//! The admin HTTP server every Warren process runs: `/metrics` (Prometheus text format;
//! `?name=FAMILY`, repeatable, renders only those families), `/healthz` (the process and its
//! runtime answer) and `/readyz` (connected and working).

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Not yet connected.
    Connecting = 0,
    /// Connected and working: the only state answered with 200.
    Ready = 1,
    /// Lost the broker; reconnecting.
    Reconnecting = 2,
    /// The broker blocks publishers (memory or disk alarm).
    Blocked = 3,
    /// Shutting down.
    Draining = 4,
    /// Working, but some of what it serves cannot be used now (e.g. one queue's node is
    /// down): answered with 200, and the detail names what is missing.
    Degraded = 5,
    /// Connected, but nothing it serves can be used now: answered with 503 and the detail.
    Unavailable = 6,
}

impl Readiness {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Readiness::Ready,
            2 => Readiness::Reconnecting,
            3 => Readiness::Blocked,
            4 => Readiness::Draining,
            5 => Readiness::Degraded,
            6 => Readiness::Unavailable,
            _ => Readiness::Connecting,
        }
    }

    /// The lowercase name reported by `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Connecting => "connecting",
            Readiness::Ready => "ready",
            Readiness::Reconnecting => "reconnecting",
            Readiness::Blocked => "blocked",
            Readiness::Draining => "draining",
            Readiness::Degraded => "degraded",
            Readiness::Unavailable => "unavailable",
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_serving(self) -> bool {
        matches!(self, Readiness::Ready | Readiness::Degraded)
    }
}

/// The process's readiness, shared between its work and its admin server, with an optional
/// detail saying why it is not plainly ready.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    state: AtomicU8,
    detail: Mutex<Option<String>>,
}

impl Health {
    /// A process still connecting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the state. Once draining, the process stays draining.
    pub fn set(&self, state: Readiness) {
        let _ = self
            .0
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != Readiness::Draining as u8).then_some(state as u8)
            });
    }

    /// The current state.
    pub fn get(&self) -> Readiness {
        Readiness::from_u8(self.0.state.load(Ordering::Acquire))
    }

    /// Sets the state and what `/readyz` says about it (`None`: nothing more than the state).
    pub fn set_with(&self, state: Readiness, detail: Option<String>) {
        *self.0.detail.lock().unwrap_or_else(|e| e.into_inner()) = detail;
        self.set(state);
    }

    /// What `/readyz` says after the state, if anything.
    pub fn detail(&self) -> Option<String> {
        self.0
            .detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The admin port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("--admin-addr {addr}: cannot listen: {source}")]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    health: Health,
}

/// Binds the admin server on `addr` (port 0 picks a free port) and serves it until `stop`
/// fires. Returns the bound address, which is also logged.
pub async fn serve_admin(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    stop: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    let app = admin_router(registry, health);
    tracing::info!(admin_addr = %bound, "admin server listening");
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(error) = server.await {
            tracing::error!(%error, "admin server failed");
        }
    });
    Ok(bound)
}

/// The admin routes (`/metrics`, `/healthz`, `/readyz`) as a router, for a process that
/// serves them on a listener of its own (merge it into that server's router).
pub fn admin_router(registry: Registry, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, health })
}

/// Every metric family, or with `?name=FAMILY` (repeatable) only those named: a script or
/// probe that polls one counter often then costs the worker a few lines of rendering instead
/// of every series of every task type (tens of kilobytes).
async fn metrics(State(state): State<AdminState>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let mut families = state.registry.gather();
    let names: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "name")
        .map(|(_, value)| value.into_owned())
        .collect();
    if !names.is_empty() {
        families.retain(|family| names.iter().any(|name| name == family.name()));
    }
    let mut body = Vec::with_capacity(if names.is_empty() { 16 * 1024 } else { 512 });
    let encoder = TextEncoder::new();
    match encoder.encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            e.to_string().into_bytes(),
        ),
    }
}

/// Answering at all proves the runtime schedules tasks.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    let readiness = state.health.get();
    let code = if readiness.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match state.health.detail() {
        Some(detail) if readiness != Readiness::Draining => {
            (code, format!("{}: {detail}\n", readiness.as_str()))
        }
        _ => (code, format!("{}\n", readiness.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_is_final() {
        let health = Health::new();
        assert_eq!(health.get(), Readiness::Connecting);
        health.set(Readiness::Ready);
        health.set(Readiness::Draining);
        health.set(Readiness::Ready);
        assert_eq!(health.get(), Readiness::Draining);
    }
}
