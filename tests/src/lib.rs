//! Support for Warren's integration tests: unique queue names, raw broker access, in-process
//! workers and the real binaries, and a real browser. Every test talks to the real broker at
//! `AMQP_URL`.

mod browser;
mod node;
mod scrape;
mod skip;

pub use browser::{
    screenshot_dir, Browser, LogEntry, CHROMEDRIVER_VAR, CHROMIUM_VAR, VIEWPORT, WAIT,
};
/// The WebDriver client under [`Browser`], for what its helpers do not cover.
pub use fantoccini;
pub use node::{PrivateCluster, PrivateNode};
pub use scrape::{sample, samples};
pub use skip::{skip_or_fail, strict, STRICT_VAR};

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use warren_common::{
    dead_letter_queue_name, isolation_queue_name, Amqp, Health, Shutdown, Topology,
};
use warren_producer::{Publisher, PublisherConfig};
use warren_worker::{DrainReport, Registry, Worker, WorkerConfig, WorkerError};

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker at [`amqp_url`].
pub fn amqp() -> Amqp {
    amqp_url().parse().expect("AMQP_URL is a valid amqp:// URL")
}

/// A queue name no other test (or earlier run) uses.
pub fn unique_queue(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("test.{prefix}.{}", &id[..12])
}

/// A raw lapin connection, for tests that must not use Warren's code.
pub async fn raw_connection() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("the broker at AMQP_URL answers")
}

/// Worker settings for tests: the given queue, small timeouts, quick retries.
pub fn test_config(queue: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new([queue]);
    config.amqp = amqp();
    config.concurrency = 4;
    config.prefetch = 16;
    config.shutdown_timeout = Duration::from_secs(10);
    config
}

/// A publisher whose default queue is `queue`.
pub async fn publisher(queue: &str) -> Publisher {
    let config = PublisherConfig {
        amqp: amqp(),
        default_queue: queue.to_owned(),
        connection_name: format!("test publisher {queue}"),
        ..PublisherConfig::default()
    };
    Publisher::connect(config, &Default::default())
        .await
        .expect("publisher connects")
}

/// A worker running in this process.
pub struct TestWorker {
    shutdown: Shutdown,
    handle: JoinHandle<Result<DrainReport, WorkerError>>,
    /// Its readiness.
    pub health: Health,
    /// Its metrics registry.
    pub metrics: prometheus::Registry,
}

impl TestWorker {
    /// Starts a worker and waits until it is consuming.
    pub async fn start(registry: Registry, config: WorkerConfig) -> TestWorker {
        let metrics = prometheus::Registry::new();
        let worker = Worker::new(registry, config, &metrics).expect("valid worker config");
        let health = worker.health();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        let ready = health.clone();
        wait_until(Duration::from_secs(20), "the worker to be ready", || {
            let ready = ready.clone();
            async move { ready.get() == warren_common::Readiness::Ready }
        })
        .await;
        TestWorker {
            shutdown,
            handle,
            health,
            metrics,
        }
    }

    /// Drains the worker and returns its report.
    pub async fn stop(self) -> DrainReport {
        self.shutdown.drain.cancel();
        self.handle
            .await
            .expect("worker task did not panic")
            .expect("worker ran")
    }

    /// The value of a metric (summed over label sets matching `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics, name, labels)
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus::proto::MetricType;
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| {
            let kind = family.get_field_type();
            family.get_metric().iter().map(move |m| (kind, m))
        })
        .filter(|(_, m)| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|(kind, m)| match kind {
            MetricType::COUNTER => m.get_counter().get_value(),
            MetricType::GAUGE => m.get_gauge().get_value(),
            _ => m.get_histogram().get_sample_count() as f64,
        })
        .sum()
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ready messages in `queue` (passive declare: exact for ready messages).
pub async fn ready_count(conn: &Connection, queue: &str) -> u32 {
    Topology::inspect(conn, queue)
        .await
        .expect("queue exists")
        .ready
}

/// Takes every message out of `queue` (acking each), in order.
pub async fn take_all(conn: &Connection, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
    let channel = conn.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        messages.push((
            message.delivery.properties.clone(),
            message.delivery.data.clone(),
        ));
    }
    messages
}

/// Deletes a work queue, its dead-letter queue and its isolation queue.
pub async fn delete_queues(conn: &Connection, queue: &str) {
    let channel = conn.create_channel().await.expect("channel");
    let names = [
        queue.to_owned(),
        dead_letter_queue_name(queue),
        isolation_queue_name(queue),
    ];
    for name in names {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A string header of a message.
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    let table = props.headers().as_ref()?;
    warren_common::header_string(table, name).or_else(|| {
        warren_common::header_u64(table, leak(name))
            .ok()
            .flatten()
            .map(|v| v.to_string())
    })
}

fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

/// Reads lines from a child's stderr into a shared buffer, so tests can wait for a line.
pub fn capture_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().expect("not poisoned").push(line);
        }
    });
    lines
}

/// Waits until a captured line contains `needle`, returning it.
pub async fn wait_for_line(
    lines: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = lines
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|l| l.contains(needle))
        {
            return Ok(line.clone());
        }
        if Instant::now() > deadline {
            let all = lines.lock().expect("not poisoned").join("\n");
            return Err(anyhow::anyhow!(
                "no line containing {needle:?} within {timeout:?}; output:\n{all}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses `key=value` from a log line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Consumes `queue` into a channel of deliveries, acking each (for tests that watch a queue).
pub async fn drain_queue(
    conn: &Connection,
    queue: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(BasicProperties, Vec<u8>)>> {
    let channel = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < want {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .with_context(|| format!("only {} of {want} messages arrived in `{queue}`", out.len()))?
            .context("consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        out.push((delivery.properties.clone(), delivery.data.clone()));
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(out)
}

/// A plain HTTP/1.1 GET, returning the status code and body (no client dependency needed for
/// the admin endpoints).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A consumer of the RabbitMQ stream `stream` on `conn`, from its first message (a stream
/// needs `basic.qos` and manual acks; `prefetch` deliveries are sent ahead).
pub async fn consume_stream(conn: &Connection, stream: &str, prefetch: u16) -> lapin::Consumer {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let options = BasicConsumeOptions::default();
    channel
        .basic_consume(stream.into(), "".into(), options, args)
        .await
        .expect("the stream can be consumed")
}
