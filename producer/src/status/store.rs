//! The index file, as its one writer sees it: a row per task holding its status and the rank
//! of the event that decided it, task counts per queue and state kept in the same
//! transactions, how far into the stream the index has read, and the gaps it found there.
//! Beside them, in the same transactions: each task's timeline ([`history`]), the throughput
//! counters ([`super::throughput`]) and the dead-letter counts per reason kind
//! ([`dead_letters`]).
//! Every change, including the stream offset it covers, commits in one transaction, so the
//! file is always a consistent snapshot of the stream up to its stored offset. Each event of
//! a batch is applied by [`super::apply`].

use super::apply::apply_event;
use super::dead_letters::{self, KindChanges};
use super::history;
use super::merge::{Position, Rank, State};
use super::throughput::Tally;
use super::workers::{self, Presence};
use rusqlite::{params, Connection, Transaction};
use std::collections::HashMap;
use std::path::Path;
use warren_common::events::Stamped;

/// The file's layout (`PRAGMA user_version`); a file of another is refused rather than
/// misread. 2: `published` events (replays in the rank, the payload's copy). 3: timelines,
/// throughput counters, dead-letter counts and indexes.
const VERSION: i64 = 3;

/// The tables and indexes (created if missing): see `schema.sql`.
const SCHEMA: &str = include_str!("schema.sql");

/// Why the index cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite failed (the file cannot be created, read or written).
    #[error("status index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was made by another version of Warren (0: one older than layout versions).
    #[error("the status index file {file} has layout version {found}, not {VERSION}: delete it (or pass another --index) and the index is rebuilt from the events stream, as far back as the stream keeps events; or use the Warren that made it")]
    Version {
        /// The file.
        file: String,
        /// The version found.
        found: i64,
    },
    /// The index's metrics could not be registered (the registry already holds them).
    #[error("cannot register the status index metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The file indexes another stream.
    #[error("the status index file follows the events stream `{indexed}`, not `{given}`: use another file for another stream")]
    OtherStream {
        /// The stream the file follows.
        indexed: String,
        /// The stream asked for.
        given: String,
    },
}

/// Where the index stands in the stream, as committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) epoch: u64,
    /// The last offset applied in this epoch, with the identity of its batch.
    pub(crate) last: Option<LastBatch>,
    /// The newest `at_ms` of the events applied.
    pub(crate) last_event_at_ms: Option<u64>,
}

/// The last batch applied: its offset and what identifies it when read again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LastBatch {
    pub(crate) offset: u64,
    pub(crate) source: String,
    pub(crate) first_seq: u64,
}

/// One message of the stream, read.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// Its `x-stream-offset`.
    pub(crate) offset: u64,
    /// Its source and first sequence number (empty and 0 for a batch not in the format).
    pub(crate) source: String,
    pub(crate) first_seq: u64,
    /// Its events (none for a batch not in the format: it is passed over).
    pub(crate) events: Vec<Stamped>,
    /// A worker's heartbeat or farewell instead of events.
    pub(crate) presence: Option<Presence>,
}

/// Why the index may miss events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapReason {
    /// The stream's retention removed events the index had not read.
    Retention,
    /// The stream was deleted and declared again.
    Recreated,
}

impl GapReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::Recreated => "recreated",
        }
    }
}

/// Changes of the task counts, per queue and state.
pub(crate) type CountChanges = HashMap<(String, State), i64>;

/// What applying some batches did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Events that changed a task's status.
    pub(crate) applied: u64,
    /// Events outranked by the status already indexed (or applied again).
    pub(crate) superseded: u64,
    /// Events of tasks not indexed, older than the index's retention: not indexed.
    pub(crate) outdated: u64,
    pub(crate) counts: CountChanges,
    /// Changes of the dead-letter counts per queue and reason kind.
    pub(crate) dead_letters: KindChanges,
    /// Endings and retries new to the index, for the throughput counters.
    pub(crate) throughput: Tally,
}

/// The index file, opened for writing.
pub(crate) struct Store {
    conn: Connection,
    progress: Progress,
    /// The newest `at_ms` read from the stream, heartbeats included: the stream's clock that
    /// judges the silence of workers while the index catches up.
    stream_now_ms: u64,
}

impl Store {
    /// Opens (creating if need be) the index file at `path` for the events stream `stream`.
    pub(crate) fn open(path: &Path, stream: &str) -> Result<Store, IndexError> {
        Store::init(Connection::open(path)?, stream).map_err(|error| match error {
            IndexError::Version { found, .. } => IndexError::Version {
                file: path.display().to_string(),
                found,
            },
            other => other,
        })
    }

