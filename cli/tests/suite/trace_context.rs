//! A publisher's W3C trace context crosses the queue: the worker's task span carries the
//! publisher's trace id and span id.

use crate::WorkerProcess;
use std::time::Duration;
use warren_producer::TaskOptions;
use warren_tests::*;

#[tokio::test]
async fn the_task_span_joins_the_publishers_trace() {
    let queue = unique_queue("trace");
    let worker =
        WorkerProcess::start(&["--queue", &queue, "--log-format", "json"], &amqp_url()).await;
    wait_until(Duration::from_secs(20), "ready", || async {
        worker.readiness().await == 200
    })
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let options = TaskOptions {
        traceparent: Some(traceparent.into()),
        ..TaskOptions::default()
    };
    let id = publisher(&queue)
        .await
        .publish("demo.noop", &(), &options)
        .await
        .unwrap();
    let line = wait_for_line(&worker.lines, "task finished", Duration::from_secs(10))
        .await
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let span = &entry["span"];
    assert_eq!(span["task_id"], id.as_str(), "{line}");
    assert_eq!(
        span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(span["parent_span_id"], "00f067aa0ba902b7", "{line}");
    delete_queues(&raw_connection().await, &queue).await;
}
