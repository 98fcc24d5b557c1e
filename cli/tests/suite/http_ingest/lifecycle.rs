//! The HTTP ingest's lifecycle: answering 503 while the broker is unreachable or
//! restarting and recovering on its own, becoming ready once connected, draining on
//! shutdown, and the real binary (a taken port, SIGTERM).

use super::index_list;
use super::openapi::Spec;
use super::support::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use warren_tests::*;

#[tokio::test]
async fn an_unreachable_broker_is_503_and_nothing_is_accepted() {
    let mut settings = Settings::new("test.http.unreachable");
    settings.amqp_url = Some(UNREACHABLE.to_owned());
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));

    let ready = client.get("/readyz").await;
    assert_eq!((ready.status, ready.text.trim()), (503, "connecting"));
    assert_eq!(client.get("/healthz").await.status, 200);
    let answer = client.post_json("/v1/tasks", &json!({"task": "t"})).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.headers["retry-after"], "5");
    assert!(answer.json["id"].is_string(), "the id to retry with");
    let batch = json!({"tasks": [{"task": "a"}, {"task": "b", "id": "b-1"}]});
    let answer = client.post_json("/v1/tasks:batch", &batch).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.json["confirmed"], json!([]));
    assert_eq!(index_list(&answer.json["not_confirmed"]), vec![0, 1]);
    assert_eq!(answer.json["not_confirmed"][1]["id"], "b-1");
    let metrics = client.get("/metrics").await.text;
    assert!(metrics.contains("warren_broker_connected 0"), "{metrics}");
    // Shutting down while still connecting is prompt.
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("stops within 5 s")
        .expect("stops cleanly");
}

#[tokio::test]
async fn readyz_turns_ready_once_the_broker_is_reachable() {
    let queue = unique_queue("http.late");
    let (port, url) = late_broker_url();
    let mut settings = Settings::new(&queue);
    settings.amqp_url = Some(url);
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));
    assert_eq!(client.get("/readyz").await.status, 503);
    let early = client.post_json("/v1/tasks", &json!({"task": "t"})).await;
    assert_eq!(early.status, 503, "{}", early.text);

    let _forwarder = forward_to_broker(port).await;
    client.wait_ready().await;
    let answer = client.post_json("/v1/tasks", &json!({"task": "t"})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let conn = raw_connection().await;
    assert_eq!(
        ready_count(&conn, &queue).await,
        1,
        "only the accepted task"
    );
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_drain_refuses_new_connections_and_finishes_the_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let queue = unique_queue("http.drain");
    let server = Server::start(Settings::new(&queue)).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let tasks: Vec<Value> = (0..200)
        .map(|n| json!({"task": "t", "payload": n}))
        .collect();
    let body = json!({ "tasks": tasks }).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);

    // A request whose body is still arriving when the drain starts.
    let addr = client.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/tasks:batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the server waits for the request");
    let refused = reqwest::get(format!("{}/healthz", client.base)).await;
    assert!(refused.is_err(), "no new connections while draining");

    stream.write_all(rest).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let json: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["ids"].as_array().unwrap().len(), 200);
    stopping.await.unwrap().expect("the server drains cleanly");
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 200);
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn the_binary_serves_refuses_a_taken_port_and_drains_on_sigterm() {
    let queue = unique_queue("http.bin");
    let token_file = std::env::temp_dir().join(format!("{queue}.token"));
    std::fs::write(&token_file, "bin-token\n").unwrap();
    let mut child = serve_command(&queue, "127.0.0.1:0", &token_file)
        .spawn()
        .expect("warren-producer serve starts");
    let (_lines, addr) = listening(&mut child, Duration::from_secs(60)).await;
    let client =
        Client::new(&format!("http://{addr}"), Arc::new(Spec::load())).with_token("bin-token");
    client.wait_ready().await;
    let answer = client.post_json("/v1/tasks", &json!({"task": "t"})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);

    let taken = serve_command(&queue, &addr, &token_file)
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success());
    assert!(stderr.contains(&format!("--listen {addr}")), "{stderr}");

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(&token_file);
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &queue).await, 1);
    delete_queues(&conn, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_answers_503_while_the_broker_restarts_then_recovers() {
    if !PrivateNode::available() {
        skip_or_fail("a broker restart", "RabbitMQ is not installed here");
        return;
    }
    let node = Arc::new(PrivateNode::start("http"));
    let queue = unique_queue("http.restart");
    let mut settings = Settings::new(&queue);
    settings.amqp_url = Some(node.url());
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let task = json!({"task": "t"});
    assert_eq!(client.post_json("/v1/tasks", &task).await.status, 202);

    let stopping = node.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // The server notices without a request failing first (the publisher's link sees the
    // broker close the connection).
    wait_until(Duration::from_secs(10), "/readyz to fail", || async {
        client.get("/readyz").await.status == 503
    })
    .await;
    let started = std::time::Instant::now();
    let down = client.post_json("/v1/tasks", &task).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once, not after a confirm timeout: {:?}",
        started.elapsed()
    );

    let booting = node.clone();
    tokio::task::spawn_blocking(move || booting.boot())
        .await
        .unwrap();
    client.wait_ready().await;
    let up = client.post_json("/v1/tasks", &task).await;
    assert_eq!(up.status, 202, "{}", up.text);
    server.stop().await.expect("the server stops cleanly");
}
