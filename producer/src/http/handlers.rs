//! The `/v1` handlers: validate the whole request, publish, and answer 202 only for tasks
//! the broker confirmed. A batch is published concurrently (its confirms pipelined on the
//! one channel); if any task of it was not confirmed the answer is an error status whose
//! body lists, by index and id, which tasks were confirmed and which were not.

use super::broker::Broker;
use super::error::{publish_failure, ApiError, FieldError, RETRY_AFTER_SECS};
use super::json::JsonBody;
use super::request::{BatchRequest, TaskRequest, ValidTask};
use crate::{PublishError, Publisher};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use warren_common::CallError;

/// What the `/v1` handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) broker: Broker,
    pub(crate) default_queue: Arc<str>,
    pub(crate) max_batch: usize,
    /// Longest `?wait=` of `POST /v1/tasks`.
    pub(crate) max_wait: Duration,
    /// The control stream the control endpoints write to.
    pub(crate) control_stream: Arc<str>,
    /// Readers of the status index, if the server keeps one.
    #[cfg(feature = "status")]
    pub(crate) index: Option<Arc<crate::status::query::Readers>>,
}

/// The answer to an accepted task.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    id: String,
}

/// The answer to an accepted batch: the ids in request order.
#[derive(Debug, Serialize)]
pub(crate) struct BatchAccepted {
    ids: Vec<String>,
}

/// The answer to a batch of which some task was not confirmed.
#[derive(Debug, Serialize)]
pub(crate) struct BatchFailure {
    error: String,
    field: Option<String>,
    /// Tasks the broker confirmed: they are queued and will run.
    confirmed: Vec<Confirmed>,
    /// Tasks not confirmed: assume they were not queued; publish them again (with the same
    /// id, if a duplicate run is acceptable) after the error is resolved.
    not_confirmed: Vec<NotConfirmed>,
}

#[derive(Debug, Serialize)]
struct Confirmed {
    index: usize,
    id: String,
}

#[derive(Debug, Serialize)]
struct NotConfirmed {
    index: usize,
    id: String,
    error: String,
    field: Option<String>,
    kind: &'static str,
    #[serde(skip)]
    status: StatusCode,
}

/// The query of `POST /v1/tasks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishQuery {
    /// Wait this long for the task to end (`30s`), answering with its reply.
    wait: Option<String>,
}

/// `POST /v1/tasks`: publishes one task, answering 202 with its id once confirmed; with
/// `?wait=30s`, 200 with its reply (its result, or why it failed) if it ends within that
/// time, else 202 with its id.
pub(crate) async fn publish_one(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<PublishQuery>, QueryRejection>,
    JsonBody(request): JsonBody<TaskRequest>,
) -> Result<Response, ApiError> {
    let wait = wait_time(query)?.map(|wait| wait.min(app.max_wait));
    let task = request.validate("", &app.default_queue, traceparent(&headers))?;
    let publisher = app.broker.ready().map_err(|e| e.with_id(task.id()))?;
    let not_accepted = |e: PublishError| {
        let e = ApiError::from_publish(&e, &task.queue, "queue").with_id(task.id());
        tracing::warn!(task_id = %task.id(), task = %task.task, queue = %task.queue, error = %e.body.error, "task not accepted");
        e
    };
    let accepted = || {
        let id = task.id().to_owned();
        (StatusCode::ACCEPTED, Json(Accepted { id })).into_response()
    };
    let Some(timeout) = wait else {
        publish(&publisher, &task).await.map_err(not_accepted)?;
        tracing::debug!(task_id = %task.id(), task = %task.task, queue = %task.queue, "task accepted");
        return Ok(accepted());
    };
    let called = publisher.call_named(&task.task, &task.payload, &task.options, timeout);
    match called.await {
        Ok(reply) => {
            let body = reply.to_bytes();
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        // Published, not ended (or its reply cannot come): the task runs all the same.
        Err(CallError::Timeout { .. } | CallError::Disconnected { .. }) => Ok(accepted()),
        Err(CallError::Publish(e)) => Err(not_accepted(e)),
        Err(other) => Err(ApiError::new(StatusCode::BAD_GATEWAY, other.to_string())),
    }
}

/// The `wait` of `POST /v1/tasks?wait=`, whole seconds or milliseconds (`30s`, `500ms`):
/// `None` for no wait (absent, or 0).
fn wait_time(
    query: Result<Query<PublishQuery>, QueryRejection>,
) -> Result<Option<Duration>, FieldError> {
    let Query(query) = query.map_err(|e| FieldError::new("wait", e.body_text()))?;
    let Some(text) = query.wait else {
        return Ok(None);
    };
    let (digits, to_duration): (&str, fn(u64) -> Duration) = match text.strip_suffix("ms") {
        Some(ms) => (ms, Duration::from_millis),
        None => (text.strip_suffix('s').unwrap_or(""), Duration::from_secs),
    };
    let valid = (1..=9).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        let message = format!("wait is not a duration such as 30s or 500ms: {text:?}");
        return Err(FieldError::new("wait", message));
    }
    // Nine digits at most: the number fits.
    let wait = to_duration(digits.parse().unwrap_or(0));
    Ok((!wait.is_zero()).then_some(wait))
}

