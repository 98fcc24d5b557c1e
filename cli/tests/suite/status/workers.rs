//! Workers in the status index: a `warren-worker` recording events shows in
//! `GET /v1/workers` and `warren-producer workers` as alive, with its queues, while it
//! heartbeats, and gone once it drains (its farewell). A worker killed (kill -9) mid-task
//! goes silent: it shows gone and its task `lost`, until a second worker runs the task's
//! redelivery and the index says `succeeded`, over HTTP and the CLI alike.

use super::{cli_state, Names, Serve};
use crate::{binary, WorkerProcess};
use serde_json::Value;
use std::time::Duration;
use warren_cli::demo;
use warren_tests::*;

/// Starts the stock `warren-worker` as `id`, recording events with 200 ms heartbeats, and
/// waits until it is ready.
pub(super) async fn worker(names: &Names, id: &str) -> WorkerProcess {
    let args = [
        "--queue",
        &names.queue,
        "--worker-id",
        id,
        "--events-stream",
        &names.stream,
        "--heartbeat-interval",
        "200ms",
    ];
    let process = WorkerProcess::start(&args, &amqp_url()).await;
    // Ready: its queue is declared and consumed, so a task published now is routed.
    wait_until(
        Duration::from_secs(30),
        "the worker to be ready",
        || async { process.readiness().await == 200 },
    )
    .await;
    process
}

/// `warren-producer workers` against `serve`: its JSON answer, and its text.
async fn workers_cli(serve: &Serve, names: &Names) -> (Value, String) {
    let run = |json: bool| {
        let mut command = tokio::process::Command::new(binary("warren-producer"));
        command
            .arg("workers")
            .args(["--server", &serve.url, "--auth-token-file"])
            .arg(&names.token_file);
        if json {
            command.arg("--json");
        }
        command.output()
    };
    let json = run(true).await.expect("warren-producer workers runs");
    assert!(json.status.success(), "{json:?}");
    let text = run(false).await.expect("warren-producer workers runs");
    assert!(text.status.success(), "{text:?}");
    (
        serde_json::from_slice(&json.stdout).expect("--json prints JSON"),
        String::from_utf8_lossy(&text.stdout).into_owned(),
    )
}

/// The worker `id` as `GET /v1/workers` answers it (null if not listed).
async fn listed(serve: &Serve, id: &str) -> Value {
    let answer = serve.client.get("/v1/workers").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_for_worker(serve: &Serve, id: &str, status: &str) -> Value {
    wait_until(
        Duration::from_secs(30),
        &format!("worker {id} to be {status}"),
        || async { listed(serve, id).await["status"] == status },
    )
    .await;
    listed(serve, id).await
}

/// The text line of worker `id` in `warren-producer workers`.
fn line_of<'a>(text: &'a str, id: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("{id} is listed: {text}"))
}

#[tokio::test]
async fn a_worker_shows_alive_while_it_heartbeats_and_gone_once_it_drains() {
    let names = Names::new("status.workers");
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let id = format!("{}-w", names.queue);
    let mut process = worker(&names, &id).await;

    let alive = wait_for_worker(&serve, &id, "alive").await;
    assert_eq!(alive["queues"], serde_json::json!([names.queue]));
    assert_eq!(alive["heartbeat_interval_ms"], 200);
    assert_eq!(alive["pid"], process.child.id().expect("running"));
    assert!(alive["gone_reason"].is_null(), "{alive}");
    let (json, text) = workers_cli(&serve, &names).await;
    let entry = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id.as_str())
        .expect("the CLI lists the worker");
    assert_eq!(entry["status"], "alive");
    let line = line_of(&text, &id);
    assert!(
        line.contains(" alive ") && line.contains(&names.queue),
        "{line}"
    );

    process.signal("TERM");
    assert!(process.child.wait().await.unwrap().success());
    // Its farewell decides why it is gone, even when a loaded machine delayed its last
    // heartbeats (200 ms apart here) enough for the index to call it silent first.
    wait_until(
        Duration::from_secs(30),
        "the worker gone with its farewell",
        || async { listed(&serve, &id).await["gone_reason"] == "farewell" },
    )
    .await;
    let gone = listed(&serve, &id).await;
    assert_eq!(gone["status"], "gone", "{gone}");
    let (_, text) = workers_cli(&serve, &names).await;
    assert!(line_of(&text, &id).contains("gone (farewell)"), "{text}");
    serve.stop().await;
    names.clean_up().await;
}

#[tokio::test]
async fn a_task_whose_worker_is_killed_is_lost_until_another_worker_runs_it() {
    let names = Names::new("status.lost");
    let serve = Serve::start(&names, &names.index("index.db")).await;
    let first = format!("{}-first", names.queue);
    let mut killed = worker(&names, &first).await;
    let publisher = publisher(&names.queue).await;
    let id = publisher
        .send(&demo::Sleep { ms: 3000 })
        .await
        .unwrap()
        .to_string();

    serve.wait_for_state(&id, "running").await;
    let alive = wait_for_worker(&serve, &first, "alive").await;
    assert_eq!(alive["status"], "alive");
    killed.signal("KILL");
    let _ = killed.child.wait().await;

    serve.wait_for_state(&id, "lost").await;
    assert_eq!(cli_state(&serve, &names, &id).await, "lost");
    assert_eq!(serve.list_ids("state=lost").await, vec![id.clone()]);
    let gone = listed(&serve, &first).await;
    assert_eq!(
        (gone["status"].as_str(), gone["gone_reason"].as_str()),
        (Some("gone"), Some("silent")),
        "{gone}"
    );
    let (_, text) = workers_cli(&serve, &names).await;
    assert!(line_of(&text, &first).contains("gone (silent)"), "{text}");
    let metrics = serve.metrics().await;
    let count = |metrics: &std::collections::BTreeMap<String, f64>, state| {
        sample(
            metrics,
            "warren_index_tasks",
            &[("queue", &names.queue), ("state", state)],
        )
    };
    assert_eq!(
        (count(&metrics, "lost"), count(&metrics, "running")),
        (1.0, 0.0)
    );
    let workers = |metrics: &std::collections::BTreeMap<String, f64>, status| {
        sample(metrics, "warren_index_workers", &[("status", status)])
    };
    assert_eq!(
        (workers(&metrics, "alive"), workers(&metrics, "gone")),
        (0.0, 1.0)
    );

    // Another worker gets the redelivery: the task runs again and succeeds.
    let second = format!("{}-second", names.queue);
    let mut rescuer = worker(&names, &second).await;
    serve.wait_for_state(&id, "succeeded").await;
    assert_eq!(cli_state(&serve, &names, &id).await, "succeeded");
    let status = serve.status(&id).await;
    assert_eq!(status["worker"], second.as_str());
    assert_eq!(status["delivery_count"], 1, "{status}");
    let metrics = serve.metrics().await;
    assert_eq!(
        (count(&metrics, "lost"), count(&metrics, "succeeded")),
        (0.0, 1.0)
    );
    assert_eq!(
        (workers(&metrics, "alive"), workers(&metrics, "gone")),
        (1.0, 1.0)
    );
    rescuer.signal("TERM");
    assert!(rescuer.child.wait().await.unwrap().success());
    serve.stop().await;
    names.clean_up().await;
}
