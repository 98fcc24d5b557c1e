//! The control endpoints: `POST /v1/tasks/{id}/cancel`, `POST /v1/queues/{queue}/pause` and
//! `POST /v1/queues/{queue}/resume` write a record to the control stream (through
//! [`crate::Control`], with a confirm) and answer 202 once the broker has it. A cancel also
//! says, when the server keeps a status index that shows the task ended, that the cancel lost
//! the race (`finished_before_cancel`).

use super::error::{ApiError, FieldError};
use super::handlers::AppState;
use crate::{Control, ControlError};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

/// The answer to a cancel.
#[derive(Debug, Serialize)]
pub(crate) struct Cancelled {
    id: String,
    /// When the cancel was made: runs created after it are not cancelled.
    cancelled_at_ms: u64,
    /// When workers forget it.
    expires_ms: u64,
    stream: String,
    /// The ending the index shows (`succeeded`, `dead_lettered`, `expired`) if the task had
    /// already ended: the cancel lost the race. Null when it had not, or the server keeps no
    /// index.
    finished_before_cancel: Option<&'static str>,
}

/// The answer to a pause or resume.
#[derive(Debug, Serialize)]
pub(crate) struct QueueControlled {
    queue: String,
    paused: bool,
    stream: String,
}

/// `POST /v1/tasks/{id}/cancel`.
pub(crate) async fn cancel(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    let Path(id) = id.map_err(|e| FieldError::new("id", e.body_text()))?;
    let control = control(&app)?;
    let cancel = control.cancel(&id).await.map_err(refused)?;
    let finished_before_cancel = ended_state(&app, &id).await;
    let answer = Cancelled {
        id: cancel.id,
        cancelled_at_ms: cancel.at_ms,
        expires_ms: cancel.expires_ms,
        stream: control.stream().to_owned(),
        finished_before_cancel,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `POST /v1/queues/{queue}/pause`.
pub(crate) async fn pause(
    app: State<AppState>,
    queue: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<QueueControlled>), ApiError> {
    set_paused(app, queue, true).await
}

/// `POST /v1/queues/{queue}/resume`.
pub(crate) async fn resume(
    app: State<AppState>,
    queue: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<QueueControlled>), ApiError> {
    set_paused(app, queue, false).await
}

async fn set_paused(
    State(app): State<AppState>,
    queue: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<(StatusCode, Json<QueueControlled>), ApiError> {
    let Path(queue) = queue.map_err(|e| FieldError::new("queue", e.body_text()))?;
    let control = control(&app)?;
    let written = if paused {
        control.pause(&queue).await
    } else {
        control.resume(&queue).await
    };
    written.map_err(refused)?;
    let answer = QueueControlled {
        queue,
        paused,
        stream: control.stream().to_owned(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

fn control(app: &AppState) -> Result<Control, ApiError> {
    let publisher = app.broker.ready()?;
    Ok(Control::new(publisher, app.control_stream.to_string()))
}

/// The answer to a record that was not written.
fn refused(error: ControlError) -> ApiError {
    let (status, field) = match &error {
        ControlError::EmptyId => (StatusCode::BAD_REQUEST, Some("id")),
        ControlError::UnknownQueue(_) => (StatusCode::NOT_FOUND, Some("queue")),
        ControlError::Topology(_) | ControlError::Publish(_) => {
            return ApiError::unavailable(error.to_string())
        }
    };
    let mut answer = ApiError::new(status, error.to_string());
    answer.body.field = field.map(str::to_owned);
    answer
}

/// The ending the status index shows for `id`, if the server keeps one and it shows one.
#[cfg(feature = "status")]
async fn ended_state(app: &AppState, id: &str) -> Option<&'static str> {
    use crate::status::State;
    let readers = app.index.as_ref()?;
    let key = id.to_owned();
    let (found, _) = readers
        .read(move |conn| crate::status::query::get(conn, &key))
        .await
        .ok()?;
    let state = found?.state;
    (state.is_ended() && state != State::Cancelled).then(|| state.as_str())
}

#[cfg(not(feature = "status"))]
async fn ended_state(_: &AppState, _: &str) -> Option<&'static str> {
    None
}
