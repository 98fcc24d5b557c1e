//! A synthetic index for benchmarks: many tasks and dead letters in one queue, written through
//! the same apply path as events read from the stream (timelines, counts, throughput buckets
//! and dead-letter counts included), in large transactions, without a broker.

use super::store::{Batch, IndexError, Store};
use std::path::Path;
use warren_common::events::{Event, EventError, EventKind, Stamped};

/// Events in one synthetic batch (one stream message), as a busy worker writes them.
const BATCH: usize = 100;
/// Batches applied in one transaction.
const BATCHES_PER_TRANSACTION: usize = 500;
/// The reason kinds the synthetic dead letters cycle through.
pub const SEED_REASON_KINDS: [&str; 3] = ["retries_exhausted", "crash_loop", "expired"];

/// What [`seed_index`] writes.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The queue of every task.
    pub queue: String,
    /// Tasks that succeeded (one `succeeded` event each), ids `seed-task-{n}` from 0.
    pub tasks: u64,
    /// Dead letters (a `retrying` then an ending each), ids `seed-dead-{n}` from 0: reason kinds
    /// in turn from [`SEED_REASON_KINDS`] (`expired` ones as `expired` events), task names
    /// `seed.a` and `seed.b` in turn.
    pub dead_letters: u64,
    /// The events' times are spread evenly over the `span_ms` before `now_ms` (so the
    /// throughput buckets of the last hour hold some), in task order.
    pub now_ms: u64,
    /// See `now_ms`.
    pub span_ms: u64,
}

/// Fills the index file at `path` (created if missing; for the events stream `stream`) with
/// `seed`'s tasks then its dead letters, and returns the events applied. The file is then an
/// index `serve --index` opens, as if it had read a stream of those events.
pub fn seed_index(path: &Path, stream: &str, seed: &Seed) -> Result<u64, IndexError> {
    let mut store = Store::open(path, stream)?;
    let total = seed.tasks + seed.dead_letters;
    let mut events = Vec::with_capacity(BATCH);
    let mut batches = Vec::with_capacity(BATCHES_PER_TRANSACTION);
    let (mut seq, mut offset, mut applied) = (0u64, store_next_offset(&store), 0u64);
    for n in 0..total {
        let at_ms = seed.now_ms.saturating_sub(seed.span_ms) + seed.span_ms * n / total.max(1);
        for event in task_events(seed, n, at_ms) {
            events.push(Stamped {
                source: "seed".into(),
                seq,
                event,
            });
            seq += 1;
        }
        if events.len() >= BATCH || n + 1 == total {
            let first_seq = events.first().map_or(0, |e: &Stamped| e.seq);
            batches.push(Batch {
                offset,
                source: "seed".into(),
                first_seq,
                events: std::mem::take(&mut events),
                presence: None,
            });
            offset += 1;
        }
        if batches.len() >= BATCHES_PER_TRANSACTION || n + 1 == total {
            let done = store.apply(&batches, 0, seed.now_ms)?;
            applied += done.applied + done.superseded;
            batches.clear();
        }
    }
    Ok(applied)
}

/// The offset after the file's last batch, so that seeding a file again adds events later in
/// the stream.
fn store_next_offset(store: &Store) -> u64 {
    store.progress().last.as_ref().map_or(0, |l| l.offset + 1)
}

