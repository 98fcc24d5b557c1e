//! The console's actions. Each is a `GET` that shows what will happen and asks to confirm,
//! and a `POST` of that form (with its CSRF token) that does it and redirects to the page
//! concerned, where a message says what happened. They are the CLI's operations, not copies:
//! pause, resume and cancel write through [`crate::Control`]; replay and purge are
//! [`crate::DeadLetterQueue`]'s passes, run as background jobs ([`super::jobs`]).

use super::jobs::JobKind;
use super::layout::{self, Viewer};
use super::queue::DeadFilter;
use super::security::{check_csrf, encode, field, form_fields, refuse, Refusal};
use super::Shared;
use crate::{Control, DeadLetterQueue, Selection};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
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
            get(confirm_replay).post(replay),
        )
        .route(
            "/console/queues/{queue}/purge",
            get(confirm_purge).post(purge),
        )
}

/// Refuses when actions are off.
fn allowed(viewer: &Viewer) -> Result<(), Refusal> {
    if viewer.actions {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::FORBIDDEN,
        "Actions are not enabled on this console (serve --console-actions, with --auth-token-file).",
    ))
}

/// Checks a POST: actions on, and its CSRF token; returns its fields.
fn posted(viewer: &Viewer, body: &Bytes) -> Result<Vec<(String, String)>, Refusal> {
    allowed(viewer)?;
    let fields = form_fields(body);
    check_csrf(viewer, field(&fields, "csrf"))?;
    Ok(fields)
}

/// Redirects to `to`, which will show `message` once.
fn done(console: &Shared, to: &str, message: String) -> Response {
    let key = console.jobs.say(message);
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}done={key}")).into_response()
}

fn queue_page(queue: &str) -> String {
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

/// What a replay or purge acts on: the dead letters ticked, or all that match the filters.
enum Chosen {
    Ids(Vec<String>),
    Matching(DeadFilter),
}

impl Chosen {
    fn from_fields(fields: &[(String, String)], raw: &str) -> Option<Chosen> {
        let ids: Vec<String> = fields
            .iter()
            .filter(|(k, v)| k == "id" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect();
        if !ids.is_empty() {
            return Some(Chosen::Ids(ids));
        }
        (field(fields, "all") == Some("1")).then(|| Chosen::Matching(DeadFilter::parse(raw)))
    }

    fn describe(&self) -> String {
        match self {
            Chosen::Ids(ids) if ids.len() == 1 => format!("dead letter {}", ids[0]),
            Chosen::Ids(ids) => format!("{} selected dead letters", ids.len()),
            Chosen::Matching(filter) => filter.describe(),
        }
    }

    /// The form fields that choose the same again.
    fn hidden(&self) -> Vec<(&str, String)> {
        match self {
            Chosen::Ids(ids) => ids.iter().map(|id| ("id", id.clone())).collect(),
            Chosen::Matching(filter) => {
                let mut fields = vec![("all", "1".to_owned())];
                fields.extend(filter.task.clone().map(|t| ("task", t)));
                fields.extend(filter.kind.clone().map(|k| ("kind", k)));
                fields
            }
        }
    }
}

async fn confirm_replay(viewer: Viewer, path: Path<String>, raw: RawQuery) -> Response {
    confirm_job(viewer, path, raw, JobKind::Replay)
}

async fn confirm_purge(viewer: Viewer, path: Path<String>, raw: RawQuery) -> Response {
    confirm_job(viewer, path, raw, JobKind::Purge)
}

fn confirm_job(
    viewer: Viewer,
    Path(queue): Path<String>,
    RawQuery(raw): RawQuery,
    kind: JobKind,
) -> Response {
    if let Err(refused) = allowed(&viewer) {
        return refused.into_response();
    }
    let raw = raw.unwrap_or_default();
    let fields = form_fields(&Bytes::from(raw.clone()));
    let Some(chosen) = Chosen::from_fields(&fields, &raw) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Nothing selected: tick some dead letters, or use \"all matching\".",
        );
    };
    let what = chosen.describe();
    let (title, verb, path, consequence) = match kind {
        JobKind::Replay => ("Replay dead letters", "Replay", "replay", "Each is published again to the queue it came from, as the next attempt, and leaves the dead-letter queue once the broker has confirmed it."),
        JobKind::Purge => ("Purge dead letters", "Purge", "purge", "They are deleted from the dead-letter queue for good."),
    };
    let question = html! {
        (verb) " " strong { (what) } " of queue " strong { (queue) } "? " (consequence)
        " It runs in the background as one pass over the dead-letter queue; the queue's page shows its progress."
    };
    let hidden = chosen.hidden();
    let hidden: Vec<(&str, &str)> = hidden.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let action = format!("{}/{path}", queue_page(&queue));
    layout::confirm(
        &viewer,
        title,
        question,
        &action,
        &hidden,
        &queue_page(&queue),
    )
    .into_response()
}

