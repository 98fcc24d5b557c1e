//! Calls: publishing a task and waiting for its end (docs/wire-format.md §12). A caller
//! consumes RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) on a channel of its own,
//! publishes the task on that channel with `reply_to` set to it and a fresh correlation nonce
//! (never the task id: clients republish with the same id), and waits for the reply the worker
//! sends once the task has ended. The worker sends it best effort; a caller whose connection
//! drops gets an error naming the task and never publishes it again.

use super::publisher::{On, Publisher};
use super::PublishError;
use crate::reply::{Reply, ReplyStatus, REPLY_CONTENT_TYPE};
use crate::{Task, TaskId, TaskOptions};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A call that did not bring back its task's result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The task was not published (nothing will run).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No reply in time. The task was published and may still run: its status says.
    #[error("no reply for task {id} within {timeout:?}; it was published and may still run")]
    Timeout {
        /// The task id.
        id: TaskId,
        /// How long the call waited.
        timeout: Duration,
    },
    /// The connection that would carry the reply was lost. The task was published and runs
    /// all the same; it is not published again.
    #[error("lost the broker connection while waiting for task {id}'s reply; it was published and runs all the same")]
    Disconnected {
        /// The task id.
        id: TaskId,
    },
    /// The task ended without succeeding.
    #[error("task {id} {status}: {kind}: {reason}", status = status.as_str())]
    Failed {
        /// The task id.
        id: TaskId,
        /// How it ended.
        status: ReplyStatus,
        /// The reason kind (docs/wire-format.md §8.3).
        kind: String,
        /// Why, for people.
        reason: String,
    },
    /// The task succeeded, but its result was left out of the reply (too large, or not
    /// serializable): why.
    #[error("task {id} succeeded, but its result was left out: {reason}")]
    ResultLeftOut {
        /// The task id.
        id: TaskId,
        /// Why.
        reason: String,
    },
    /// The task succeeded, and its result is not the type asked for.
    #[error("task {id} succeeded, but its result does not decode as asked: {source}")]
    Decode {
        /// The task id.
        id: TaskId,
        /// Why.
        source: serde_json::Error,
    },
    /// The reply is not in the documented format.
    #[error("task {id}'s reply is not in the documented format: {source}")]
    BadReply {
        /// The task id.
        id: TaskId,
        /// Why.
        source: serde_json::Error,
    },
}

/// Where a publisher keeps its reply channel.
pub(super) type RepliesSlot = tokio::sync::Mutex<Option<Arc<Replies>>>;

/// A channel consuming direct reply-to, and the calls waiting on it.
pub(super) struct Replies {
    channel: Channel,
    /// The connection (link generation) the channel is on.
    connection: u64,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
}

impl Publisher {
    /// Publishes the typed task `task` and waits up to `timeout` for its end: its handler's
    /// result on success, else why it failed. A retried task is still running: the call
    /// waits on through its retries.
    ///
    /// `let size: u64 = publisher.call(&Resize { .. }, Duration::from_secs(30)).await?;`
    pub async fn call<T: Task, R: DeserializeOwned>(
        &self,
        task: &T,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let reply = self
            .call_named(T::NAME, task, &TaskOptions::default(), timeout)
            .await?;
        let id = reply.id.to_string();
        match reply.status {
            ReplyStatus::Succeeded => {
                if let Some(reason) = reply.result_error {
                    return Err(CallError::ResultLeftOut {
                        id,
                        reason: reason.into_owned(),
                    });
                }
                let json = reply.result.as_ref().map_or("null", |r| r.get());
                serde_json::from_str(json).map_err(|source| CallError::Decode { id, source })
            }
            status => {
                let (kind, reason) = reply
                    .error
                    .map(|e| (e.kind.into_owned(), e.reason.into_owned()))
                    .unwrap_or_default();
                Err(CallError::Failed {
                    id,
                    status,
                    kind,
                    reason,
                })
            }
        }
    }

