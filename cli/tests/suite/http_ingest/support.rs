//! Support for the HTTP ingest tests: an in-process server on port 0, an HTTP client whose
//! every answer is checked against `docs/openapi.yaml`, a broker that appears late (a TCP
//! forwarder started mid-test), and the real binary.

use super::openapi::Spec;
use crate::binary;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use warren_common::Shutdown;
use warren_producer::status::IndexConfig;
use warren_producer::{
    serve_ingest, BearerToken, ConnectionLimits, IngestConfig, IngestError, PublisherConfig,
};
use warren_tests::{amqp, amqp_url, wait_until};

/// The JSON content type.
pub const JSON: &str = "application/json";

/// An AMQP URL where nothing listens.
pub const UNREACHABLE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// How a test server runs.
pub struct Settings {
    pub queue: String,
    pub amqp_url: Option<String>,
    pub token: Option<&'static str>,
    pub max_body_bytes: usize,
    pub connections: ConnectionLimits,
    /// The status index to keep, if any.
    pub index: Option<IndexConfig>,
    /// The control stream the control routes write to: `<queue>.control`.
    pub control_stream: String,
}

impl Settings {
    /// The test broker, no token, the default body limit.
    pub fn new(queue: &str) -> Settings {
        Settings {
            queue: queue.to_owned(),
            amqp_url: None,
            token: None,
            max_body_bytes: warren_producer::defaults::ingest::MAX_BODY_BYTES,
            connections: ConnectionLimits::default(),
            index: None,
            control_stream: format!("{queue}.control"),
        }
    }
}

/// The ingest running in this process.
pub struct Server {
    pub url: String,
    token: Option<&'static str>,
    shutdown: Shutdown,
    handle: JoinHandle<Result<(), IngestError>>,
}

impl Server {
    /// Starts serving on a free port (the broker is connected in the background).
    pub async fn start(settings: Settings) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let amqp = match &settings.amqp_url {
            Some(other) => other.parse().expect("a valid AMQP URL"),
            None => amqp(),
        };
        let publisher = PublisherConfig {
            amqp,
            default_queue: settings.queue.clone(),
            confirm_timeout: Duration::from_secs(5),
            connection_name: format!("test ingest {}", settings.queue),
            ..PublisherConfig::default()
        };
        let config = IngestConfig {
            auth_token: settings.token.and_then(BearerToken::new),
            max_body_bytes: settings.max_body_bytes,
            connections: settings.connections,
            index: settings.index,
            control_stream: settings.control_stream.clone(),
            ..IngestConfig::new(publisher)
        };
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(serve_ingest(listener, config, shutdown.drain.clone()));
        Server {
            url,
            token: settings.token,
            shutdown,
            handle,
        }
    }

    /// A client presenting the server's token, if it has one.
    pub fn client(&self, spec: Arc<Spec>) -> Client {
        let client = Client::new(&self.url, spec);
        match self.token {
            Some(token) => client.with_token(token),
            None => client,
        }
    }

    /// Drains the server and returns how it ended.
    pub async fn stop(self) -> Result<(), IngestError> {
        self.shutdown.drain.cancel();
        self.handle.await.expect("the server task did not panic")
    }
}

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    spec: Arc<Spec>,
    token: Option<String>,
}

/// An answer, already checked against the spec.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON (null if it is not JSON).
    pub json: Value,
}

/// A request being built.
pub struct Request {
    builder: reqwest::RequestBuilder,
    method: String,
    path: String,
    spec: Arc<Spec>,
}

impl Client {
    pub fn new(base: &str, spec: Arc<Spec>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            spec,
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    pub fn without_token(&self) -> Client {
        Client {
            token: None,
            ..self.clone()
        }
    }

    pub fn request(&self, method: &str, path: &str) -> Request {
        let method_value = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let builder = self
            .http
            .request(method_value, format!("{}{path}", self.base));
        Request {
            builder,
            method: method.to_owned(),
            path: path.to_owned(),
            spec: self.spec.clone(),
        }
        .maybe_bearer(self.token.as_deref())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.request("POST", path).json(body).send_checked().await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: String) -> Answer {
        let mut request = self.request("POST", path);
        request.builder = request
            .builder
            .header("content-type", content_type)
            .body(body);
        request.send_checked().await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path).send_checked().await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(30),
            "the ingest to be ready",
            || async { self.get("/readyz").await.status == 200 },
        )
        .await;
    }
}

impl Request {
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn json(mut self, body: &Value) -> Request {
        self.builder = self.builder.json(body);
        self
    }

    pub fn maybe_bearer(mut self, token: Option<&str>) -> Request {
        if let Some(token) = token {
            self.builder = self.builder.bearer_auth(token);
        }
        self
    }

