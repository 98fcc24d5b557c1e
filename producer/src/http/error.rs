//! Error answers of the ingest: every failure is a JSON body `{"error", "field", ...}` with a
//! status that says what the client can do (fix the request, authenticate, retry later), and
//! the JSON extractor that turns axum's rejections (malformed JSON, a body over the limit, a
//! wrong content type) into that shape.

use crate::PublishError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

/// A JSON body deserialized into `T`, with every failure answered as an [`ApiError`] that
/// names the field at fault.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<Value>::from_request(req, state)
            .await
            .map_err(rejection)?;
        serde_path_to_error::deserialize(value)
            .map(JsonBody)
            .map_err(|e| {
                let inner = e.inner().to_string();
                let field = field_of(&e.path().to_string(), &inner);
                let message = match field.as_str() {
                    "" => format!("the request body does not match the schema: {inner}"),
                    field => format!("{field}: {inner}"),
                };
                FieldError::new(field, message).into()
            })
    }
}

fn rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the limit".to_owned(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "the request body must be JSON with `Content-Type: application/json`".to_owned()
        }
        _ => rejection.body_text(),
    };
    ApiError::new(status, message)
}

/// The field a deserialization error is about: its path, or for an error on an object
/// itself (a missing field) the field named in serde's message appended to it.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .into_iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => String::new(),
        // An unknown field's path already ends with it.
        (path, Some(name)) if path != name && !path.ends_with(&format!(".{name}")) => {
            format!("{path}.{name}")
        }
        (path, _) => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_from_serde_errors() {
        assert_eq!(field_of("priority", "invalid type"), "priority");
        assert_eq!(field_of(".", "missing field `tasks`"), "tasks");
        assert_eq!(
            field_of("dealy", "unknown field `dealy`, expected"),
            "dealy"
        );
        assert_eq!(
            field_of("tasks[2].x", "unknown field `x`, expected ..."),
            "tasks[2].x"
        );
        assert_eq!(
            field_of("tasks[2]", "missing field `task`"),
            "tasks[2].task"
        );
        assert_eq!(field_of("tasks[2].delay", "bad"), "tasks[2].delay");
    }
}