    /// Publishes the task named `task` with `options` and waits up to `timeout` for the
    /// reply saying how it ended, whatever that was.
    pub async fn call_named<P: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &P,
        options: &TaskOptions,
        timeout: Duration,
    ) -> Result<Reply<'static>, CallError> {
        let (envelope, body) = self.prepare(task, payload, options)?;
        let id = envelope.id.clone();
        let replies = self.replies(&id).await?;
        let nonce = uuid::Uuid::new_v4().to_string();
        let (sender, answer) = oneshot::channel();
        lock(&replies.waiting).insert(nonce.clone(), sender);
        let properties = envelope
            .to_properties()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(nonce.as_str().into());
        let on = On::Channel(&replies.channel);
        let published = self
            .publish_prepared(&envelope, &body, properties, options, on)
            .await;
        if let Err(error) = published {
            lock(&replies.waiting).remove(&nonce);
            self.forget(&replies).await;
            return Err(error.into());
        }
        let body = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Err(CallError::Disconnected { id }),
            Err(_) => {
                lock(&replies.waiting).remove(&nonce);
                return Err(CallError::Timeout { id, timeout });
            }
        };
        Reply::from_bytes(&body)
            .map(Reply::into_owned)
            .map_err(|source| CallError::BadReply { id, source })
    }

    /// Sends a reply to the queue a task's `reply_to` names, through the default exchange:
    /// not mandatory, not waiting for a confirm (a worker answering a caller; a caller that
    /// has gone costs nothing).
    pub async fn send_reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), PublishError> {
        let link = self.link("").await?;
        let mut properties =
            BasicProperties::default().with_content_type(REPLY_CONTENT_TYPE.into());
        if let Some(correlation) = correlation_id {
            properties = properties.with_correlation_id(correlation.into());
        }
        let options = BasicPublishOptions::default();
        link.channel
            .basic_publish("".into(), reply_to.into(), options, &body, properties)
            .await
            .map(drop)
            .map_err(|source| PublishError::Connection {
                id: String::new(),
                source,
            })
    }

    /// The reply channel of the current connection, opened on first use (and again after a
    /// reconnection).
    async fn replies(&self, id: &str) -> Result<Arc<Replies>, PublishError> {
        let link = self.link(id).await?;
        let mut slot = self.inner.replies.lock().await;
        if let Some(replies) = slot.as_ref() {
            if replies.connection == link.connection && replies.channel.status().connected() {
                return Ok(replies.clone());
            }
        }
        let broken = |source| PublishError::Connection {
            id: id.to_owned(),
            source,
        };
        let channel = link.conn.create_channel().await.map_err(broken)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broken)?;
        // Direct reply-to is consumed in no-ack mode (the broker refuses anything else).
        let options = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(broken)?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        tokio::spawn(dispatch(consumer, waiting.clone()));
        let replies = Arc::new(Replies {
            channel,
            connection: link.connection,
            waiting,
        });
        *slot = Some(replies.clone());
        Ok(replies)
    }

    /// Drops a reply channel that failed a publish, so the next call opens another. Calls
    /// waiting on it are told their connection was lost.
    async fn forget(&self, replies: &Arc<Replies>) {
        if replies.channel.status().connected() {
            return;
        }
        let mut slot = self.inner.replies.lock().await;
        if slot.as_ref().is_some_and(|r| Arc::ptr_eq(r, replies)) {
            *slot = None;
        }
        lock(&replies.waiting).clear();
    }
}

/// Hands each reply to the call waiting for it (by correlation nonce); a reply nobody waits
/// for any more (its call timed out) is dropped. When the channel closes, every waiting call
/// learns that its reply cannot come.
async fn dispatch(
    mut consumer: lapin::Consumer,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let Some(nonce) = delivery.properties.correlation_id().as_ref() else {
            continue;
        };
        if let Some(call) = lock(&waiting).remove(nonce.as_str()) {
            let _ = call.send(delivery.data);
        }
    }
    lock(&waiting).clear();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
