//! The merge rule (docs/wire-format.md §11.6) applied to an index in memory: events of one
//! task in any order end in the same status, a batch applied twice changes nothing, and the
//! counts per queue and state always equal the rows. The workers table and the `lost` state
//! are in [`workers`].

mod console;
mod published;
mod workers;

use super::merge::State;
use super::query::{self, Filter};
use super::store::{Batch, GapReason, Store};
use warren_common::events::{Event, EventError, EventKind, Stamped};

/// An event of task `id` from `source` (its `seq`), of attempt `attempt` and delivery count
/// `dc`, recorded at `at_ms`.
fn event(source: &str, seq: u64, kind: EventKind, id: &str, attempt: u32, dc: u64) -> Stamped {
    let mut event = Event::new(kind, id, "t", "q").into_owned();
    event.attempt = Some(attempt);
    event.delivery_count = Some(dc);
    event.at_ms = 1_000 + seq;
    if kind != EventKind::Started && kind != EventKind::Succeeded {
        event.error = Some(EventError {
            kind: "error".into(),
            reason: format!("{kind:?}").into(),
        });
    }
    if kind == EventKind::Retrying {
        event.retry_at_ms = Some(9_000);
    }
    Stamped {
        source: source.into(),
        seq,
        event,
    }
}

/// A batch at `offset` holding `events` (all from one source, consecutive numbers).
fn batch(offset: u64, events: Vec<Stamped>) -> Batch {
    Batch {
        offset,
        source: events[0].source.clone(),
        first_seq: events[0].seq,
        events,
        presence: None,
    }
}

fn store() -> Store {
    Store::in_memory("events").expect("an index in memory")
}

fn state(store: &Store, id: &str) -> Option<State> {
    let (found, _) = query::get(store.connection(), id).unwrap();
    found.map(|s| s.state)
}

/// Every row of the tasks, counts, timelines, throughput and dead-letter counts tables, as
/// text.
fn snapshot(store: &Store) -> Vec<String> {
    let conn = store.connection();
    let mut rows = Vec::new();
    for table in [
        "tasks ORDER BY id",
        "counts ORDER BY queue, state",
        "history ORDER BY id, position_epoch, position_offset, position_seq",
        "throughput ORDER BY bucket_ms, queue",
        "dead_letters ORDER BY queue, kind",
    ] {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            rows.push(values.join("|"));
        }
    }
    rows
}

