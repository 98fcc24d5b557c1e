//! The index across restarts: killed (kill -9) while events flow, it resumes from its stored
//! offset and ends equal to an index built from the stream's start; when the stream's
//! retention removed events it had not read, or the stream was recreated, it says it is
//! incomplete (in its answers and metrics) and goes on.

use super::*;
use crate::http_ingest::support::record_batches;
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

/// How many tasks the metrics of `serve` count in `state` on `queue`.
async fn indexed(serve: &Serve, queue: &str, state: &str) -> f64 {
    let metrics = serve.metrics().await;
    sample(
        &metrics,
        "warren_index_tasks",
        &[("queue", queue), ("state", state)],
    )
}

/// Every row of the index's tasks, counts, progress, timelines, dead-letter counts and
/// throughput tables, as text.
fn dump(index: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(index).expect("the index opens");
    let mut rows = Vec::new();
    for table in [
        "tasks ORDER BY id",
        "counts ORDER BY queue, state",
        "progress",
        "history ORDER BY id, position_epoch, position_offset, position_seq",
        "dead_letters ORDER BY queue, kind",
        "throughput ORDER BY bucket_ms, queue",
    ] {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(text) => {
                        String::from_utf8_lossy(text).into_owned()
                    }
                    other => format!("{other:?}"),
                })
                .collect();
            rows.push(format!("{table}: {}", values.join("|")));
        }
    }
    rows
}

async fn publish_noops(publisher: &warren_producer::Publisher, count: usize) {
    let options = TaskOptions::new();
    for chunk in 0..count.div_ceil(100) {
        let n = 100.min(count - chunk * 100);
        let publishes = (0..n).map(|_| publisher.publish("demo.noop", &(), &options));
        for id in futures::future::join_all(publishes).await {
            id.expect("published");
        }
    }
}

#[tokio::test]
async fn a_killed_index_resumes_and_equals_one_built_from_the_start() {
    let names = Names::new("status.restart");
    let mut config = test_config(&names.queue);
    config.events_stream = Some(names.stream.clone());
    config.concurrency = 32;
    config.prefetch = 64;
    config.retry = RetryPolicy {
        initial: Duration::from_millis(500),
        multiplier: 1.0,
        max: Duration::from_millis(500),
        jitter: 0.0,
    };
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config).await;
    let resumed = names.index("resumed.db");
    let serve = Serve::start(&names, &resumed).await;
    let publisher = publisher(&names.queue).await;

    publish_noops(&publisher, 1500).await;
    wait_until(
        Duration::from_secs(60),
        "the index to apply events",
        || async { indexed(&serve, &names.queue, "succeeded").await > 0.0 },
    )
    .await;
    // Killed while the worker is still recording events.
    serve.kill().await;
    publish_noops(&publisher, 1500).await;
    for _ in 0..10 {
        publisher
            .send(&demo::Flaky { fail_times: 1 })
            .await
            .unwrap();
    }
    let total = 3010.0;
    let serve = Serve::start(&names, &resumed).await;
    wait_until(
        Duration::from_secs(120),
        "every task to be succeeded",
        || async { indexed(&serve, &names.queue, "succeeded").await == total },
    )
    .await;
    let line = wait_for_line(
        &serve.lines,
        "following the events stream",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        !line.contains("from=first"),
        "resumed from its offset: {line}"
    );
    worker.stop().await;

    let fresh = names.index("fresh.db");
    let rebuilt = Serve::start(&names, &fresh).await;
    wait_until(
        Duration::from_secs(120),
        "the fresh index to catch up",
        || async {
            let (a, b) = (serve.metrics().await, rebuilt.metrics().await);
            let offset =
                |m: &std::collections::BTreeMap<String, f64>| sample(m, "warren_index_offset", &[]);
            indexed(&rebuilt, &names.queue, "succeeded").await == total && offset(&a) == offset(&b)
        },
    )
    .await;
    for server in [&serve, &rebuilt] {
        let metrics = server.metrics().await;
        assert_eq!(sample(&metrics, "warren_index_gaps_total", &[]), 0.0);
        assert_eq!(sample(&metrics, "warren_index_incomplete", &[]), 0.0);
    }
    serve.stop().await;
    rebuilt.stop().await;
    let (a, b) = (dump(&resumed), dump(&fresh));
    assert!(a.len() > 3010, "{} rows", a.len());
    let differ: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).take(3).collect();
    assert!(
        a == b,
        "the resumed index differs from the rebuilt one ({} rows, {} rows): {differ:#?}",
        a.len(),
        b.len()
    );
    names.clean_up().await;
}

