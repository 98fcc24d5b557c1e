//! `GET /v1/workers`: the workers the status index has heard from (their last heartbeat,
//! docs/wire-format.md §11.7), alive ones and those gone within the last hour, with whether
//! and why each is gone. Like the task statuses, an answer is as fresh as the index.

use super::error::{ApiError, FieldError};
use super::handlers::AppState;
use super::status::{index, index_body, rfc3339, unreadable, IndexBody};
use crate::status::query;
use crate::status::workers::{self, WorkerStatus};
use axum::extract::{RawQuery, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;

/// A worker, as answered.
#[derive(Debug, Serialize)]
struct WorkerBody {
    id: String,
    status: &'static str,
    /// `farewell` (it drained) or `silent` (no heartbeat for three intervals); null if alive.
    gone_reason: Option<String>,
    gone_at: Option<String>,
    host: String,
    pid: u32,
    version: String,
    queues: Vec<String>,
    concurrency: u64,
    prefetch: u64,
    running: Vec<String>,
    counts: BTreeMap<String, u64>,
    started_at: String,
    last_heartbeat_at: String,
    heard_at: String,
    heartbeat_interval_ms: u64,
}

/// `GET /v1/workers`.
#[derive(Debug, Serialize)]
struct Listing {
    workers: Vec<WorkerBody>,
    index: IndexBody,
}

/// `GET /v1/workers`: every worker indexed, alive ones first.
pub(crate) async fn list_workers(
    Extract(app): Extract<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let readers = index(&app)?;
    if let Some((key, _)) = form_urlencoded::parse(query.unwrap_or_default().as_bytes()).next() {
        return Err(FieldError::new(key, "is not a parameter: this route takes none").into());
    }
    let (found, freshness) = readers
        .read(|conn| Ok((workers::list(conn)?, query::freshness(conn)?)))
        .await
        .map_err(unreadable)?;
    Ok(Json(Listing {
        workers: found.into_iter().map(worker_body).collect(),
        index: index_body(freshness),
    })
    .into_response())
}

fn worker_body(worker: WorkerStatus) -> WorkerBody {
    let hb = worker.heartbeat;
    WorkerBody {
        id: hb.worker,
        status: worker.status.as_str(),
        gone_reason: worker.gone_reason,
        gone_at: worker.gone_at_ms.map(rfc3339),
        host: hb.host,
        pid: hb.pid,
        version: hb.version,
        queues: hb.queues,
        concurrency: hb.concurrency,
        prefetch: hb.prefetch,
        running: hb.running,
        counts: hb.counts,
        started_at: rfc3339(hb.started_at_ms),
        last_heartbeat_at: rfc3339(hb.at_ms),
        heard_at: rfc3339(worker.heard_at_ms),
        heartbeat_interval_ms: hb.interval_ms,
    }
}
