//! Typed tasks end to end: a task type names itself once, `Publisher::send` and
//! `Registry::handle` both use that name, options go through the builder, a handler can ask
//! for its retry delay, and a delayed task is refused for a queue that does not exist.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_common::{headers, PublishError, Task, TaskOptions};
use warren_tests::*;
use warren_worker::{Registry, RetryPolicy, TaskContext, TaskError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Resize {
    path: String,
    width: u32,
}

impl Task for Resize {
    const NAME: &'static str = "test.typed.resize";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Notify {
    user: u64,
}

impl Task for Notify {
    const NAME: &'static str = "test.typed.notify";
}

#[tokio::test]
async fn typed_tasks_are_published_and_handled_under_their_own_name() {
    let queue = unique_queue("typed");
    let resized = Arc::new(Mutex::new(Vec::new()));
    let notified = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let (r, n) = (resized.clone(), notified.clone());
    registry
        .handle(move |_: TaskContext, task: Resize| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(task);
                Ok::<_, TaskError>(())
            }
        })
        .handle(move |_: TaskContext, task: Notify| {
            let n = n.clone();
            async move {
                n.lock().unwrap().push(task.user);
                Ok::<_, TaskError>(())
            }
        });
    assert_eq!(registry.names(), ["test.typed.notify", "test.typed.resize"]);
    let publisher = publisher(&queue).await;
    let worker = TestWorker::start(registry, test_config(&queue)).await;

    let images: Vec<Resize> = (0..20)
        .map(|i| Resize {
            path: format!("img/{i}.png"),
            width: 100 + i,
        })
        .collect();
    for image in &images {
        publisher.send(image).await.expect("confirmed");
    }
    let explicit = TaskOptions::new().queue(&queue).max_attempts(2);
    for user in 0..10 {
        publisher
            .send_with(&Notify { user }, &explicit)
            .await
            .expect("confirmed");
    }
    wait_until(Duration::from_secs(20), "every typed task to run", || {
        let done = resized.lock().unwrap().len() + notified.lock().unwrap().len();
        async move { done == 30 }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(report.abandoned, 0);
    let mut got = resized.lock().unwrap().clone();
    got.sort_by_key(|r| r.width);
    assert_eq!(got, images);
    let mut users = notified.lock().unwrap().clone();
    users.sort_unstable();
    assert_eq!(users, (0..10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_typed_task_carries_its_name_and_options_on_the_wire() {
    let queue = unique_queue("typed-wire");
    let publisher = publisher(&queue).await;
    publisher
        .declare(&warren_common::QueueSpec::new(
            &queue,
            warren_common::QueueKind::Quorum,
        ))
        .await
        .unwrap();
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    let options = TaskOptions::new()
        .id("typed-wire-1")
        .max_attempts(3)
        .timeout(Duration::from_secs(7))
        .expires_at(expires);
    let id = publisher
        .send_with(&Notify { user: 42 }, &options)
        .await
        .unwrap();
    assert_eq!(id, "typed-wire-1");
    let conn = raw_connection().await;
    let messages = take_all(&conn, &queue).await;
    assert_eq!(messages.len(), 1);
    let (props, body) = &messages[0];
    assert_eq!(
        props.kind().as_ref().map(|t| t.as_str()),
        Some("test.typed.notify")
    );
    assert_eq!(
        props.message_id().as_ref().map(|t| t.as_str()),
        Some("typed-wire-1")
    );
    assert_eq!(header(props, headers::MAX_ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(header(props, headers::TIMEOUT_MS).as_deref(), Some("7000"));
    let expires_ms = expires
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    assert_eq!(
        header(props, headers::EXPIRES_MS).as_deref(),
        Some(expires_ms.as_str())
    );
    let decoded: Notify = warren_common::Codec::Bincode.decode(body).unwrap();
    assert_eq!(decoded, Notify { user: 42 });
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_handler_that_asks_for_a_retry_delay_gets_it_instead_of_the_backoff() {
    let queue = unique_queue("retry-after");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = attempts.clone();
    registry.handle(move |ctx: TaskContext, _: Notify| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((ctx.attempt, Instant::now()));
            if ctx.attempt == 1 {
                return Err(
                    TaskError::retryable("rate limited").retry_after(Duration::from_secs(2))
                );
            }
            Ok(())
        }
    });
    let mut config = test_config(&queue);
    // The worker's own backoff would hold the retry for ten minutes.
    config.retry = RetryPolicy {
        initial: Duration::from_secs(600),
        multiplier: 1.0,
        max: Duration::from_secs(600),
        jitter: 0.0,
    };
    let publisher = publisher(&queue).await;
    let worker = TestWorker::start(registry, config).await;
    publisher.send(&Notify { user: 1 }).await.unwrap();
    wait_until(Duration::from_secs(30), "the second attempt", || {
        let n = attempts.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    worker.stop().await;
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2]);
    let held = attempts[1].1 - attempts[0].1;
    assert!(held >= Duration::from_secs(2), "retried after {held:?}");
}

#[tokio::test]
async fn a_delayed_task_for_a_queue_that_does_not_exist_is_refused_not_lost() {
    let queue = unique_queue("typed-missing");
    let publisher = publisher(&queue).await;
    let delayed = TaskOptions::new()
        .queue(&queue)
        .delay(Duration::from_secs(5));
    match publisher.send_with(&Notify { user: 7 }, &delayed).await {
        Err(PublishError::Unroutable {
            routing_key, reply, ..
        }) => {
            assert_eq!(routing_key, queue);
            assert_eq!(reply, "NOT_FOUND");
        }
        other => panic!("expected the task to be refused, got {other:?}"),
    }
    // Once the queue exists, the same publish is confirmed and the task waits in the cascade.
    publisher
        .declare(&warren_common::QueueSpec::new(
            &queue,
            warren_common::QueueKind::Quorum,
        ))
        .await
        .unwrap();
    publisher
        .send_with(&Notify { user: 7 }, &delayed)
        .await
        .expect("confirmed once the queue exists");
    let conn = Arc::new(raw_connection().await);
    wait_until(
        Duration::from_secs(30),
        "the delayed task to arrive",
        || {
            let (conn, queue) = (conn.clone(), queue.clone());
            async move { ready_count(&conn, &queue).await == 1 }
        },
    )
    .await;
    delete_queues(&conn, &queue).await;
}
