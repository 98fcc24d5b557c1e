//! The workers the index has heard from, and the `lost` state of their tasks.
//!
//! Each heartbeat or farewell (docs/wire-format.md §11.7) replaces its worker's row if it is
//! later in the stream than the one stored, so applying one twice changes nothing. A worker is
//! `alive` until its farewell, or until it has been silent for [`SILENT_INTERVALS`] of its
//! intervals, judged two ways so that neither needs the worker's clock to agree with the
//! index's: by the index's clock since the index received its last heartbeat, and, for an
//! index catching up on a backlog, by the heartbeat's own `at_ms` against the newest `at_ms`
//! the index has read from the stream. A worker heard again is alive again.
//!
//! `lost` is derived, never an event: a task is lost while its deciding event (§11.6) is a
//! `started` from a worker that is gone. The rows move between `running` and `lost` when their
//! worker's status changes, and a `started` applied for a gone worker lands as `lost`; ranks
//! are untouched, so any later event of the task (its redelivery) decides it as before.

use super::merge::{Position, State};
use super::store::CountChanges;
use rusqlite::{params, OptionalExtension, Transaction};
use std::collections::BTreeMap;
use warren_common::events::Heartbeat;

/// A worker silent for this many of its intervals is gone.
pub(crate) const SILENT_INTERVALS: u64 = 3;

/// A heartbeat read from the stream; a farewell says the worker drained and is gone.
#[derive(Clone, Debug)]
pub(crate) struct Presence {
    pub(crate) heartbeat: Heartbeat,
    pub(crate) farewell: bool,
}

pub(crate) use super::api::Liveness;

/// A worker as indexed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkerStatus {
    pub(crate) heartbeat: Heartbeat,
    pub(crate) status: Liveness,
    /// `farewell` or `silent`, once gone.
    pub(crate) gone_reason: Option<String>,
    /// When the index found it gone, by the index's clock.
    pub(crate) gone_at_ms: Option<u64>,
    /// When the index received its last heartbeat, by the index's clock.
    pub(crate) heard_at_ms: u64,
}

