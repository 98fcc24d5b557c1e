//! What the console reads from an index in memory: a task's timeline (every event, those the
//! merge rule outranks included, in rank order, bounded, read twice alike, deleted with the
//! task), the throughput counters (each event once, pruned after an hour), a queue's dead
//! letters (newest first, filtered, paged, counted per reason kind, through the partial
//! indexes) and the queues the index knows.

use super::*;
use crate::status::dead_letters::{self, DeadLetterFilter, KindCount};
use crate::status::history::{self, TimelineEntry, KEPT};
use crate::status::queues;
use crate::status::throughput::{self, Bucket, BUCKET_MS, KEPT_MS};

/// The dead-letter counts equal a count of the dead-lettered and expired rows.
pub(super) fn assert_dead_letter_counts_right(store: &Store) {
    let conn = store.connection();
    let rows = |sql: &str| -> Vec<(String, String, i64)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let kept = rows("SELECT queue, kind, tasks FROM dead_letters ORDER BY 1, 2");
    let counted = rows(
        "SELECT queue, coalesce(error_kind, ''), count(*) FROM tasks
         WHERE state IN ('dead_lettered', 'expired') GROUP BY 1, 2 ORDER BY 1, 2",
    );
    assert_eq!(kept, counted);
}

fn timeline(store: &Store, id: &str) -> Vec<TimelineEntry> {
    history::timeline(store.connection(), id).unwrap()
}

fn kinds(entries: &[TimelineEntry]) -> Vec<(EventKind, Option<u32>)> {
    entries.iter().map(|e| (e.event, e.attempt)).collect()
}

/// A task published, retried once, then succeeded: five events from three sources.
fn retried_then_succeeded(id: &str) -> Vec<Stamped> {
    let mut published = event("p", 0, Published, id, 1, 0);
    published.event.delivery_count = None;
    published.event.error = None;
    published.event.at_ms = 900;
    let mut retrying = event("w1", 11, Retrying, id, 1, 0);
    retrying.event.error = Some(EventError {
        kind: "handler".into(),
        reason: "timeout".into(),
    });
    vec![
        published,
        event("w1", 1, Started, id, 1, 0),
        retrying,
        event("w2", 20, Started, id, 2, 0),
        event("w2", 25, Succeeded, id, 2, 0),
    ]
}

#[test]
fn a_timeline_shows_every_attempt_in_rank_order_whatever_the_arrival() {
    let events = retried_then_succeeded("a");
    let expected = vec![
        (Published, Some(1)),
        (Started, Some(1)),
        (Retrying, Some(1)),
        (Started, Some(2)),
        (Succeeded, Some(2)),
    ];
    for order in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1]] {
        let mut index = store();
        for (offset, n) in order.into_iter().enumerate() {
            let b = batch(offset as u64 + 1, vec![events[n].clone()]);
            index.apply(&[b], 0, 0).unwrap();
        }
        let entries = timeline(&index, "a");
        assert_eq!(kinds(&entries), expected, "{order:?}");
        let retrying = &entries[2];
        assert_eq!(retrying.worker, "w1");
        assert_eq!(retrying.error, Some(("handler".into(), "timeout".into())));
        assert_eq!(retrying.retry_at_ms, Some(9_000));
        assert_eq!(retrying.duration_ms, Some(10), "1_011 - 1_001");
        assert_eq!(entries[4].duration_ms, Some(5), "1_025 - 1_020");
        assert_eq!(entries[4].worker, "w2");
        assert_eq!(
            (entries[0].duration_ms, entries[1].duration_ms),
            (None, None)
        );
        assert_eq!(state(&index, "a"), Some(State::Succeeded));
    }
    assert!(timeline(&store(), "a").is_empty(), "an unknown task");
}

#[test]
fn a_timeline_read_twice_is_the_same_and_an_ending_without_its_start_has_no_duration() {
    let mut index = store();
    let events = retried_then_succeeded("a");
    let batches = [
        batch(1, vec![events[0].clone()]),
        batch(2, vec![events[2].clone()]),
        batch(3, vec![events[3].clone(), events[4].clone()]),
    ];
    index.apply(&batches, 0, 0).unwrap();
    let before = snapshot(&index);
    let entries = timeline(&index, "a");
    assert_eq!(entries[1].event, Retrying);
    assert_eq!(entries[1].duration_ms, None, "its `started` was never read");
    index.apply(&batches, 0, 0).unwrap();
    index.apply(&batches[1..2], 0, 0).unwrap();
    assert_eq!(snapshot(&index), before);
    assert_eq!(timeline(&index, "a"), entries);
}

