//! When and in what order tasks run: broker-held delays, priorities and rate limits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_common::{delay, QueueKind, QueueSpec, Topology};
use warren_producer::{PublishError, TaskOptions};
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError};

type Starts = Arc<Mutex<Vec<(String, Instant)>>>;

/// A worker whose `test.mark` handler records which task started when.
fn marking(starts: &Starts) -> Registry {
    let mut registry = Registry::new();
    let starts = starts.clone();
    registry.register("test.mark", move |ctx: TaskContext, _: ()| {
        starts.lock().unwrap().push((ctx.id, Instant::now()));
        async { Ok::<_, TaskError>(()) }
    });
    registry
}

fn started(starts: &Starts, id: &str) -> Option<Instant> {
    starts
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| i == id)
        .map(|(_, t)| *t)
}

fn delayed(secs: u64) -> TaskOptions {
    TaskOptions {
        delay: Some(Duration::from_secs(secs)),
        ..TaskOptions::default()
    }
}

#[tokio::test]
async fn delayed_tasks_wait_in_the_broker_and_a_short_delay_is_not_held_back_by_a_long_one() {
    let queue = unique_queue("delay");
    let starts: Starts = Default::default();
    let worker = TestWorker::start(marking(&starts), test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    let long = publisher
        .publish("test.mark", &(), &delayed(60))
        .await
        .unwrap();
    let published = Instant::now();
    let three = publisher
        .publish("test.mark", &(), &delayed(3))
        .await
        .unwrap();
    let one = publisher
        .publish("test.mark", &(), &delayed(1))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the 3 s task", || {
        let done = started(&starts, &three).is_some();
        async move { done }
    })
    .await;
    let one_after = started(&starts, &one).unwrap() - published;
    let three_after = started(&starts, &three).unwrap() - published;
    assert!(
        one_after >= Duration::from_millis(950) && one_after < Duration::from_secs(2),
        "{one_after:?}"
    );
    assert!(
        three_after >= Duration::from_millis(2950) && three_after < Duration::from_secs(4),
        "{three_after:?}"
    );
    assert!(
        started(&starts, &long).is_none(),
        "the 60 s task still waits"
    );
    assert_eq!(
        worker.metric("warren_deliveries_held", &[]),
        0.0,
        "no worker holds the waiting task"
    );
    worker.stop().await;
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_two_hour_delay_sits_in_the_broker_with_no_delivery_held() {
    let queue = unique_queue("twohours");
    let starts: Starts = Default::default();
    let worker = TestWorker::start(marking(&starts), test_config(&queue)).await;
    let conn = raw_connection().await;
    // 7200 s = 4096 + 2048 + 1024 + 32: the first hop is level 12 (4096 s).
    let level = delay::level_queue_name(12);
    Topology::declare_delays(&conn).await.unwrap();
    let before = ready_count(&conn, &level).await;
    publisher(&queue)
        .await
        .publish("test.mark", &(), &delayed(7200))
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the task to reach level 12", || {
        let (conn, level) = (&conn, &level);
        async move { ready_count(conn, level).await == before + 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(worker.metric("warren_deliveries_held", &[]), 0.0);
    assert_eq!(ready_count(&conn, &queue).await, 0);
    assert!(starts.lock().unwrap().is_empty());
    worker.stop().await;
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn delays_past_the_cascade_are_refused_up_to_the_largest_duration() {
    let queue = unique_queue("toolong");
    let publisher = publisher(&queue).await;
    let max = delay::max_delay();
    let with_delay = |d| TaskOptions {
        delay: Some(d),
        ..TaskOptions::default()
    };
    for requested in [
        max + Duration::from_millis(1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let err = publisher
            .prepare("test.mark", &(), &with_delay(requested))
            .unwrap_err();
        assert!(
            matches!(err, PublishError::DelayTooLong { requested: r, max: m } if r == requested && m == max),
            "{err}"
        );
    }
    // The longest delay the cascade holds is accepted, and its task is due that much later.
    let (envelope, _) = publisher
        .prepare("test.mark", &(), &with_delay(max))
        .unwrap();
    assert_eq!(
        envelope.not_before_ms.unwrap() - envelope.created_ms.unwrap(),
        max.as_secs() * 1000
    );
}

#[tokio::test]
async fn a_high_priority_task_runs_before_queued_low_priority_ones() {
    let queue = unique_queue("priority");
    let publisher = publisher(&queue).await;
    let spec = QueueSpec::new(&queue, QueueKind::Classic).with_max_priority(Some(9));
    publisher.declare(&spec).await.unwrap();
    let low = TaskOptions {
        priority: Some(1),
        ..TaskOptions::default()
    };
    for _ in 0..20 {
        publisher.publish("test.mark", &(), &low).await.unwrap();
    }
    let high = TaskOptions {
        priority: Some(9),
        ..TaskOptions::default()
    };
    let urgent = publisher.publish("test.mark", &(), &high).await.unwrap();
    let starts: Starts = Default::default();
    let mut config = test_config(&queue);
    config.queue_type = QueueKind::Classic;
    config.max_priority = Some(9);
    config.concurrency = 1;
    config.prefetch = 1;
    let worker = TestWorker::start(marking(&starts), config).await;
    wait_until(Duration::from_secs(20), "all 21 tasks", || {
        let n = starts.lock().unwrap().len();
        async move { n == 21 }
    })
    .await;
    worker.stop().await;
    assert_eq!(
        starts.lock().unwrap()[0].0,
        urgent,
        "the high-priority task ran first"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_rate_limit_paces_its_task_type_without_stalling_others() {
    let queue = unique_queue("ratelimit");
    let starts: Starts = Default::default();
    let mut registry = marking(&starts);
    let others = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = others.clone();
    registry.register("test.other", move |_: TaskContext, _: ()| {
        seen.lock().unwrap().push(Instant::now());
        async { Ok::<_, TaskError>(()) }
    });
    let mut config = test_config(&queue);
    config.rate_limits = vec!["test.mark=50/s".parse().unwrap()];
    config.prefetch = 100;
    let publisher = publisher(&queue).await;
    publisher
        .declare(&QueueSpec::new(&queue, QueueKind::Quorum))
        .await
        .unwrap();
    let tasks = (0..200).map(|_| ("test.mark".to_owned(), (), TaskOptions::default()));
    let results: Vec<_> = futures::StreamExt::collect(publisher.publish_all(tasks, 200)).await;
    assert!(results.iter().all(Result::is_ok));
    let begin = Instant::now();
    let worker = TestWorker::start(registry, config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another task type published behind the limited ones still runs at once.
    let other_published = Instant::now();
    publisher
        .publish("test.other", &(), &TaskOptions::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "all 200 limited tasks", || {
        let n = starts.lock().unwrap().len();
        async move { n == 200 }
    })
    .await;
    let took = begin.elapsed();
    worker.stop().await;
    // Burst 50 at once, then 150 more at 50/s: 3 s, plus start-up.
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_millis(4500),
        "{took:?}"
    );
    let other = others.lock().unwrap()[0] - other_published;
    assert!(
        other < Duration::from_millis(2500),
        "the other task type waited {other:?}"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_task_delayed_for_a_queue_deleted_meanwhile_is_kept_and_counted_as_unroutable() {
    let queue = unique_queue("unroutable");
    let starts: Starts = Default::default();
    let mut config = test_config(&queue);
    config.poll_interval = Duration::from_millis(200);
    let worker = TestWorker::start(marking(&starts), config).await;
    let conn = raw_connection().await;
    let before = ready_count(&conn, delay::UNROUTABLE).await;
    let gone = unique_queue("gone");
    let publisher = publisher(&gone).await;
    publisher
        .declare(&QueueSpec::new(&gone, QueueKind::Quorum))
        .await
        .unwrap();
    publisher
        .publish("test.mark", &(), &delayed(1))
        .await
        .unwrap();
    delete_queues(&conn, &gone).await;
    wait_until(
        Duration::from_secs(15),
        "the task in the unroutable queue",
        || {
            let conn = &conn;
            async move { ready_count(conn, delay::UNROUTABLE).await > before }
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "the worker to count it", || {
        let counted = worker.metric("warren_delay_unroutable_messages", &[]);
        async move { counted > f64::from(before) }
    })
    .await;
    worker.stop().await;
    delete_queues(&conn, &queue).await;
}
