//! The server against `docs/openapi.yaml`: every documented answer is produced, as
//! documented, and schemathesis (a pinned version from PyPI, in a virtualenv under target/
//! made on first use) finds nothing the spec and the server disagree on.

use super::openapi::Spec;
use super::slow_clients::{post_head, Raw, RawAnswer, BOUND};
use super::support::*;
use serde_json::json;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use warren_producer::status::IndexConfig;
use warren_tests::*;

/// Consumes `queue` and answers the tasks that name a `reply_to`: the first with a reply a
/// worker would send, the next with one that is not JSON.
async fn answer_calls(queue: String) {
    use futures::StreamExt;
    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut answered = 0;
    while let Some(Ok(delivery)) = deliveries.next().await {
        delivery.ack(Default::default()).await.unwrap();
        let props = &delivery.properties;
        let (Some(reply_to), Some(nonce)) = (props.reply_to(), props.correlation_id()) else {
            continue;
        };
        let id = props
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let body = match answered {
            0 => json!({"id": id, "status": "succeeded", "result": [1]}).to_string(),
            _ => "not a reply".to_owned(),
        };
        answered += 1;
        let reply = lapin::BasicProperties::default().with_correlation_id(nonce.clone());
        channel
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                Default::default(),
                body.as_bytes(),
                reply,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_documented_answer_is_produced_as_documented() {
    let spec = Arc::new(Spec::load());
    let queue = unique_queue("http.spec");
    let stream = format!("{queue}.events");
    let index_file = std::env::temp_dir().join(format!("{queue}.index.db"));
    let mut settings = Settings::new(&queue);
    settings.token = Some("spec-token");
    settings.max_body_bytes = 2048;
    settings.connections.body_read_timeout = Duration::from_secs(1);
    settings.index = Some(IndexConfig::new(&stream, &index_file));
    let live = Server::start(settings).await;
    let client = live.client(spec.clone());
    client.wait_ready().await;
    let mut down_settings = Settings::new("test.http.spec.down");
    down_settings.amqp_url = Some(UNREACHABLE.to_owned());
    let down = Server::start(down_settings).await;
    let down_client = down.client(spec.clone());
    let missing = unique_queue("http.nowhere");
    let big = json!({"task": "t", "payload": "x".repeat(4000)}).to_string();

    for (path, task, missing_task) in [
        (
            "/v1/tasks",
            json!({"task": "t"}),
            json!({"task": "t", "queue": missing}),
        ),
        (
            "/v1/tasks:batch",
            json!({"tasks": [{"task": "t"}]}),
            json!({"tasks": [{"task": "t", "queue": missing}]}),
        ),
    ] {
        assert_eq!(client.post_json(path, &task).await.status, 202);
        assert_eq!(client.post_raw(path, JSON, "{".into()).await.status, 400);
        assert_eq!(
            client.without_token().post_json(path, &task).await.status,
            401
        );
        assert_eq!(client.post_raw(path, JSON, big.clone()).await.status, 413);
        assert_eq!(
            client
                .post_raw(path, "text/plain", "{}".into())
                .await
                .status,
            415
        );
        assert_eq!(client.post_json(path, &missing_task).await.status, 422);
        assert_eq!(down_client.post_json(path, &task).await.status, 503);
        let stalled = stalled_body(&live.url, path, "spec-token").await;
        spec.check(
            "POST",
            path,
            stalled.status,
            stalled.content_type(),
            &stalled.body,
        );
        assert_eq!(stalled.status, 408, "{stalled:?}");
    }
    // `?wait=`: a stand-in worker answers the first call as a worker does, the second with a
    // reply that is not in the documented format.
    let stand_in = tokio::spawn(answer_calls(queue.clone()));
    let waited = client
        .post_json("/v1/tasks?wait=20s", &json!({"task": "t"}))
        .await;
    assert_eq!(waited.status, 200, "{}", waited.text);
    let garbled = client
        .post_json("/v1/tasks?wait=20s", &json!({"task": "t"}))
        .await;
    assert_eq!(garbled.status, 502, "{}", garbled.text);
    stand_in.abort();
    assert_eq!(client.get("/healthz").await.status, 200);
    assert_eq!(client.get("/readyz").await.status, 200);
    assert_eq!(client.get("/metrics").await.status, 200);
    assert_eq!(down_client.get("/readyz").await.status, 503);

    // The status routes: a task recorded in the events stream, one never seen.
    let event = json!({"event": "succeeded", "id": "spec-task", "task": "t", "queue": queue,
        "at_ms": warren_common::now_ms(), "attempt": 1, "delivery_count": 0});
    record_events(&stream, "spec-worker", 0, &[event]).await;
    wait_until(
        Duration::from_secs(20),
        "the index to apply the event",
        // `unknown` is a 200 too: wait for the state the event gives.
        || async { client.get("/v1/tasks/spec-task").await.json["state"] == "succeeded" },
    )
    .await;
    let never_seen = client.get("/v1/tasks/never-seen").await;
    assert_eq!(
        (never_seen.status, never_seen.json["state"].clone()),
        (200, json!("unknown"))
    );
    assert_eq!(client.get("/v1/tasks/%FF").await.status, 400);
    let timeline = client.get("/v1/tasks/spec-task/timeline").await;
    assert_eq!(timeline.status, 200, "{}", timeline.text);
    assert_eq!(timeline.json["events"][0]["event"], "succeeded");
    assert_eq!(timeline.json["events"][0]["worker"], "spec-worker");
    let no_events = client.get("/v1/tasks/never-seen/timeline").await;
    assert_eq!(
        (no_events.status, no_events.json["events"].clone()),
        (200, json!([]))
    );
    assert_eq!(client.get("/v1/tasks/%FF/timeline").await.status, 400);
    assert_eq!(client.get("/v1/tasks?state=succeeded").await.status, 200);
    assert_eq!(client.get("/v1/tasks?state=done").await.status, 400);
    let heartbeat = json!({"worker": "spec-worker", "host": "h", "pid": 1, "version": "0",
        "queues": [queue], "concurrency": 1, "prefetch": 1, "running": [], "counts": {},
        "started_at_ms": warren_common::now_ms(), "at_ms": warren_common::now_ms(),
        "interval_ms": 60_000});
    record_heartbeat(&stream, &heartbeat).await;
    wait_until(
        Duration::from_secs(20),
        "the index to apply the heartbeat",
        || async { client.get("/v1/workers").await.json["workers"][0]["id"] == "spec-worker" },
    )
    .await;
    assert_eq!(client.get("/v1/workers?status=alive").await.status, 400);
    for path in [
        "/v1/tasks",
        "/v1/tasks/spec-task",
        "/v1/tasks/spec-task/timeline",
        "/v1/workers",
    ] {
        assert_eq!(client.without_token().get(path).await.status, 401);
        assert_eq!(down_client.get(path).await.status, 501);
    }

    // The control routes: a cancel that lost the race to the task's end says so.
    let post = |client: &Client, path: &str| {
        let (client, path) = (client.clone(), path.to_owned());
        async move { client.post_raw(&path, JSON, String::new()).await }
    };
    let cancelled = post(&client, "/v1/tasks/spec-task/cancel").await;
    assert_eq!(cancelled.status, 202);
    assert_eq!(cancelled.json["finished_before_cancel"], "succeeded");
    let not_seen = post(&client, "/v1/tasks/never-seen/cancel").await;
    assert_eq!(not_seen.json["finished_before_cancel"], json!(null));
    assert_eq!(post(&client, "/v1/tasks/%20/cancel").await.status, 400);
    for action in ["pause", "resume"] {
        let path = format!("/v1/queues/{queue}/{action}");
        let answer = post(&client, &path).await;
        assert_eq!(
            (answer.status, answer.json["paused"] == (action == "pause")),
            (202, true)
        );
        let unknown = post(&client, &format!("/v1/queues/{missing}/{action}")).await;
        assert_eq!(
            (unknown.status, unknown.json["field"].clone()),
            (404, json!("queue"))
        );
        assert_eq!(post(&client.without_token(), &path).await.status, 401);
        assert_eq!(post(&down_client, &path).await.status, 503);
    }
    assert_eq!(
        post(&client.without_token(), "/v1/tasks/x/cancel")
            .await
            .status,
        401
    );
    assert_eq!(post(&down_client, "/v1/tasks/x/cancel").await.status, 503);

    let missed: Vec<_> = spec
        .documented()
        .difference(&spec.seen())
        .cloned()
        .collect();
    assert!(
        missed.is_empty(),
        "documented but never produced: {missed:?}"
    );
    live.stop().await.expect("stops");
    down.stop().await.expect("stops");
    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;
    delete_stream(&conn, &stream).await;
    delete_stream(&conn, &format!("{queue}.control")).await;
    remove_index(&index_file);
}

/// The answer to a request whose body stops halfway.
async fn stalled_body(base: &str, path: &str, token: &str) -> RawAnswer {
    let mut raw = Raw::connect(base).await;
    let head = post_head(path, 100);
    let head = head.replace(
        "\r\n\r\n",
        &format!("\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    raw.send(head.as_bytes()).await;
    raw.send(b"{").await;
    let answer = tokio::time::timeout(BOUND, raw.answer()).await;
    answer.expect("answered in time").expect("an answer")
}

/// schemathesis, pinned so that a new release cannot change what the suite checks.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

/// Under `CI=true` a validator that cannot be installed fails the run; elsewhere the test
/// prints `SKIPPED` and why, and passes.
fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED: {why}");
    println!("SKIPPED: {why}");
}

/// The `st` command of a virtualenv under target/ holding [`SCHEMATHESIS`], made on first use.
fn schemathesis() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let venv = target.join("venv-schemathesis");
    let marker = venv.join(".warren-installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(SCHEMATHESIS) {
        return Some(venv.join("bin/st"));
    }
    let steps: [(PathBuf, Vec<&OsStr>); 2] = [
        (
            "python3".into(),
            vec!["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
        ),
        (
            venv.join("bin/python"),
            [
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                SCHEMATHESIS,
            ]
            .iter()
            .map(|s| s.as_ref())
            .collect(),
        ),
    ];
    for (program, args) in steps {
        match std::process::Command::new(&program).args(&args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                skip_or_fail(&format!("cannot install {SCHEMATHESIS}: {why}"));
                return None;
            }
            Err(e) => {
                skip_or_fail(&format!("cannot run {}: {e}", program.display()));
                return None;
            }
        }
    }
    std::fs::write(&marker, SCHEMATHESIS).expect("target/ is writable");
    Some(venv.join("bin/st"))
}

/// schemathesis generates requests from `docs/openapi.yaml` (valid ones, which the server
/// must accept, and invalid ones, which it must refuse) and checks every answer against it,
/// with `tests/schemathesis/` stating what JSON Schema cannot (byte lengths, the bounds of a
/// duration string). A fixed seed and a bounded number of examples keep the run short and
/// repeatable.
#[tokio::test]
async fn schemathesis_finds_the_spec_and_the_server_in_agreement() {
    let Some(st) = schemathesis() else {
        return;
    };
    let queue = unique_queue("http.schemathesis");
    let token_file = std::env::temp_dir().join(format!("{queue}.token"));
    std::fs::write(&token_file, "schemathesis-token\n").unwrap();
    let stream = format!("{queue}.events");
    let index_file = std::env::temp_dir().join(format!("{queue}.index.db"));
    let control = format!("{queue}.control");
    // No worker consumes: a `?wait=` waits its whole time, kept short.
    let mut child = serve_command(&queue, "127.0.0.1:0", &token_file)
        .args([
            "--max-wait",
            "50ms",
            "--events-stream",
            &stream,
            "--control-stream",
            &control,
            "--index",
        ])
        .arg(&index_file)
        .spawn()
        .expect("warren-producer serve starts");
    let (_lines, addr) = listening(&mut child, Duration::from_secs(120)).await;
    let base = format!("http://{addr}");
    Client::new(&base, Arc::new(Spec::load()))
        .wait_ready()
        .await;

    let work = std::env::temp_dir().join(&queue);
    std::fs::create_dir_all(&work).unwrap();
    let hooks = repo().join("tests/schemathesis");
    let run = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .args([
            "--url",
            &base,
            "-H",
            "Authorization: Bearer schemathesis-token",
        ])
        .args(["--checks", "all", "--seed", "18", "--max-examples", "30"])
        .args(["--workers", "1"])
        .env("SCHEMATHESIS_HOOKS", "warren_hooks")
        .env("PYTHONPATH", &hooks)
        .env("NO_COLOR", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // Its example database and reports stay out of the repository.
        .current_dir(&work)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the spec and the server disagreeing:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");

    sigterm(&child);
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let _ = std::fs::remove_file(&token_file);
    let _ = std::fs::remove_dir_all(&work);
    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;
    delete_stream(&conn, &stream).await;
    delete_stream(&conn, &control).await;
    remove_index(&index_file);
}
