//! What the spec promises about odd requests, hand-picked: framework errors carry the JSON
//! error body, a key given twice or a task name with a control character is refused, and
//! RFC 3339 times are read as RFC 3339 defines them (lowercase `t`/`z`, and a time before
//! 1970 is simply in the past).

use super::openapi::Spec;
use super::support::*;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_common::headers;
use warren_tests::*;

#[tokio::test]
async fn framework_errors_carry_the_json_error_body() {
    let server = Server::start(Settings::new(&unique_queue("http.framework"))).await;
    let http = reqwest::Client::new();
    for (method, path, status, allow) in [
        ("DELETE", "/v1/tasks", 405, Some("POST,GET,HEAD")),
        ("PUT", "/v1/tasks/some-id", 405, Some("GET,HEAD")),
        ("PUT", "/v1/tasks:batch", 405, Some("POST")),
        ("DELETE", "/healthz", 405, Some("GET,HEAD")),
        ("GET", "/v1/nothing", 404, None),
        ("POST", "/v2/tasks", 404, None),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = http
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers.get("allow").map(|v| v.to_str().unwrap()),
            allow,
            "{method} {path}"
        );
        assert_eq!(headers["content-type"], "application/json");
        let body: Value = response.json().await.expect("a JSON body");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert_eq!(body["field"], Value::Null, "{body}");
    }
    server.stop().await.expect("the server stops cleanly");
}

#[tokio::test]
async fn duplicate_keys_and_control_characters_are_refused() {
    let queue = unique_queue("http.strict");
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    for (body, field) in [
        (r#"{"task": "t", "task": "u"}"#, "task"),
        (r#"{"task": "t", "payload": {"a": 1, "a": 2}}"#, "payload.a"),
        (
            r#"{"tasks": [{"task": "t", "delay": 1, "delay": 2}]}"#,
            "tasks[0].delay",
        ),
        (r#"{"task": "demo\u0000sleep"}"#, "task"),
        (r#"{"task": "demo\nsleep"}"#, "task"),
        (r#"{"task": "t", "timeout": "300000000s"}"#, "timeout"),
        (r#"{"task": "t", "delay": "1 2s"}"#, "delay"),
    ] {
        let path = if body.contains("tasks") {
            "/v1/tasks:batch"
        } else {
            "/v1/tasks"
        };
        let answer = client.post_raw(path, JSON, body.to_owned()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert_eq!(answer.json["field"], field, "{body}: {}", answer.text);
    }
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 0, "nothing was published");
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn rfc3339_times_are_read_as_rfc3339_defines_them() {
    let queue = unique_queue("http.rfc3339");
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    for (expires_at, millis) in [
        ("2100-01-01t01:00:00+01:00", "4102444800000"),
        ("2100-01-01T00:00:00z", "4102444800000"),
        // Before 1970 is in the past, like any past time: the worker expires the task.
        ("1969-07-20T20:17:40Z", "0"),
    ] {
        let task = json!({"task": "t", "expires_at": expires_at});
        let answer = client.post_json("/v1/tasks", &task).await;
        assert_eq!(answer.status, 202, "{expires_at}: {}", answer.text);
        let conn = raw_connection().await;
        let messages = take_all(&conn, &queue).await;
        assert_eq!(messages.len(), 1);
        assert_eq!(
            header(&messages[0].0, headers::EXPIRES_MS).as_deref(),
            Some(millis),
            "{expires_at}"
        );
    }
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&raw_connection().await, &queue).await;
}
