//! What operators see: health and readiness, failover between broker URLs, and metrics that
//! count exactly what happened (checked with promtool).

use crate::{binary, WorkerProcess};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::process::Command;
use warren_tests::*;

const DEAD_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

async fn publish(queue: &str, url: &str, args: &[&str]) {
    let out = Command::new(binary("warren-producer"))
        .args(["publish", "--queue", queue])
        .args(args)
        .env("AMQP_URL", url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "publish {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn readiness_follows_connecting_consuming_and_draining() {
    // Nothing listens at the URL: alive, not ready, retrying with backoff (and saying so).
    let waiting = WorkerProcess::start(&["--queue", "never"], DEAD_URL).await;
    assert_eq!(http_get(&waiting.admin, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(&waiting.admin, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (503, "connecting"));
    wait_for_line(&waiting.lines, "broker unreachable", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        !waiting
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("guest:guest")),
        "password masked"
    );
    drop(waiting);

    let queue = unique_queue("ready");
    let worker = WorkerProcess::start(
        &["--queue", &queue, "--shutdown-timeout", "20s"],
        &amqp_url(),
    )
    .await;
    wait_until(Duration::from_secs(20), "ready", || async {
        worker.readiness().await == 200
    })
    .await;
    publish(
        &queue,
        &amqp_url(),
        &["--task", "demo.sleep", "--payload", r#"{"ms": 4000}"#],
    )
    .await;
    // Drain while the task runs (no log line marks a task's start: watch the gauge).
    wait_until(Duration::from_secs(10), "the task to start", || async {
        let metrics = http_get(&worker.admin, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        metrics
            .lines()
            .any(|l| l.starts_with("warren_tasks_in_progress{") && l.ends_with(" 1"))
    })
    .await;
    worker.signal("TERM");
    wait_until(Duration::from_secs(2), "readiness to turn 503", || async {
        worker.readiness().await == 503
    })
    .await;
    let (status, body) = http_get(&worker.admin, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (503, "draining"));
    let mut worker = worker;
    let status = tokio::time::timeout(Duration::from_secs(20), worker.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let summary = wait_for_line(&worker.lines, "drained", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        field(&summary, "succeeded"),
        Some(1),
        "the running task finished: {summary}"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn worker_and_producer_fail_over_to_the_second_url() {
    let queue = unique_queue("failover");
    let urls = format!("{DEAD_URL},{}", amqp_url());
    let worker = WorkerProcess::start(&["--queue", &queue], &urls).await;
    wait_until(Duration::from_secs(20), "ready", || async {
        worker.readiness().await == 200
    })
    .await;
    publish(
        &queue,
        &urls,
        &["--task", "demo.noop", "--id", "via-second-url"],
    )
    .await;
    wait_until(Duration::from_secs(10), "the task", || {
        let done = worker.finished_ids().contains(&"via-second-url".to_owned());
        async move { done }
    })
    .await;
    let lines = worker.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("127.0.0.1:1/"),
        "the dead node was tried and logged"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn metrics_count_exactly_what_happened_and_promtool_accepts_them() {
    let queue = unique_queue("metrics");
    let args = [
        "--queue",
        &queue,
        "--retry-initial",
        "1s",
        "--retry-jitter",
        "0",
        "--max-attempts",
        "2",
    ];
    let worker = WorkerProcess::start(&args, &amqp_url()).await;
    wait_until(Duration::from_secs(20), "ready", || async {
        worker.readiness().await == 200
    })
    .await;
    publish(
        &queue,
        &amqp_url(),
        &["--task", "demo.noop", "--count", "5"],
    )
    .await;
    publish(
        &queue,
        &amqp_url(),
        &[
            "--task",
            "demo.flaky",
            "--payload",
            r#"{"fail_times": 1}"#,
            "--count",
            "2",
        ],
    )
    .await;
    publish(&queue, &amqp_url(), &["--task", "demo.fail"]).await;
    publish(&queue, &amqp_url(), &["--task", "no.such.task"]).await;
    let scrape = || async { samples(&http_get(&worker.admin, "/metrics").await.unwrap().1) };
    wait_until(Duration::from_secs(20), "every task to settle", || async {
        let m = scrape().await;
        sample(&m, "warren_tasks_succeeded_total", &[]) == 7.0
            && sample(&m, "warren_tasks_dead_lettered_total", &[]) == 2.0
    })
    .await;
    let m = scrape().await;
    let q = ("queue", queue.as_str());
    assert_eq!(
        sample(&m, "warren_tasks_received_total", &[q]),
        12.0,
        "5 + 2×2 + 2 + 1"
    );
    assert_eq!(
        sample(
            &m,
            "warren_tasks_succeeded_total",
            &[q, ("task", "demo.noop")]
        ),
        5.0
    );
    assert_eq!(
        sample(
            &m,
            "warren_tasks_succeeded_total",
            &[q, ("task", "demo.flaky")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "warren_tasks_retried_total",
            &[q, ("task", "demo.flaky")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            "warren_tasks_retried_total",
            &[q, ("task", "demo.fail")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "warren_tasks_failed_total",
            &[q, ("task", "demo.fail"), ("reason", "error")]
        ),
        2.0
    );
    let dead = |task, reason| {
        sample(
            &m,
            "warren_tasks_dead_lettered_total",
            &[q, ("task", task), ("reason", reason)],
        )
    };
    assert_eq!(dead("demo.fail", "retries_exhausted"), 1.0);
    assert_eq!(dead("<unknown>", "unknown_task"), 1.0);
    assert_eq!(
        sample(&m, "warren_task_duration_seconds_count", &[q]),
        11.0,
        "handlers that ran: 5 + 2×2 + 2"
    );
    assert_eq!(sample(&m, "warren_deliveries_held", &[q]), 0.0);
    assert_eq!(sample(&m, "warren_broker_connected", &[]), 1.0);

    // `?name=` renders only the families named, with the same values.
    let path = "/metrics?name=warren_tasks_succeeded_total&name=warren_broker_connected";
    let only = samples(&http_get(&worker.admin, path).await.unwrap().1);
    let families: BTreeSet<&str> = only
        .keys()
        .map(|series| series.split('{').next().unwrap_or(series))
        .collect();
    assert_eq!(
        families,
        BTreeSet::from(["warren_broker_connected", "warren_tasks_succeeded_total"])
    );
    assert_eq!(sample(&only, "warren_tasks_succeeded_total", &[]), 7.0);

    let text = http_get(&worker.admin, "/metrics").await.unwrap().1;
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(_) => skip_or_fail(
            "the metrics exposition with promtool",
            "promtool is not installed (./scripts/test installs it)",
        ),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let report = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "promtool check metrics: {report}");
        }
    }
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn connections_ask_for_small_frames_unless_the_url_says_otherwise() {
    // lapin's buffers are 32 frames each way per connection: the frame size is the memory.
    let base: warren_common::AmqpUrl = amqp_url().parse().unwrap();
    let conn = base
        .open(lapin::ConnectionProperties::default())
        .await
        .unwrap();
    assert_eq!(
        conn.configuration().frame_max(),
        warren_common::DEFAULT_FRAME_MAX
    );
    let _ = conn.close(200, "done".into()).await;
    let sep = if amqp_url().contains('?') { '&' } else { '?' };
    let own: warren_common::AmqpUrl = format!("{}{sep}frame_max=65536", amqp_url())
        .parse()
        .unwrap();
    let conn = own
        .open(lapin::ConnectionProperties::default())
        .await
        .unwrap();
    assert_eq!(conn.configuration().frame_max(), 65536);
    let _ = conn.close(200, "done".into()).await;
}
