//! The examples the docs show, run as a user runs them: the worker example (two typed tasks
//! on `warren_worker::run`) takes what the publisher example sends, and the handler examples
//! (`errors`, `schema_versions`) show what a worker does with their tasks.

use crate::{example, WorkerProcess};
use std::time::Duration;
use warren_common::{dead_letter_queue_name, headers};
use warren_tests::*;

/// The worker example consuming `queue`, once it reports itself ready.
async fn start_worker_example(queue: &str, url: &str) -> WorkerProcess {
    let worker = WorkerProcess::start_program(&example("worker"), &["--queue", queue], url).await;
    wait_until(
        Duration::from_secs(20),
        "the worker example to consume",
        || async { worker.readiness().await == 200 },
    )
    .await;
    worker
}

#[tokio::test]
async fn the_call_example_gets_the_worker_examples_result_and_failure() {
    let queue = unique_queue("examples-call");
    let url = amqp_url();
    let mut worker = start_worker_example(&queue, &url).await;
    let called = tokio::process::Command::new(example("call"))
        .arg(&queue)
        .env("AMQP_URL", &url)
        .output()
        .await
        .expect("the call example runs");
    let stdout = String::from_utf8_lossy(&called.stdout);
    assert!(
        called.status.success(),
        "call example failed: {stdout}{}",
        String::from_utf8_lossy(&called.stderr)
    );
    assert_eq!(
        stdout,
        "images.resize returned thumbnails/photos/cat.png (640 wide)\n\
         images.resize failed: permanent: width must be positive\n"
    );
    worker.signal("TERM");
    let status = worker.child.wait().await.expect("the worker exits");
    assert_eq!(status.code(), Some(0), "a drained worker exits 0");
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn the_worker_example_runs_what_the_publisher_example_sends() {
    let queue = unique_queue("examples");
    let url = amqp_url();
    let mut worker = start_worker_example(&queue, &url).await;
    let published = tokio::process::Command::new(example("publish"))
        .arg(&queue)
        .env("AMQP_URL", &url)
        .output()
        .await
        .expect("the publish example runs");
    let stdout = String::from_utf8_lossy(&published.stdout);
    assert!(
        published.status.success(),
        "publish example failed: {stdout}{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(stdout.matches(" confirmed").count(), 4, "{stdout}");

    let succeeded = |m: &std::collections::BTreeMap<String, f64>, task: &str| {
        sample(m, "warren_tasks_succeeded_total", &[("task", task)])
    };
    let mut metrics = Default::default();
    for _ in 0..300 {
        metrics = worker.scrape().await;
        if succeeded(&metrics, "images.resize") == 2.0 && succeeded(&metrics, "users.notify") == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(succeeded(&metrics, "images.resize"), 2.0);
    assert_eq!(succeeded(&metrics, "users.notify"), 1.0);
    // The notification asked for its retry delay once ("mail service busy").
    assert_eq!(
        sample(
            &metrics,
            "warren_tasks_retried_total",
            &[("task", "users.notify")]
        ),
        1.0
    );
    let conn = raw_connection().await;
    let dead = take_all(&conn, &dead_letter_queue_name(&queue)).await;
    assert_eq!(dead.len(), 1, "the zero-width image is the one dead letter");
    assert_eq!(
        header(&dead[0].0, headers::DEAD_KIND).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        header(&dead[0].0, headers::DEAD_REASON).as_deref(),
        Some("width must be positive")
    );

    worker.signal("TERM");
    let status = worker.child.wait().await.expect("the worker exits");
    assert_eq!(status.code(), Some(0), "a drained worker exits 0");
    delete_queues(&conn, &queue).await;
}

/// The handler examples docs/failures.md and docs/wire-format.md §5 copy from run as their
/// doc comments say, without a broker, and get the outcomes they check.
#[tokio::test]
async fn the_handler_examples_run_without_a_broker() {
    for (name, lines) in [("errors", 5), ("schema_versions", 8)] {
        let output = tokio::process::Command::new(example(name))
            .output()
            .await
            .expect("the example runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.lines().count(), lines, "{name}: {stdout}");
    }
}