async fn replay(
    console: Extract<Shared>,
    viewer: Viewer,
    queue: Path<String>,
    body: Bytes,
) -> Response {
    start_job(console, viewer, queue, body, JobKind::Replay).await
}

async fn purge(
    console: Extract<Shared>,
    viewer: Viewer,
    queue: Path<String>,
    body: Bytes,
) -> Response {
    start_job(console, viewer, queue, body, JobKind::Purge).await
}

async fn start_job(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    Path(queue): Path<String>,
    body: Bytes,
    kind: JobKind,
) -> Response {
    let fields = match posted(&viewer, &body) {
        Ok(fields) => fields,
        Err(refused) => return refused.into_response(),
    };
    let raw = String::from_utf8_lossy(&body).into_owned();
    let Some(chosen) = Chosen::from_fields(&fields, &raw) else {
        return refuse(StatusCode::BAD_REQUEST, "Nothing selected.");
    };
    let dlq = match open(&console, &queue).await {
        Ok(dlq) => dlq,
        Err(refused) => return refused.into_response(),
    };
    let what = chosen.describe();
    let started = console
        .jobs
        .start(&queue, kind, what.clone(), move |progress| {
            let dlq = dlq.with_progress(progress);
            async move {
                match (kind, chosen) {
                    (JobKind::Replay, Chosen::Ids(ids)) => {
                        dlq.replay(&Selection::Ids(ids), false).await
                    }
                    (JobKind::Replay, Chosen::Matching(f)) => {
                        dlq.replay(&Selection::Matching(f.selection()), false).await
                    }
                    (JobKind::Purge, Chosen::Ids(ids)) => {
                        dlq.purge(&crate::Filter {
                            ids,
                            ..crate::Filter::default()
                        })
                        .await
                    }
                    (JobKind::Purge, Chosen::Matching(f)) => dlq.purge(&f.selection()).await,
                }
            }
        });
    match started {
        Ok(()) => {
            let verb = match kind {
                JobKind::Replay => "Replaying",
                JobKind::Purge => "Purging",
            };
            tracing::info!(%queue, %what, "console: {verb} dead letters");
            done(
                &console,
                &queue_page(&queue),
                format!("{verb} {what} of `{queue}` in the background."),
            )
        }
        Err(refusal) => refuse(StatusCode::CONFLICT, &refusal),
    }
}

/// The dead-letter queue of `queue`, as the CLI opens it: the ingest's exchange and
/// retention, and the events stream for the broker's own dead letters.
async fn open(console: &Shared, queue: &str) -> Result<DeadLetterQueue, Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| {
        Refusal::new(StatusCode::BAD_GATEWAY, format!("Nothing was done: {e}"))
    };
    let publisher = console
        .app
        .broker
        .ready()
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.body.error))?;
    let dlq = DeadLetterQueue::open(&publisher, queue, &console.exchange)
        .await
        .map_err(|e| unavailable(&e))?
        .with_max_age(console.retention.max_age);
    match &console.events_stream {
        Some(stream) => {
            let source = format!("console-{}", std::process::id());
            dlq.record_broker_dead_letters(stream, &source)
                .await
                .map_err(|e| unavailable(&e))
        }
        None => Ok(dlq),
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
