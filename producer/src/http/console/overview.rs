//! The overview (`/console`): every Warren queue with its numbers, the live workers, and what
//! is wrong, first. The queues are those the index has tasks of, those live workers consume
//! and the ingest's default queue (AMQP cannot list queues); ready messages and consumers come
//! from the broker, running tasks from the workers' heartbeats, retrying and dead-lettered
//! tasks from the index, and the dead letters' count from the dead-letter queue itself.

use super::figures::{QueueFigures, Snapshot};
use super::format::{ago, count, maybe_count};
use super::layout::{self, Flash, Section, Viewer};
use super::security::Refusal;
use super::Shared;
use crate::status::api::Liveness;
use crate::status::query::{self, Freshness};
use crate::status::queues::{self, QueueSummary};
use crate::status::throughput::{self, Bucket};
use crate::status::workers::{self, WorkerStatus};
use crate::status::State;
use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rusqlite::{Connection, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet};

/// Workers gone this recently are listed as problems (when they went silent).
const RECENTLY_GONE_MS: u64 = 15 * 60 * 1000;

/// How far back the chart and the dead-letter growth look.
const CHART_SPAN_MS: u64 = 10 * 60 * 1000;
const GROWTH_SPAN_MS: u64 = 5 * 60 * 1000;

/// What the index says about the queues and workers.
pub(crate) struct Indexed {
    /// Every queue the index knows, with its tasks per state.
    pub(crate) queues: Vec<QueueSummary>,
    /// Tasks running per queue, from the live workers' heartbeats.
    pub(crate) running: BTreeMap<String, u64>,
    pub(crate) workers: Vec<WorkerStatus>,
    /// Endings and retries per queue over the last [`CHART_SPAN_MS`].
    pub(crate) throughput: Vec<Bucket>,
    pub(crate) fresh: Freshness,
}

impl Indexed {
    /// Reads it all, at `now_ms`. (The parts are read one after the other, each a snapshot of
    /// its own: a page may show a figure a transaction older than the next.)
    pub(crate) fn read(conn: &Connection, now_ms: u64) -> rusqlite::Result<Indexed> {
        let queues = queues::queues(conn)?;
        let workers = workers::list(conn)?;
        let running = running_by_queue(conn, &workers)?;
        let throughput = throughput::throughput(conn, now_ms.saturating_sub(CHART_SPAN_MS))?;
        let fresh = query::freshness(conn)?;
        Ok(Indexed {
            queues,
            running,
            workers,
            throughput,
            fresh,
        })
    }

    /// The tasks of `queue` in `state`, as indexed.
    pub(crate) fn count(&self, queue: &str, state: State) -> u64 {
        self.queues
            .iter()
            .find(|q| q.queue == queue)
            .map_or(0, |q| q.count(state))
    }

    /// Dead letters of `queue` the index lists: tasks that ended dead-lettered or expired.
    pub(crate) fn dead(&self, queue: &str) -> u64 {
        self.count(queue, State::DeadLettered) + self.count(queue, State::Expired)
    }

    /// Every queue known: from the index (tasks, heartbeats) and `default_queue`.
    pub(crate) fn queue_names(&self, default_queue: &str) -> Vec<String> {
        let mut queues: BTreeSet<String> = self.queues.iter().map(|q| q.queue.clone()).collect();
        queues.insert(default_queue.to_owned());
        queues.into_iter().collect()
    }

    pub(crate) fn live(&self) -> impl Iterator<Item = &WorkerStatus> {
        self.workers.iter().filter(|w| w.status == Liveness::Alive)
    }

    /// Dead letters `queue` gained since `since_ms`.
    fn dead_since(&self, queue: &str, since_ms: u64) -> u64 {
        self.throughput
            .iter()
            .filter(|b| b.queue == queue && b.start_ms + throughput::BUCKET_MS > since_ms)
            .map(|b| b.dead_lettered + b.expired)
            .sum()
    }
}

/// The queue of each task the live workers say they run (by the index; a task not indexed
/// yet counts for its worker's only queue, if it has one).
fn running_by_queue(
    conn: &Connection,
    workers: &[WorkerStatus],
) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut queue_of = conn.prepare_cached("SELECT queue FROM tasks WHERE id = ?1")?;
    let mut running = BTreeMap::new();
    for worker in workers.iter().filter(|w| w.status == Liveness::Alive) {
        let hb = &worker.heartbeat;
        for id in &hb.running {
            let queue: Option<String> = queue_of.query_row([id], |r| r.get(0)).optional()?;
            let only = (hb.queues.len() == 1).then(|| hb.queues[0].clone());
            if let Some(queue) = queue.or(only) {
                *running.entry(queue).or_default() += 1;
            }
        }
    }
    Ok(running)
}

