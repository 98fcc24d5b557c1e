//! The ingest's connection loop: HTTP/1.1 connections served by hyper, at most
//! `max_connections` at a time, each under the deadlines of `conn`; a drain stops accepting,
//! lets every connection finish the request it is handling, and waits for them.
//!
//! Past the limit, connections are not accepted: they wait in the listener's backlog and are
//! served as earlier ones close, rather than being refused outright, so a short burst costs
//! clients a little latency and no errors.

use super::conn::{Clock, TimedIo};
use crate::defaults::ingest as defaults;
use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long connections may take and how many are served at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time from a connection's opening (or the first byte of its next request) to the end
    /// of the request's head.
    pub header_read_timeout: Duration,
    /// Time from the end of a `/v1` request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    /// The limits of `crate::defaults::ingest`.
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            body_read_timeout: defaults::BODY_READ_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `drain` fires, then waits for the connections' requests
/// in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    drain: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = drain.cancelled() => break,
        };
        // The semaphore is never closed, so a slot always comes.
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    pause_after(e).await;
                    continue;
                }
            },
            _ = drain.cancelled() => break,
        };
        let (app, drain) = (app.clone(), drain.clone());
        connections.spawn(async move {
            serve_connection(stream, app, limits, drain).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection that went away before it was accepted is nothing; anything
/// else (out of file descriptors) is logged and waited out rather than spun on.
async fn pause_after(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %error, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    drain: CancellationToken,
) {
    let clock = Clock::new(limits.header_read_timeout, limits.idle_timeout);
    let io = TokioIo::new(TimedIo::new(stream, clock.clone()));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        clock.request_started();
        let (app, clock) = (app.clone(), clock.clone());
        async move {
            let response = app.oneshot(request.map(Body::new)).await;
            clock.answer_ready();
            response
        }
    });
    let connection = http1::Builder::new().serve_connection(io, service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = drain.cancelled() => {
            // Finishes the request in flight, if any, then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection closed with an error");
    }
}