/// The events of the `n`-th task of `seed`, recorded at `at_ms`.
fn task_events(seed: &Seed, n: u64, at_ms: u64) -> Vec<Event<'static>> {
    let event = |kind: EventKind, id: &str, task: &str, attempt: u32| {
        let mut event = Event::new(kind, id, task, &seed.queue).into_owned();
        event.at_ms = at_ms;
        event.attempt = Some(attempt);
        event.delivery_count = Some(0);
        event
    };
    if n < seed.tasks {
        return vec![event(
            EventKind::Succeeded,
            &format!("seed-task-{n}"),
            "seed.task",
            1,
        )];
    }
    let d = n - seed.tasks;
    let id = format!("seed-dead-{d}");
    let task = if d.is_multiple_of(2) {
        "seed.a"
    } else {
        "seed.b"
    };
    let kind = SEED_REASON_KINDS[(d % SEED_REASON_KINDS.len() as u64) as usize];
    let mut retrying = event(EventKind::Retrying, &id, task, 1);
    retrying.error = Some(EventError {
        kind: "handler".into(),
        reason: "a first failure".into(),
    });
    retrying.retry_at_ms = Some(at_ms);
    let ending_kind = if kind == "expired" {
        EventKind::Expired
    } else {
        EventKind::DeadLettered
    };
    let mut ending = event(ending_kind, &id, task, 2);
    ending.error = Some(EventError {
        kind: kind.into(),
        reason: "seeded".into(),
    });
    vec![retrying, ending]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::dead_letters::{self, DeadLetterFilter};
    use crate::status::history;
    use crate::status::merge::State;
    use crate::status::queues;

    #[test]
    fn a_seeded_index_holds_the_tasks_and_dead_letters_asked_for() {
        let path = std::env::temp_dir().join(format!("warren-seed-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let seed = Seed {
            queue: "q".into(),
            tasks: 1_000,
            dead_letters: 300,
            now_ms: 10_000_000,
            span_ms: 3_600_000,
        };
        assert_eq!(seed_index(&path, "events", &seed).unwrap(), 1_600);
        let store = Store::open(&path, "events").unwrap();
        let conn = store.connection();
        let known = queues::queues(conn).unwrap();
        assert_eq!(known.len(), 1);
        let q = &known[0];
        assert_eq!(q.count(State::Succeeded), 1_000);
        assert_eq!(q.count(State::DeadLettered) + q.count(State::Expired), 300);
        let kinds = dead_letters::dead_letter_kinds(conn, "q").unwrap();
        assert_eq!(kinds.iter().map(|k| k.tasks).collect::<Vec<_>>(), [100; 3]);
        let filter = DeadLetterFilter {
            queue: "q".into(),
            limit: 2,
            ..DeadLetterFilter::default()
        };
        let page = dead_letters::dead_letters(conn, &filter).unwrap();
        let ids: Vec<&str> = page.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["seed-dead-299", "seed-dead-298"]);
        assert_eq!(history::timeline(conn, "seed-dead-0").unwrap().len(), 2);
        drop(store);
        remove(&path);
    }

    fn remove(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// The console's reads on the scale, timed: a measurement printed for
    /// docs/performance.md, not a test of speed (it asserts only what it read).
    #[test]
    #[ignore = "a measurement: seeds 1,000,000 tasks and 100,000 dead letters (about a minute); run by hand with --run-ignored"]
    fn console_reads_with_a_million_tasks_and_100_000_dead_letters() {
        use crate::status::query::{self, Cursor, Filter};
        use crate::status::throughput;
        use std::time::Instant;
        let path = std::env::temp_dir().join(format!("warren-seed-m-{}.db", std::process::id()));
        remove(&path);
        let seed = Seed {
            queue: "q".into(),
            tasks: 1_000_000,
            dead_letters: 100_000,
            now_ms: warren_common::now_ms(),
            span_ms: 3_600_000,
        };
        let start = Instant::now();
        let events = seed_index(&path, "events", &seed).unwrap();
        println!(
            "seeded {events} events in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("file: {} bytes (WAL apart)", size);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let time = |what: &str, read: &dyn Fn() -> usize| {
            let _ = read();
            let mut runs: Vec<f64> = (0..20)
                .map(|_| {
                    let start = Instant::now();
                    let n = read();
                    assert!(n > 0, "{what} read nothing");
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            println!("{what}: median {:.3} ms, max {:.3} ms", runs[10], runs[19]);
        };
        let dead = |kind: Option<&str>, task: Option<&str>, after: Option<Cursor>| {
            let filter = DeadLetterFilter {
                queue: "q".into(),
                task: task.map(Into::into),
                reason_kind: kind.map(Into::into),
                after,
                limit: 50,
            };
            dead_letters::dead_letters(&conn, &filter)
                .unwrap()
                .tasks
                .len()
        };
        time("timeline of a dead letter", &|| {
            history::timeline(&conn, "seed-dead-50000").unwrap().len()
        });
        time("status of a task", &|| {
            usize::from(query::get(&conn, "seed-task-500000").unwrap().0.is_some())
        });
        time("throughput of the last hour", &|| {
            throughput::throughput(&conn, seed.now_ms - 3_600_000)
                .unwrap()
                .len()
        });
        time("queues", &|| queues::queues(&conn).unwrap().len());
        time("dead-letter kinds", &|| {
            dead_letters::dead_letter_kinds(&conn, "q").unwrap().len()
        });
        time("dead letters, first page of 50", &|| dead(None, None, None));
        time("dead letters of a kind, first page", &|| {
            dead(Some("crash_loop"), None, None)
        });
        time("dead letters of a task, first page", &|| {
            dead(None, Some("seed.b"), None)
        });
        time("dead letters of a task and kind", &|| {
            dead(Some("expired"), Some("seed.a"), None)
        });
        let middle = query::get(&conn, "seed-dead-50000").unwrap().0.unwrap();
        let cursor = Cursor {
            updated_at_ms: middle.updated_at_ms,
            id: middle.id,
        };
        time("dead letters, a page in the middle", &|| {
            dead(None, None, Some(cursor.clone()))
        });
        time("tasks listing, first page of 100", &|| {
            let filter = Filter {
                limit: 100,
                ..Filter::default()
            };
            query::list(&conn, &filter).unwrap().tasks.len()
        });
        drop(conn);
        remove(&path);
    }
}
