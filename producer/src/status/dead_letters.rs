//! The dead letters of a queue as the index knows them: its tasks whose state is
//! `dead_lettered` or `expired` (the dead-letter queue holds both: an expired task is
//! dead-lettered with the reason kind `expired`), listed newest first and filtered by task or
//! reason kind, and their counts per reason kind.
//!
//! Listings are range scans of partial indexes that hold only those tasks (schema.sql), so a
//! page costs the same with a million succeeded tasks beside them. The counts per (queue,
//! kind) are kept in the same transactions as the tasks, like the counts per state, so the
//! kinds present are read without counting rows. The broker's dead-letter queue stays the
//! authority: the index shows what the events said, and keeps a dead letter until the index
//! retention deletes it, whether or not the queue still holds it.

use super::merge::State;
use super::query::{self, Cursor, Page};
use rusqlite::types::Value;
use rusqlite::{params, Connection, Transaction};
use std::collections::HashMap;

/// Changes of the dead-letter counts, per (queue, error kind).
pub(crate) type KindChanges = HashMap<(String, String), i64>;

/// The `WHERE` of the partial indexes, word for word (SQLite matches it as written).
const DEAD: &str = "state IN ('dead_lettered', 'expired')";

/// Whether a task in `state` is a dead letter.
pub(crate) fn is_dead(state: State) -> bool {
    matches!(state, State::DeadLettered | State::Expired)
}

/// Counts a task of `queue` in `state` with the error kind `kind` in (`delta` 1) or out
/// (`delta` -1) of the dead-letter counts, if it is a dead letter.
pub(crate) fn count(
    changes: &mut KindChanges,
    queue: &str,
    state: State,
    kind: Option<&str>,
    delta: i64,
) {
    if is_dead(state) {
        let key = (queue.to_owned(), kind.unwrap_or_default().to_owned());
        *changes.entry(key).or_default() += delta;
    }
}

/// Writes `changes` to the counts, in the transaction that changed the tasks.
pub(crate) fn change(tx: &Transaction<'_>, changes: &KindChanges) -> rusqlite::Result<()> {
    if changes.values().all(|delta| *delta == 0) {
        return Ok(());
    }
    let mut change = tx.prepare_cached(
        "INSERT INTO dead_letters (queue, kind, tasks) VALUES (?1, ?2, ?3)
         ON CONFLICT (queue, kind) DO UPDATE SET tasks = tasks + excluded.tasks",
    )?;
    for ((queue, kind), delta) in changes {
        if *delta != 0 {
            change.execute(params![queue, kind, delta])?;
        }
    }
    tx.prepare_cached("DELETE FROM dead_letters WHERE tasks = 0")?
        .execute([])?;
    Ok(())
}

/// The dead letters of a queue in the index with a reason kind, and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KindCount {
    /// The error kind (`retries_exhausted`, `expired`, `broker:delivery_limit`, ...; empty
    /// for an ending that gave none).
    pub(crate) kind: String,
    pub(crate) tasks: u64,
}

/// The reason kinds of `queue`'s dead letters in the index, most frequent first.
pub(crate) fn dead_letter_kinds(
    conn: &Connection,
    queue: &str,
) -> rusqlite::Result<Vec<KindCount>> {
    conn.prepare_cached(
        "SELECT kind, tasks FROM dead_letters WHERE queue = ?1 ORDER BY tasks DESC, kind",
    )?
    .query_map([queue], |r| {
        Ok(KindCount {
            kind: r.get(0)?,
            tasks: r.get(1)?,
        })
    })?
    .collect()
}

/// What to list of a queue's dead letters.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadLetterFilter {
    pub(crate) queue: String,
    /// Only this task name.
    pub(crate) task: Option<String>,
    /// Only this error kind (`expired` lists the expired tasks).
    pub(crate) reason_kind: Option<String>,
    pub(crate) after: Option<Cursor>,
    pub(crate) limit: usize,
}

/// A page of the dead letters matching `filter`, newest first (by the time of their ending).
pub(crate) fn dead_letters(conn: &Connection, filter: &DeadLetterFilter) -> rusqlite::Result<Page> {
    let mut values = vec![Value::Text(filter.queue.clone())];
    let mut clauses = vec![DEAD.to_owned(), "queue = ?1".to_owned()];
    if let Some(task) = &filter.task {
        values.push(Value::Text(task.clone()));
        clauses.push(format!("task = ?{}", values.len()));
    }
    if let Some(kind) = &filter.reason_kind {
        values.push(Value::Text(kind.clone()));
        clauses.push(format!("error_kind = ?{}", values.len()));
    }
    if let Some(after) = &filter.after {
        values.push(Value::Integer(
            i64::try_from(after.updated_at_ms).unwrap_or(i64::MAX),
        ));
        values.push(Value::Text(after.id.clone()));
        let (t, i) = (values.len() - 1, values.len());
        clauses.push(format!("(updated_at_ms, id) < (?{t}, ?{i})"));
    }
    values.push(Value::Integer(filter.limit as i64 + 1));
    let sql = format!(
        "SELECT {} FROM tasks WHERE {} ORDER BY updated_at_ms DESC, id DESC LIMIT ?{}",
        query::COLUMNS,
        clauses.join(" AND "),
        values.len()
    );
    query::page(conn, &sql, values, filter.limit)
}
