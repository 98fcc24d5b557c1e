//! The read side of `/v1`: `GET /v1/tasks/{id}` answers a task's status from the status
//! index, `GET /v1/tasks/{id}/timeline` every event of it, `GET /v1/tasks` lists statuses, newest change first, filtered and paged by an opaque
//! cursor. Every answer says how complete and how fresh the index is, because it is
//! eventually consistent: an id just published is `unknown` until its first event arrives,
//! which is why `unknown` is a 200 like any other state, not a 404 (a client cannot tell
//! "not yet" from "never", and neither can the server).

use super::error::{ApiError, FieldError};
use super::handlers::AppState;
use super::time::parse_rfc3339_ms;
use crate::defaults::index as defaults;
use crate::status::api::{
    IndexState, TaskError, TaskList, TaskStatus, TaskTimeline, TimelineEvent, Timestamp,
};
use crate::status::history::{self, TimelineEntry};
use crate::status::query::TaskStatus as IndexedStatus;
use crate::status::query::{self, Cursor, Filter, Freshness, Page, Readers};
use crate::status::State;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashSet;
use std::sync::Arc;

/// `GET /v1/tasks/{id}`: 200 with the status, `unknown` when the index has no event of it.
pub(crate) async fn get_task(
    Extract(app): Extract<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let readers = index(&app)?;
    let Path(id) = id.map_err(|e| FieldError::new("id", e.body_text()))?;
    let key = id.clone();
    let (found, fresh) = readers
        .read(move |conn| query::get(conn, &key))
        .await
        .map_err(unreadable)?;
    let index = index_body(fresh, &readers);
    let answer = match found {
        Some(status) => TaskStatus {
            index: Some(index),
            ..status_body(status)
        },
        None => TaskStatus::unknown(id, index),
    };
    Ok(Json(answer).into_response())
}

/// `GET /v1/tasks/{id}/timeline`: 200 with the task's events in rank order, none when the
/// index has no event of it (as `unknown` is a 200 for its status).
pub(crate) async fn get_timeline(
    Extract(app): Extract<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let readers = index(&app)?;
    let Path(id) = id.map_err(|e| FieldError::new("id", e.body_text()))?;
    let key = id.clone();
    let (entries, fresh) = readers
        .read(move |conn| {
            // One snapshot for the events and the index's state.
            let tx = conn.unchecked_transaction()?;
            let entries = history::timeline(&tx, &key)?;
            let fresh = query::freshness(&tx)?;
            tx.finish()?;
            Ok((entries, fresh))
        })
        .await
        .map_err(unreadable)?;
    Ok(Json(TaskTimeline {
        id,
        events: entries.into_iter().map(timeline_event).collect(),
        index: index_body(fresh, &readers),
    })
    .into_response())
}

fn timeline_event(entry: TimelineEntry) -> TimelineEvent {
    TimelineEvent {
        event: entry.event,
        attempt: entry.attempt,
        delivery_count: entry.delivery_count,
        replays: entry.replays.unwrap_or(0),
        worker: entry.worker,
        at: Timestamp::from_millis(entry.at_ms),
        error: entry.error.map(|(kind, reason)| TaskError { kind, reason }),
        retry_at: entry.retry_at_ms.map(Timestamp::from_millis),
        duration_ms: entry.duration_ms,
    }
}

/// `GET /v1/tasks?state=&task=&queue=&since=&limit=&cursor=`: a page of statuses.
pub(crate) async fn list_tasks(
    Extract(app): Extract<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let readers = index(&app)?;
    let filter = filter(query.as_deref().unwrap_or(""))?;
    let Page {
        tasks,
        next,
        freshness,
    } = readers
        .read(move |conn| query::list(conn, &filter))
        .await
        .map_err(unreadable)?;
    Ok(Json(TaskList {
        // Payload copies are for one task's answer; a page of them would be large.
        tasks: tasks
            .into_iter()
            .map(|task| TaskStatus {
                payload: None,
                ..status_body(task)
            })
            .collect(),
        next_cursor: next.map(|c| c.encode()),
        index: index_body(freshness, &readers),
    })
    .into_response())
}

pub(super) fn index(app: &AppState) -> Result<Arc<Readers>, ApiError> {
    app.index.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server keeps no status index: start it with --events-stream and --index",
        )
    })
}

