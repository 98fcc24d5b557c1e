//! The baseline caller: a hand-written RPC over RabbitMQ's direct reply-to. One connection
//! and one confirm-mode channel that consumes `amq.rabbitmq.reply-to` (no-ack, as the broker
//! requires) and publishes each request with `reply_to` set to it and a fresh correlation
//! id; a task hands each reply to the call waiting for its correlation id. A call returns
//! once its request is confirmed and its reply has come, like `Publisher::call`.

use super::publisher::check;
use crate::broker::{declare_plain_quorum, Broker};
use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// RabbitMQ's direct reply-to pseudo-queue.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// A caller: one confirm channel consuming its replies. Share it behind an `Arc` to make
/// calls at once.
pub struct RawCaller {
    conn: Connection,
    channel: Channel,
    waiting: Waiting,
    next: AtomicU64,
}

impl RawCaller {
    /// Connects, declares `queue` (a plain quorum queue), opens the confirm channel and
    /// starts consuming replies.
    pub async fn connect(broker: &Broker, queue: &str) -> anyhow::Result<RawCaller> {
        let conn = broker.connect("warren-bench baseline caller").await?;
        declare_plain_quorum(&conn, queue).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let options = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                options,
                FieldTable::default(),
            )
            .await
            .context("consuming direct reply-to")?;
        let waiting = Waiting::default();
        let dispatch = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                let call = lock(&dispatch).remove(id.as_str());
                if let Some(call) = call {
                    let _ = call.send(delivery.data);
                }
            }
            // The channel closed: every waiting call learns its reply cannot come.
            lock(&dispatch).clear();
        });
        Ok(RawCaller {
            conn,
            channel,
            waiting,
            next: AtomicU64::new(0),
        })
    }

    /// Publishes `body` as task `task` to `queue` with a reply address, waits for its
    /// confirm, then for the reply; returns the reply's body.
    pub async fn call(&self, queue: &str, task: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (sender, answer) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), sender);
        let props = super::properties(task, false)
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(id.as_str().into());
        let published = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .context("basic.publish")?;
        check(published.await?)?;
        answer
            .await
            .context("the reply channel closed before the reply came")
    }

    /// Closes the channel and the connection.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