    /// An index in memory, for tests.
    #[cfg(test)]
    pub(crate) fn in_memory(stream: &str) -> Result<Store, IndexError> {
        Store::init(Connection::open_in_memory()?, stream)
    }

    fn init(conn: Connection, stream: &str) -> Result<Store, IndexError> {
        // WAL: readers never wait for the writer. NORMAL: a power loss can lose the last
        // transactions, never consistency, and the index then reads them again.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        // Version 0 is a new file, or one from before layout versions (it has tables).
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let fresh = found == 0 && tables == 0;
        if !fresh && found != VERSION {
            return Err(IndexError::Version {
                file: String::new(),
                found,
            });
        }
        conn.execute_batch(SCHEMA)?;
        if fresh {
            conn.pragma_update(None, "user_version", VERSION)?;
        }
        conn.execute(
            "INSERT INTO progress (only, stream, epoch) VALUES (1, ?1, 0) ON CONFLICT DO NOTHING",
            [stream],
        )?;
        let indexed: String = conn.query_row("SELECT stream FROM progress", [], |r| r.get(0))?;
        if indexed != stream {
            return Err(IndexError::OtherStream {
                indexed,
                given: stream.to_owned(),
            });
        }
        let progress = read_progress(&conn)?;
        let heard: Option<u64> =
            conn.query_row("SELECT max(at_ms) FROM workers", [], |r| r.get(0))?;
        let stream_now_ms = heard.max(progress.last_event_at_ms).unwrap_or(0);
        Ok(Store {
            conn,
            progress,
            stream_now_ms,
        })
    }

    /// Where the index stands.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The connection, for queries.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Applies `batches` (in stream order) in one transaction that also stores the last one's
    /// offset. Events of tasks not indexed whose `at_ms` is before `horizon_ms` are left out:
    /// retention would delete them. Heartbeats are received at `now_ms` (the index's clock);
    /// workers silent for their intervals by the stream's clock are then gone.
    pub(crate) fn apply(
        &mut self,
        batches: &[Batch],
        horizon_ms: u64,
        now_ms: u64,
    ) -> rusqlite::Result<Applied> {
        let Some(last) = batches.last() else {
            return Ok(Applied::default());
        };
        let epoch = self.progress.epoch;
        let mut applied = Applied::default();
        let mut newest = self.progress.last_event_at_ms;
        let mut stream_now_ms = self.stream_now_ms;
        let tx = self.conn.transaction()?;
        for batch in batches {
            for event in &batch.events {
                let rank = Rank::of(event, epoch, batch.offset);
                apply_event(&tx, event, rank, (horizon_ms, now_ms), &mut applied)?;
                newest = newest.max(Some(event.event.at_ms));
            }
            if let Some(presence) = &batch.presence {
                let position = Position {
                    epoch,
                    offset: batch.offset,
                    seq: 0,
                };
                workers::apply(&tx, presence, position, now_ms, &mut applied.counts)?;
                stream_now_ms = stream_now_ms.max(presence.heartbeat.at_ms);
            }
        }
        stream_now_ms = stream_now_ms.max(newest.unwrap_or(0));
        workers::mark_silent(&tx, now_ms, stream_now_ms, &mut applied.counts)?;
        change_counts(&tx, &applied.counts)?;
        dead_letters::change(&tx, &applied.dead_letters)?;
        applied.throughput.write(&tx, now_ms)?;
        tx.prepare_cached(
            "UPDATE progress SET stream_offset = ?1, batch_source = ?2, batch_first_seq = ?3,
             last_event_at_ms = ?4",
        )?
        .execute(params![last.offset, last.source, last.first_seq, newest])?;
        tx.commit()?;
        self.progress.last = Some(LastBatch {
            offset: last.offset,
            source: last.source.clone(),
            first_seq: last.first_seq,
        });
        self.progress.last_event_at_ms = newest;
        self.stream_now_ms = stream_now_ms;
        Ok(applied)
    }

