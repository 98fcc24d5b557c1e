//! The publisher: one connection and one confirm-mode channel, shared by every caller.
//! `publish` may be called from many tasks at once; each call awaits only its own confirm, so
//! concurrent callers (or [`Publisher::publish_all`]) keep a window of confirms in flight.

use futures::{stream, Stream, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::{
    connect, delay, AmqpArgs, Codec, CodecError, ConnectError, Envelope, EnvelopeError, QueueSpec,
    TaskId, Topology, TopologyError,
};

/// How long a publish waits for the broker's confirm before reporting a failure.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A task that was not confirmed by the broker. The caller must assume it was not queued
/// (though after `Timeout` or `Connection` it may have been: publish again with the same id
/// if duplicates are acceptable to the handler).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message (a nack: e.g. a queue over its length limit).
    #[error("the broker refused task {id} (nack)")]
    Nacked {
        /// The task id.
        id: TaskId,
    },
    /// No queue is bound for the routing key: the message was returned.
    #[error(
        "task {id} is unroutable: no queue bound to `{routing_key}` on `{exchange}` ({reply})"
    )]
    Unroutable {
        /// The task id.
        id: TaskId,
        /// The exchange published to.
        exchange: String,
        /// The routing key published with.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// No confirm arrived in time (the broker may be blocking publishers).
    #[error("no confirm for task {id} within {timeout:?}")]
    Timeout {
        /// The task id.
        id: TaskId,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The connection or channel failed before the confirm arrived.
    #[error("lost the broker connection before task {id} was confirmed: {source}")]
    Connection {
        /// The task id.
        id: TaskId,
        /// The error.
        source: lapin::Error,
    },
    /// The task's metadata cannot be sent (an over-long name or id).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The payload did not encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Connecting was abandoned.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The topology could not be declared.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

impl PublishError {
    /// A short label for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Nacked { .. } => "nack",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::Timeout { .. } => "timeout",
            PublishError::Connection { .. } | PublishError::Connect(_) => "connection",
            PublishError::Envelope(_) | PublishError::Codec(_) => "invalid",
            PublishError::Topology(_) => "topology",
        }
    }
}

/// Per-task publishing options.
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// Queue (routing key) to publish to; the publisher's default queue when `None`.
    pub queue: Option<String>,
    /// The task id; a fresh UUIDv7 when `None`.
    pub id: Option<TaskId>,
    /// Payload codec; bincode when `None`.
    pub codec: Option<Codec>,
    /// Payload schema version; 1 when `None`.
    pub schema_version: Option<u32>,
    /// Maximum attempts for this task, overriding the worker's setting.
    pub max_attempts: Option<u32>,
    /// Handler timeout for this task, overriding the worker's setting.
    pub timeout: Option<Duration>,
    /// Time after which the task must not run (milliseconds since the epoch).
    pub expires_at_ms: Option<u64>,
    /// W3C `traceparent` of the caller's span.
    pub traceparent: Option<String>,
    /// Hold the task in the broker this long before it is delivered (whole seconds, rounded
    /// up; see the delay cascade in `docs/wire-format.md`).
    pub delay: Option<Duration>,
    /// Priority 0-9, honoured by queues declared as priority queues.
    pub priority: Option<u8>,
}

/// How a publisher connects.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Broker URLs, tried in turn.
    pub amqp: AmqpArgs,
    /// The exchange tasks are published to.
    pub exchange: String,
    /// The queue used when a task names none.
    pub default_queue: String,
    /// How long to wait for each confirm.
    pub confirm_timeout: Duration,
    /// Connection name shown by the broker.
    pub connection_name: String,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            amqp: AmqpArgs::default(),
            exchange: warren_common::DEFAULT_EXCHANGE.to_owned(),
            default_queue: "default".to_owned(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            connection_name: "warren-producer".to_owned(),
        }
    }
}

/// Publishes tasks with confirms. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    delays_declared: tokio::sync::OnceCell<()>,
    conn: Connection,
    channel: Channel,
    topology: Topology,
    config: PublisherConfig,
}

