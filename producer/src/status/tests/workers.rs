//! The workers table and the derived `lost` state on an index in memory: a farewell or
//! three silent intervals make a worker gone and its started tasks lost, a redelivery or the
//! worker heard again decides them again, and applying a heartbeat twice changes nothing.

use super::*;
use crate::status::workers::{self, Liveness, Presence, WorkerStatus};
use warren_common::events::Heartbeat;

/// A heartbeat (a farewell if `farewell`) of `worker` at `offset`, sent at `at_ms` with an
/// interval of 100 ms, listing `running`.
fn heartbeat(offset: u64, worker: &str, at_ms: u64, running: &[&str], farewell: bool) -> Batch {
    let heartbeat = Heartbeat {
        worker: worker.into(),
        host: "h".into(),
        pid: 7,
        version: "0".into(),
        queues: vec!["q".into()],
        concurrency: 2,
        prefetch: 4,
        running: running.iter().map(|s| s.to_string()).collect(),
        counts: Default::default(),
        started_at_ms: 500,
        at_ms,
        interval_ms: 100,
    };
    Batch {
        offset,
        source: worker.into(),
        first_seq: 0,
        events: Vec::new(),
        presence: Some(Presence {
            heartbeat,
            farewell,
        }),
    }
}

fn worker(store: &Store, id: &str) -> Option<WorkerStatus> {
    workers::list(store.connection())
        .unwrap()
        .into_iter()
        .find(|w| w.heartbeat.worker == id)
}

/// Every row of the workers table, as text.
fn workers_snapshot(store: &Store) -> Vec<String> {
    workers::list(store.connection())
        .unwrap()
        .iter()
        .map(|w| format!("{w:?}"))
        .collect()
}

#[test]
fn a_farewell_makes_its_workers_running_tasks_lost_until_they_run_again() {
    let mut index = store();
    let started = batch(2, vec![event("w1", 0, Started, "a", 1, 0)]);
    let hello = heartbeat(1, "w1", 1_000, &[], false);
    index
        .apply(&[hello.clone(), started.clone()], 0, 5_000)
        .unwrap();
    let w1 = worker(&index, "w1").unwrap();
    assert_eq!(w1.status, Liveness::Alive);
    assert_eq!(w1.heartbeat.queues, ["q"]);
    assert_eq!(w1.heard_at_ms, 5_000);
    assert_eq!(state(&index, "a"), Some(State::Running));

    let farewell = heartbeat(3, "w1", 1_050, &["a"], true);
    index
        .apply(std::slice::from_ref(&farewell), 0, 5_050)
        .unwrap();
    let w1 = worker(&index, "w1").unwrap();
    assert_eq!(w1.status, Liveness::Gone);
    assert_eq!(w1.gone_reason.as_deref(), Some("farewell"));
    assert_eq!(state(&index, "a"), Some(State::Lost));
    assert_counts_right(&index);

    // The same records again, in any grouping: nothing changes.
    let before = (snapshot(&index), workers_snapshot(&index));
    index.apply(&[hello, started, farewell], 0, 5_060).unwrap();
    assert_eq!((snapshot(&index), workers_snapshot(&index)), before);

    // Its redelivery to another worker decides the task again.
    let rerun = batch(4, vec![event("w2", 0, Started, "a", 1, 1)]);
    index.apply(&[rerun], 0, 5_100).unwrap();
    assert_eq!(state(&index, "a"), Some(State::Running));
    let end = batch(5, vec![event("w2", 1, Succeeded, "a", 1, 1)]);
    index.apply(&[end], 0, 5_200).unwrap();
    assert_eq!(state(&index, "a"), Some(State::Succeeded));
    assert_counts_right(&index);
}

#[test]
fn a_worker_silent_for_three_intervals_is_gone_until_heard_again() {
    let mut index = store();
    let hello = heartbeat(1, "w1", 1_000, &["a"], false);
    let started = batch(2, vec![event("w1", 0, Started, "a", 1, 0)]);
    index.apply(&[hello, started], 0, 5_000).unwrap();
    // By the index's clock: 300 ms (three intervals) after it received the heartbeat.
    let (counts, silent) = index.check_workers(5_300, 0).unwrap();
    assert!(silent.is_empty() && counts.is_empty());
    let (counts, silent) = index.check_workers(5_301, 0).unwrap();
    assert_eq!(silent, ["w1"]);
    assert_eq!(counts[&("q".to_owned(), State::Lost)], 1);
    assert_eq!(state(&index, "a"), Some(State::Lost));
    assert_eq!(
        worker(&index, "w1").unwrap().gone_reason.as_deref(),
        Some("silent")
    );
    assert_counts_right(&index);

    // Heard again: alive, and its task is running again.
    index
        .apply(&[heartbeat(3, "w1", 2_000, &["a"], false)], 0, 6_000)
        .unwrap();
    assert_eq!(worker(&index, "w1").unwrap().status, Liveness::Alive);
    assert_eq!(state(&index, "a"), Some(State::Running));
    assert_counts_right(&index);

    // Gone workers are forgotten after a while; their lost tasks stay lost.
    index.check_workers(7_000, 0).unwrap();
    index.check_workers(8_000, 7_001).unwrap();
    assert_eq!(worker(&index, "w1"), None);
    assert_eq!(state(&index, "a"), Some(State::Lost));
}

#[test]
fn an_index_catching_up_judges_silence_by_the_streams_own_times() {
    let mut index = store();
    // Read long after they were written: the index received both heartbeats just now, but
    // w1's last one is 1 s older (by the stream) than w2's.
    let backlog = [
        heartbeat(1, "w1", 1_000, &["a"], false),
        batch(2, vec![event("w1", 0, Started, "a", 1, 0)]),
        heartbeat(3, "w2", 2_000, &[], false),
    ];
    index.apply(&backlog, 0, 90_000).unwrap();
    assert_eq!(worker(&index, "w1").unwrap().status, Liveness::Gone);
    assert_eq!(worker(&index, "w2").unwrap().status, Liveness::Alive);
    assert_eq!(state(&index, "a"), Some(State::Lost));
    // A start read for a worker already gone is lost from the outset.
    index
        .apply(
            &[batch(4, vec![event("w1", 1, Started, "b", 1, 0)])],
            0,
            90_001,
        )
        .unwrap();
    assert_eq!(state(&index, "b"), Some(State::Lost));
    assert_counts_right(&index);
}

#[test]
fn a_reopened_index_counts_silence_from_its_restart() {
    let mut index = store();
    index
        .apply(&[heartbeat(1, "w1", 1_000, &[], false)], 0, 5_000)
        .unwrap();
    // Down for a minute: not silence the index heard; the stream tells what happened.
    index.resume_workers(65_000).unwrap();
    let (_, silent) = index.check_workers(65_300, 0).unwrap();
    assert!(silent.is_empty());
    assert_eq!(worker(&index, "w1").unwrap().heard_at_ms, 65_000);
    let (_, silent) = index.check_workers(65_301, 0).unwrap();
    assert_eq!(silent, ["w1"]);
}