/// The offset of the first message the stream still holds.
async fn first_offset(stream: &str) -> u64 {
    let conn = raw_connection().await;
    let mut consumer = consume_stream(&conn, stream, 1).await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message within 10 s")
        .expect("open")
        .expect("a delivery");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let offset = warren_common::header_u64(&headers, "x-stream-offset")
        .unwrap()
        .expect("an offset");
    let _ = conn.close(200, "read".into()).await;
    offset
}

/// A batch of one `succeeded` event of task `id`, padded to about `size` bytes.
fn succeeded(id: &str, queue: &str, size: usize) -> Vec<Value> {
    vec![
        json!({"event": "succeeded", "id": id, "task": "t", "queue": queue,
        "at_ms": warren_common::now_ms(), "attempt": 1, "delivery_count": 0,
        "padding": "x".repeat(size)}),
    ]
}

#[tokio::test]
async fn a_stream_cut_by_retention_or_recreated_makes_the_index_say_it_is_incomplete() {
    let names = Names::new("status.gaps");
    // A stream that keeps ~20 kB in 4 kB segments: retention drops whole old segments.
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(20_000));
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(4_000),
    );
    channel
        .queue_declare(
            names.stream.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let q = names.queue.as_str();
    let early: Vec<Vec<Value>> = (0..3)
        .map(|n| succeeded(&format!("early-{n}"), q, 10))
        .collect();
    record_batches(&names.stream, "w1", 0, &early).await;
    let index = names.index("index.db");
    let serve = Serve::start(&names, &index).await;
    serve.wait_for_state("early-2", "succeeded").await;
    serve.kill().await;

    // While the index is down, retention removes everything it has not read.
    let late: Vec<Vec<Value>> = (0..200)
        .map(|n| succeeded(&format!("late-{n}"), q, 500))
        .collect();
    record_batches(&names.stream, "w1", 3, &late).await;
    wait_until(
        Duration::from_secs(30),
        "retention to cut the stream",
        || async { first_offset(&names.stream).await > 3 },
    )
    .await;
    let serve = Serve::start(&names, &index).await;
    serve.wait_for_state("late-199", "succeeded").await;
    let status = serve.status("late-199").await;
    assert!(status["index"]["incomplete_since"].is_string(), "{status}");
    let metrics = serve.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "warren_index_gaps_total",
            &[("reason", "retention")]
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "warren_index_incomplete", &[]), 1.0);
    wait_for_line(
        &serve.lines,
        "removed by the stream's retention",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        serve.state("early-0").await,
        "succeeded",
        "what was indexed stays"
    );
    serve.kill().await;

    // The stream deleted and declared again: its offsets start over.
    delete_stream(&conn, &names.stream).await;
    record_batches(&names.stream, "w2", 0, &[succeeded("after", q, 10)]).await;
    let serve = Serve::start(&names, &index).await;
    serve.wait_for_state("after", "succeeded").await;
    let metrics = serve.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "warren_index_gaps_total",
            &[("reason", "recreated")]
        ),
        1.0
    );
    wait_for_line(&serve.lines, "was recreated", Duration::from_secs(5))
        .await
        .unwrap();
    let (code, text) = cli(&serve, &names, &["status", "after"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("may miss events"), "{text}");
    serve.stop().await;
    remove_index(&index);
    names.clean_up().await;
}