#[test]
fn a_timeline_keeps_the_first_published_and_the_latest_events() {
    let mut index = store();
    let mut published = event("p", 0, Published, "a", 1, 0);
    published.event.error = None;
    let mut events = vec![published];
    for attempt in 1..=80u32 {
        let seq = u64::from(attempt) * 2;
        events.push(event("w", seq, Started, "a", attempt, 0));
        events.push(event("w", seq + 1, Retrying, "a", attempt, 0));
    }
    for (n, e) in events.iter().enumerate() {
        index
            .apply(&[batch(n as u64, vec![e.clone()])], 0, 0)
            .unwrap();
    }
    let entries = timeline(&index, "a");
    assert_eq!(entries.len(), KEPT + 1);
    assert_eq!(entries[0].event, Published);
    assert_eq!(
        entries[1].attempt,
        Some(56),
        "80 attempts, 2 events each: the last 50"
    );
    assert_eq!(entries[KEPT].attempt, Some(80));
    // A dropped event read again is dropped again.
    index
        .apply(&[batch(3, vec![events[3].clone()])], 0, 0)
        .unwrap();
    assert_eq!(timeline(&index, "a"), entries);
}

#[test]
fn the_retention_sweep_deletes_timelines_with_their_tasks() {
    let mut index = store();
    let mut events = retried_then_succeeded("a");
    events.push(event("w3", 0, Started, "b", 1, 0));
    index.apply(&[batch(1, events)], 0, 0).unwrap();
    index.sweep(i64::MAX as u64, 100).unwrap();
    assert_eq!(state(&index, "a"), None);
    assert!(timeline(&index, "a").is_empty());
    assert_eq!(timeline(&index, "b").len(), 1, "a running task stays");
    let rows: i64 = index
        .connection()
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

/// An ending of task `id` in queue `queue`, of kind `kind`, recorded at `at_ms`.
fn ending(seq: u64, kind: EventKind, id: &str, queue: &str, at_ms: u64) -> Stamped {
    let mut e = event("w", seq, kind, id, 1, 0);
    e.event.queue = queue.to_owned().into();
    e.event.at_ms = at_ms;
    e
}

#[test]
fn throughput_counts_each_event_once_per_bucket_and_queue_and_forgets_after_an_hour() {
    let mut index = store();
    let t0 = 10 * KEPT_MS;
    let events = vec![
        ending(0, Succeeded, "a", "q1", t0 + 1),
        ending(1, Succeeded, "b", "q1", t0 + BUCKET_MS - 1),
        ending(2, Retrying, "c", "q1", t0 + 5),
        ending(3, DeadLettered, "d", "q2", t0 + BUCKET_MS),
        ending(4, Expired, "e", "q2", t0 + BUCKET_MS + 3),
        ending(5, Cancelled, "f", "q2", t0 + BUCKET_MS + 4),
        ending(6, Started, "g", "q2", t0 + 7),
        // Outranked by "a"'s success, counted all the same: that run ran.
        ending(7, Succeeded, "a", "q1", t0 + 2),
        // Older than an hour by the index's clock: not counted.
        ending(8, Succeeded, "h", "q1", t0 - KEPT_MS - BUCKET_MS),
    ];
    let b = batch(1, events);
    index.apply(std::slice::from_ref(&b), 0, t0).unwrap();
    index.apply(std::slice::from_ref(&b), 0, t0).unwrap();
    let bucket = |start_ms: u64, queue: &str, counts: [u64; 5]| Bucket {
        start_ms,
        queue: queue.into(),
        succeeded: counts[0],
        retried: counts[1],
        dead_lettered: counts[2],
        expired: counts[3],
        cancelled: counts[4],
    };
    let expected = vec![
        bucket(t0, "q1", [3, 1, 0, 0, 0]),
        bucket(t0 + BUCKET_MS, "q2", [0, 0, 1, 1, 1]),
    ];
    let read = |index: &Store, since| throughput::throughput(index.connection(), since).unwrap();
    assert_eq!(read(&index, 0), expected);
    let on = read(&index, t0 + BUCKET_MS + 5);
    assert_eq!(on, expected[1..], "the bucket holding it on");
    // An hour and a bucket later, the buckets are pruned by the next transaction.
    let later = t0 + KEPT_MS + 2 * BUCKET_MS;
    let next = batch(2, vec![ending(9, Succeeded, "i", "q1", later)]);
    index.apply(&[next], 0, later).unwrap();
    let start = later - later % BUCKET_MS;
    assert_eq!(read(&index, 0), vec![bucket(start, "q1", [1, 0, 0, 0, 0])]);
}

fn dead_page(index: &Store, filter: DeadLetterFilter) -> (Vec<String>, Option<query::Cursor>) {
    let page = dead_letters::dead_letters(index.connection(), &filter).unwrap();
    let ids = page.tasks.iter().map(|t| t.id.clone()).collect();
    (ids, page.next)
}

/// Dead letters in `q` (kinds `error` and `expired`, two task names), succeeded tasks beside
/// them, and a dead letter in another queue.
fn dead_letter_index() -> Store {
    let mut index = store();
    let mut events = Vec::new();
    for n in 0..9u64 {
        let kind = [DeadLettered, Expired, Succeeded][n as usize % 3];
        let mut e = ending(n, kind, &format!("t{n}"), "q", 1_000 + n);
        if kind == Expired {
            e.event.error.as_mut().unwrap().kind = "expired".into();
        }
        e.event.task = if n < 4 { "send" } else { "resize" }.into();
        events.push(e);
    }
    events.push(ending(9, DeadLettered, "other", "q2", 1_100));
    index.apply(&[batch(1, events)], 0, 0).unwrap();
    index
}

#[test]
fn a_queues_dead_letters_are_listed_newest_first_filtered_and_counted_per_kind() {
    let mut index = dead_letter_index();
    let all = DeadLetterFilter {
        queue: "q".into(),
        limit: 10,
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        dead_page(&index, all.clone()).0,
        ["t7", "t6", "t4", "t3", "t1", "t0"]
    );
    let expired = DeadLetterFilter {
        reason_kind: Some("expired".into()),
        ..all.clone()
    };
    assert_eq!(dead_page(&index, expired).0, ["t7", "t4", "t1"]);
    let send = DeadLetterFilter {
        task: Some("send".into()),
        ..all.clone()
    };
    assert_eq!(dead_page(&index, send.clone()).0, ["t3", "t1", "t0"]);
    let send_error = DeadLetterFilter {
        reason_kind: Some("error".into()),
        ..send
    };
    assert_eq!(dead_page(&index, send_error).0, ["t3", "t0"]);
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let (ids, next) = dead_page(
            &index,
            DeadLetterFilter {
                limit: 4,
                after: after.clone(),
                ..all.clone()
            },
        );
        pages.push(ids);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [vec!["t7", "t6", "t4", "t3"], vec!["t1", "t0"]]);
    let kinds = |index: &Store| dead_letters::dead_letter_kinds(index.connection(), "q").unwrap();
    let count = |kind: &str, tasks| KindCount {
        kind: kind.into(),
        tasks,
    };
    assert_eq!(kinds(&index), [count("error", 3), count("expired", 3)]);
    assert_counts_right(&index);

    // A replay moves "t0" back to published; the retention sweep deletes "t1".
    let mut replay = event("p", 0, Published, "t0", 1, 0);
    replay.event.replays = Some(1);
    index.apply(&[batch(2, vec![replay])], 0, 0).unwrap();
    index.sweep(1_002, 100).unwrap();
    assert_eq!(kinds(&index), [count("error", 2), count("expired", 2)]);
    assert_eq!(dead_page(&index, all).0, ["t7", "t6", "t4", "t3"]);
    assert_counts_right(&index);
}

