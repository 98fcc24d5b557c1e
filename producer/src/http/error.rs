//! Error answers of the ingest: every failure is a JSON body `{"error", "field", ...}` with a
//! status that says what the client can do (fix the request, authenticate, retry later),
//! including the ones the framework makes (405).

use crate::PublishError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Seconds a client should wait before retrying after a 503.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

/// A request field that is not acceptable, named as a JSON path (`priority`,
/// `tasks[3].delay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    /// What went wrong, for a person.
    pub(crate) error: String,
    /// The request field at fault (a JSON path), or null.
    pub(crate) field: Option<String>,
    /// The publish failure's kind (`unroutable`, `timeout`, ...), when publishing failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    /// The id the task was given, when it was valid but not confirmed: retry with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
}

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                field: None,
                kind: None,
                id: None,
            },
        }
    }

    /// The broker cannot take tasks now (not connected, reconnecting, blocking publishers).
    pub(crate) fn unavailable(error: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error);
        e.body.kind = Some("unavailable");
        e
    }

    pub(crate) fn with_id(mut self, id: &str) -> Self {
        self.body.id = Some(id.to_owned());
        self
    }

    /// A publish that was not confirmed. `field` names the task's queue field.
    pub(crate) fn from_publish(error: &PublishError, queue: &str, field: &str) -> Self {
        let (status, message, field) = publish_failure(error, queue, field);
        let mut e = ApiError::new(status, message);
        e.body.field = field;
        e.body.kind = Some(error.kind());
        e
    }
}

/// The status, message and faulty field for a publish that failed.
pub(crate) fn publish_failure(
    error: &PublishError,
    queue: &str,
    field: &str,
) -> (StatusCode, String, Option<String>) {
    match error {
        PublishError::Unroutable { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "queue `{queue}` does not exist: no worker (or `warren-producer publish`) has \
                 declared it; the task was not queued"
            ),
            Some(field.to_owned()),
        ),
        PublishError::Envelope(e) => (StatusCode::BAD_REQUEST, e.to_string(), None),
        PublishError::Codec(e) => (StatusCode::BAD_REQUEST, e.to_string(), None),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the task was not confirmed by the broker: {other}"),
            None,
        ),
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, e.message);
        error.body.field = (!e.field.is_empty()).then_some(e.field);
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.status, Json(self.body)).into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// Middleware: an error answer the framework made without a body (a 405 for a method a path
/// does not take, say) gets the documented JSON error body; its headers (`Allow`) are kept.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (parts, _) = response.into_parts();
    let message = match parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
    {
        Some(allow) => format!("{method} is not allowed on {path}; allowed: {allow}"),
        None => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned(),
    };
    let mut answer = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}
