//! `published` events in the index: a task published then run ends with its run's status
//! whatever order the events arrive in, keeps its payload's copy, and a replay from the dead
//! letters (even as attempt 1 again) moves it back to `published`, then its new run decides.

use super::*;
use crate::status::store::IndexError;
use warren_common::events::PayloadCopy;

/// The `published` event of task `id` from publisher `p` (its `seq`), as attempt `attempt`
/// after `replays` replays.
fn published(seq: u64, id: &str, attempt: u32, replays: u32) -> Stamped {
    let mut event = Event::new(Published, id, "t", "q").into_owned();
    event.attempt = Some(attempt);
    event.replays = (replays > 0).then_some(replays);
    event.at_ms = 500 + seq;
    event.payload = PayloadCopy::of(br#"{"n": 1}"#, None, 100);
    Stamped {
        source: "p".into(),
        seq,
        event,
    }
}

/// `event` of a run after `replays` replays.
fn replayed(mut stamped: Stamped, replays: u32) -> Stamped {
    stamped.event.replays = Some(replays);
    stamped
}

fn all_orders(events: &[Stamped]) -> Vec<Vec<Stamped>> {
    if events.len() <= 1 {
        return vec![events.to_vec()];
    }
    let mut orders = Vec::new();
    for i in 0..events.len() {
        let mut rest = events.to_vec();
        let first = rest.remove(i);
        for mut order in all_orders(&rest) {
            order.insert(0, first.clone());
            orders.push(order);
        }
    }
    orders
}

/// Applies `events` one batch each, at offsets from 1 in the order given.
fn apply_each(index: &mut Store, events: &[Stamped]) {
    for (n, event) in events.iter().enumerate() {
        index
            .apply(&[batch(n as u64 + 1, vec![event.clone()])], 0, 0)
            .unwrap();
    }
}

#[test]
fn a_published_task_is_published_until_its_run_decides_whatever_the_order() {
    let mut index = store();
    apply_each(&mut index, &[published(0, "a", 1, 0)]);
    assert_eq!(state(&index, "a"), Some(State::Published));
    let run = [
        published(0, "a", 1, 0),
        event("w", 0, Started, "a", 1, 0),
        event("w", 1, Succeeded, "a", 1, 0),
    ];
    for order in all_orders(&run) {
        let mut index = store();
        apply_each(&mut index, &order);
        let (status, _) = query::get(index.connection(), "a").unwrap();
        let status = status.expect("indexed");
        assert_eq!(status.state, State::Succeeded, "{order:?}");
        assert_eq!(status.worker, "w");
        assert_eq!(status.published_at_ms, Some(500));
        assert_eq!(status.started_at_ms, Some(1_000));
        let payload = status.payload.expect("the payload's copy");
        assert_eq!(payload, r#"{"size":8,"json":{"n": 1}}"#);
        assert_counts_right(&index);
    }
}

#[test]
fn a_replay_as_attempt_one_is_published_again_then_its_run_decides() {
    let dead = [
        published(0, "a", 1, 0),
        event("w", 0, Started, "a", 3, 0),
        event("w", 1, DeadLettered, "a", 3, 0),
    ];
    let replay = published(1, "a", 1, 1);
    let rerun = [
        replayed(event("w", 2, Started, "a", 1, 0), 1),
        replayed(event("w", 3, Succeeded, "a", 1, 0), 1),
    ];
    let mut index = store();
    apply_each(&mut index, &dead);
    assert_eq!(state(&index, "a"), Some(State::DeadLettered));
    let mut replayed_index = store();
    apply_each(
        &mut replayed_index,
        &[dead.as_slice(), std::slice::from_ref(&replay)].concat(),
    );
    assert_eq!(state(&replayed_index, "a"), Some(State::Published));
    // The replay's run, whether its events arrive before or after the replay's `published`
    // and the earlier run's: it decides.
    let mut events = dead.to_vec();
    events.extend(rerun.iter().cloned());
    events.push(replay);
    for order in [events.clone(), events.iter().rev().cloned().collect()] {
        let mut index = store();
        apply_each(&mut index, &order);
        let (status, _) = query::get(index.connection(), "a").unwrap();
        let status = status.expect("indexed");
        assert_eq!(status.state, State::Succeeded, "{order:?}");
        assert_eq!((status.attempt, status.replays), (Some(1), Some(1)));
        assert_counts_right(&index);
    }
}

#[test]
fn an_index_file_of_an_older_layout_is_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("warren-index-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, version) in [
        ("v2.sqlite", 2),
        ("v1.sqlite", 1),
        ("unversioned.sqlite", 0),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch("CREATE TABLE tasks (id TEXT PRIMARY KEY)")
            .unwrap();
        old.pragma_update(None, "user_version", version).unwrap();
        drop(old);
        let Err(error) = Store::open(&path, "events") else {
            panic!("{name} was opened");
        };
        assert!(matches!(error, IndexError::Version { found, .. } if found == version));
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("delete it"), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
