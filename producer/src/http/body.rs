//! Reading a `/v1` request's body under two limits before any handler sees it: its size (a
//! declared `Content-Length` over the limit is answered 413 without reading a byte) and its
//! time (the whole body must arrive within the body-read timeout, else 408). Both answers
//! close the connection, since the rest of the body was never read.
//!
//! A per-read timeout would not do: a client sending a byte a second keeps every read short
//! while pinning a buffer for as long as it likes.

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::time::Duration;

/// The size and time allowed for one request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub(crate) max_bytes: usize,
    pub(crate) read_timeout: Duration,
}

/// Middleware: buffers the body within [`BodyLimits`], or answers 413 or 408.
pub(crate) async fn read_within_limits(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(limits.read_timeout, collect(body, limits.max_bytes)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(Unreadable::TooLarge)) => too_large(limits.max_bytes),
        Ok(Err(Unreadable::Failed(e))) => {
            let message = format!("the request body could not be read: {e}");
            closing(ApiError::new(StatusCode::BAD_REQUEST, message))
        }
        Err(_) => {
            let secs = limits.read_timeout.as_secs_f64();
            let message = format!("the request body did not arrive within {secs} s");
            closing(ApiError::new(StatusCode::REQUEST_TIMEOUT, message))
        }
    }
}

enum Unreadable {
    TooLarge,
    Failed(axum::Error),
}

/// The whole body, refused as soon as it grows over `max` (a chunked body declares no length).
async fn collect(body: Body, max: usize) -> Result<Bytes, Unreadable> {
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Unreadable::Failed)?;
        if buffer.len() + chunk.len() > max {
            return Err(Unreadable::TooLarge);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

fn too_large(max: usize) -> Response {
    let message = format!("the request body is larger than the limit of {max} bytes");
    closing(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message))
}

/// An error answer after which the connection closes: the unread rest of the body would
/// otherwise be taken for the next request.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
