//! A queue's page (`/console/queues/{queue}`): its numbers, pause and resume, the dead-letter
//! job running on it, and its dead letters as the index lists them (newest first, filtered by
//! task and reason kind, a page at a time), with replay and purge of a selection or of all
//! that match. The listing never reads the dead-letter queue itself (reading AMQP takes the
//! messages out): the broker's count is the authority on how many there are, and a dead
//! letter older than the queue's retention is marked gone.

use super::figures::QueueFigures;
use super::format::{ago, count, duration, maybe_count, time};
use super::jobs::{JobKind, JobState, JobView};
use super::layout::{self, badge, Flash, Section, Viewer};
use super::overview::Indexed;
use super::security::encode;
use super::security::Refusal;
use super::Shared;
use crate::status::dead_letters::{self, DeadLetterFilter, KindCount};
use crate::status::query::{Cursor, Page};
use crate::status::State;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

/// Dead letters per page.
const PAGE: usize = 50;

/// The dead-letter filters of the page, as its form sent them.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadFilter {
    pub(crate) task: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) cursor: Option<String>,
}

impl DeadFilter {
    pub(crate) fn parse(raw: &str) -> DeadFilter {
        let mut filter = DeadFilter::default();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
            match &*key {
                "task" => filter.task = value,
                "kind" => filter.kind = value,
                "cursor" => filter.cursor = value,
                _ => {}
            }
        }
        filter
    }

    /// The query string of these filters (without the cursor), then `extra`.
    pub(crate) fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        if let Some(task) = &self.task {
            out.append_pair("task", task);
        }
        if let Some(kind) = &self.kind {
            out.append_pair("kind", kind);
        }
        for (k, v) in extra {
            out.append_pair(k, v);
        }
        out.finish()
    }

    /// The filter of the CLI's dead-letter operations that selects the same dead letters.
    pub(crate) fn selection(&self) -> crate::Filter {
        crate::Filter {
            task: self.task.clone(),
            kind: self.kind.clone(),
            ..crate::Filter::default()
        }
    }

    /// Says what it selects, for confirmations.
    pub(crate) fn describe(&self) -> String {
        match (&self.task, &self.kind) {
            (None, None) => "every dead letter".to_owned(),
            (Some(t), None) => format!("every dead letter of task `{t}`"),
            (None, Some(k)) => format!("every dead letter of reason kind `{k}`"),
            (Some(t), Some(k)) => format!("every dead letter of task `{t}` with reason kind `{k}`"),
        }
    }
}

