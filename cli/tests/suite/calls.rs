//! Results and calls against the real broker: a handler's return value reaches a caller
//! waiting with `Publisher::call`, `warren-producer publish --wait` and `POST /v1/tasks?wait=`,
//! and the status index (docs/wire-format.md §12); a failed task's caller gets why; a result
//! over the worker's limit is left out, saying so, and the task still succeeds; a caller whose
//! connection drops gets an error naming the task, which still runs once.

use crate::binary;
use crate::http_ingest::openapi::Spec;
use crate::http_ingest::support::{delete_stream, Server, Settings};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_cli::demo;
use warren_producer::status::IndexConfig;
use warren_producer::ReplyStatus;
use warren_producer::{CallError, PublisherConfig, TaskOptions};
use warren_tests::*;
use warren_worker::{Registry, Task, TaskContext, TaskError};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Measure {
    text: String,
}

impl Task for Measure {
    const NAME: &'static str = "test.measure";
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Measured {
    chars: usize,
    words: usize,
}

async fn measure(_: TaskContext, task: Measure) -> Result<Measured, TaskError> {
    Ok(Measured {
        chars: task.text.chars().count(),
        words: task.text.split_whitespace().count(),
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Refuse;

impl Task for Refuse {
    const NAME: &'static str = "test.refuse";
}

async fn refuse(_: TaskContext, _: Refuse) -> Result<u32, TaskError> {
    Err(TaskError::permanent("refused on purpose"))
}

/// The demo tasks (`demo.echo` returns its payload), `test.measure`, `test.refuse`, and
/// `test.big`, whose result is a string of the length it is given.
fn registry() -> Registry {
    let mut registry = Registry::new();
    demo::register(&mut registry);
    registry
        .handle(measure)
        .handle(refuse)
        .register("test.big", |_: TaskContext, len: usize| async move {
            Ok::<_, TaskError>("x".repeat(len))
        });
    registry
}

#[tokio::test]
async fn a_handlers_result_reaches_its_caller_and_the_status_index() {
    let queue = unique_queue("calls");
    let stream = format!("{queue}.events");
    let dir = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = test_config(&queue);
    config.events_stream = Some(stream.clone());
    config.max_result_bytes = 1000;
    let worker = TestWorker::start(registry(), config).await;
    let mut settings = Settings::new(&queue);
    settings.index = Some(IndexConfig::new(&stream, dir.join("index.db")));
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let publisher = publisher(&queue).await;

    // Rust: the typed result, and a typed failure.
    let text = "héllo wide world".to_owned();
    let measured: Measured = publisher.call(&Measure { text }, WAIT).await.unwrap();
    assert_eq!(
        measured,
        Measured {
            chars: 16,
            words: 3
        }
    );
    let refused = publisher.call::<_, u32>(&Refuse, WAIT).await.unwrap_err();
    let CallError::Failed {
        id: refused_id,
        status,
        kind,
        reason,
    } = refused
    else {
        panic!("not a failure: {refused:?}");
    };
    assert_eq!(status, ReplyStatus::DeadLettered);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("permanent", "refused on purpose")
    );

    // Over the limit: left out, saying so; the task succeeded.
    let options = TaskOptions::new();
    let big = publisher
        .call_named("test.big", &5000usize, &options, WAIT)
        .await
        .unwrap();
    assert_eq!(big.status, ReplyStatus::Succeeded);
    assert_eq!(big.result, None);
    let why = big.result_error.as_deref().unwrap_or_default();
    assert!(why.contains("limit of 1000 bytes"), "{why}");
    let small = publisher
        .call_named("test.big", &3usize, &options, WAIT)
        .await
        .unwrap();
    assert_eq!(
        small.result.as_ref().map(|r| r.get()),
        Some("\"xxx\""),
        "{small:?}"
    );

    // HTTP: 200 with the reply when the task ends in time, 202 when it does not.
    let echo = json!({"task": "demo.echo", "payload": {"a": [1, "b"]}});
    let answer = client.post_json("/v1/tasks?wait=20s", &echo).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["status"], "succeeded");
    assert_eq!(answer.json["result"], json!({"a": [1, "b"]}));
    let echo_id = answer.json["id"].as_str().unwrap().to_owned();
    let slow = json!({"task": "demo.sleep", "payload": {"ms": 3000}});
    let answer = client.post_json("/v1/tasks?wait=1s", &slow).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert!(answer.json["id"].is_string());
    for bad in ["", "soon", "-1s", "1m", "0"] {
        let answer = client
            .post_json(&format!("/v1/tasks?wait={bad}"), &echo)
            .await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.text);
        assert_eq!(answer.json["field"], "wait");
    }
    let answer = client.post_json("/v1/tasks?wiat=1s", &echo).await;
    assert_eq!(answer.status, 400, "{}", answer.text);

    // The index: the result with the status; the reason for one left out.
    let status = |id: String| {
        let client = client.clone();
        async move { client.get(&format!("/v1/tasks/{id}")).await.json }
    };
    wait_until(WAIT, "the echo task's status", || async {
        status(echo_id.clone()).await["state"] == "succeeded"
    })
    .await;
    assert_eq!(status(echo_id).await["result"], json!({"a": [1, "b"]}));
    let big_id = big.id.to_string();
    wait_until(WAIT, "the big task's status", || async {
        status(big_id.clone()).await["state"] == "succeeded"
    })
    .await;
    let big_status = status(big_id).await;
    assert_eq!(big_status["result"], Value::Null);
    assert!(big_status["result_error"]
        .as_str()
        .unwrap()
        .contains("limit of 1000 bytes"));
    wait_until(WAIT, "the refused task's status", || async {
        status(refused_id.clone()).await["state"] == "dead_lettered"
    })
    .await;

    publisher.close().await;
    server.stop().await.unwrap();
    worker.stop().await;
    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;
    delete_stream(&conn, &stream).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `warren-producer publish ARGS --queue QUEUE` and returns what it printed.
async fn publish(queue: &str, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(binary("warren-producer"))
        .args(["publish", "--queue", queue])
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env_remove("AMQP_URL_FILE")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("publish finishes")
        .expect("publish runs")
}

#[tokio::test]
async fn publish_wait_prints_the_reply_and_says_by_its_exit_code_how_the_task_ended() {
    let queue = unique_queue("calls-cli");
    let worker = TestWorker::start(registry(), test_config(&queue)).await;

    let ok = publish(
        &queue,
        &[
            "--task",
            "demo.echo",
            "--payload",
            r#"{"n":7}"#,
            "--wait",
            "20s",
        ],
    )
    .await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let reply: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(reply["status"], "succeeded");
    assert_eq!(reply["result"], json!({"n": 7}));

    let args = [
        "--task",
        "demo.fail",
        "--max-attempts",
        "1",
        "--wait",
        "20s",
    ];
    let failed = publish(&queue, &args).await;
    assert_eq!(failed.status.code(), Some(4), "{failed:?}");
    let reply: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(reply["status"], "dead_lettered");
    assert_eq!(reply["error"]["kind"], "retries_exhausted");

    let args = [
        "--task",
        "demo.sleep",
        "--payload",
        r#"{"ms":3000}"#,
        "--wait",
        "1s",
    ];
    let late = publish(&queue, &args).await;
    assert_eq!(late.status.code(), Some(75), "{late:?}");
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert!(stderr.contains("may still run"), "{stderr}");

    worker.stop().await;
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_caller_that_loses_its_connection_gets_an_error_and_the_task_still_runs_once() {
    let queue = unique_queue("calls-lost");
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut registry = Registry::new();
    let counts = (started.clone(), finished.clone());
    registry.register("test.slow", move |_: TaskContext, (): ()| {
        let (started, finished) = counts.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>("done")
        }
    });
    let worker = TestWorker::start(registry, test_config(&queue)).await;
    let name = format!("caller {queue}");
    let config = PublisherConfig {
        amqp: amqp(),
        default_queue: queue.clone(),
        connection_name: name.clone(),
        ..PublisherConfig::default()
    };
    let publisher = warren_producer::Publisher::connect(config, &Default::default())
        .await
        .unwrap();
    let caller = publisher.clone();
    let call = tokio::spawn(async move {
        caller
            .call_named("test.slow", &(), &TaskOptions::new(), WAIT)
            .await
    });
    wait_until(WAIT, "the task to start", || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let pid = crate::process::connection_pid(&name).expect("the caller's connection is listed");
    let closed = std::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pid,
            "test: the caller's connection drops",
        ])
        .output()
        .unwrap();
    assert!(closed.status.success(), "{closed:?}");
    let error = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, CallError::Disconnected { id } if !id.is_empty()),
        "{error:?}"
    );
    wait_until(WAIT, "the task to finish", || async {
        finished.load(Ordering::SeqCst) == 1
    })
    .await;
    // Drained after the run: an unacked task would be back in its queue.
    worker.stop().await;
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 0, "the task was acked");
    assert_eq!(started.load(Ordering::SeqCst), 1, "the task ran once");
    publisher.close().await;
    delete_queues(&conn, &queue).await;
}