#[test]
fn dead_letter_pages_are_range_scans_of_the_partial_indexes() {
    let index = dead_letter_index();
    let conn = index.connection();
    for (filter, uses) in [
        ("", "tasks_dead"),
        ("AND error_kind = 'expired'", "tasks_dead_by_kind"),
        ("AND task = 'send'", "tasks_dead_by_task"),
    ] {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT {} FROM tasks WHERE state IN ('dead_lettered', 'expired')
             AND queue = 'q' {filter} AND (updated_at_ms, id) < (5000, 'x')
             ORDER BY updated_at_ms DESC, id DESC LIMIT 5",
            query::COLUMNS
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains(&format!("USING INDEX {uses} ")), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorted by the index: {plan}");
    }
}

#[test]
fn the_queues_known_are_those_of_tasks_and_of_heartbeats() {
    let mut index = dead_letter_index();
    let mut hb = warren_common::events::Heartbeat {
        worker: "w9".into(),
        host: "h".into(),
        pid: 1,
        version: "0".into(),
        queues: vec!["q".into(), "idle".into()],
        concurrency: 1,
        prefetch: 1,
        running: Vec::new(),
        counts: Default::default(),
        started_at_ms: 0,
        at_ms: 2_000,
        interval_ms: 60_000,
    };
    let presence = |hb: warren_common::events::Heartbeat| Batch {
        offset: 5,
        source: hb.worker.clone(),
        first_seq: 0,
        events: Vec::new(),
        presence: Some(crate::status::workers::Presence {
            heartbeat: hb,
            farewell: false,
        }),
    };
    index.apply(&[presence(hb.clone())], 0, 2_000).unwrap();
    hb.worker = "w8".into();
    hb.queues = vec!["idle".into()];
    index.apply(&[presence(hb)], 0, 2_000).unwrap();
    let known = queues::queues(index.connection()).unwrap();
    let names: Vec<&str> = known.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, ["idle", "q", "q2"]);
    assert_eq!((known[0].workers, known[0].tasks.len()), (2, 0));
    let q = &known[1];
    assert_eq!(q.workers, 1);
    assert_eq!(
        q.tasks,
        [
            (State::Succeeded, 3),
            (State::DeadLettered, 3),
            (State::Expired, 3)
        ]
    );
    assert_eq!((q.count(State::Expired), q.count(State::Running)), (3, 0));
    assert_eq!(known[2].count(State::DeadLettered), 1);
}
