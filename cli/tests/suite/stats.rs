//! `warren-producer stats`, the real binary, on a private node (the count of
//! `warren.delay.unroutable` is the broker's, shared by every queue: on the shared broker other
//! tests would change it): it shows the delayed tasks whose queue is gone, says so when that
//! queue is not declared yet or cannot be read, and exits 0 in every case.

use crate::binary;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;
use warren_common::delay::UNROUTABLE;
use warren_tests::*;

async fn producer(url: &str, args: &[&str]) -> Output {
    let run = Command::new(binary("warren-producer"))
        .args(args)
        .env("AMQP_URL", url)
        .env_remove("AMQP_URL_FILE")
        .env_remove("RUST_LOG")
        .env_remove("WARREN_QUEUE")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("warren-producer {args:?} still runs after 60s"))
        .expect("warren-producer runs")
}

/// `stats --queue QUEUE` (with `--json` when asked): its exit code 0 checked, its stdout.
async fn stats(url: &str, queue: &str, json: bool) -> String {
    let mut args = vec!["stats", "--queue", queue];
    if json {
        args.push("--json");
    }
    let output = producer(url, &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn stats_json(url: &str, queue: &str) -> serde_json::Value {
    let stdout = stats(url, queue, true).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn publish(url: &str, queue: &str, extra: &[&str]) {
    let mut args = vec!["publish", "--task", "demo.noop", "--queue", queue];
    args.extend_from_slice(extra);
    let output = producer(url, &args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn stats_shows_delayed_tasks_whose_queue_is_gone() {
    let Some(node) = PrivateNode::start_or_skip("stats") else {
        return;
    };
    let url = node.url();
    let queue = unique_queue("stats");
    // A publish without a delay declares the queue, not the delay cascade.
    publish(&url, &queue, &[]).await;
    let text = stats(&url, &queue, false).await;
    assert!(
        text.contains(&format!("queue {queue}: 1 ready"))
            && text.contains(&format!(
                "delayed tasks whose queue is gone: 0 (`{UNROUTABLE}` not declared yet)"
            )),
        "{text}"
    );
    let value = stats_json(&url, &queue).await;
    assert_eq!(value["delay_unroutable"], 0, "{value}");
    assert_eq!(value["delay_unroutable_state"], "not_declared", "{value}");

    // A queue the broker will not show (here: another connection's exclusive queue, 405
    // RESOURCE_LOCKED; in a cluster, a node that is down) is reported, and stats still exits 0.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    channel
        .queue_declare(UNROUTABLE.into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    let text = stats(&url, &queue, false).await;
    assert!(
        text.contains(&format!(
            "delayed tasks whose queue is gone: unknown, `{UNROUTABLE}` cannot be read now"
        )) && text.contains("RESOURCE_LOCKED"),
        "{text}"
    );
    let value = stats_json(&url, &queue).await;
    assert!(value["delay_unroutable"].is_null(), "{value}");
    assert_eq!(value["delay_unroutable_state"], "unavailable", "{value}");
    assert_eq!(value["ready"], 1, "{value}");
    conn.close(200, "done".into()).await.unwrap();

    // A task delayed for a queue deleted before its delay ends lands in the unroutable queue.
    let gone = unique_queue("stats.gone");
    publish(&url, &gone, &["--delay", "3s"]).await;
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(gone.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the task in the unroutable queue",
        || {
            let (url, queue) = (url.clone(), queue.clone());
            async move { stats_json(&url, &queue).await["delay_unroutable"] == 1 }
        },
    )
    .await;
    let value = stats_json(&url, &queue).await;
    assert_eq!(value["delay_unroutable_state"], "declared", "{value}");
    let text = stats(&url, &queue, false).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        format!("delayed tasks whose queue is gone: 1 in `{UNROUTABLE}` (from any queue)"),
        "{text}"
    );
    assert!(
        lines[2].contains("`dead-letters replay` cannot move them")
            && lines[2].contains("docs/operations.md"),
        "{text}"
    );
    // The task is there whole: the one published.
    let held = take_all(&conn, UNROUTABLE).await;
    assert_eq!(held.len(), 1);
    let kind = held[0].0.kind().as_ref().map(|k| k.to_string());
    assert_eq!(kind.as_deref(), Some("demo.noop"));
    let _ = conn.close(200, "done".into()).await;
}
