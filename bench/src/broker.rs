//! The broker as the benchmark sees it: uniquely named queues that are deleted afterwards
//! (whatever happened), raw connections, and the plain quorum queue the baseline uses.

use anyhow::Context;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_common::{dead_letter_queue_name, isolation_queue_name};

/// The broker and every queue this run created.
#[derive(Clone)]
pub struct Broker {
    /// The broker URL.
    pub url: String,
    run_id: String,
    created: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    /// A broker at `url`, with a fresh run id for queue names.
    pub fn new(url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Broker {
            url: url.to_owned(),
            run_id: id[..8].to_owned(),
            created: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A queue name unique to this run (and to this call), remembered for
    /// [`cleanup`](Self::cleanup).
    pub fn queue(&self, label: &str) -> String {
        let mut created = self
            .created
            .lock()
            .expect("the queue list is never poisoned");
        let name = format!("bench.{}.{label}.{}", self.run_id, created.len());
        created.push(name.clone());
        name
    }

    /// The pid of the broker process, when it runs on this machine and its CPU time can be
    /// read (see [`listening_pid`](crate::process::listening_pid)).
    pub fn local_pid(&self) -> Option<String> {
        let uri: lapin::uri::AMQPUri = self.url.parse().ok()?;
        crate::process::listening_pid(uri.authority.port)
    }

    /// A plain lapin connection.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect(&self.url, props)
            .await
            .with_context(|| format!("connecting to the broker at {}", mask(&self.url)))
    }

    /// Ready messages and consumers of `queue` (passive declare: exact for ready ones).
    pub async fn inspect(&self, conn: &Connection, queue: &str) -> anyhow::Result<(u32, u32)> {
        let state = warren_common::Topology::inspect(conn, queue).await?;
        Ok((state.ready, state.consumers))
    }

    /// Waits until `queue` has at least one consumer.
    pub async fn wait_for_consumer(&self, conn: &Connection, queue: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.inspect(conn, queue).await?.1 == 0 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no consumer subscribed to `{queue}` within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Deletes every queue this run created, with the dead-letter and isolation queues Warren
    /// declared beside them, and returns their names. Errors are reported, not returned: cleaning up
    /// must not stop.
    pub async fn cleanup(&self) -> Vec<String> {
        let names: Vec<String> = std::mem::take(
            &mut *self
                .created
                .lock()
                .expect("the queue list is never poisoned"),
        );
        if names.is_empty() {
            return names;
        }
        let conn = match self.connect("warren-bench cleanup").await {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("warning: could not delete the benchmark's queues {names:?}: {error:#}");
                return names;
            }
        };
        for name in &names {
            let queues = [
                name.clone(),
                dead_letter_queue_name(name),
                isolation_queue_name(name),
            ];
            for queue in queues {
                // A fresh channel each time: deleting a missing queue may close the channel.
                let Ok(channel) = conn.create_channel().await else {
                    continue;
                };
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "deleted".into()).await;
            }
        }
        let _ = conn.close(200, "cleaned up".into()).await;
        names
    }
}

/// Declares the baseline's queue: durable, quorum, nothing else.
pub async fn declare_plain_quorum(conn: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, args)
        .await
        .with_context(|| format!("declaring `{queue}`"))?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The URL with its password masked, for messages.
pub fn mask(url: &str) -> String {
    url.parse::<warren_common::AmqpUrl>()
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "<invalid url>".to_owned())
}

/// The broker's version, from `rabbitmqctl version` (when the broker runs on this machine).
pub async fn broker_version() -> String {
    // The /usr/sbin wrapper runs as the broker's user (with its Erlang cookie).
    for ctl in [
        "/usr/sbin/rabbitmqctl",
        "/usr/lib/rabbitmq/bin/rabbitmqctl",
        "rabbitmqctl",
    ] {
        let run = tokio::process::Command::new(ctl)
            .arg("version")
            .stdin(std::process::Stdio::null())
            .output();
        if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(20), run).await {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                if out.status.success() {
                    return format!("RabbitMQ {}", line.trim());
                }
            }
        }
    }
    "unknown (rabbitmqctl not available)".to_owned()
}
