//! Reading the index: a task's status by id, and filtered listings, newest change first,
//! paged by a cursor. Each answer is one read transaction, so it is a snapshot of the index
//! after some committed transaction of the writer, with the index's own state (how far it has
//! read, whether it may miss events) from the same snapshot.

use super::merge::State;
use super::store::state_column;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

/// A task's status as indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskStatus {
    pub(crate) id: String,
    pub(crate) state: State,
    pub(crate) task: String,
    pub(crate) queue: String,
    pub(crate) attempt: Option<u32>,
    pub(crate) delivery_count: Option<u64>,
    /// The source of the deciding event.
    pub(crate) worker: String,
    pub(crate) updated_at_ms: u64,
    pub(crate) started_at_ms: Option<u64>,
    pub(crate) ended_at_ms: Option<u64>,
    pub(crate) retry_at_ms: Option<u64>,
    /// The last error's kind and reason.
    pub(crate) error: Option<(String, String)>,
    /// The handler's result as JSON text, and why a result was left out; read for one task's
    /// status, not for listings.
    pub(crate) result: Option<String>,
    pub(crate) result_error: Option<String>,
    /// Replays from the dead letters (`x-warren-replays`) of the deciding event.
    pub(crate) replays: Option<u32>,
    /// When its `published` event was recorded, if one was read.
    pub(crate) published_at_ms: Option<u64>,
    /// The payload's copy in its `published` event, as JSON.
    pub(crate) payload: Option<String>,
}

/// How complete and how fresh the index is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Events before this time (of the index's last event before a gap; 0 when none) may be
    /// missing: retention removed them unread, or the stream was recreated.
    pub(crate) incomplete_since_ms: Option<u64>,
    /// The newest `at_ms` of the events applied.
    pub(crate) last_event_at_ms: Option<u64>,
}

/// Where a listing continues: after this (time, id), newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) updated_at_ms: u64,
    pub(crate) id: String,
}

