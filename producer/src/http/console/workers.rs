//! The workers (`/console/workers`): each live worker's last heartbeat (host, version, queues,
//! concurrency, the tasks it runs, its counts), then the workers gone within the hour the index
//! keeps them, with why (a farewell when it drained, silence when it vanished).

use super::format::{ago, count, time};
use super::layout::{self, badge, Flash, Section, Viewer};
use super::security::encode;
use super::security::Refusal;
use super::Shared;
use crate::status::api::Liveness;
use crate::status::query;
use crate::status::workers::{self, WorkerStatus};
use axum::extract::State as Extract;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

/// The counts a heartbeat carries, in the order shown.
const COUNTS: [&str; 5] = [
    "succeeded",
    "retried",
    "dead_lettered",
    "failed",
    "requeued",
];

/// Running task ids shown per worker; the rest are counted.
const RUNNING_SHOWN: usize = 10;

/// `GET /console/workers`.
pub(crate) async fn page(
    Extract(console): Extract<Shared>,
    viewer: Viewer,
    flash: Option<Flash>,
) -> Result<Response, Refusal> {
    let readers = layout::readers(&console)?;
    let read = readers.read(|conn| Ok((workers::list(conn)?, query::freshness(conn)?)));
    let (all, fresh) = read.await.map_err(layout::unreadable)?;
    let now = warren_common::now_ms();
    let (live, gone): (Vec<_>, Vec<_>) = all.iter().partition(|w| w.status == Liveness::Alive);
    let problems = layout::index_problems(&fresh, readers.caught_up(), now);
    let body = html! {
        h1 { "Workers" }
        (layout::problems(&problems))
        h2 { "Live (" (live.len()) ")" }
        @if live.is_empty() { p.muted #no-workers { "No live worker has sent a heartbeat (workers need --events-stream)." } }
        @else { (table("live-workers", &live, now)) }
        h2 { "Gone (" (gone.len()) ")" }
        @if gone.is_empty() { p.muted { "None." } }
        @else { (table("gone-workers", &gone, now)) }
    };
    Ok(layout::page(&viewer, "Workers", Section::Workers, flash, body).into_response())
}

fn table(id: &str, workers: &[&WorkerStatus], now: u64) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th { "Worker" } th { "Status" } th { "Host" } th { "Version" } th { "Queues" }
                th.num { "Concurrency" } th { "Running" }
                @for name in COUNTS { th.num { (name.replace('_', " ")) } }
                th { "Started" } th { "Last heartbeat" }
            } }
            tbody {
                @for worker in workers {
                    @let hb = &worker.heartbeat;
                    tr data-worker=(hb.worker) {
                        td.id { (hb.worker) }
                        td {
                            (badge(match worker.status { Liveness::Alive => "alive", Liveness::Gone => "gone" }))
                            @if let Some(reason) = &worker.gone_reason { " " span.muted { (reason) } }
                            @if let Some(at) = worker.gone_at_ms { br; span.muted { (ago(at, now)) } }
                        }
                        td { (hb.host) " " span.muted { "pid " (hb.pid) } }
                        td { (hb.version) }
                        td { @for (i, queue) in hb.queues.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href={ "/console/queues/" (encode(queue)) } { (queue) }
                        } }
                        td.num { (hb.concurrency) }
                        td.running {
                            (hb.running.len())
                            @for task in hb.running.iter().take(RUNNING_SHOWN) {
                                br; a.mono href={ "/console/tasks/" (encode(task)) } { (task) }
                            }
                            @if hb.running.len() > RUNNING_SHOWN { br; span.muted { "and " (hb.running.len() - RUNNING_SHOWN) " more" } }
                        }
                        @for name in COUNTS { td.num { (count(hb.counts.get(name).copied().unwrap_or(0))) } }
                        td { (time(hb.started_at_ms)) }
                        td { (ago(worker.heard_at_ms, now)) }
                    }
                }
            }
        }
    }
}