    /// Counts the silence of the alive workers from `now_ms`, when the index opens: it
    /// could not hear them while it was not running, and reads what they sent meanwhile
    /// (judged by the stream's clock) before its own clock can find them silent.
    pub(crate) fn resume_workers(&mut self, now_ms: u64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE workers SET heard_at_ms = max(heard_at_ms, ?1) WHERE status = 'alive'",
            [now_ms],
        )?;
        Ok(())
    }

    /// Marks gone the workers silent for their intervals by `now_ms` (the index's clock) or
    /// the stream's clock, and deletes those gone before `forget_before_ms`.
    pub(crate) fn check_workers(
        &mut self,
        now_ms: u64,
        forget_before_ms: u64,
    ) -> rusqlite::Result<(CountChanges, Vec<String>)> {
        let mut counts = CountChanges::new();
        let tx = self.conn.transaction()?;
        let silent = workers::mark_silent(&tx, now_ms, self.stream_now_ms, &mut counts)?;
        workers::forget(&tx, forget_before_ms)?;
        change_counts(&tx, &counts)?;
        tx.commit()?;
        Ok((counts, silent))
    }

    /// Records that events may be missing from the index. For a recreated stream, the index
    /// starts a new epoch and reads the stream again from its start.
    pub(crate) fn record_gap(
        &mut self,
        reason: GapReason,
        resumed_offset: Option<u64>,
        now_ms: u64,
    ) -> rusqlite::Result<()> {
        let stored = self.progress.last.as_ref().map_or(0, |l| l.offset);
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO gaps (reason, since_ms, detected_at_ms, stored_offset, resumed_offset)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                reason.as_str(),
                self.progress.last_event_at_ms,
                now_ms,
                stored,
                resumed_offset
            ],
        )?;
        if reason == GapReason::Recreated {
            tx.execute(
                "UPDATE progress SET epoch = epoch + 1, stream_offset = NULL,
                 batch_source = NULL, batch_first_seq = NULL",
                [],
            )?;
        }
        tx.commit()?;
        if reason == GapReason::Recreated {
            self.progress.epoch += 1;
            self.progress.last = None;
        }
        Ok(())
    }

    /// Deletes up to `limit` tasks that ended before `before_ms`, with their timelines,
    /// keeping the counts right.
    pub(crate) fn sweep(&mut self, before_ms: u64, limit: usize) -> rusqlite::Result<CountChanges> {
        let tx = self.conn.transaction()?;
        let mut counts = CountChanges::new();
        let mut dead = KindChanges::new();
        let mut ids = Vec::new();
        {
            let mut delete = tx.prepare_cached(
                "DELETE FROM tasks WHERE id IN
                 (SELECT id FROM tasks WHERE ended_at_ms < ?1 LIMIT ?2)
                 RETURNING queue, state, error_kind, id",
            )?;
            let mut rows = delete.query(params![before_ms, limit as u64])?;
            while let Some(row) = rows.next()? {
                let queue: String = row.get(0)?;
                let state = state_column(row, 1)?;
                let kind: Option<String> = row.get(2)?;
                dead_letters::count(&mut dead, &queue, state, kind.as_deref(), -1);
                *counts.entry((queue, state)).or_default() -= 1;
                ids.push(row.get::<_, String>(3)?);
            }
        }
        for id in &ids {
            history::forget(&tx, id)?;
        }
        change_counts(&tx, &counts)?;
        dead_letters::change(&tx, &dead)?;
        tx.commit()?;
        Ok(counts)
    }
}

/// A state column, refusing a name this version does not know.
pub(crate) fn state_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<State> {
    let name: String = row.get(index)?;
    State::parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown state `{name}`").into(),
        )
    })
}

fn change_counts(tx: &Transaction<'_>, counts: &CountChanges) -> rusqlite::Result<()> {
    let mut change = tx.prepare_cached(
        "INSERT INTO counts (queue, state, tasks) VALUES (?1, ?2, ?3)
         ON CONFLICT (queue, state) DO UPDATE SET tasks = tasks + excluded.tasks",
    )?;
    for ((queue, state), delta) in counts {
        if *delta != 0 {
            change.execute(params![queue, state.as_str(), delta])?;
        }
    }
    // The table holds what is there: the same tasks, however batched, give the same rows.
    tx.prepare_cached("DELETE FROM counts WHERE tasks = 0")?
        .execute([])?;
    Ok(())
}

fn read_progress(conn: &Connection) -> rusqlite::Result<Progress> {
    conn.query_row(
        "SELECT epoch, stream_offset, batch_source, batch_first_seq, last_event_at_ms
         FROM progress",
        [],
        |r| {
            let offset: Option<u64> = r.get(1)?;
            let last = match offset {
                Some(offset) => Some(LastBatch {
                    offset,
                    source: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    first_seq: r.get::<_, Option<u64>>(3)?.unwrap_or(0),
                }),
                None => None,
            };
            Ok(Progress {
                epoch: r.get(0)?,
                last,
                last_event_at_ms: r.get(4)?,
            })
        },
    )
}