    /// Sends the request and checks the answer against the spec.
    pub async fn send_checked(self) -> Answer {
        let response = self.builder.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.spec
            .check(&self.method, &self.path, status, content_type, &text);
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            json,
        }
    }
}

/// A free local port, and the test broker's URL with that port instead of its own.
pub fn late_broker_url() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = amqp_url();
    let (start, end) = authority(&url);
    let host_port = &url[start..end];
    let host_start = host_port.rfind('@').map_or(start, |at| start + at + 1);
    (
        port,
        format!("{}127.0.0.1:{port}{}", &url[..host_start], &url[end..]),
    )
}

/// Byte range of `user:pass@host:port` in an AMQP URL.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").expect("a URL") + 3;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    (start, end)
}

/// The test broker's `host:port`.
fn broker_addr() -> String {
    let url = amqp_url();
    let (start, end) = authority(&url);
    let host_port = url[start..end].rsplit('@').next().unwrap_or_default();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// Forwards connections on `port` to the test broker until dropped.
pub struct Forwarder(JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts forwarding `127.0.0.1:port` to the broker.
pub async fn forward_to_broker(port: u16) -> Forwarder {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    let target = broker_addr();
    Forwarder(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

/// `warren-producer serve` as an operator would start it.
pub fn serve_command(queue: &str, listen: &str, token_file: &Path) -> Command {
    let mut cmd = Command::new(binary("warren-producer"));
    cmd.arg("serve")
        .args(["--listen", listen, "--queue", queue])
        .arg("--auth-token-file")
        .arg(token_file)
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The log lines of a `warren-producer serve` just spawned (stderr piped), and its address
/// (`127.0.0.1:PORT`, from its "HTTP ingest listening" line, which it waits for).
pub async fn listening(
    child: &mut Child,
    timeout: Duration,
) -> (std::sync::Arc<std::sync::Mutex<Vec<String>>>, String) {
    let lines = warren_tests::capture_lines(child.stderr.take().expect("stderr is piped"));
    let line = warren_tests::wait_for_line(&lines, "HTTP ingest listening", timeout)
        .await
        .expect("the server logs its address");
    let addr = line
        .split("listen=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the line names the address")
        .to_owned();
    (lines, addr)
}

/// Sends SIGTERM, as an orchestrator stopping the process would.
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(status.expect("kill runs").success());
}

/// Records `events` (JSON lines) in the events stream `stream` as one batch from `source`
/// numbered from `first_seq`, as a worker would (docs/wire-format.md §11.2).
pub async fn record_events(stream: &str, source: &str, first_seq: u64, events: &[Value]) {
    record_batches(stream, source, first_seq, &[events.to_vec()]).await;
}

/// Records `batches` in the events stream `stream` (declared with Warren's retention if
/// missing), one message each, from `source` with consecutive numbers from `first_seq`.
pub async fn record_batches(stream: &str, source: &str, first_seq: u64, batches: &[Vec<Value>]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use warren_common::events::{FIRST_SEQ_HEADER, SOURCE_HEADER};
    let conn = warren_tests::raw_connection().await;
    warren_common::events::declare_events_stream(&conn, stream)
        .await
        .expect("the events stream is declared");
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut seq = first_seq;
    for events in batches {
        let mut headers = FieldTable::default();
        headers.insert(SOURCE_HEADER.into(), AMQPValue::LongString(source.into()));
        headers.insert(FIRST_SEQ_HEADER.into(), AMQPValue::LongLongInt(seq as i64));
        seq += events.len() as u64;
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/x-ndjson".into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the batch is confirmed");
    }
    let _ = conn.close(200, "recorded".into()).await;
}

/// Records a worker's heartbeat (`heartbeat`, its JSON) in the events stream `stream`.
pub async fn record_heartbeat(stream: &str, heartbeat: &Value) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use warren_common::events::{HEARTBEAT, RECORD_HEADER, SOURCE_HEADER};
    let conn = warren_tests::raw_connection().await;
    warren_common::events::declare_events_stream(&conn, stream)
        .await
        .expect("the events stream is declared");
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    let source = heartbeat["worker"].as_str().unwrap_or_default();
    headers.insert(SOURCE_HEADER.into(), AMQPValue::LongString(source.into()));
    headers.insert(
        RECORD_HEADER.into(),
        AMQPValue::LongString(HEARTBEAT.into()),
    );
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions::default(),
            heartbeat.to_string().as_bytes(),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the heartbeat is confirmed");
    let _ = conn.close(200, "recorded".into()).await;
}

/// Deletes the events stream `stream`.
pub async fn delete_stream(conn: &lapin::Connection, stream: &str) {
    let channel = conn.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(stream.into(), Default::default())
        .await;
}

/// Deletes a status index file and SQLite's files beside it.
pub fn remove_index(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}
