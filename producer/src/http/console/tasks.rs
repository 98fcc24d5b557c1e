//! The tasks: `/console/tasks` finds one by id or lists them by state, task name, queue and
//! time, newest change first, a page at a time; `/console/tasks/{id}` shows one task: its
//! status, its timeline, the copy of its payload, its result, and a cancel button while it
//! can still be cancelled.

use super::format::{ago, count, duration, maybe_time, pretty_json, time};
use super::layout::{self, badge, Flash, Section, Viewer};
use super::security::encode;
use super::security::Refusal;
use super::Shared;
use crate::status::history::{self, TimelineEntry};
use crate::status::query::{self, Cursor, Filter, Page, TaskStatus};
use crate::status::State;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use warren_common::events::PayloadCopy;

/// Tasks per page of a listing.
const PAGE: usize = 50;

/// The filters of a listing, as the form sent them.
#[derive(Default)]
struct Query {
    id: Option<String>,
    state: Option<String>,
    task: Option<String>,
    queue: Option<String>,
    /// A time, as `<input type="datetime-local">` sends it (UTC) or in RFC 3339.
    since: Option<String>,
    cursor: Option<String>,
}

impl Query {
    fn parse(raw: Option<String>) -> Query {
        let mut query = Query::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
            match &*key {
                "id" => query.id = value,
                "state" => query.state = value,
                "task" => query.task = value,
                "queue" => query.queue = value,
                "since" => query.since = value,
                "cursor" => query.cursor = value,
                _ => {}
            }
        }
        query
    }

    /// The query string of the same listing from `cursor`.
    fn with_cursor(&self, cursor: &Cursor) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("state", &self.state),
            ("task", &self.task),
            ("queue", &self.queue),
        ] {
            if let Some(value) = value {
                out.append_pair(key, value);
            }
        }
        out.append_pair("cursor", &cursor.encode());
        out.finish()
    }
}

/// `GET /console/tasks`.
pub(crate) async fn list(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    flash: Option<Flash>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refusal> {
    let query = Query::parse(raw);
    if let Some(id) = &query.id {
        return Ok(Redirect::to(&format!("/console/tasks/{}", encode(id))).into_response());
    }
    let readers = layout::readers(&console)?;
    let state = match query.state.as_deref().map(State::parse) {
        Some(None) => {
            let message = "Unknown state: pick one from the list.";
            return Err(Refusal::new(StatusCode::BAD_REQUEST, message));
        }
        Some(state) => state,
        None => None,
    };
    let since_ms = match query.since.as_deref().map(since_ms) {
        Some(None) => {
            let message = "The time is not one the form gives, such as 2026-12-07T09:30, in UTC.";
            return Err(Refusal::new(StatusCode::BAD_REQUEST, message));
        }
        Some(since) => since,
        None => None,
    };
    let filter = Filter {
        state,
        task: query.task.clone(),
        queue: query.queue.clone(),
        since_ms,
        limit: PAGE,
        after: query.cursor.as_deref().and_then(Cursor::decode),
    };
    let page = readers
        .read(move |conn| query::list(conn, &filter))
        .await
        .map_err(layout::unreadable)?;
    let now = warren_common::now_ms();
    let problems = layout::index_problems(&page.freshness, readers.caught_up(), now);
    let live = html! {
        h1 { "Tasks" }
        (layout::problems(&problems))
        (filters(&query))
        (task_table(&page, now))
        @if let Some(next) = &page.next {
            p.pager { a #next-page href={ "/console/tasks?" (query.with_cursor(next)) } { "Older tasks" } }
        }
    };
    Ok(layout::page(&viewer, "Tasks", Section::Tasks, flash, live).into_response())
}

/// A time as the form's `datetime-local` field sends it (`2026-12-07T09:30`, with or without
/// seconds), taken as UTC, or any RFC 3339 time.
fn since_ms(text: &str) -> Option<u64> {
    use crate::http::time::parse_rfc3339_ms;
    [text.to_owned(), format!("{text}Z"), format!("{text}:00Z")]
        .iter()
        .find_map(|t| parse_rfc3339_ms(t).ok())
}

fn filters(query: &Query) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    html! {
        form.filters method="get" action="/console/tasks" {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for state in State::INDEXED {
                        option value=(state.as_str()) selected[query.state.as_deref() == Some(state.as_str())] {
                            (state.as_str().replace('_', " "))
                        }
                    }
                }
            }
            label { "Task" input type="text" name="task" value=(value(&query.task)); }
            label { "Queue" input type="text" name="queue" value=(value(&query.queue)); }
            label { "Changed since (UTC)" input type="datetime-local" name="since" step="1" value=(value(&query.since)); }
            button type="submit" { "List" }
        }
    }
}

