//! The HTTP ingest (`warren-producer serve`) against the real broker: posted tasks run on a
//! worker with the ids the server answered, invalid or unauthorised requests publish
//! nothing, an unreachable broker is a 503 and never a 202, the server drains on shutdown,
//! slow and idle clients are cut off, and every answer matches `docs/openapi.yaml`.

mod conformance;
mod lifecycle;
pub(crate) mod openapi;
mod slow_clients;
mod strictness;
pub(crate) mod support;

use openapi::Spec;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use warren_common::headers;
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError};

type Seen = Arc<Mutex<HashMap<String, Value>>>;

/// A worker registry whose `test.http` handler records each task's id and payload.
fn recording(seen: &Seen) -> Registry {
    let mut registry = Registry::new();
    let seen = seen.clone();
    registry.register("test.http", move |ctx: TaskContext, payload: Value| {
        let seen = seen.clone();
        async move {
            let previous = seen.lock().unwrap().insert(ctx.id.clone(), payload);
            assert!(previous.is_none(), "task {} ran twice", ctx.id);
            Ok::<_, TaskError>(())
        }
    });
    registry
}

async fn wait_for_runs(seen: &Seen, n: usize) {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} tasks to run"),
        || {
            let count = seen.lock().unwrap().len();
            async move { count >= n }
        },
    )
    .await;
}

#[tokio::test]
async fn a_posted_task_runs_on_a_worker_with_the_answered_id() {
    let queue = unique_queue("http.one");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording(&seen), test_config(&queue)).await;
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;

    let given = client
        .post_json(
            "/v1/tasks",
            &json!({"task": "test.http", "payload": {"n": 1}, "id": "http-task-1"}),
        )
        .await;
    assert_eq!(given.status, 202, "{}", given.text);
    assert_eq!(given.json["id"], "http-task-1");
    let fresh = client
        .post_json("/v1/tasks", &json!({"task": "test.http", "payload": [2]}))
        .await;
    assert_eq!(fresh.status, 202, "{}", fresh.text);
    let fresh_id = fresh.json["id"].as_str().expect("an id").to_owned();

    wait_for_runs(&seen, 2).await;
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.get("http-task-1"), Some(&json!({"n": 1})));
    assert_eq!(seen.get(&fresh_id), Some(&json!([2])));

    let metrics = client.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"warren_http_requests_total{route="/v1/tasks",status="202"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("warren_producer_published_total 2"),
        "{metrics}"
    );
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn a_batch_of_fifty_runs_in_full() {
    let queue = unique_queue("http.batch");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording(&seen), test_config(&queue)).await;
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;

    let tasks: Vec<Value> = (0..50)
        .map(|n| json!({"task": "test.http", "payload": {"n": n}}))
        .collect();
    let answer = client
        .post_json("/v1/tasks:batch", &json!({ "tasks": tasks }))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let ids: Vec<String> = serde_json::from_value(answer.json["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 50);

    wait_for_runs(&seen, 50).await;
    worker.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 50, "exactly the 50 tasks ran");
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(seen.get(id), Some(&json!({"n": n})), "task {n} ({id})");
    }
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&raw_connection().await, &queue).await;
}