/// `GET /console`.
pub(crate) async fn page(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    flash: Option<Flash>,
) -> Result<Response, Refusal> {
    let readers = layout::readers(&console)?;
    let now = warren_common::now_ms();
    let read = readers.read(move |conn| Indexed::read(conn, now));
    let indexed = read.await.map_err(layout::unreadable)?;
    let queues = indexed.queue_names(&console.app.default_queue);
    let figures = console.figures.of(&queues).await;
    let mut problems = queue_problems(&queues, &figures, &indexed, now);
    problems.extend(worker_problems(&indexed, now));
    problems.extend(layout::index_problems(
        &indexed.fresh,
        readers.caught_up(),
        now,
    ));
    let live = html! {
        h1 { "Overview" }
        (layout::problems(&problems))
        (cards(&indexed, &figures, &queues))
        h2 { "Tasks per second, last 10 minutes" }
        (super::chart::chart(&indexed.throughput, now, CHART_SPAN_MS))
        h2 { "Queues" }
        (queue_table(&queues, &figures, &indexed, console.config.management.is_some()))
        h2 { "Workers" }
        p {
            (count(indexed.live().count() as u64)) " live; "
            a href="/console/workers" { "every worker" }
        }
    };
    Ok(layout::page(&viewer, "Overview", Section::Overview, flash, live).into_response())
}

fn cards(indexed: &Indexed, figures: &Snapshot, queues: &[String]) -> Markup {
    let sum = |f: &dyn Fn(&QueueFigures) -> Option<u64>| -> u64 {
        figures.figures.values().filter_map(f).sum()
    };
    let running: u64 = indexed.running.values().sum();
    let retrying: u64 = queues
        .iter()
        .map(|q| indexed.count(q, State::Retrying))
        .sum();
    html! {
        div.cards {
            div.card #card-workers { div.value { (count(indexed.live().count() as u64)) } div.label { "live workers" } }
            div.card #card-ready { div.value { (count(sum(&|f| f.ready))) } div.label { "ready" } }
            div.card #card-running { div.value { (count(running)) } div.label { "running" } }
            div.card #card-retrying { div.value { (count(retrying)) } div.label { "retrying" } }
            div.card #card-dead { div.value { (count(sum(&|f| f.dead))) } div.label { "dead letters" } }
        }
    }
}

fn queue_table(
    queues: &[String],
    figures: &Snapshot,
    indexed: &Indexed,
    management: bool,
) -> Markup {
    html! {
        table #queues {
            thead { tr {
                th { "Queue" } th.num { "Ready" }
                @if management { th.num { "Unacked" } }
                th.num { "Running" } th.num { "Retrying" } th.num { "Dead letters" } th.num { "Consumers" }
                @if management { th.num { "In /s" } th.num { "Acked /s" } }
            } }
            tbody {
                @for queue in queues {
                    @let f = figures.figures.get(queue).cloned().unwrap_or_default();
                    tr data-queue=(queue) {
                        td { a href={ "/console/queues/" (super::security::encode(queue)) } { (queue) }
                             @if f.missing { " " span.muted { "(not declared)" } } }
                        td.num.ready { (maybe_count(f.ready)) }
                        @if management { td.num.unacked { (maybe_count(f.stats.as_ref().map(|s| s.unacked))) } }
                        td.num.running { (count(indexed.running.get(queue).copied().unwrap_or(0))) }
                        td.num.retrying { (count(indexed.count(queue, State::Retrying))) }
                        td.num.dead { (maybe_count(f.dead)) }
                        td.num.consumers { (maybe_count(f.consumers)) }
                        @if management {
                            td.num { (rate(f.stats.as_ref().map(|s| s.publish_rate))) }
                            td.num { (rate(f.stats.as_ref().map(|s| s.ack_rate))) }
                        }
                    }
                }
            }
        }
    }
}

fn rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// Queues with ready tasks and no consumer, and queues whose dead letters grow.
fn queue_problems(
    queues: &[String],
    figures: &Snapshot,
    indexed: &Indexed,
    now_ms: u64,
) -> Vec<(bool, Markup)> {
    let mut problems: Vec<(bool, Markup)> = figures
        .problems
        .iter()
        .map(|p| (true, html! { "Some numbers are missing: " (p) }))
        .collect();
    for queue in queues {
        let f = figures.figures.get(queue);
        let gained = indexed.dead_since(queue, now_ms.saturating_sub(GROWTH_SPAN_MS));
        if gained > 0 {
            // What the broker holds now: those dead letters may have been replayed or purged.
            let held = f.and_then(|f| f.dead);
            problems.push((false, html! {
                "Queue " a href={ "/console/queues/" (super::security::encode(queue)) } { (queue) }
                " gained " (count(gained)) " dead letters in the last 5 minutes"
                @if let Some(held) = held { " (" (count(held)) " in its dead-letter queue now)" }
                "."
            }));
        }
        let Some(f) = f else {
            continue;
        };
        if let (Some(ready @ 1..), Some(0)) = (f.ready, f.consumers) {
            problems.push((true, html! {
                "Queue " a href={ "/console/queues/" (super::security::encode(queue)) } { (queue) }
                " has " (count(ready)) " ready tasks and no consumer."
            }));
        }
    }
    problems
}

/// Workers that went silent recently (a farewell is a normal drain).
fn worker_problems(indexed: &Indexed, now_ms: u64) -> Vec<(bool, Markup)> {
    indexed
        .workers
        .iter()
        .filter(|w| w.status == Liveness::Gone && w.gone_reason.as_deref() == Some("silent"))
        .filter(|w| {
            w.gone_at_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < RECENTLY_GONE_MS)
        })
        .map(|w| {
            let when = w.gone_at_ms.map(|at| ago(at, now_ms)).unwrap_or_default();
            (
                true,
                html! {
                    "Worker " span.mono { (w.heartbeat.worker) } " on " (w.heartbeat.host)
                    " went silent (" (when) "): its running tasks are lost until redelivered."
                },
            )
        })
        .collect()
}
