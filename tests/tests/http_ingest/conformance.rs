//! The server against `docs/openapi.yaml`: every documented answer is produced, as
//! documented.

use super::openapi::Spec;
use super::slow_clients::{post_head, Raw, RawAnswer, BOUND};
use super::support::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use warren_tests::*;

#[tokio::test]
async fn every_documented_answer_is_produced_as_documented() {
    let spec = Arc::new(Spec::load());
    let queue = unique_queue("http.spec");
    let mut settings = Settings::new(&queue);
    settings.token = Some("spec-token");
    settings.max_body_bytes = 2048;
    settings.connections.body_read_timeout = Duration::from_secs(1);
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
    assert_eq!(client.get("/healthz").await.status, 200);
    assert_eq!(client.get("/readyz").await.status, 200);
    assert_eq!(client.get("/metrics").await.status, 200);
    assert_eq!(down_client.get("/readyz").await.status, 503);

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
    delete_queues(&raw_connection().await, &queue).await;
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
