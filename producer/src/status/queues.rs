//! The Warren queues the index knows, for the console's overview: every queue that tasks in
//! the index name (the counts per queue and state, kept with the tasks) or that a worker's
//! heartbeat lists, with its tasks per state and its alive workers. AMQP cannot list queues;
//! this is the index's part of the answer (ready and consumer counts come from the broker).

use super::merge::State;
use super::store::state_column;
use rusqlite::Connection;
use std::collections::BTreeMap;

/// A queue as the index knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueSummary {
    pub(crate) queue: String,
    /// Its tasks in the index per state (states with none are left out).
    pub(crate) tasks: Vec<(State, u64)>,
    /// Alive workers whose last heartbeat lists it.
    pub(crate) workers: u64,
}

impl QueueSummary {
    /// Its tasks in `state`.
    pub(crate) fn count(&self, state: State) -> u64 {
        self.tasks
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}

/// Every queue the index knows, by name. Reads the counts and the workers tables, both
/// small: a row per queue and state, a row per worker.
pub(crate) fn queues(conn: &Connection) -> rusqlite::Result<Vec<QueueSummary>> {
    let tx = conn.unchecked_transaction()?;
    let mut queues: BTreeMap<String, QueueSummary> = BTreeMap::new();
    {
        let mut counts = tx.prepare_cached("SELECT queue, state, tasks FROM counts")?;
        let mut rows = counts.query([])?;
        while let Some(row) = rows.next()? {
            let queue: String = row.get(0)?;
            let state = state_column(row, 1)?;
            let tasks: u64 = row.get(2)?;
            let summary = queues.entry(queue.clone()).or_insert_with(|| QueueSummary {
                queue,
                ..QueueSummary::default()
            });
            summary.tasks.push((state, tasks));
        }
        let mut heard = tx.prepare_cached(
            "SELECT q.value, count(*) FILTER (WHERE w.status = 'alive')
             FROM workers AS w, json_each(w.queues) AS q
             WHERE json_valid(w.queues) GROUP BY q.value",
        )?;
        let mut rows = heard.query([])?;
        while let Some(row) = rows.next()? {
            let queue: String = row.get(0)?;
            let workers: u64 = row.get(1)?;
            let summary = queues.entry(queue.clone()).or_insert_with(|| QueueSummary {
                queue,
                ..QueueSummary::default()
            });
            summary.workers = workers;
        }
    }
    tx.finish()?;
    let mut queues: Vec<QueueSummary> = queues.into_values().collect();
    for summary in &mut queues {
        // In the order of the states' table (docs/status.md), not the file's.
        summary
            .tasks
            .sort_by_key(|(state, _)| State::INDEXED.iter().position(|s| s == state));
    }
    Ok(queues)
}