impl Cursor {
    /// The opaque text form: the time in hex, a dot, the id's bytes in hex.
    pub(crate) fn encode(&self) -> String {
        use std::fmt::Write;
        let mut text = format!("{:x}.", self.updated_at_ms);
        for byte in self.id.as_bytes() {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// Reads [`encode`](Self::encode)'s form; any such text is a position, even one no
    /// listing gave.
    pub(crate) fn decode(text: &str) -> Option<Cursor> {
        let (time, id) = text.split_once('.')?;
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if time.is_empty() || time.len() > 16 || id.len() % 2 != 0 {
            return None;
        }
        if !lower_hex(time) || !lower_hex(id) {
            return None;
        }
        let updated_at_ms = u64::from_str_radix(time, 16).ok()?;
        let bytes = (0..id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(id.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Cursor {
            updated_at_ms: updated_at_ms.min(i64::MAX as u64),
            id: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub(crate) state: Option<State>,
    pub(crate) task: Option<String>,
    pub(crate) queue: Option<String>,
    /// Only tasks whose status changed at or after this time.
    pub(crate) since_ms: Option<u64>,
    pub(crate) limit: usize,
    pub(crate) after: Option<Cursor>,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub(crate) struct Page {
    pub(crate) tasks: Vec<TaskStatus>,
    /// Where the next page starts; none when this one is the last.
    pub(crate) next: Option<Cursor>,
    pub(crate) freshness: Freshness,
}

pub(crate) const COLUMNS: &str =
    "id, state, task, queue, attempt, delivery_count, worker, updated_at_ms,
    started_at_ms, ended_at_ms, retry_at_ms, error_kind, error_reason, replays, published_at_ms,
    payload";

fn status(row: &Row<'_>) -> rusqlite::Result<TaskStatus> {
    let kind: Option<String> = row.get(11)?;
    let reason: Option<String> = row.get(12)?;
    Ok(TaskStatus {
        id: row.get(0)?,
        state: state_column(row, 1)?,
        task: row.get(2)?,
        queue: row.get(3)?,
        attempt: row.get(4)?,
        delivery_count: row.get(5)?,
        worker: row.get(6)?,
        updated_at_ms: row.get(7)?,
        started_at_ms: row.get(8)?,
        ended_at_ms: row.get(9)?,
        retry_at_ms: row.get(10)?,
        error: kind.map(|k| (k, reason.unwrap_or_default())),
        replays: row.get(13)?,
        published_at_ms: row.get(14)?,
        payload: row.get(15)?,
        result: None,
        result_error: None,
    })
}

/// A task's status with its result.
fn detail(row: &Row<'_>) -> rusqlite::Result<TaskStatus> {
    Ok(TaskStatus {
        result: row.get(16)?,
        result_error: row.get(17)?,
        ..status(row)?
    })
}

pub(crate) fn freshness(conn: &Connection) -> rusqlite::Result<Freshness> {
    conn.query_row(
        "SELECT (SELECT min(coalesce(since_ms, 0)) FROM gaps),
                (SELECT last_event_at_ms FROM progress)",
        [],
        |r| {
            Ok(Freshness {
                incomplete_since_ms: r.get(0)?,
                last_event_at_ms: r.get(1)?,
            })
        },
    )
}

/// The status of task `id`, if indexed.
pub(crate) fn get(
    conn: &Connection,
    id: &str,
) -> rusqlite::Result<(Option<TaskStatus>, Freshness)> {
    let tx = conn.unchecked_transaction()?;
    let found = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, result, result_error FROM tasks WHERE id = ?1"
        ))?
        .query_row([id], detail)
        .optional()?;
    let fresh = freshness(&tx)?;
    tx.finish()?;
    Ok((found, fresh))
}

/// A page of the tasks matching `filter`, newest change first.
pub(crate) fn list(conn: &Connection, filter: &Filter) -> rusqlite::Result<Page> {
    let mut clauses = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut bind = |clause: &str, value: Value| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("?{}", values.len())));
    };
    if let Some(state) = filter.state {
        bind("state = ?", Value::Text(state.as_str().to_owned()));
    }
    if let Some(task) = &filter.task {
        bind("task = ?", Value::Text(task.clone()));
    }
    if let Some(queue) = &filter.queue {
        bind("queue = ?", Value::Text(queue.clone()));
    }
    if let Some(since) = filter.since_ms {
        bind("updated_at_ms >= ?", Value::Integer(to_i64(since)));
    }
    if let Some(after) = &filter.after {
        values.push(Value::Integer(to_i64(after.updated_at_ms)));
        values.push(Value::Text(after.id.clone()));
        let (t, i) = (values.len() - 1, values.len());
        clauses.push(format!("(updated_at_ms, id) < (?{t}, ?{i})"));
    }
    let condition = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    // One more than asked: whether there is a next page.
    values.push(Value::Integer(filter.limit as i64 + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks {condition} ORDER BY updated_at_ms DESC, id DESC LIMIT ?{}",
        values.len()
    );
    page(conn, &sql, values, filter.limit)
}

/// Runs `sql`, a selection of [`COLUMNS`] newest first bound to `values` whose limit is one
/// more than `limit`, as a page with the index's freshness from the same snapshot.
pub(crate) fn page(
    conn: &Connection,
    sql: &str,
    values: Vec<Value>,
    limit: usize,
) -> rusqlite::Result<Page> {
    let tx = conn.unchecked_transaction()?;
    let mut tasks = tx
        .prepare_cached(sql)?
        .query_map(rusqlite::params_from_iter(values), status)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let fresh = freshness(&tx)?;
    tx.finish()?;
    let more = tasks.len() > limit;
    tasks.truncate(limit);
    // A limit of 0 has no last task to continue after: no cursor.
    let next = tasks.last().filter(|_| more).map(|last| Cursor {
        updated_at_ms: last.updated_at_ms,
        id: last.id.clone(),
    });
    Ok(Page {
        tasks,
        next,
        freshness: fresh,
    })
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Read-only connections to the index file, opened as needed and kept for reuse, so that
/// concurrent requests read concurrently (SQLite's WAL lets readers run beside the writer).
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Whether the writer has applied the stream up to where it ended when the writer
    /// (re)connected: set by the writer, said in every answer.
    caught_up: AtomicBool,
}

/// Idle connections kept; more are opened under load and closed after use.
const IDLE_READERS: usize = 4;

impl Readers {
    /// Readers of the index at `path` (which its writer has created).
    pub(crate) fn new(path: &Path) -> Arc<Readers> {
        Arc::new(Readers {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            caught_up: AtomicBool::new(false),
        })
    }

    /// Whether the index has caught up with the stream (see [`Readers::set_caught_up`]).
    pub(crate) fn caught_up(&self) -> bool {
        self.caught_up.load(AtomicOrdering::Relaxed)
    }

    /// Set by the writer: whether it has applied the stream up to where it ended when the
    /// writer last (re)connected.
    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, AtomicOrdering::Relaxed);
    }

    /// Runs `read` on a connection, on a blocking thread.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, read: F) -> rusqlite::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = self.clone();
        let run = tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = read(&conn);
            readers.give_back(conn);
            result
        });
        // A blocking task is never cancelled: only a panic (a bug) ends it early; pass it on.
        run.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn take(&self) -> rusqlite::Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(&self.path, flags)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_anything_else_is_refused() {
        let cursor = Cursor {
            updated_at_ms: 1_700_000_000_123,
            id: "task/é 1".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            ".",
            "x.00",
            "1.0",
            "1.zz",
            "12345678901234567.00",
            "1",
            "A.00",
            "1.0A",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        assert!(Cursor::decode("1.").is_some());
    }
}