impl Publisher {
    /// Connects (retrying with backoff until `cancel` fires) and opens a confirm-mode channel.
    pub async fn connect(
        config: PublisherConfig,
        cancel: &CancellationToken,
    ) -> Result<Self, PublishError> {
        let conn = connect(&config.amqp.urls, &config.connection_name, cancel).await?;
        let channel =
            open_confirm_channel(&conn)
                .await
                .map_err(|source| PublishError::Connection {
                    id: String::new(),
                    source,
                })?;
        let topology = Topology::new(config.exchange.clone());
        Ok(Publisher {
            inner: Arc::new(Inner {
                delays_declared: tokio::sync::OnceCell::new(),
                conn,
                channel,
                topology,
                config,
            }),
        })
    }

    /// Declares (or checks) a work queue exactly as workers do.
    pub async fn declare(&self, spec: &QueueSpec) -> Result<(), TopologyError> {
        self.inner.topology.declare(&self.inner.conn, spec).await
    }

    /// The connection, for tools that need a channel of their own.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// Publishes one task and returns its id once the broker confirmed it.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        options: &TaskOptions,
    ) -> Result<TaskId, PublishError> {
        let (envelope, body) = self.prepare(task, payload, options)?;
        let queue = options
            .queue
            .as_deref()
            .unwrap_or(&self.inner.config.default_queue);
        let mut properties = envelope.to_properties();
        if let Some(priority) = options.priority {
            properties = properties.with_priority(priority.min(9));
        }
        match options.delay.filter(|d| delay::delay_seconds(*d) > 0) {
            None => {
                let exchange = self.inner.topology.exchange.as_str();
                self.publish_raw(exchange, queue, &body, properties, &envelope.id)
                    .await?;
            }
            Some(wait) => {
                self.ensure_delays().await?;
                let exchange = delay::delay_entry_exchange();
                let key = delay::delay_routing_key(wait, queue);
                self.publish_raw(&exchange, &key, &body, properties, &envelope.id)
                    .await?;
            }
        }
        Ok(envelope.id)
    }

    /// Declares the delay cascade once per publisher, before the first delayed task.
    async fn ensure_delays(&self) -> Result<(), TopologyError> {
        self.inner
            .delays_declared
            .get_or_try_init(|| Topology::declare_delays(&self.inner.conn))
            .await
            .map(|_| ())
    }

    /// Publishes many tasks with up to `window` confirms in flight, yielding each result in
    /// order as its confirm arrives.
    pub fn publish_all<'a, T, I>(
        &'a self,
        tasks: I,
        window: usize,
    ) -> impl Stream<Item = Result<TaskId, PublishError>> + 'a
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = (String, T, TaskOptions)> + 'a,
    {
        stream::iter(tasks)
            .map(move |(task, payload, options)| async move {
                self.publish(&task, &payload, &options).await
            })
            .buffered(window.max(1))
    }

    /// Builds the envelope and body of a task without sending it.
    pub fn prepare<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        options: &TaskOptions,
    ) -> Result<(Envelope, Vec<u8>), PublishError> {
        let codec = options.codec.unwrap_or_default();
        let mut envelope = Envelope::new(task, codec);
        if let Some(id) = &options.id {
            envelope.id.clone_from(id);
        }
        if let Some(v) = options.schema_version {
            envelope.schema_version = v;
        }
        envelope.max_attempts = options.max_attempts;
        envelope.timeout_ms = options.timeout.map(|t| t.as_millis() as u64);
        envelope.expires_ms = options.expires_at_ms;
        envelope.traceparent.clone_from(&options.traceparent);
        envelope.validate()?;
        let body = codec.encode(payload)?;
        Ok((envelope, body))
    }

    /// Publishes a prepared message (mandatory, persistent as given) and waits for its confirm.
    /// Used by workers to move tasks to retry and dead-letter queues.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        id: &str,
    ) -> Result<(), PublishError> {
        let connection_error = |source| PublishError::Connection {
            id: id.to_owned(),
            source,
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = self
            .inner
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(connection_error)?;
        let timeout = self.inner.config.confirm_timeout;
        let confirmation = tokio::time::timeout(timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout {
                id: id.to_owned(),
                timeout,
            })?
            .map_err(connection_error)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
                id: id.to_owned(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                Err(PublishError::Nacked { id: id.to_owned() })
            }
        }
    }

    /// Waits for every outstanding confirm, then closes the channel and connection.
    pub async fn close(&self) {
        let _ = self.inner.channel.wait_for_confirms().await;
        let _ = self.inner.channel.close(200, "bye".into()).await;
        let _ = self.inner.conn.close(200, "bye".into()).await;
    }
}

async fn open_confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
