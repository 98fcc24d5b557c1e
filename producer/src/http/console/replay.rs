//! Replaying and purging dead letters from the console: the confirmation page says which dead
//! letters (the ticked ones, or all that match the page's filters) and what will happen; the
//! confirmed form starts the CLI's own pass ([`crate::DeadLetterQueue`]) as a background job
//! of the queue ([`super::jobs`]), and the queue's page shows its progress.

use super::actions::{allowed, done, posted, queue_page};
use super::jobs::JobKind;
use super::layout::{self, Viewer};
use super::queue::DeadFilter;
use super::security::{field, form_fields, refuse, Refusal};
use super::Shared;
use crate::{DeadLetterQueue, Selection};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

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

pub(crate) async fn confirm_replay(viewer: Viewer, path: Path<String>, raw: RawQuery) -> Response {
    confirm_job(viewer, path, raw, JobKind::Replay)
}

pub(crate) async fn confirm_purge(viewer: Viewer, path: Path<String>, raw: RawQuery) -> Response {
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

pub(crate) async fn replay(
    console: Extract<Shared>,
    viewer: Viewer,
    queue: Path<String>,
    body: Bytes,
) -> Response {
    start_job(console, viewer, queue, body, JobKind::Replay).await
}

pub(crate) async fn purge(
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