#[tokio::test]
async fn task_options_and_the_traceparent_reach_the_message() {
    let queue = unique_queue("http.options");
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let header_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    let task = json!({"task": "test.http", "id": "opts", "max_attempts": 3,
        "timeout": "1500ms", "expires_at": "2100-01-01T01:00:00+01:00", "priority": 5});
    let answer = client
        .request("POST", "/v1/tasks")
        .header("traceparent", header_tp)
        .json(&task)
        .send_checked()
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let overridden = json!({"task": "test.http", "id": "body-tp", "traceparent": body_tp});
    let answer = client
        .request("POST", "/v1/tasks")
        .header("traceparent", header_tp)
        .json(&overridden)
        .send_checked()
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let answer = client
        .request("POST", "/v1/tasks")
        .header("traceparent", "not-a-traceparent")
        .json(&json!({"task": "test.http", "id": "bad-header"}))
        .send_checked()
        .await;
    assert_eq!(
        answer.status, 202,
        "an invalid header is ignored: {}",
        answer.text
    );

    let conn = raw_connection().await;
    let messages = take_all(&conn, &queue).await;
    assert_eq!(messages.len(), 3);
    let (props, body) = &messages[0];
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), "opts");
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "test.http");
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*props.priority(), Some(5));
    assert_eq!(body.as_slice(), b"null");
    assert_eq!(
        header(props, headers::TRACEPARENT).as_deref(),
        Some(header_tp)
    );
    assert_eq!(header(props, headers::MAX_ATTEMPTS).as_deref(), Some("3"));
    assert_eq!(header(props, headers::TIMEOUT_MS).as_deref(), Some("1500"));
    assert_eq!(
        header(props, headers::EXPIRES_MS).as_deref(),
        Some("4102444800000")
    );
    assert_eq!(
        header(&messages[1].0, headers::TRACEPARENT).as_deref(),
        Some(body_tp)
    );
    assert_eq!(header(&messages[2].0, headers::TRACEPARENT), None);

    // A delayed task waits in the delay cascade, then reaches the queue.
    let delayed = client
        .post_json("/v1/tasks", &json!({"task": "test.http", "delay": 1}))
        .await;
    assert_eq!(delayed.status, 202, "{}", delayed.text);
    assert_eq!(ready_count(&conn, &queue).await, 0, "not before its delay");
    let delivered = drain_queue(&conn, &queue, 1, Duration::from_secs(10))
        .await
        .expect("the delayed task arrives");
    assert_eq!(
        delivered[0].0.message_id().as_ref().unwrap().as_str(),
        delayed.json["id"].as_str().unwrap()
    );
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn invalid_or_unauthorised_requests_publish_nothing() {
    let queue = unique_queue("http.invalid");
    let mut settings = Settings::new(&queue);
    settings.token = Some("s3cret-token");
    settings.max_body_bytes = 4096;
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;

    for (body, field) in invalid_bodies() {
        let answer = client.post_raw("/v1/tasks", JSON, body.clone()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert_eq!(answer.json["field"], field, "{body}: {}", answer.text);
    }
    let batch = json!({"tasks": [{"task": "fine"}, {"task": "t", "priority": 10}]});
    let answer = client.post_json("/v1/tasks:batch", &batch).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.json["field"], "tasks[1].priority");
    let answer = client
        .post_json("/v1/tasks:batch", &json!({"tasks": []}))
        .await;
    assert_eq!(
        (answer.status, answer.json["field"].clone()),
        (400, json!("tasks"))
    );

    let oversized = json!({"task": "test.http", "payload": "x".repeat(8000)}).to_string();
    for path in ["/v1/tasks", "/v1/tasks:batch"] {
        let answer = client.post_raw(path, JSON, oversized.clone()).await;
        assert_eq!(answer.status, 413, "{path}: {}", answer.text);
    }
    let answer = client
        .post_raw("/v1/tasks", "text/plain", r#"{"task": "t"}"#.into())
        .await;
    assert_eq!(answer.status, 415, "{}", answer.text);

    let valid = json!({"task": "test.http"});
    for token in [None, Some("wrong-token"), Some("s3cret-token2")] {
        let answer = client
            .without_token()
            .request("POST", "/v1/tasks")
            .maybe_bearer(token)
            .json(&valid)
            .send_checked()
            .await;
        assert_eq!(answer.status, 401, "token {token:?}: {}", answer.text);
        assert!(answer.headers.contains_key("www-authenticate"));
    }
    let open = client.without_token();
    assert_eq!(open.get("/healthz").await.status, 200);
    assert_eq!(open.get("/readyz").await.status, 200);
    assert_eq!(open.get("/metrics").await.status, 200);

    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 0, "nothing was published");
    // The count is live: the one valid, authorised request is there.
    assert_eq!(client.post_json("/v1/tasks", &valid).await.status, 202);
    assert_eq!(ready_count(&conn, &queue).await, 1);
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

fn invalid_bodies() -> Vec<(String, Value)> {
    let long = "x".repeat(256);
    vec![
        (r#"{"task": "test.http","#.into(), Value::Null),
        (r#""just a string""#.into(), Value::Null),
        (json!({"payload": 1}).to_string(), json!("task")),
        (json!({"task": ""}).to_string(), json!("task")),
        (json!({"task": 7}).to_string(), json!("task")),
        (json!({"task": long}).to_string(), json!("task")),
        (json!({"task": "t", "id": long}).to_string(), json!("id")),
        (
            json!({"task": "t", "priority": "high"}).to_string(),
            json!("priority"),
        ),
        (
            json!({"task": "t", "priority": 10}).to_string(),
            json!("priority"),
        ),
        (
            json!({"task": "t", "queue": "amq.x"}).to_string(),
            json!("queue"),
        ),
        (
            json!({"task": "t", "queue": ""}).to_string(),
            json!("queue"),
        ),
        (
            json!({"task": "t", "delay": "soon"}).to_string(),
            json!("delay"),
        ),
        (
            json!({"task": "t", "delay": -1}).to_string(),
            json!("delay"),
        ),
        (
            json!({"task": "t", "timeout": 0}).to_string(),
            json!("timeout"),
        ),
        (
            json!({"task": "t", "max_attempts": 0}).to_string(),
            json!("max_attempts"),
        ),
        (
            json!({"task": "t", "expires_at": "2030-01-01T00:00:00"}).to_string(),
            json!("expires_at"),
        ),
        (
            json!({"task": "t", "traceparent": "00-x"}).to_string(),
            json!("traceparent"),
        ),
        (json!({"task": "t", "dealy": 3}).to_string(), json!("dealy")),
    ]
}

#[tokio::test]
async fn unknown_queues_are_422_and_a_partial_batch_names_what_was_queued() {
    let queue = unique_queue("http.missing");
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let missing = unique_queue("http.nowhere");

    for task in [
        json!({"task": "t", "queue": missing}),
        json!({"task": "t", "queue": missing, "delay": "5s"}),
    ] {
        let answer = client.post_json("/v1/tasks", &task).await;
        assert_eq!(answer.status, 422, "{task}: {}", answer.text);
        assert_eq!(answer.json["field"], "queue");
        assert_eq!(answer.json["kind"], "unroutable");
    }
    let batch = json!({"tasks": [{"task": "a"}, {"task": "b", "queue": missing}, {"task": "c"}]});
    let answer = client.post_json("/v1/tasks:batch", &batch).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let confirmed: Vec<u64> = index_list(&answer.json["confirmed"]);
    let not_confirmed: Vec<u64> = index_list(&answer.json["not_confirmed"]);
    assert_eq!((confirmed, not_confirmed), (vec![0, 2], vec![1]));
    assert_eq!(answer.json["not_confirmed"][0]["field"], "tasks[1].queue");

    let conn = raw_connection().await;
    let queued: Vec<String> = take_all(&conn, &queue)
        .await
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    let expected: Vec<String> = answer.json["confirmed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(queued, expected, "exactly the confirmed tasks are queued");
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

fn index_list(items: &Value) -> Vec<u64> {
    let items = items.as_array().expect("an array");
    items.iter().map(|i| i["index"].as_u64().unwrap()).collect()
}