fn task_table(page: &Page, now: u64) -> Markup {
    html! {
        @if page.tasks.is_empty() {
            p.muted #no-tasks { "No task matches." }
        } @else {
            table #tasks {
                thead { tr { th { "Id" } th { "State" } th { "Task" } th { "Queue" } th.num { "Attempt" } th { "Last change" } } }
                tbody {
                    @for task in &page.tasks {
                        tr {
                            td.id { a href={ "/console/tasks/" (encode(&task.id)) } { (task.id) } }
                            td { (badge(task.state.as_str())) }
                            td { (task.task) }
                            td { a href={ "/console/queues/" (encode(&task.queue)) } { (task.queue) } }
                            td.num { (task.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                            td { (time(task.updated_at_ms)) " " span.muted { "(" (ago(task.updated_at_ms, now)) ")" } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/tasks/{id}`.
pub(crate) async fn page(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    flash: Option<Flash>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let readers = layout::readers(&console)?;
    let key = id.clone();
    let read = readers.read(move |conn| {
        let (found, fresh) = query::get(conn, &key)?;
        Ok((found, fresh, history::timeline(conn, &key)?))
    });
    let (found, fresh, timeline) = read.await.map_err(layout::unreadable)?;
    let now = warren_common::now_ms();
    let problems = layout::index_problems(&fresh, readers.caught_up(), now);
    let live = html! {
        h1 { "Task " span.mono #task-id { (id) } }
        (layout::problems(&problems))
        @match &found {
            None => {
                p #unknown {
                    (badge("unknown")) " The index has no event of this task: it was never published with events on, "
                    "its events have not arrived yet, or it ended longer ago than the index keeps tasks."
                }
                (cancel_button(&viewer, &id, State::Unknown))
            }
            Some(task) => {
                (facts(task, now))
                (cancel_button(&viewer, &id, task.state))
                h2 { "Timeline" }
                (timeline_table(&timeline))
                (payload_and_result(task))
            }
        }
    };
    Ok(layout::page(&viewer, &format!("Task {id}"), Section::Tasks, flash, live).into_response())
}

fn facts(task: &TaskStatus, now: u64) -> Markup {
    let run_time = task
        .started_at_ms
        .zip(task.ended_at_ms)
        .and_then(|(start, end)| end.checked_sub(start));
    html! {
        dl.facts #facts {
            dt { "State" } dd #state { (badge(task.state.as_str())) }
            dt { "Task" } dd #task-name { (task.task) }
            dt { "Queue" } dd { a href={ "/console/queues/" (encode(&task.queue)) } { (task.queue) } }
            dt { "Attempt" } dd { (task.attempt.map(|a| a.to_string()).unwrap_or_else(|| "-".into())) }
            dt { "Redeliveries" } dd { (task.delivery_count.map(|n| format!("{n} (of this attempt: a worker gone, a requeue)")).unwrap_or_else(|| "-".into())) }
            @if let Some(replays) = task.replays.filter(|r| *r > 0) { dt { "Replays" } dd { (replays) } }
            dt { "Worker" } dd.mono { (task.worker) }
            dt { "Published" } dd { (maybe_time(task.published_at_ms)) }
            dt { "Started" } dd {
                @if task.started_at_ms.is_none() && task.ended_at_ms.is_some() {
                    span.muted { "not recorded: it ended on its handler's first poll" }
                } @else { (maybe_time(task.started_at_ms)) }
            }
            dt { "Ended" } dd { (maybe_time(task.ended_at_ms)) @if let Some(d) = run_time { " (ran " (duration(d)) ")" } }
            @if let Some(retry) = task.retry_at_ms { dt { "Next attempt" } dd { (time(retry)) " (" (ago(retry, now)) ")" } }
            dt { "Last change" } dd { (time(task.updated_at_ms)) }
            @if let Some((kind, reason)) = &task.error {
                dt { "Last error" } dd #error { span.mono { (kind) } ": " (reason) }
            }
        }
    }
}

/// What happened to the task, in the merge rule's order (docs/wire-format.md §11.6): each
/// attempt with its worker, error and duration, and its end.
fn timeline_table(timeline: &[TimelineEntry]) -> Markup {
    html! {
        @if timeline.is_empty() {
            p.muted { "No event kept." }
        } @else {
            table #timeline {
                thead { tr { th { "When" } th { "Event" } th.num { "Attempt" } th { "By" } th { "Took" } th { "Error" } } }
                tbody {
                    @for entry in timeline {
                        tr {
                            td { (time(entry.at_ms)) }
                            td { (badge(entry.event.as_str()))
                                 @if let Some(retry) = entry.retry_at_ms { br; span.muted { "next attempt " (time(retry)) } } }
                            td.num { (entry.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                            td.mono { (entry.worker) }
                            td { (entry.duration_ms.map(duration).unwrap_or_default()) }
                            td { @if let Some((kind, reason)) = &entry.error { span.mono { (kind) } ": " (reason) } }
                        }
                    }
                }
            }
        }
    }
}

/// The cancel button, while cancelling can still change something.
fn cancel_button(viewer: &Viewer, id: &str, state: State) -> Markup {
    let cancellable = matches!(
        state,
        State::Published | State::Running | State::Retrying | State::Lost | State::Unknown
    );
    html! {
        @if viewer.actions && cancellable {
            div.actions {
                a.button.danger #cancel href={ "/console/tasks/" (encode(id)) "/cancel" } { "Cancel task" }
            }
        }
    }
}

/// The copy of a payload: JSON pretty-printed, else its text or base64, saying when it is
/// cut short.
fn payload(copy: &PayloadCopy) -> Markup {
    html! {
        p.muted #payload-size {
            (count(copy.size)) " bytes"
            @if copy.cut { ", of which the first are shown (the publisher's --events-payload-bytes)" }
            @if copy.base64.is_some() { ", not text: shown in base64" }
        }
        @if let Some(json) = &copy.json { pre #payload { (pretty_json(json.get())) } }
        @else if let Some(text) = &copy.text { pre #payload { (text) } }
        @else if let Some(base64) = &copy.base64 { pre #payload { (base64) } }
    }
}

fn payload_and_result(task: &TaskStatus) -> Markup {
    html! {
        h2 { "Payload" }
        @match task.payload.as_deref().map(serde_json::from_str::<PayloadCopy>) {
            Some(Ok(copy)) => (payload(&copy)),
            Some(Err(_)) | None => p.muted { "No copy of the payload (the publisher recorded none, or copies are off)." },
        }
        @if task.state == State::Succeeded || task.result.is_some() || task.result_error.is_some() {
            h2 { "Result" }
            @if let Some(result) = &task.result { pre #result { (pretty_json(result)) } }
            @if let Some(why) = &task.result_error { p.muted #result-error { "Result left out: " (why) } }
            @if task.result.is_none() && task.result_error.is_none() { p.muted { "None." } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_s_times_are_utc() {
        assert_eq!(since_ms("1970-01-01T00:01"), Some(60_000));
        assert_eq!(since_ms("1970-01-01T00:01:02"), Some(62_000));
        assert_eq!(since_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(since_ms("yesterday"), None);
    }
}