/// The counts and dead-letter counts tables equal a count of the rows.
fn assert_counts_right(store: &Store) {
    console::assert_dead_letter_counts_right(store);
    let conn = store.connection();
    let kept: Vec<(String, String, i64)> = conn
        .prepare("SELECT queue, state, tasks FROM counts ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let counted: Vec<(String, String, i64)> = conn
        .prepare("SELECT queue, state, count(*) FROM tasks GROUP BY 1, 2 ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, counted);
}

use EventKind::*;

#[test]
fn an_ending_that_arrives_before_its_start_stays_the_status() {
    let mut index = store();
    index
        .apply(
            &[batch(1, vec![event("w2", 0, Succeeded, "a", 1, 0)])],
            0,
            0,
        )
        .unwrap();
    index
        .apply(&[batch(2, vec![event("w1", 7, Started, "a", 1, 0)])], 0, 0)
        .unwrap();
    assert_eq!(state(&index, "a"), Some(State::Succeeded));
    let (status, _) = query::get(index.connection(), "a").unwrap();
    let status = status.unwrap();
    assert_eq!(status.worker, "w2");
    assert_eq!(
        status.started_at_ms,
        Some(1_007),
        "the late start still dates the run"
    );
    assert_eq!(status.ended_at_ms, Some(1_000));
    assert_counts_right(&index);
}

#[test]
fn a_rerun_with_a_higher_delivery_count_replaces_the_earlier_run() {
    let first_run = batch(1, vec![event("w1", 0, Succeeded, "a", 1, 0)]);
    let rerun_start = batch(2, vec![event("w2", 0, Started, "a", 1, 1)]);
    let rerun_end = batch(3, vec![event("w2", 1, DeadLettered, "a", 1, 1)]);
    let mut index = store();
    index
        .apply(&[first_run.clone(), rerun_start.clone()], 0, 0)
        .unwrap();
    assert_eq!(state(&index, "a"), Some(State::Running));
    index.apply(std::slice::from_ref(&rerun_end), 0, 0).unwrap();
    assert_eq!(state(&index, "a"), Some(State::DeadLettered));

    // The rerun's events first, the earlier run's success last: the same status.
    let mut reordered = store();
    for (offset, mut b) in [(1, rerun_end), (2, rerun_start), (3, first_run)] {
        b.offset = offset;
        reordered.apply(&[b], 0, 0).unwrap();
    }
    assert_eq!(state(&reordered, "a"), Some(State::DeadLettered));
    assert_counts_right(&reordered);
}

#[test]
fn a_retry_then_a_success_ends_succeeded_in_any_order() {
    let retrying = event("w1", 0, Retrying, "a", 1, 0);
    let started = event("w2", 0, Started, "a", 2, 0);
    let succeeded = event("w2", 1, Succeeded, "a", 2, 0);
    let mut index = store();
    index
        .apply(&[batch(1, vec![retrying.clone()])], 0, 0)
        .unwrap();
    let (status, _) = query::get(index.connection(), "a").unwrap();
    let status = status.unwrap();
    assert_eq!(status.state, State::Retrying);
    assert_eq!(status.retry_at_ms, Some(9_000));
    assert_eq!(status.error, Some(("error".into(), "Retrying".into())));
    index
        .apply(&[batch(2, vec![started.clone()])], 0, 0)
        .unwrap();
    assert_eq!(state(&index, "a"), Some(State::Running));
    index
        .apply(&[batch(3, vec![succeeded.clone()])], 0, 0)
        .unwrap();
    let (status, _) = query::get(index.connection(), "a").unwrap();
    let status = status.unwrap();
    assert_eq!((status.state, status.attempt), (State::Succeeded, Some(2)));
    assert_eq!(status.error, None, "the last error is the deciding event's");

    for order in [
        [&succeeded, &started, &retrying],
        [&started, &retrying, &succeeded],
        [&retrying, &succeeded, &started],
    ] {
        let mut index = store();
        for (offset, e) in order.into_iter().enumerate() {
            index
                .apply(&[batch(offset as u64, vec![e.clone()])], 0, 0)
                .unwrap();
        }
        assert_eq!(state(&index, "a"), Some(State::Succeeded), "{order:?}");
        assert_counts_right(&index);
    }
}

#[test]
fn a_batch_applied_again_changes_nothing() {
    let mut index = store();
    let batches = [
        batch(
            1,
            vec![
                event("w1", 0, Started, "a", 1, 0),
                event("w1", 1, Retrying, "b", 1, 0),
                event("w1", 2, Succeeded, "a", 1, 0),
            ],
        ),
        batch(2, vec![event("w2", 0, Started, "b", 2, 0)]),
        batch(
            3,
            vec![
                event("w1", 3, Expired, "c", 1, 0),
                event("w1", 4, Started, "d", 1, 0),
            ],
        ),
    ];
    index.apply(&batches, 0, 0).unwrap();
    let before = snapshot(&index);
    for again in [&batches[1], &batches[0], &batches[2], &batches[0]] {
        let applied = index.apply(std::slice::from_ref(again), 0, 0).unwrap();
        assert_eq!(applied.applied, 0);
        assert_eq!(applied.superseded, again.events.len() as u64);
        assert_eq!(snapshot(&index), before);
    }
    assert_eq!(state(&index, "a"), Some(State::Succeeded));
    assert_eq!(state(&index, "b"), Some(State::Running));
    assert_eq!(state(&index, "c"), Some(State::Expired));
    assert_eq!(state(&index, "d"), Some(State::Running));
    assert_eq!(state(&index, "e"), None);
    assert_counts_right(&index);
}

#[test]
fn equal_ranks_from_different_workers_go_by_stream_position() {
    // A classic queue's redelivery has no delivery count: both runs rank (1, 0).
    let first = event("w1", 0, Succeeded, "a", 1, 0);
    let mut second = event("w2", 0, Retrying, "a", 1, 0);
    second.event.delivery_count = None;
    let mut index = store();
    index
        .apply(
            &[
                batch(1, vec![first.clone()]),
                batch(2, vec![second.clone()]),
            ],
            0,
            0,
        )
        .unwrap();
    assert_eq!(
        state(&index, "a"),
        Some(State::Retrying),
        "the later in the stream"
    );
    index.apply(&[batch(1, vec![first])], 0, 0).unwrap();
    assert_eq!(
        state(&index, "a"),
        Some(State::Retrying),
        "read again: no change"
    );
}

#[test]
fn retention_deletes_ended_tasks_and_keeps_the_counts_right() {
    let mut index = store();
    let mut events = Vec::new();
    for n in 0..10u64 {
        let kind = if n % 2 == 0 { Succeeded } else { Started };
        events.push(event("w1", n, kind, &format!("t{n}"), 1, 0));
    }
    index.apply(&[batch(1, events)], 0, 0).unwrap();
    // Ended at 1_000, 1_002, 1_004, ...: the three before 1_005 go.
    let changes = index.sweep(1_005, 2).unwrap();
    assert_eq!(changes.values().sum::<i64>(), -2, "at most the chunk");
    index.sweep(1_005, 100).unwrap();
    assert_counts_right(&index);
    let page = query::list(
        index.connection(),
        &Filter {
            limit: 100,
            ..Filter::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = page.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t9", "t8", "t7", "t6", "t5", "t3", "t1"]);

    // An event of a task not indexed, older than the horizon, is not indexed.
    let applied = index
        .apply(
            &[batch(2, vec![event("w2", 0, Started, "t0", 1, 0)])],
            1_001,
            0,
        )
        .unwrap();
    assert_eq!(applied.outdated, 1);
    assert_eq!(state(&index, "t0"), None);
}

#[test]
fn listings_filter_and_page_newest_first() {
    let mut index = store();
    let mut events = Vec::new();
    for n in 0..7u64 {
        let kind = [Succeeded, Started, DeadLettered][n as usize % 3];
        events.push(event("w1", n, kind, &format!("t{n}"), 1, 0));
    }
    index.apply(&[batch(1, events)], 0, 0).unwrap();
    let list = |filter: Filter| query::list(index.connection(), &filter).unwrap();
    let ids = |page: &query::Page| page.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    let succeeded = list(Filter {
        state: Some(State::Succeeded),
        limit: 10,
        ..Filter::default()
    });
    assert_eq!(ids(&succeeded), ["t6", "t3", "t0"]);
    assert!(succeeded.next.is_none());
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = list(Filter {
            limit: 3,
            after: after.clone(),
            ..Filter::default()
        });
        all.extend(ids(&page));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(all, ["t6", "t5", "t4", "t3", "t2", "t1", "t0"]);
    let since = list(Filter {
        since_ms: Some(1_005),
        queue: Some("q".into()),
        task: Some("t".into()),
        limit: 10,
        ..Filter::default()
    });
    assert_eq!(ids(&since), ["t6", "t5"]);
    let other = list(Filter {
        queue: Some("other".into()),
        limit: 10,
        ..Filter::default()
    });
    assert!(other.tasks.is_empty());
}

#[test]
fn a_gap_marks_the_index_incomplete_and_a_recreated_stream_starts_an_epoch() {
    let mut index = store();
    index
        .apply(&[batch(40, vec![event("w1", 0, Started, "a", 1, 0)])], 0, 0)
        .unwrap();
    let (_, fresh) = query::get(index.connection(), "a").unwrap();
    assert_eq!(fresh.incomplete_since_ms, None);
    assert_eq!(fresh.last_event_at_ms, Some(1_000));
    index
        .record_gap(GapReason::Retention, Some(90), 5_000)
        .unwrap();
    let (_, fresh) = query::get(index.connection(), "a").unwrap();
    assert_eq!(fresh.incomplete_since_ms, Some(1_000));
    assert_eq!(index.progress().last.as_ref().map(|l| l.offset), Some(40));

    index.record_gap(GapReason::Recreated, None, 6_000).unwrap();
    assert_eq!(index.progress().epoch, 1);
    assert!(index.progress().last.is_none());
    // Offsets start again at 0 in the new epoch, and still come later.
    index
        .apply(&[batch(0, vec![event("w3", 0, Started, "a", 1, 0)])], 0, 0)
        .unwrap();
    let (status, _) = query::get(index.connection(), "a").unwrap();
    assert_eq!(status.unwrap().worker, "w3");
}
