//! The real binaries, as an operator runs them.

use crate::{binary, TASK_LOG};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use warren_tests::*;

fn worker_command(queue: &str) -> Command {
    let mut cmd = Command::new(binary("warren-worker"));
    cmd.args(["--queue", queue, "--admin-addr", "127.0.0.1:0"])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", TASK_LOG)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(status.expect("kill runs").success());
}

#[tokio::test]
async fn worker_and_producer_binaries_run_a_thousand_tasks() {
    let queue = unique_queue("bin");
    let mut worker = worker_command(&queue)
        .spawn()
        .expect("warren-worker starts");
    let lines = capture_lines(worker.stderr.take().unwrap());
    wait_for_line(&lines, "consuming", Duration::from_secs(30))
        .await
        .unwrap();

    let output = Command::new(binary("warren-producer"))
        .args([
            "publish",
            "--task",
            "demo.noop",
            "--queue",
            &queue,
            "--count",
            "1000",
        ])
        .env("AMQP_URL", amqp_url())
        .output()
        .await
        .expect("warren-producer runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "publish failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1000 confirmed, 0 not confirmed"),
        "{stdout}"
    );

    let conn = raw_connection().await;
    wait_until(Duration::from_secs(30), "the queue to drain", || {
        let lines = lines.clone();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("task finished"))
                .count()
                == 1000
        }
    })
    .await;
    sigterm(&worker);
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a drained worker exits 0, got {status}");
    let summary = wait_for_line(&lines, "drained", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(field(&summary, "succeeded"), Some(1000), "{summary}");
    assert_eq!(ready_count(&conn, &queue).await, 0);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_mismatched_queue_stops_the_worker_with_a_clear_message() {
    let queue = unique_queue("binmismatch");
    let publish = Command::new(binary("warren-producer"))
        .args([
            "publish",
            "--task",
            "demo.noop",
            "--queue",
            &queue,
            "--queue-type",
            "classic",
        ])
        .env("AMQP_URL", amqp_url())
        .output()
        .await
        .unwrap();
    assert!(publish.status.success());
    let output = tokio::time::timeout(Duration::from_secs(30), worker_command(&queue).output())
        .await
        .expect("the worker exits instead of looping")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("queue `{queue}`")) && stderr.contains("x-queue-type"),
        "{stderr}"
    );
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn bad_flags_name_the_flag() {
    let output = Command::new(binary("warren-worker"))
        .args(["--prefetch", "lots"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--prefetch"));
    let output = Command::new(binary("warren-worker"))
        .args(["--task-timeout", "2h"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--task-timeout"));
    let output = Command::new(binary("warren-producer"))
        .args(["publish", "--task", "x", "--payload", "{not json"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--payload"));
}

#[tokio::test]
async fn the_producer_publishes_through_the_exchange_only_when_asked() {
    use lapin::options::{
        BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let queue = unique_queue("via");
    let tap = format!("{queue}.tap");
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let publish = |extra: &'static [&'static str]| {
        let queue = queue.clone();
        async move {
            let output = Command::new(binary("warren-producer"))
                .args(["publish", "--task", "demo.noop", "--queue", &queue])
                .args(extra)
                .env("AMQP_URL", amqp_url())
                .output()
                .await
                .expect("warren-producer runs");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    // The first publish declares the work queue; then a queue of the user's own is bound to
    // the task exchange with the work queue's key.
    publish(&[]).await;
    channel
        .queue_declare(
            tap.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.as_str().into(),
            "warren".into(),
            queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&[]).await;
    assert_eq!(ready_count(&conn, &queue).await, 2);
    assert_eq!(ready_count(&conn, &tap).await, 0, "straight to the queue");
    let task = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a task");
    assert_eq!(task.delivery.exchange.as_str(), "", "the default exchange");
    assert_eq!(task.delivery.routing_key.as_str(), queue);
    publish(&["--via-exchange"]).await;
    assert_eq!(ready_count(&conn, &queue).await, 2);
    assert_eq!(ready_count(&conn, &tap).await, 1, "through the exchange");
    let _ = channel
        .queue_delete(tap.as_str().into(), QueueDeleteOptions::default())
        .await;
    delete_queues(&conn, &queue).await;
}