/// Applies a heartbeat or farewell read at `position`, received at `now_ms` (index clock).
pub(crate) fn apply(
    tx: &Transaction<'_>,
    presence: &Presence,
    position: Position,
    now_ms: u64,
    counts: &mut CountChanges,
) -> rusqlite::Result<()> {
    let hb = &presence.heartbeat;
    let stored: Option<(u64, u64)> = tx
        .prepare_cached("SELECT position_epoch, position_offset FROM workers WHERE id = ?1")?
        .query_row([&hb.worker], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if stored.is_some_and(|s| s >= (position.epoch, position.offset)) {
        return Ok(());
    }
    let liveness = if presence.farewell {
        Liveness::Gone
    } else {
        Liveness::Alive
    };
    let gone = presence.farewell.then_some(now_ms);
    tx.prepare_cached(
        "INSERT INTO workers (id, host, pid, version, queues, concurrency, prefetch, running,
            counts, started_at_ms, at_ms, interval_ms, heard_at_ms, position_epoch,
            position_offset, status, gone_reason, gone_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (id) DO UPDATE SET host = ?2, pid = ?3, version = ?4, queues = ?5,
            concurrency = ?6, prefetch = ?7, running = ?8, counts = ?9, started_at_ms = ?10,
            at_ms = ?11, interval_ms = ?12, heard_at_ms = ?13, position_epoch = ?14,
            position_offset = ?15, status = ?16, gone_reason = ?17, gone_at_ms = ?18",
    )?
    .execute(params![
        hb.worker,
        hb.host,
        hb.pid,
        hb.version,
        to_json(&hb.queues),
        hb.concurrency,
        hb.prefetch,
        to_json(&hb.running),
        to_json(&hb.counts),
        hb.started_at_ms,
        hb.at_ms,
        hb.interval_ms,
        now_ms,
        position.epoch,
        position.offset,
        liveness.as_str(),
        presence.farewell.then_some("farewell"),
        gone,
    ])?;
    set_lost(tx, &hb.worker, liveness, counts)
}

/// Whether `worker` is known to be gone (a worker never heard from is not).
pub(crate) fn is_gone(tx: &Transaction<'_>, worker: &str) -> rusqlite::Result<bool> {
    let status: Option<String> = tx
        .prepare_cached("SELECT status FROM workers WHERE id = ?1")?
        .query_row([worker], |r| r.get(0))
        .optional()?;
    Ok(status.as_deref() == Some(Liveness::Gone.as_str()))
}

/// Marks gone the alive workers silent for [`SILENT_INTERVALS`]: by the index's clock
/// (`now_ms` against when it received their last heartbeat), or by the stream's
/// (`stream_now_ms`, the newest `at_ms` read, against their last heartbeat's `at_ms`).
/// Returns their ids.
pub(crate) fn mark_silent(
    tx: &Transaction<'_>,
    now_ms: u64,
    stream_now_ms: u64,
    counts: &mut CountChanges,
) -> rusqlite::Result<Vec<String>> {
    let silent: Vec<String> = tx
        .prepare_cached(
            "UPDATE workers SET status = 'gone', gone_reason = 'silent', gone_at_ms = ?1
             WHERE status = 'alive'
               AND (heard_at_ms + ?3 * interval_ms < ?1 OR at_ms + ?3 * interval_ms < ?2)
             RETURNING id",
        )?
        .query_map(params![now_ms, stream_now_ms, SILENT_INTERVALS], |r| {
            r.get(0)
        })?
        .collect::<Result<_, _>>()?;
    for worker in &silent {
        set_lost(tx, worker, Liveness::Gone, counts)?;
    }
    Ok(silent)
}

/// Deletes the workers gone before `before_ms` (their lost tasks stay lost).
pub(crate) fn forget(tx: &Transaction<'_>, before_ms: u64) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM workers WHERE status = 'gone' AND gone_at_ms < ?1")?
        .execute([before_ms])
}

/// How many workers are alive, and how many gone.
pub(crate) fn count(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached(
        "SELECT count(*) FILTER (WHERE status = 'alive'), count(*) FILTER (WHERE status = 'gone')
         FROM workers",
    )?
    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// Moves the tasks whose deciding event is a `started` of `worker` to `lost` if it is gone,
/// back to `running` if it is alive.
fn set_lost(
    tx: &Transaction<'_>,
    worker: &str,
    liveness: Liveness,
    counts: &mut CountChanges,
) -> rusqlite::Result<()> {
    // The states are written out so that SQLite uses the partial index `tasks_by_worker`.
    let (from, to, sql) = match liveness {
        Liveness::Gone => (
            State::Running,
            State::Lost,
            "UPDATE tasks SET state = 'lost' WHERE worker = ?1 AND state = 'running'
             AND state IN ('running', 'lost') AND rank_phase = 0 RETURNING queue",
        ),
        Liveness::Alive => (
            State::Lost,
            State::Running,
            "UPDATE tasks SET state = 'running' WHERE worker = ?1 AND state = 'lost'
             AND state IN ('running', 'lost') AND rank_phase = 0 RETURNING queue",
        ),
    };
    let mut moved = tx.prepare_cached(sql)?;
    let mut rows = moved.query([worker])?;
    while let Some(row) = rows.next()? {
        let queue: String = row.get(0)?;
        *counts.entry((queue.clone(), from)).or_default() -= 1;
        *counts.entry((queue, to)).or_default() += 1;
    }
    Ok(())
}

/// The workers indexed: alive ones first, then the gone, each by id.
pub(crate) fn list(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<WorkerStatus>> {
    let mut statement = conn.prepare(
        "SELECT id, host, pid, version, queues, concurrency, prefetch, running, counts,
            started_at_ms, at_ms, interval_ms, status, gone_reason, gone_at_ms, heard_at_ms
         FROM workers ORDER BY status = 'gone', id",
    )?;
    let rows = statement.query_map([], |r| {
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        Ok(WorkerStatus {
            heartbeat: Heartbeat {
                worker: r.get(0)?,
                host: r.get(1)?,
                pid: r.get(2)?,
                version: r.get(3)?,
                queues: parse_json(&text(4)?, 4)?,
                concurrency: r.get(5)?,
                prefetch: r.get(6)?,
                running: parse_json(&text(7)?, 7)?,
                counts: parse_json::<BTreeMap<String, u64>>(&text(8)?, 8)?,
                started_at_ms: r.get(9)?,
                at_ms: r.get(10)?,
                interval_ms: r.get(11)?,
            },
            status: if text(12)? == Liveness::Gone.as_str() {
                Liveness::Gone
            } else {
                Liveness::Alive
            },
            gone_reason: r.get(13)?,
            gone_at_ms: r.get(14)?,
            heard_at_ms: r.get(15)?,
        })
    })?;
    rows.collect()
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, index: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into())
    })
}

/// A field stored as JSON text.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Vectors of strings and maps of strings to numbers always serialize.
    serde_json::to_string(value).unwrap_or_default()
}
