//! Slow, stalled and idle clients, played by raw TCP connections that send part of a request
//! and stop: the server closes each within its (short, in these tests) timeout, refuses a
//! declared body over the limit before it is sent, serves at most `max_connections` at once
//! (the others wait), and keeps serving normal requests throughout.
//!
//! The bounds asserted are generous (closed within 10 s of a 1 s timeout), so a loaded machine
//! cannot make them fail; a server without the timeouts keeps these connections for minutes.

use super::openapi::Spec;
use super::support::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_producer::ConnectionLimits;
use warren_tests::*;

/// Far more than any timeout these tests set: a connection not closed by then never will be.
pub const BOUND: Duration = Duration::from_secs(10);

/// A raw connection to the server.
pub struct Raw {
    stream: TcpStream,
    read: Vec<u8>,
}

/// One answer read from a [`Raw`] connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    pub fn content_type(&self) -> &str {
        header_value(&self.head, "content-type").unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Raw {
    pub async fn connect(base: &str) -> Raw {
        let addr = base.trim_start_matches("http://");
        let stream = TcpStream::connect(addr).await.expect("the server listens");
        Raw {
            stream,
            read: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("the server reads");
    }

    /// Sends `GET path` on a keep-alive connection.
    pub async fn get(&mut self, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: warren\r\n\r\n");
        self.send(request.as_bytes()).await;
    }

    /// Reads one answer (head and `Content-Length` body); `None` if the connection closes.
    pub async fn answer(&mut self) -> Option<RawAnswer> {
        let head_end = loop {
            if let Some(i) = find(&self.read, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.read[..head_end]).into_owned();
        let length: usize = header_value(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        while self.read.len() < head_end + length {
            self.fill().await?;
        }
        let body = String::from_utf8_lossy(&self.read[head_end..head_end + length]).into_owned();
        self.read.drain(..head_end + length);
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        Some(RawAnswer {
            status: status.expect("a status line"),
            head,
            body,
        })
    }

    /// Reads more; `None` at the end of the stream (or a reset).
    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.read.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    /// Whether the server closes the connection within `limit` (reading whatever it sends).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let until_closed = async { while self.fill().await.is_some() {} };
        tokio::time::timeout(limit, until_closed).await.is_ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The head of `POST path` announcing a JSON body of `length` bytes.
pub fn post_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: warren\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

fn short_timeouts() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    }
}

async fn silent(base: &str) {
    let mut raw = Raw::connect(base).await;
    assert!(
        raw.closed_within(BOUND).await,
        "a silent connection stays open"
    );
}

async fn slow_head(base: &str) {
    let mut raw = Raw::connect(base).await;
    raw.send(b"POST /v1/tasks HTTP/1.1\r\nHost: warren\r\nContent-Type: app")
        .await;
    assert!(
        raw.closed_within(BOUND).await,
        "a half-sent head stays open"
    );
}

async fn idle_keep_alive(base: &str) {
    let mut raw = Raw::connect(base).await;
    raw.get("/healthz").await;
    assert_eq!(raw.answer().await.expect("an answer").status, 200);
    assert!(
        raw.closed_within(BOUND).await,
        "an idle connection stays open"
    );
}

async fn stalled_body(base: &str) {
    let mut raw = Raw::connect(base).await;
    raw.send(post_head("/v1/tasks", 1000).as_bytes()).await;
    raw.send(br#"{"task": "t", "payload": ""#).await;
    let answer = raw.answer().await.expect("an answer to a stalled body");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json()["field"], Value::Null, "{answer:?}");
    assert!(raw.closed_within(BOUND).await, "closed after the 408");
}

/// A byte every 100 ms keeps every read short, for as long as the server listens; the whole
/// body still has 1 s.
async fn trickled_body(base: &str) {
    let stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("the server listens");
    let (mut reader, mut writer) = stream.into_split();
    let head = post_head("/v1/tasks:batch", 100_000);
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let status_line = async {
        let mut read = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&read, b"\r\n").is_none() {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&read).into_owned()
    };
    let answered = tokio::time::timeout(BOUND, async {
        tokio::select! {
            line = status_line => line,
            _ = trickle => unreachable!("the trickle never ends"),
        }
    })
    .await
    .expect("answered while the body was still trickling in");
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
}

#[tokio::test]
async fn slow_stalled_and_idle_connections_are_closed_within_the_timeouts() {
    let queue = unique_queue("http.slow");
    let mut settings = Settings::new(&queue);
    settings.connections = short_timeouts();
    let server = Server::start(settings).await;
    let client = server.client(Arc::new(Spec::load()));
    client.wait_ready().await;
    let base = client.base.clone();

    tokio::join!(
        silent(&base),
        slow_head(&base),
        idle_keep_alive(&base),
        stalled_body(&base),
        trickled_body(&base),
    );

    // A client that keeps to the timeouts is served as before.
    let answer = client.post_json("/v1/tasks", &json!({"task": "t"})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let conn = raw_connection().await;
    assert_eq!(
        ready_count(&conn, &queue).await,
        1,
        "only the complete task"
    );
    server.stop().await.expect("the server stops cleanly");
    delete_queues(&conn, &queue).await;
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let queue = unique_queue("http.declared");
    let mut settings = Settings::new(&queue);
    settings.max_body_bytes = 4096;
    let server = Server::start(settings).await;
    let spec = Spec::load();
    for path in ["/v1/tasks", "/v1/tasks:batch"] {
        let mut raw = Raw::connect(&server.url).await;
        // Ten megabytes announced, none sent: the answer cannot wait for them.
        raw.send(post_head(path, 10_000_000).as_bytes()).await;
        let answer = tokio::time::timeout(BOUND, raw.answer())
            .await
            .expect("answered without the body")
            .expect("an answer");
        assert_eq!(answer.status, 413, "{answer:?}");
        spec.check("POST", path, 413, answer.content_type(), &answer.body);
        assert!(raw.closed_within(BOUND).await, "closed after the 413");
    }
    server.stop().await.expect("the server stops cleanly");
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let mut settings = Settings::new(&unique_queue("http.limit"));
    settings.connections.max_connections = 2;
    let server = Server::start(settings).await;
    let mut first = Raw::connect(&server.url).await;
    let mut second = Raw::connect(&server.url).await;
    for raw in [&mut first, &mut second] {
        raw.get("/healthz").await;
        assert_eq!(raw.answer().await.expect("served").status, 200);
    }

    let mut third = Raw::connect(&server.url).await;
    third.get("/healthz").await;
    let early = tokio::time::timeout(Duration::from_millis(500), third.answer()).await;
    assert!(
        early.is_err(),
        "a third connection is served at a limit of two"
    );
    // The connections within the limit are still served.
    first.get("/healthz").await;
    assert_eq!(first.answer().await.expect("served").status, 200);

    drop(first);
    let answer = tokio::time::timeout(BOUND, third.answer())
        .await
        .expect("served once a connection closed")
        .expect("an answer");
    assert_eq!(answer.status, 200);
    second.get("/readyz").await;
    assert!(
        second.answer().await.is_some(),
        "the second is still served"
    );
    server.stop().await.expect("the server stops cleanly");
}
