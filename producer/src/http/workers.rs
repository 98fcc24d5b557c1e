//! `GET /v1/workers`: the workers the status index has heard from (their last heartbeat,
//! docs/wire-format.md §11.7), alive ones and those gone within the last hour, with whether
//! and why each is gone. Like the task statuses, an answer is as fresh as the index.

use super::error::{ApiError, FieldError};
use super::handlers::AppState;
use super::status::{index, index_body, unreadable};
use crate::status::api::{Timestamp, Worker, WorkerList};
use crate::status::query;
use crate::status::workers::{self, WorkerStatus};
use axum::extract::{RawQuery, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;

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
    Ok(Json(WorkerList {
        workers: found.into_iter().map(worker_body).collect(),
        index: index_body(freshness, &readers),
    })
    .into_response())
}

fn worker_body(worker: WorkerStatus) -> Worker {
    let hb = worker.heartbeat;
    let time = Timestamp::from_millis;
    Worker {
        id: hb.worker,
        status: worker.status,
        gone_reason: worker.gone_reason,
        gone_at: worker.gone_at_ms.map(time),
        host: hb.host,
        pid: hb.pid,
        version: hb.version,
        queues: hb.queues,
        concurrency: hb.concurrency,
        prefetch: hb.prefetch,
        running: hb.running,
        counts: hb.counts,
        started_at: time(hb.started_at_ms),
        last_heartbeat_at: time(hb.at_ms),
        heard_at: time(worker.heard_at_ms),
        heartbeat_interval_ms: hb.interval_ms,
    }
}
