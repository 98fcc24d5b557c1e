//! Tasks per second, for the console's chart: counters of the endings and retries recorded,
//! per queue and per [`BUCKET_MS`] bucket of the events' own times (`at_ms`), kept for
//! [`KEPT_MS`].
//!
//! The counters change in the transaction that applies the events, by the events new to the
//! index (a batch read again counts nothing: its events are already in their tasks'
//! timelines, [`super::history`]), so they always agree with the stream up to the stored
//! offset. They count events, not tasks: a run whose ack was lost and that ran again counts
//! twice, as it ran twice; events superseded by the merge rule count all the same.

use rusqlite::{params, Connection, Transaction};
use std::collections::HashMap;
use warren_common::events::{Event, EventKind};

/// The width of a bucket: 10 seconds.
pub(crate) const BUCKET_MS: u64 = 10_000;
/// How long buckets are kept, by the index's clock: an hour.
pub(crate) const KEPT_MS: u64 = 3_600_000;

/// The counters of one queue in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// The bucket's start, a multiple of [`BUCKET_MS`] since the epoch.
    pub(crate) start_ms: u64,
    pub(crate) queue: String,
    pub(crate) succeeded: u64,
    /// `retrying` events: attempts that failed and will run again.
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) expired: u64,
    pub(crate) cancelled: u64,
}

/// The changes one transaction makes to the counters: per (bucket start, queue), the counts
/// in [`Bucket`]'s order.
#[derive(Debug, Default)]
pub(crate) struct Tally(HashMap<(u64, String), [u64; 5]>);

impl Tally {
    /// Counts `event` if it is an ending or a retry recorded within [`KEPT_MS`] of `now_ms`.
    pub(crate) fn count(&mut self, event: &Event<'_>, now_ms: u64) {
        let column = match event.event {
            EventKind::Succeeded => 0,
            EventKind::Retrying => 1,
            EventKind::DeadLettered => 2,
            EventKind::Expired => 3,
            EventKind::Cancelled => 4,
            EventKind::Published | EventKind::Started => return,
        };
        let start = event.at_ms - event.at_ms % BUCKET_MS;
        // A bucket about to be pruned is not worth writing (an index catching up on days).
        if start + BUCKET_MS <= now_ms.saturating_sub(KEPT_MS) {
            return;
        }
        let key = (start, event.queue.to_string());
        self.0.entry(key).or_default()[column] += 1;
    }

    /// Adds the tally to the counters, and deletes the buckets older than [`KEPT_MS`] before
    /// `now_ms`.
    pub(crate) fn write(&self, tx: &Transaction<'_>, now_ms: u64) -> rusqlite::Result<()> {
        let mut add = tx.prepare_cached(
            "INSERT INTO throughput (bucket_ms, queue, succeeded, retried, dead_lettered,
                expired, cancelled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (bucket_ms, queue) DO UPDATE SET
                succeeded = succeeded + excluded.succeeded,
                retried = retried + excluded.retried,
                dead_lettered = dead_lettered + excluded.dead_lettered,
                expired = expired + excluded.expired,
                cancelled = cancelled + excluded.cancelled",
        )?;
        for ((start, queue), [s, r, d, e, c]) in &self.0 {
            add.execute(params![start, queue, s, r, d, e, c])?;
        }
        prune(tx, now_ms)
    }
}

/// Deletes the buckets that ended more than [`KEPT_MS`] before `now_ms`.
fn prune(tx: &Transaction<'_>, now_ms: u64) -> rusqlite::Result<()> {
    let Some(last_start) = now_ms.checked_sub(KEPT_MS + BUCKET_MS) else {
        return Ok(());
    };
    // The primary key starts with the bucket: a range, empty but once every 10 s.
    tx.prepare_cached("DELETE FROM throughput WHERE bucket_ms <= ?1")?
        .execute([last_start])?;
    Ok(())
}

/// The buckets that end after `since_ms` (the one holding `since_ms` included), oldest first, each queue's in name order;
/// buckets with nothing recorded are left out.
pub(crate) fn throughput(conn: &Connection, since_ms: u64) -> rusqlite::Result<Vec<Bucket>> {
    let start = since_ms - since_ms % BUCKET_MS;
    let mut statement = conn.prepare_cached(
        "SELECT bucket_ms, queue, succeeded, retried, dead_lettered, expired, cancelled
         FROM throughput WHERE bucket_ms >= ?1 ORDER BY bucket_ms, queue",
    )?;
    let rows = statement.query_map([start], |r| {
        Ok(Bucket {
            start_ms: r.get(0)?,
            queue: r.get(1)?,
            succeeded: r.get(2)?,
            retried: r.get(3)?,
            dead_lettered: r.get(4)?,
            expired: r.get(5)?,
            cancelled: r.get(6)?,
        })
    })?;
    rows.collect()
}
