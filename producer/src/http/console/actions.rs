//! The console's actions. Each is a `GET` that shows what will happen and asks to confirm,
//! and a `POST` of that form (with its CSRF token) that does it and redirects to the page
//! concerned, where a message says what happened. They are the CLI's operations, not copies:
//! pause, resume and cancel write through [`crate::Control`]; replay and purge are
//! [`crate::DeadLetterQueue`]'s passes, run as background jobs ([`super::replay`]).

use super::layout::{self, Viewer};
use super::replay;
use super::security::{check_csrf, encode, field, form_fields, refuse, Refusal};
use super::Shared;
use crate::Control;
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::html;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/console/queues/{queue}/pause",
            get(confirm_pause).post(pause),
        )
        .route(
            "/console/queues/{queue}/resume",
            get(confirm_resume).post(resume),
        )
        .route(
            "/console/tasks/{id}/cancel",
            get(confirm_cancel).post(cancel),
        )
        .route(
            "/console/queues/{queue}/replay",
            get(replay::confirm_replay).post(replay::replay),
        )
        .route(
            "/console/queues/{queue}/purge",
            get(replay::confirm_purge).post(replay::purge),
        )
}

/// Refuses when actions are off.
pub(crate) fn allowed(viewer: &Viewer) -> Result<(), Refusal> {
    if viewer.actions {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::FORBIDDEN,
        "Actions are not enabled on this console (serve --console-actions, with --auth-token-file).",
    ))
}

/// Checks a POST: actions on, and its CSRF token; returns its fields.
pub(crate) fn posted(viewer: &Viewer, body: &Bytes) -> Result<Vec<(String, String)>, Refusal> {
    allowed(viewer)?;
    let fields = form_fields(body);
    check_csrf(viewer, field(&fields, "csrf"))?;
    Ok(fields)
}

/// Redirects to `to`, which will show `message` once.
pub(crate) fn done(console: &Shared, to: &str, message: String) -> Response {
    let key = console.jobs.say(message);
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}done={key}")).into_response()
}

pub(crate) fn queue_page(queue: &str) -> String {
    format!("/console/queues/{}", encode(queue))
}

fn control(console: &Shared) -> Result<Control, Refusal> {
    let publisher = console
        .app
        .broker
        .ready()
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.body.error))?;
    Ok(Control::new(
        publisher,
        console.app.control_stream.to_string(),
    ))
}

async fn confirm_pause(viewer: Viewer, Path(queue): Path<String>) -> Response {
    confirm_paused(viewer, queue, true)
}

async fn confirm_resume(viewer: Viewer, Path(queue): Path<String>) -> Response {
    confirm_paused(viewer, queue, false)
}

fn confirm_paused(viewer: Viewer, queue: String, paused: bool) -> Response {
    if let Err(refused) = allowed(&viewer) {
        return refused.into_response();
    }
    let (title, question) = if paused {
        (
            "Pause queue",
            html! {
                "Pause " strong { (queue) } "? Every worker stops taking its tasks until it is resumed; "
                "running tasks finish, and tasks already delivered go back to the queue."
            },
        )
    } else {
        (
            "Resume queue",
            html! { "Resume " strong { (queue) } "? Workers take its tasks again." },
        )
    };
    let action = format!(
        "{}/{}",
        queue_page(&queue),
        if paused { "pause" } else { "resume" }
    );
    layout::confirm(&viewer, title, question, &action, &[], &queue_page(&queue)).into_response()
}

async fn pause(
    console: Extract<Shared>,
    viewer: Viewer,
    queue: Path<String>,
    body: Bytes,
) -> Response {
    set_paused(console, viewer, queue, body, true).await
}

async fn resume(
    console: Extract<Shared>,
    viewer: Viewer,
    queue: Path<String>,
    body: Bytes,
) -> Response {
    set_paused(console, viewer, queue, body, false).await
}

async fn set_paused(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    Path(queue): Path<String>,
    body: Bytes,
    paused: bool,
) -> Response {
    if let Err(refused) = posted(&viewer, &body) {
        return refused.into_response();
    }
    let control = match control(&console) {
        Ok(control) => control,
        Err(refused) => return refused.into_response(),
    };
    let written = if paused {
        control.pause(&queue).await
    } else {
        control.resume(&queue).await
    };
    match written {
        Ok(_) => {
            let verb = if paused { "paused" } else { "resumed" };
            tracing::info!(%queue, action = verb, "console: queue {verb}");
            let message = format!(
                "{} `{queue}`: workers following `{}` act on it within seconds.",
                capitalised(verb),
                control.stream()
            );
            done(&console, &queue_page(&queue), message)
        }
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            &format!("Nothing was changed: {e}"),
        ),
    }
}

async fn confirm_cancel(viewer: Viewer, Path(id): Path<String>) -> Response {
    if let Err(refused) = allowed(&viewer) {
        return refused.into_response();
    }
    let page = format!("/console/tasks/{}", encode(&id));
    let question = html! {
        "Cancel task " span.mono { (id) } "? Workers will not run it (it is acked and recorded as cancelled), "
        "a running handler is stopped, and it is not retried. A republish of it later runs."
    };
    layout::confirm(
        &viewer,
        "Cancel task",
        question,
        &format!("{page}/cancel"),
        &[],
        &page,
    )
    .into_response()
}

async fn cancel(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(refused) = posted(&viewer, &body) {
        return refused.into_response();
    }
    let control = match control(&console) {
        Ok(control) => control,
        Err(refused) => return refused.into_response(),
    };
    match control.cancel(&id).await {
        Ok(_) => {
            tracing::info!(task_id = %id, "console: task cancelled");
            let message = format!("Cancelled task {id}: workers stop it or skip it when it arrives; its status shows `cancelled` once a worker has.");
            done(
                &console,
                &format!("/console/tasks/{}", encode(&id)),
                message,
            )
        }
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            &format!("The task was not cancelled: {e}"),
        ),
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
