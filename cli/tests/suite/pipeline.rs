//! The core pipeline against the real broker: publish, consume on a pool, exactly the tasks
//! published run, prefetch holds, bad messages go to the dead letters.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_common::headers;
use warren_producer::TaskOptions;
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError, Worker, WorkerError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<u32>,
}

type Seen = Arc<Mutex<HashMap<String, usize>>>;

fn recording_registry(seen: &Seen) -> Registry {
    let mut registry = Registry::new();
    let seen = seen.clone();
    registry.register("test.order", move |ctx: TaskContext, order: Order| {
        let seen = seen.clone();
        async move {
            assert_eq!(order.customer, format!("c{}", order.id));
            *seen.lock().unwrap().entry(ctx.id).or_default() += 1;
            Ok::<_, TaskError>(())
        }
    });
    registry
}

fn order(i: u64) -> Order {
    Order {
        id: i,
        customer: format!("c{i}"),
        lines: vec![1, 2, 3],
    }
}

#[tokio::test]
async fn every_published_task_runs_exactly_once() {
    let queue = unique_queue("once");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    let tasks = (0..300u64).map(|i| ("test.order".to_owned(), order(i), TaskOptions::default()));
    let ids: Vec<String> = futures::StreamExt::collect::<Vec<_>>(publisher.publish_all(tasks, 100))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every task confirmed");
    wait_until(Duration::from_secs(30), "300 tasks to run", || {
        let n = seen.lock().unwrap().len();
        async move { n == 300 }
    })
    .await;
    let report = worker.stop().await;
    let seen = seen.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "task {id} ran {:?} times",
            seen.get(id)
        );
    }
    assert_eq!(report.totals.succeeded, 300);
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 0);
    assert_eq!(ready_count(&conn, &format!("{queue}.dead")).await, 0);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn two_workers_share_one_queue() {
    let queue = unique_queue("share");
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut workers = Vec::new();
    for count in &counts {
        let mut registry = Registry::new();
        let count = count.clone();
        registry.register(
            "demo.sleep",
            move |_ctx: TaskContext, p: warren_cli::demo::Sleep| {
                let count = count.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(p.ms)).await;
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, TaskError>(())
                }
            },
        );
        let mut config = test_config(&queue);
        config.prefetch = 5;
        config.concurrency = 5;
        workers.push(TestWorker::start(registry, config).await);
    }
    let publisher = publisher(&queue).await;
    let payload = warren_cli::demo::Sleep { ms: 20 };
    let tasks = (0..400).map(|_| {
        (
            "demo.sleep".to_owned(),
            payload.clone(),
            TaskOptions::default(),
        )
    });
    let results: Vec<_> = futures::StreamExt::collect(publisher.publish_all(tasks, 200)).await;
    assert!(results.iter().all(Result::is_ok));
    wait_until(Duration::from_secs(60), "400 tasks to run", || {
        let total = counts[0].load(Ordering::SeqCst) + counts[1].load(Ordering::SeqCst);
        async move { total == 400 }
    })
    .await;
    for worker in workers {
        worker.stop().await;
    }
    let shares: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(shares.iter().sum::<usize>(), 400);
    assert!(
        shares.iter().all(|&n| n >= 100),
        "each worker runs at least 25%: {shares:?}"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_consumer_never_holds_more_than_its_prefetch() {
    let queue = unique_queue("prefetch");
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let (r, m) = (running.clone(), max_running.clone());
    registry.register(
        "demo.sleep",
        move |_ctx: TaskContext, p: warren_cli::demo::Sleep| {
            let (r, m) = (r.clone(), m.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(p.ms)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        },
    );
    let publisher = publisher(&queue).await;
    publisher
        .declare(&warren_common::QueueSpec::new(&queue, Default::default()))
        .await
        .unwrap();
    let payload = warren_cli::demo::Sleep { ms: 30 };
    let tasks = (0..40).map(|_| {
        (
            "demo.sleep".to_owned(),
            payload.clone(),
            TaskOptions::default(),
        )
    });
    let results: Vec<_> = futures::StreamExt::collect(publisher.publish_all(tasks, 40)).await;
    assert!(results.iter().all(Result::is_ok));

    let mut config = test_config(&queue);
    config.prefetch = 2;
    config.concurrency = 1;
    let worker = TestWorker::start(registry, config).await;
    let conn = raw_connection().await;
    let mut max_held = 0f64;
    let mut samples = 0;
    loop {
        let held = worker.metric("warren_deliveries_held", &[("queue", &queue)]);
        max_held = max_held.max(held);
        samples += 1;
        if ready_count(&conn, &queue).await == 0 && held == 0.0 {
            break;
        }
        assert!(samples < 2000, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.stop().await;
    assert_eq!(
        max_running.load(Ordering::SeqCst),
        1,
        "concurrency 1 runs one task at a time"
    );
    assert_eq!(
        max_held, 2.0,
        "the consumer held at most (and at some point exactly) its prefetch"
    );
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_json_task_published_with_raw_amqp_runs() {
    // Only lapin and the documented contract: no Warren types on the publishing side.
    let queue = unique_queue("raw");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), test_config(&queue)).await;
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut table = FieldTable::default();
    // pika would send small integers as 32-bit (or even 8-bit) values.
    table.insert("x-warren-attempt".into(), AMQPValue::ShortShortUInt(1));
    table.insert(
        "x-warren-created-ms".into(),
        AMQPValue::LongLongInt(1_700_000_000_000),
    );
    table.insert("x-warren-schema".into(), AMQPValue::LongInt(1));
    let props = BasicProperties::default()
        .with_type("test.order".into())
        .with_message_id("raw-task-1".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table);
    let body = br#"{"id": 7, "customer": "c7", "lines": [4, 5]}"#;
    let confirm = channel
        .basic_publish(
            "warren".into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        confirm,
        lapin::Confirmation::Ack(None),
        "routed and confirmed"
    );
    wait_until(Duration::from_secs(10), "the raw task to run", || {
        let ran = seen.lock().unwrap().get("raw-task-1").copied();
        async move { ran == Some(1) }
    })
    .await;
    worker.stop().await;
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_the_worker_goes_on() {
    let queue = unique_queue("bad");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), test_config(&queue)).await;
    let publisher = publisher(&queue).await;
    let unknown = publisher
        .publish("no.such.task", &order(1), &TaskOptions::default())
        .await
        .unwrap();
    // A registered task whose bincode body is garbage.
    let (mut envelope, _) = publisher
        .prepare("test.order", &order(2), &TaskOptions::default())
        .unwrap();
    envelope.id = "garbage-body".into();
    publisher
        .publish_raw(
            "warren",
            &queue,
            &[0xff, 0xfe, 0x01],
            envelope.to_properties(),
            &envelope.id,
        )
        .await
        .unwrap();
    let mut good = Vec::new();
    for i in 10..20 {
        good.push(
            publisher
                .publish("test.order", &order(i), &TaskOptions::default())
                .await
                .unwrap(),
        );
    }
    wait_until(Duration::from_secs(20), "the valid tasks to run", || {
        let n = seen.lock().unwrap().len();
        async move { n == 10 }
    })
    .await;
    let conn = raw_connection().await;
    let dead = drain_queue(&conn, &format!("{queue}.dead"), 2, Duration::from_secs(10))
        .await
        .unwrap();
    worker.stop().await;
    let mut kinds: Vec<(String, String)> = dead
        .iter()
        .map(|(props, _)| {
            let id = props.message_id().as_ref().unwrap().to_string();
            (id, header(props, headers::DEAD_KIND).unwrap())
        })
        .collect();
    kinds.sort();
    let mut expected = vec![
        (unknown, "unknown_task".to_owned()),
        ("garbage-body".to_owned(), "undecodable".to_owned()),
    ];
    expected.sort();
    assert_eq!(kinds, expected);
    for (props, _) in &dead {
        assert_eq!(
            header(props, headers::ORIGINAL_QUEUE).as_deref(),
            Some(queue.as_str())
        );
        assert!(header(props, headers::DEAD_REASON).is_some());
    }
    let seen = seen.lock().unwrap().clone();
    assert!(good.iter().all(|id| seen.get(id) == Some(&1)));
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_queue_declared_with_other_arguments_is_a_clear_error() {
    let queue = unique_queue("mismatch");
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let worker = Worker::new(
        Registry::new(),
        test_config(&queue),
        &prometheus::Registry::new(),
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), worker.run(Default::default()))
        .await
        .expect("the worker gives up instead of retrying forever");
    match result {
        Err(WorkerError::Topology(warren_common::TopologyError::Mismatch {
            queue: q,
            setting,
            ..
        })) => {
            assert_eq!(q, queue);
            // The broker names the first argument that differs.
            assert!(
                ["x-queue-type", "x-dead-letter-exchange"].contains(&setting.as_str()),
                "{setting}"
            );
        }
        other => panic!("expected a mismatch error, got {other:?}"),
    }
    delete_queues(&conn, &queue).await;
}
