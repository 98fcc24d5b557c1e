//! The admin HTTP server every Warren process runs: `/metrics` (Prometheus text format;
//! `?name=FAMILY`, repeatable, renders only those families), `/healthz` (the process and its
//! runtime answer) and `/readyz` (connected and working).

use crate::{Health, Readiness};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
