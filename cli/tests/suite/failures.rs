//! Failure handling against the real broker: retries held by the broker with backoff, dead
//! letters with their reasons and headers, and the worker going on through all of it.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use warren_cli::demo;
use warren_common::{headers, now_ms, Codec};
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{Permanent, Registry, RetryPolicy, TaskContext, TaskError};

fn quick_retries(initial_secs: u64) -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_secs(initial_secs),
        multiplier: 2.0,
        max: Duration::from_secs(300),
        jitter: 0.0,
    }
}

type Attempts = Arc<Mutex<Vec<(String, u32, Instant)>>>;

/// Like demo.flaky, recording when each attempt started.
fn timed_flaky(attempts: &Attempts) -> Registry {
    let mut registry = Registry::new();
    let attempts = attempts.clone();
    registry.register("test.flaky", move |ctx: TaskContext, p: demo::Flaky| {
        attempts
            .lock()
            .unwrap()
            .push((ctx.id.clone(), ctx.attempt, Instant::now()));
        async move {
            if ctx.attempt <= p.fail_times {
                return Err(TaskError::retryable("not yet"));
            }
            Ok(())
        }
    });
    registry
}

#[tokio::test]
async fn a_flaky_task_succeeds_on_its_third_attempt_after_broker_held_backoff() {
    let queue = unique_queue("flaky");
    let attempts: Attempts = Default::default();
    let mut config = test_config(&queue);
    config.retry = quick_retries(1);
    let worker = TestWorker::start(timed_flaky(&attempts), config).await;
    let publisher = publisher(&queue).await;
    let id = publisher
        .publish(
            "test.flaky",
            &demo::Flaky { fail_times: 2 },
            &TaskOptions::default(),
        )
        .await
        .unwrap();
    // While the task waits for its second attempt, no worker holds it.
    wait_until(Duration::from_secs(5), "the first attempt", || {
        let n = attempts.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        worker.metric("warren_deliveries_held", &[("queue", &queue)]),
        0.0
    );
    assert_eq!(
        ready_count(&raw_connection().await, &queue).await,
        0,
        "it waits in the broker's delay queues"
    );
    wait_until(Duration::from_secs(10), "the third attempt", || {
        let n = attempts.lock().unwrap().len();
        async move { n == 3 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = worker.stop().await;
    let attempts = attempts.lock().unwrap().clone();
    assert!(attempts.iter().all(|(i, _, _)| *i == id));
    assert_eq!(
        attempts.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let gap1 = attempts[1].2 - attempts[0].2;
    let gap2 = attempts[2].2 - attempts[1].2;
    // Backoff 1 s then 2 s, held by the broker to the second (never early, at most ~1 s late).
    assert!(
        gap1 >= Duration::from_millis(950) && gap1 < Duration::from_millis(2000),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(1950) && gap2 < Duration::from_millis(3000),
        "{gap2:?}"
    );
    assert_eq!(
        (
            report.totals.succeeded,
            report.totals.retried,
            report.totals.dead_lettered
        ),
        (1, 2, 0)
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_task_failing_every_time_is_dead_lettered_after_max_attempts_with_every_header() {
    let queue = unique_queue("exhaust");
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let mut config = test_config(&queue);
    config.retry = RetryPolicy {
        multiplier: 1.0,
        ..quick_retries(1)
    };
    config.max_attempts = 3;
    config.worker_id = "worker-under-test".into();
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    let before = now_ms();
    let id = publisher
        .publish("demo.fail", &(), &TaskOptions::default())
        .await
        .unwrap();
    let conn = raw_connection().await;
    let dead = drain_queue(&conn, &format!("{queue}.dead"), 1, Duration::from_secs(15))
        .await
        .unwrap();
    let report = worker.stop().await;
    let (props, body) = &dead[0];
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "demo.fail");
    assert_eq!(
        body,
        &Codec::Bincode.encode(&()).unwrap(),
        "the body is kept"
    );
    assert_eq!(
        header(props, headers::DEAD_KIND).as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(header(props, headers::DEAD_ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(header(props, headers::ATTEMPT).as_deref(), Some("3"));
    assert_eq!(
        header(props, headers::ORIGINAL_QUEUE).as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(
        header(props, headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(
        header(props, headers::DEAD_WORKER).as_deref(),
        Some("worker-under-test")
    );
    let reason = header(props, headers::DEAD_REASON).unwrap();
    assert!(
        reason.contains("demo.fail always fails") && reason.contains("3 attempts"),
        "{reason}"
    );
    let first: u64 = header(props, headers::FIRST_FAILURE_MS)
        .unwrap()
        .parse()
        .unwrap();
    let last: u64 = header(props, headers::LAST_FAILURE_MS)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        before <= first && first + 1900 <= last,
        "first {first}, last {last}: two 1 s waits"
    );
    assert!(props
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get(headers::X_DEATH)
        .is_none());
    assert_eq!((report.totals.retried, report.totals.dead_lettered), (2, 1));
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_short_retry_is_not_held_back_by_a_long_one_queued_before_it() {
    let slow_queue = unique_queue("slowretry");
    let fast_queue = unique_queue("fastretry");
    let attempts: Attempts = Default::default();
    let mut slow = test_config(&slow_queue);
    slow.retry = quick_retries(60);
    let mut fast = test_config(&fast_queue);
    fast.retry = quick_retries(1);
    let slow_worker = TestWorker::start(timed_flaky(&attempts), slow).await;
    let fast_worker = TestWorker::start(timed_flaky(&attempts), fast).await;
    let flaky = demo::Flaky { fail_times: 1 };
    let slow_id = publisher(&slow_queue)
        .await
        .publish("test.flaky", &flaky, &TaskOptions::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the 60 s retry to be scheduled",
        || {
            let n = slow_worker.metric("warren_tasks_retried_total", &[]);
            async move { n == 1.0 }
        },
    )
    .await;
    let fast_id = publisher(&fast_queue)
        .await
        .publish("test.flaky", &flaky, &TaskOptions::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the 1 s retry to run", || {
        let n = fast_worker.metric("warren_tasks_succeeded_total", &[]);
        async move { n == 1.0 }
    })
    .await;
    let attempts = attempts.lock().unwrap().clone();
    let of = |id: &str| {
        attempts
            .iter()
            .filter(|a| a.0 == id)
            .map(|a| a.2)
            .collect::<Vec<_>>()
    };
    let fast_times = of(&fast_id);
    assert_eq!(fast_times.len(), 2);
    assert!(fast_times[1] - fast_times[0] < Duration::from_secs(3));
    assert_eq!(of(&slow_id).len(), 1, "the 60 s retry is still waiting");
    slow_worker.stop().await;
    fast_worker.stop().await;
    let conn = raw_connection().await;
    delete_queues(&conn, &slow_queue).await;
    delete_queues(&conn, &fast_queue).await;
}

#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
}

#[tokio::test]
async fn every_kind_of_bad_task_is_dead_lettered_with_its_reason_and_the_worker_goes_on() {
    let queue = unique_queue("kinds");
    let mut registry = Registry::new();
    demo::register(&mut registry);
    registry.register("test.permanent", |_: TaskContext, _: Note| async {
        Err::<(), _>(Permanent("this can never work"))
    });
    registry.register("test.note", |_: TaskContext, _: Note| async {
        Ok::<_, TaskError>(())
    });
    let mut config = test_config(&queue);
    config.max_attempts = 1;
    config.max_payload_bytes = 4096;
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    let json = TaskOptions {
        codec: Some(Codec::Json),
        ..TaskOptions::default()
    };
    let note = Note { text: "hi".into() };
    let mut expected = Vec::new();
    let publish = |task: &'static str, options: TaskOptions, kind: &'static str| {
        let publisher = publisher.clone();
        let note = Note {
            text: note.text.clone(),
        };
        async move {
            let id = publisher.publish(task, &note, &options).await.unwrap();
            (id, kind.to_owned())
        }
    };
    expected.push(publish("test.permanent", TaskOptions::default(), "permanent").await);
    expected.push(publish("demo.panic", TaskOptions::default(), "panic").await);
    let slow = TaskOptions {
        timeout: Some(Duration::from_millis(200)),
        ..json.clone()
    };
    let id = publisher
        .publish("demo.sleep", &demo::Sleep { ms: 5_000 }, &slow)
        .await
        .unwrap();
    expected.push((id, "timeout".into()));
    let expired = TaskOptions::new().expires_at(SystemTime::now() - Duration::from_secs(1));
    expected.push(publish("test.note", expired, "expired").await);
    expected.push(publish("no.such.task", TaskOptions::default(), "unknown_task").await);
    // Hand-made bodies: garbage, oversized, and a bincode length prefix claiming ~2^62 bytes.
    let mut hostile = vec![253u8];
    hostile.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
    for (id, body, kind) in [
        ("garbage", vec![0xff, 0x00, 0x13], "undecodable"),
        ("oversized", vec![b'x'; 10_000], "too_large"),
        ("hostile-prefix", hostile, "undecodable"),
    ] {
        let (mut envelope, _) = publisher
            .prepare("test.note", &note, &TaskOptions::default())
            .unwrap();
        envelope.id = id.into();
        publisher
            .publish_raw("warren", &queue, &body, envelope.to_properties(), id)
            .await
            .unwrap();
        expected.push((id.to_owned(), kind.to_owned()));
    }
    let mut good = Vec::new();
    for _ in 0..5 {
        good.push(
            publisher
                .publish("test.note", &note, &TaskOptions::default())
                .await
                .unwrap(),
        );
    }
    let conn = raw_connection().await;
    let dead = drain_queue(
        &conn,
        &format!("{queue}.dead"),
        expected.len(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "the valid tasks", || {
        let n = worker.metric("warren_tasks_succeeded_total", &[("task", "test.note")]);
        async move { n == 5.0 }
    })
    .await;
    worker.stop().await;
    let mut got: Vec<(String, String)> = dead
        .iter()
        .map(|(p, _)| {
            (
                p.message_id().as_ref().unwrap().to_string(),
                header(p, headers::DEAD_KIND).unwrap(),
            )
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(ready_count(&conn, &queue).await, 0);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn at_scale_every_task_either_succeeds_or_is_dead_lettered_exactly_once() {
    let queue = unique_queue("scale");
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let mut config = test_config(&queue);
    config.retry = quick_retries(1);
    config.max_attempts = 2;
    config.prefetch = 100;
    config.concurrency = 16;
    let worker = TestWorker::start(registry, config).await;
    let publisher = publisher(&queue).await;
    let tasks = (0..2000u32).map(|i| {
        let (task, payload) = match i {
            i if i % 10 == 0 => ("demo.fail", demo::Flaky { fail_times: 0 }),
            i if i % 3 == 0 => ("demo.flaky", demo::Flaky { fail_times: 1 }),
            _ => ("demo.flaky", demo::Flaky { fail_times: 0 }),
        };
        (task.to_owned(), payload, TaskOptions::default())
    });
    let results: Vec<_> = futures::StreamExt::collect(publisher.publish_all(tasks, 500)).await;
    assert!(results.iter().all(Result::is_ok));
    wait_until(Duration::from_secs(60), "every task to finish", || {
        let done = worker.metric("warren_tasks_succeeded_total", &[])
            + worker.metric("warren_tasks_dead_lettered_total", &[]);
        async move { done >= 2000.0 }
    })
    .await;
    let report = worker.stop().await;
    let always_fail = 200;
    let fail_once = (0..2000).filter(|i| i % 10 != 0 && i % 3 == 0).count() as u64;
    assert_eq!(report.totals.succeeded + report.totals.dead_lettered, 2000);
    assert_eq!(report.totals.dead_lettered, always_fail);
    assert_eq!(report.totals.retried, always_fail + fail_once);
    let conn = raw_connection().await;
    assert_eq!(
        ready_count(&conn, &format!("{queue}.dead")).await,
        always_fail as u32
    );
    assert_eq!(ready_count(&conn, &queue).await, 0);
    delete_queues(&conn, &queue).await;
}
