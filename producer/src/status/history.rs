//! Each task's timeline: every event the index read of it, in rank order (docs/wire-format.md
//! §11.6), those the merge rule outranks included, so a retried task shows each attempt
//! (started, retrying with its error and retry time, started again, its ending) rather than
//! only the event that decides its status.
//!
//! A row is keyed by the task and the event's rank, whose last part is the event's stream
//! position: an event read again (a batch applied twice, the stream read again from an earlier
//! offset) is the same row, so recording it changes nothing and [`record`] says it was not
//! new. A task keeps its first `published` event and its [`KEPT`] latest events, so a task
//! retried without end cannot grow the file without bound; its rows are deleted with it by the
//! index retention.

use super::merge::Rank;
use rusqlite::{params, Connection, Transaction};
use warren_common::events::{EventKind, Stamped};

/// The latest events a task's timeline keeps (besides its first `published`).
pub(crate) const KEPT: usize = 50;

/// The key columns, in rank order.
const KEY: &str = "rank_replays, rank_attempt, rank_delivery_count, rank_phase, position_epoch,
    position_offset, position_seq";

/// One event of a task's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TimelineEntry {
    pub(crate) event: EventKind,
    pub(crate) attempt: Option<u32>,
    pub(crate) delivery_count: Option<u64>,
    pub(crate) replays: Option<u32>,
    /// The event's source: a worker's id, a publisher's, or a dead-letter tool's.
    pub(crate) worker: String,
    /// When, by the source's clock.
    pub(crate) at_ms: u64,
    /// The error's kind and reason.
    pub(crate) error: Option<(String, String)>,
    pub(crate) retry_at_ms: Option<u64>,
    /// For an attempt's end (`succeeded`, `retrying`, `dead_lettered`, `expired`,
    /// `cancelled`), the time since its run's `started`, when that is in the timeline.
    pub(crate) duration_ms: Option<u64>,
}

/// Records `stamped`, of rank `rank`, in its task's timeline; `first` says the task has no
/// row yet (nothing to trim). Returns whether the event is new to the timeline.
pub(crate) fn record(
    tx: &Transaction<'_>,
    stamped: &Stamped,
    rank: &Rank,
    first: bool,
) -> rusqlite::Result<bool> {
    let event = &stamped.event;
    let (error_kind, error_reason) = match &event.error {
        Some(e) => (Some(e.kind.as_ref()), Some(e.reason.as_ref())),
        None => (None, None),
    };
    let inserted = tx
        .prepare_cached(&format!(
            "INSERT INTO history (id, {KEY}, event, source, at_ms, attempt, replays,
                delivery_count, error_kind, error_reason, retry_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT DO NOTHING"
        ))?
        .execute(params![
            event.id,
            rank.replays,
            rank.attempt,
            rank.delivery_count,
            rank.phase,
            rank.position.epoch,
            rank.position.offset,
            rank.position.seq,
            event.event.as_str(),
            stamped.source,
            event.at_ms,
            event.attempt,
            event.replays,
            event.delivery_count,
            error_kind,
            error_reason,
            event.retry_at_ms,
        ])?;
    if inserted == 1 && !first {
        trim(tx, &event.id)?;
    }
    Ok(inserted == 1)
}

/// Keeps task `id`'s first `published` event and its [`KEPT`] latest events.
fn trim(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    // Most timelines are a few events long: one short range scan says so.
    let over: bool = tx
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM history WHERE id = ?1
                ORDER BY {} LIMIT 1 OFFSET ?2)",
            descending()
        ))?
        .query_row(params![id, KEPT as u64], |r| r.get(0))?;
    if !over {
        return Ok(());
    }
    tx.prepare_cached(&format!(
        "DELETE FROM history WHERE id = ?1
           AND ({KEY}) <= (SELECT {KEY} FROM history WHERE id = ?1
                           ORDER BY {} LIMIT 1 OFFSET ?2)
           AND ({KEY}) IS NOT (SELECT {KEY} FROM history WHERE id = ?1 AND event = 'published'
                               ORDER BY {KEY} LIMIT 1)",
        descending()
    ))?
    .execute(params![id, KEPT as u64])?;
    Ok(())
}

/// The key columns, newest first.
fn descending() -> String {
    KEY.split(',')
        .map(|c| format!("{} DESC", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes task `id`'s timeline (the task left the index).
pub(crate) fn forget(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM history WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Task `id`'s timeline, in rank order (§11.6), not by the sources' clocks; empty for a task
/// not indexed.
pub(crate) fn timeline(conn: &Connection, id: &str) -> rusqlite::Result<Vec<TimelineEntry>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT event, attempt, delivery_count, replays, source, at_ms, error_kind, error_reason,
            retry_at_ms, rank_replays, rank_attempt, rank_delivery_count
         FROM history WHERE id = ?1 ORDER BY {KEY}"
    ))?;
    let mut rows = statement.query([id])?;
    let mut entries = Vec::new();
    // The latest `started` read: its run (replays, attempt, delivery count) and time.
    let mut started: Option<((u32, u32, u64), u64)> = None;
    while let Some(row) = rows.next()? {
        let event = kind_column(row, 0)?;
        let at_ms: u64 = row.get(5)?;
        let run: (u32, u32, u64) = (row.get(9)?, row.get(10)?, row.get(11)?);
        let duration_ms = match (event, started) {
            (EventKind::Started, _) => {
                started = Some((run, at_ms));
                None
            }
            (EventKind::Published, _) => None,
            // An ending ranks just after its run's `started`, if one was read.
            (_, Some((of, began))) if of == run => Some(at_ms.saturating_sub(began)),
            _ => None,
        };
        let kind: Option<String> = row.get(6)?;
        let reason: Option<String> = row.get(7)?;
        entries.push(TimelineEntry {
            event,
            attempt: row.get(1)?,
            delivery_count: row.get(2)?,
            replays: row.get(3)?,
            worker: row.get(4)?,
            at_ms,
            error: kind.map(|k| (k, reason.unwrap_or_default())),
            retry_at_ms: row.get(8)?,
            duration_ms,
        });
    }
    Ok(entries)
}

/// An event column, refusing a name this version does not know.
fn kind_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<EventKind> {
    let name: String = row.get(index)?;
    [
        EventKind::Published,
        EventKind::Started,
        EventKind::Succeeded,
        EventKind::Retrying,
        EventKind::DeadLettered,
        EventKind::Expired,
        EventKind::Cancelled,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
    .ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown event `{name}`").into(),
        )
    })
}