/// `POST /v1/tasks:batch`: validates every task (any invalid one fails the whole batch
/// with nothing published), publishes them concurrently, and answers 202 with their ids
/// only if every one was confirmed.
pub(crate) async fn publish_batch(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    let count = batch.tasks.len();
    if count == 0 || count > app.max_batch {
        let message = format!("tasks must hold 1 to {} tasks, not {count}", app.max_batch);
        return Err(FieldError::new("tasks", message).into());
    }
    let header = traceparent(&headers);
    let tasks = batch
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.validate(&format!("tasks[{i}]."), &app.default_queue, header))
        .collect::<Result<Vec<_>, _>>()?;
    let results = match app.broker.ready() {
        Ok(publisher) => {
            let publishes = tasks.iter().map(|t| publish(&publisher, t));
            futures::future::join_all(publishes).await
        }
        Err(unavailable) => {
            let failure = BatchFailure::unavailable(&tasks, unavailable);
            return Ok(failure.into_response());
        }
    };
    if results.iter().all(Result::is_ok) {
        tracing::debug!(count, "batch accepted");
        let ids = tasks.iter().map(|t| t.id().to_owned()).collect();
        return Ok((StatusCode::ACCEPTED, Json(BatchAccepted { ids })).into_response());
    }
    let failure = BatchFailure::new(&tasks, results);
    tracing::warn!(
        count,
        not_confirmed = failure.not_confirmed.len(),
        error = %failure.error,
        "batch not fully accepted"
    );
    Ok(failure.into_response())
}

/// Publishes a validated task (a delayed one only to a queue that exists: the publisher
/// checks, see [`Publisher::publish`]).
async fn publish(publisher: &Publisher, task: &ValidTask) -> Result<(), PublishError> {
    publisher
        .publish(&task.task, &task.payload, &task.options)
        .await
        .map(drop)
}

/// The request's `traceparent` header, if it is text (its format is checked later).
fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers.get("traceparent").and_then(|v| v.to_str().ok())
}

impl BatchFailure {
    fn new(tasks: &[ValidTask], results: Vec<Result<(), PublishError>>) -> Self {
        let mut confirmed = Vec::new();
        let mut not_confirmed = Vec::new();
        for (index, (task, result)) in tasks.iter().zip(results).enumerate() {
            let id = task.id().to_owned();
            match result {
                Ok(()) => confirmed.push(Confirmed { index, id }),
                Err(e) => {
                    let field = format!("tasks[{index}].queue");
                    let (status, error, field) = publish_failure(&e, &task.queue, &field);
                    not_confirmed.push(NotConfirmed {
                        index,
                        id,
                        error,
                        field,
                        kind: e.kind(),
                        status,
                    });
                }
            }
        }
        // Called only for a batch with a failure, so `not_confirmed` is not empty.
        let first = &not_confirmed[0];
        let error = format!(
            "{} of {} tasks were not confirmed and must be published again (confirmed: {}); \
             first failure, tasks[{}]: {}",
            not_confirmed.len(),
            tasks.len(),
            confirmed.len(),
            first.index,
            first.error
        );
        BatchFailure {
            error,
            field: None,
            confirmed,
            not_confirmed,
        }
    }

    /// Nothing was published: the broker cannot take tasks now.
    fn unavailable(tasks: &[ValidTask], cause: ApiError) -> Self {
        let not_confirmed = tasks
            .iter()
            .enumerate()
            .map(|(index, task)| NotConfirmed {
                index,
                id: task.id().to_owned(),
                error: cause.body.error.clone(),
                field: None,
                kind: cause.body.kind.unwrap_or("unavailable"),
                status: cause.status,
            })
            .collect();
        BatchFailure {
            error: format!("no task was published: {}", cause.body.error),
            field: None,
            confirmed: Vec::new(),
            not_confirmed,
        }
    }

    /// 503 if any task may succeed when retried; else the first failure's status (422 for
    /// a queue that does not exist).
    fn status(&self) -> StatusCode {
        let statuses = self.not_confirmed.iter().map(|n| n.status);
        let mut retryable = statuses
            .clone()
            .filter(|s| *s == StatusCode::SERVICE_UNAVAILABLE);
        retryable
            .next()
            .or_else(|| statuses.min())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }
}

impl IntoResponse for BatchFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route: POST /v1/tasks or /v1/tasks:batch publish tasks, GET /v1/tasks/{id}, \
         GET /v1/tasks/{id}/timeline and GET /v1/tasks read their status",
    )
}

/// The status routes of a server built without the status index.
#[cfg(not(feature = "status"))]
pub(crate) async fn no_index() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this server keeps no status index: it was built without the `status` feature",
    )
}