pub(super) fn unreadable(error: rusqlite::Error) -> ApiError {
    tracing::error!(%error, "cannot read the status index");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the status index cannot be read: {error}"),
    )
}

/// The listing's query parameters; each at most once, none unknown.
fn filter(query: &str) -> Result<Filter, FieldError> {
    let mut filter = Filter {
        limit: defaults::PAGE,
        ..Filter::default()
    };
    let mut seen = HashSet::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(key.clone()) {
            return Err(FieldError::new(key, "is given more than once"));
        }
        let value = value.into_owned();
        match key.as_ref() {
            "state" => {
                let state = State::parse(&value).filter(|s| *s != State::Unknown);
                filter.state = Some(state.ok_or_else(|| {
                    FieldError::new(
                        "state",
                        format!(
                            "`{value}` is not a state: published, running, lost, retrying, \
                             succeeded, dead_lettered, expired or cancelled"
                        ),
                    )
                })?);
            }
            "task" => filter.task = Some(value),
            "queue" => filter.queue = Some(value),
            "since" => {
                let since = parse_rfc3339_ms(&value).map_err(|_| {
                    FieldError::new(
                        "since",
                        format!(
                            "`{value}` is not an RFC 3339 time with a zone, e.g. \
                             2026-12-01T09:00:00Z"
                        ),
                    )
                })?;
                filter.since_ms = Some(since);
            }
            "limit" => {
                let limit = value.parse::<usize>().ok();
                filter.limit = limit
                    .filter(|l| (1..=defaults::MAX_PAGE).contains(l))
                    .ok_or_else(|| {
                        let max = defaults::MAX_PAGE;
                        FieldError::new("limit", format!("must be from 1 to {max}, not `{value}`"))
                    })?;
            }
            "cursor" => {
                filter.after = Some(Cursor::decode(&value).ok_or_else(|| {
                    FieldError::new("cursor", "is not a cursor: pass a `next_cursor` as given")
                })?);
            }
            other => {
                return Err(FieldError::new(
                    other,
                    "is not a parameter: state, task, queue, since, limit and cursor are",
                ))
            }
        }
    }
    Ok(filter)
}

fn status_body(status: IndexedStatus) -> TaskStatus {
    let time = Timestamp::from_millis;
    TaskStatus {
        id: status.id,
        state: status.state,
        task: Some(status.task),
        queue: Some(status.queue),
        attempt: status.attempt,
        delivery_count: status.delivery_count,
        worker: Some(status.worker),
        updated_at: Some(time(status.updated_at_ms)),
        started_at: status.started_at_ms.map(time),
        ended_at: status.ended_at_ms.map(time),
        retry_at: status.retry_at_ms.map(time),
        error: status
            .error
            .map(|(kind, reason)| TaskError { kind, reason }),
        // The index holds what a worker wrote as JSON; text that is not JSON (a file edited
        // by hand) is shown as no result, not as an error.
        result: status
            .result
            .and_then(|json| serde_json::from_str(&json).ok()),
        result_error: status.result_error,
        replays: Some(status.replays.unwrap_or(0)),
        published_at: status.published_at_ms.map(time),
        payload: status
            .payload
            .and_then(|stored| serde_json::from_str(&stored).ok()),
        index: None,
    }
}

pub(super) fn index_body(fresh: Freshness, readers: &Readers) -> IndexState {
    IndexState {
        incomplete_since: fresh.incomplete_since_ms.map(Timestamp::from_millis),
        events_until: fresh.last_event_at_ms.map(Timestamp::from_millis),
        caught_up: readers.caught_up(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_checked_one_by_one() {
        let f = filter("state=retrying&task=t&queue=q&since=2026-01-01T00:00:00Z&limit=5").unwrap();
        assert_eq!(f.state, Some(State::Retrying));
        assert_eq!(
            (f.task.as_deref(), f.queue.as_deref()),
            (Some("t"), Some("q"))
        );
        assert_eq!((f.since_ms, f.limit), (Some(1_767_225_600_000), 5));
        assert_eq!(filter("").unwrap().limit, defaults::PAGE);
        for (query, field) in [
            ("state=unknown", "state"),
            ("state=done", "state"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("since=yesterday", "since"),
            ("cursor=nope", "cursor"),
            ("task=a&task=b", "task"),
            ("colour=red", "colour"),
        ] {
            assert_eq!(filter(query).unwrap_err().field, field, "{query}");
        }
    }
}
