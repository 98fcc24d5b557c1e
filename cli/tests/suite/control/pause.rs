//! Pausing and resuming a queue against the real broker: every worker stops consuming it,
//! and the deliveries it had prefetched go back without their delivery count raised.

use super::{endings, registry, Names, Runs};
use std::sync::Arc;
use std::time::Duration;
use warren_common::events::EventKind;
use warren_common::Readiness;
use warren_producer::{Control, TaskOptions};
use warren_tests::*;

/// Waits until the worker's readiness detail says whether `queue` is paused.
async fn until_paused(worker: &TestWorker, queue: &str, paused: bool) {
    let what = format!("queue `{queue}` is paused");
    let health = worker.health.clone();
    wait_until(Duration::from_secs(20), "the pause to show", || {
        let (health, what) = (health.clone(), what.clone());
        async move {
            health.get() == Readiness::Ready
                && health.detail().is_some_and(|d| d.contains(&what)) == paused
        }
    })
    .await;
}

#[tokio::test]
async fn ten_pause_and_resume_cycles_run_every_task_once_with_unchanged_delivery_counts() {
    let names = Names::new("control-pause");
    let (runs, dropped) = (Runs::default(), Arc::default());
    // Two workers; in each, one task runs and fifteen wait prefetched: each pause has
    // deliveries to give back.
    let mut workers = Vec::new();
    for n in 0..2 {
        let mut config = names.config();
        config.concurrency = 1;
        config.prefetch = 16;
        config.worker_id = format!("{}-{n}", config.worker_id);
        workers.push(TestWorker::start(registry(&runs, &dropped), config).await);
    }
    let publisher = names.publisher().await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let id = publisher
            .publish("t.sleep", &30u64, &TaskOptions::new())
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    let control = Control::new(publisher.clone(), &names.control);
    for cycle in 0..10 {
        let before = runs.total();
        control.pause(&names.queue).await.unwrap();
        for worker in &workers {
            until_paused(worker, &names.queue, true).await;
        }
        control.resume(&names.queue).await.unwrap();
        for worker in &workers {
            until_paused(worker, &names.queue, false).await;
        }
        wait_until(
            Duration::from_secs(20),
            "a task to run after the resume",
            || {
                let runs = runs.clone();
                async move { runs.total() > before }
            },
        )
        .await;
        assert!(runs.total() < 300, "cycle {cycle}: tasks left to pause");
    }
    let events = endings(&names.events, &ids).await;
    for id in &ids {
        assert_eq!(runs.of(id), 1, "task {id} ran once");
        let ran: Vec<(EventKind, Option<u64>)> = events
            .iter()
            .filter(|e| e.event.id == *id)
            .map(|e| (e.event.event, e.event.delivery_count))
            .filter(|(kind, _)| *kind != EventKind::Started)
            .collect();
        assert_eq!(ran, [(EventKind::Succeeded, Some(0))], "task {id}");
    }
    let (mut succeeded, mut given_back) = (0, 0);
    for worker in workers {
        let report = worker.stop().await;
        succeeded += report.totals.succeeded;
        given_back += report.totals.requeued;
    }
    assert_eq!(succeeded, 300);
    assert!(given_back > 0, "pauses gave prefetched deliveries back");
    names.clean_up().await;
}

#[tokio::test]
async fn a_pause_written_before_the_worker_started_keeps_the_queue_unconsumed() {
    let names = Names::new("control-paused-boot");
    let publisher = names.publisher().await;
    let id = publisher
        .publish("t.count", &(), &TaskOptions::new())
        .await
        .unwrap()
        .to_string();
    let control = Control::new(publisher.clone(), &names.control);
    control.pause(&names.queue).await.unwrap();
    let (runs, dropped) = (Runs::default(), Arc::default());
    let worker = TestWorker::start(registry(&runs, &dropped), names.config()).await;
    until_paused(&worker, &names.queue, true).await;
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &names.queue).await, 1, "not consumed");
    assert_eq!(runs.of(&id), 0);
    control.resume(&names.queue).await.unwrap();
    endings(&names.events, std::slice::from_ref(&id)).await;
    assert_eq!(runs.of(&id), 1);
    worker.stop().await;
    names.clean_up().await;
}