/// `GET /console/queues/{queue}`.
pub(crate) async fn page(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    flash: Option<Flash>,
    Path(queue): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refusal> {
    let readers = layout::readers(&console)?;
    let filter = DeadFilter::parse(raw.as_deref().unwrap_or(""));
    let listing = DeadLetterFilter {
        queue: queue.clone(),
        task: filter.task.clone(),
        reason_kind: filter.kind.clone(),
        after: filter.cursor.as_deref().and_then(Cursor::decode),
        limit: PAGE,
    };
    let now = warren_common::now_ms();
    let read = readers.read(move |conn| {
        Ok((
            Indexed::read(conn, now)?,
            dead_letters::dead_letters(conn, &listing)?,
            dead_letters::dead_letter_kinds(conn, &listing.queue)?,
        ))
    });
    let (indexed, page, kinds) = read.await.map_err(layout::unreadable)?;
    let figures = console.figures.of(std::slice::from_ref(&queue)).await;
    let f = figures.figures.get(&queue).cloned().unwrap_or_default();
    let problems = layout::index_problems(&indexed.fresh, readers.caught_up(), now);
    let max_age = console.retention.max_age.as_millis() as u64;
    let live = html! {
        h1 { "Queue " span #queue-name { (queue) } }
        (layout::problems(&problems))
        @if f.missing { p.error #missing { "The broker has no queue of this name." } }
        (cards(&f, &indexed, &queue))
        (controls(&viewer, &queue))
        @if let Some(job) = console.jobs.of(&queue) { (job_box(&job, now)) }
        h2 { "Dead letters" }
        (dead_summary(&f, indexed.dead(&queue), max_age))
        (filters(&queue, &filter, &kinds))
        (dead_table(&viewer, &queue, &filter, &page, now, max_age))
    };
    let title = format!("Queue {queue}");
    Ok(layout::page(&viewer, &title, Section::Overview, flash, live).into_response())
}

fn cards(f: &QueueFigures, indexed: &Indexed, queue: &str) -> Markup {
    html! {
        div.cards {
            div.card #card-ready { div.value { (maybe_count(f.ready)) } div.label { "ready" } }
            @if let Some(stats) = &f.stats {
                div.card #card-unacked { div.value { (count(stats.unacked)) } div.label { "unacked" } }
                div.card { div.value { (format!("{:.1}", stats.publish_rate)) } div.label { "in /s" } }
                div.card { div.value { (format!("{:.1}", stats.ack_rate)) } div.label { "acked /s" } }
            }
            div.card #card-running { div.value { (count(indexed.running.get(queue).copied().unwrap_or(0))) } div.label { "running" } }
            div.card #card-retrying { div.value { (count(indexed.count(queue, State::Retrying))) } div.label { "retrying" } }
            div.card #card-dead { div.value { (maybe_count(f.dead)) } div.label { "dead letters" } }
            div.card #card-consumers { div.value { (maybe_count(f.consumers)) } div.label { "consumers" } }
        }
    }
}

fn controls(viewer: &Viewer, queue: &str) -> Markup {
    let base = format!("/console/queues/{}", encode(queue));
    html! {
        @if viewer.actions {
            div.actions {
                a.button #pause href={ (base) "/pause" } { "Pause" }
                a.button #resume href={ (base) "/resume" } { "Resume" }
            }
        }
    }
}

fn job_box(job: &JobView, now: u64) -> Markup {
    let verb = match job.kind {
        JobKind::Replay => "Replay",
        JobKind::Purge => "Purge",
    };
    html! {
        div.job #job {
            @match &job.state {
                JobState::Running => {
                    (verb) " of " (job.what) ", started " (ago(job.started_ms, now)) ": "
                    progress max=(job.total.max(1)) value=(job.done) {}
                    " " (count(job.done)) " of " (count(job.total)) " dead letters gone through"
                }
                JobState::Done(message) => { span #job-done { "Done: " (message) } " (" (ago(job.started_ms, now)) ")" }
                JobState::Failed(message) => { span.error #job-failed { (verb) " of " (job.what) " failed: " (message) } }
            }
        }
    }
}

fn dead_summary(f: &QueueFigures, indexed: u64, max_age_ms: u64) -> Markup {
    html! {
        p #dead-summary {
            "The broker holds " strong { (maybe_count(f.dead)) } " dead letters of this queue; the index lists "
            (count(indexed)) " tasks that ended dead-lettered here. "
            @if let Some(held) = f.dead.filter(|held| indexed > *held) {
                (count(indexed - held)) " of those are no longer in the dead-letter queue (replayed and run again, purged, or dropped by its retention). "
            }
            @if max_age_ms > 0 { "Dead letters older than " (duration(max_age_ms)) " are dropped by the queue and marked gone." }
        }
    }
}

fn filters(queue: &str, filter: &DeadFilter, kinds: &[KindCount]) -> Markup {
    let chosen = filter.kind.as_deref();
    html! {
        form.filters #dead-filters method="get" action={ "/console/queues/" (encode(queue)) } {
            label { "Task" input type="text" name="task" value=(filter.task.clone().unwrap_or_default()); }
            label { "Reason kind"
                select name="kind" {
                    option value="" { "any" }
                    @for kind in kinds {
                        option value=(kind.kind) selected[chosen == Some(kind.kind.as_str())] {
                            (kind.kind) " (" (count(kind.tasks)) ")"
                        }
                    }
                    @if let Some(other) = chosen.filter(|c| !kinds.iter().any(|k| k.kind == *c)) {
                        option value=(other) selected { (other) " (0)" }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
    }
}

fn dead_table(
    viewer: &Viewer,
    queue: &str,
    filter: &DeadFilter,
    page: &Page,
    now: u64,
    max_age_ms: u64,
) -> Markup {
    let base = format!("/console/queues/{}", encode(queue));
    let shown = &page.tasks;
    html! {
        @if viewer.actions {
            div.actions {
                a.button #replay-all href={ (base) "/replay?" (filter.query(&[("all", "1")])) } { "Replay all matching" }
                a.button.danger #purge-all href={ (base) "/purge?" (filter.query(&[("all", "1")])) } { "Purge all matching" }
            }
        }
        @if shown.is_empty() {
            p.muted #no-dead-letters { "No dead letter on this page matches." }
        } @else {
            form #selection method="get" action={ (base) "/replay" } {
                table #dead-letters {
                    thead { tr {
                        @if viewer.actions { th { "" } }
                        th { "Id" } th { "Task" } th { "Reason" } th.num { "Attempt" } th { "Dead-lettered" }
                        @if viewer.actions { th { "" } }
                    } }
                    tbody {
                        @for task in shown {
                            @let at = task.ended_at_ms.unwrap_or(task.updated_at_ms);
                            @let gone = max_age_ms > 0 && now.saturating_sub(at) > max_age_ms;
                            tr data-id=(task.id) {
                                @if viewer.actions { td { input type="checkbox" name="id" value=(task.id) aria-label="select"; } }
                                td.id { a href={ "/console/tasks/" (encode(&task.id)) } { (task.id) } }
                                td { (task.task) }
                                td {
                                    @if let Some((kind, reason)) = &task.error { span.mono { (kind) } ": " (reason) }
                                }
                                td.num { (task.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                                td { (time(at)) @if gone { " " (badge("gone")) } @if task.state == State::Expired { " " (badge("expired")) } }
                                @if viewer.actions {
                                    td.row-actions {
                                        a.replay-one href={ (base) "/replay?id=" (encode(&task.id)) } { "replay" }
                                        " "
                                        a.purge-one href={ (base) "/purge?id=" (encode(&task.id)) } { "purge" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if viewer.actions {
                    div.actions {
                        button #replay-selected type="submit" formaction={ (base) "/replay" } { "Replay selected" }
                        button.danger #purge-selected type="submit" formaction={ (base) "/purge" } { "Purge selected" }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p.pager { a #next-page href={ (base) "?" (filter.query(&[("cursor", &next.encode())])) } { "Older dead letters" } }
        }
    }
}
