//! The publisher: one connection and one confirm-mode channel, shared by every caller.
//! `publish` may be called from many tasks at once; each call awaits only its own confirm, so
//! concurrent callers (or [`Publisher::publish_all`]) keep a window of confirms in flight.

use super::link::{LinkError, Linker};
use super::metrics::ProducerMetrics;
use super::options::TaskOptions;
use super::PublishError;
use crate::{delay, Amqp, ConnectError, Envelope, Health, QueueSpec, Task, TaskId, Topology};
use futures::{stream, Stream, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a publish waits for the broker's confirm before reporting a failure.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How a publisher connects.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Broker URLs, tried in turn.
    pub amqp: Amqp,
    /// The task exchange: the one work queues are bound to (with their own name as the key),
    /// and producers in other languages publish to.
    pub exchange: String,
    /// Publish tasks through [`exchange`](Self::exchange) rather than straight to their queue
    /// through the default exchange. Off by default: both reach the same queue, and the
    /// default exchange costs the broker ~15% less CPU per publish (RabbitMQ 3.10,
    /// docs/performance-findings.md finding 18). Turn it on for queues you bind to the task exchange
    /// yourself: only publishes through it reach those.
    pub via_exchange: bool,
    /// The queue used when a task names none.
    pub default_queue: String,
    /// How long to wait for each confirm, and at most for a reconnection or for the broker to
    /// unblock publishers.
    pub confirm_timeout: Duration,
    /// Connection name shown by the broker.
    pub connection_name: String,
    /// Registry to export the producer metrics to, if any.
    pub metrics: Option<prometheus::Registry>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            amqp: Amqp::default(),
            exchange: crate::DEFAULT_EXCHANGE.to_owned(),
            via_exchange: false,
            default_queue: "default".to_owned(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            connection_name: "warren-producer".to_owned(),
            metrics: None,
        }
    }
}

/// Publishes tasks with confirms, reconnecting when the broker is lost. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub struct Publisher {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) link: Arc<Linker>,
    topology: Topology,
    pub(super) config: PublisherConfig,
    delays_declared: std::sync::atomic::AtomicU64,
    /// Work queues seen to exist on the current connection (see [`Publisher::ensure_queue`]).
    known_queues: Mutex<KnownQueues>,
    /// The channel that receives replies to calls, once a call opened it.
    pub(super) replies: super::call::RepliesSlot,
}

/// Queues known to exist, and the connection (generation) they were checked on.
#[derive(Default)]
struct KnownQueues {
    connection: u64,
    names: HashSet<String>,
}

impl Publisher {
    /// Connects (retrying with backoff until `cancel` fires) and opens a confirm-mode channel.
    pub async fn connect(
        config: PublisherConfig,
        cancel: &CancellationToken,
    ) -> Result<Self, PublishError> {
        let metrics = config.metrics.as_ref().and_then(ProducerMetrics::register);
        let name = config.connection_name.clone();
        let link = Arc::new(Linker::new(
            Some(config.amqp.clone()),
            name,
            metrics,
            cancel.child_token(),
        ));
        link.get(None)
            .await
            .map_err(|e| link_error(e, "", config.confirm_timeout))?;
        Linker::keep_alive(&link);
        let topology = Topology::new(config.exchange.clone());
        let delays_declared = std::sync::atomic::AtomicU64::new(0);
        Ok(Publisher {
            inner: Arc::new(Inner {
                link,
                topology,
                config,
                delays_declared,
                known_queues: Mutex::default(),
                replies: Default::default(),
            }),
        })
    }

    /// A publisher on an existing connection that never reconnects: once `conn` is lost,
    /// every publish fails. For publishing that must stop with the connection, e.g. on the
    /// connection holding a lease.
    pub async fn on_connection(
        conn: lapin::Connection,
        config: PublisherConfig,
    ) -> Result<Self, PublishError> {
        let metrics = config.metrics.as_ref().and_then(ProducerMetrics::register);
        let name = config.connection_name.clone();
        let link = Arc::new(
            Linker::pinned(conn, name, metrics)
                .await
                .map_err(|source| PublishError::Connection {
                    id: String::new(),
                    source,
                })?,
        );
        let topology = Topology::new(config.exchange.clone());
        let delays_declared = std::sync::atomic::AtomicU64::new(0);
        let inner = Inner {
            link,
            topology,
            config,
            delays_declared,
            known_queues: Mutex::default(),
            replies: Default::default(),
        };
        Ok(Publisher {
            inner: Arc::new(inner),
        })
    }

    /// The publisher's readiness (connected, reconnecting, blocked), for an admin server.
    pub fn health(&self) -> Health {
        self.inner.link.health.clone()
    }

    /// Declares (or checks) a work queue exactly as workers do.
    pub async fn declare(&self, spec: &QueueSpec) -> Result<(), PublishError> {
        let link = self.link("").await?;
        Ok(self.inner.topology.declare(&link.conn, spec).await?)
    }

    /// A new channel on the publisher's connection, for tools that need one of their own.
    pub async fn create_channel(&self) -> Result<Channel, PublishError> {
        let link = self.link("").await?;
        link.conn
            .create_channel()
            .await
            .map_err(|source| PublishError::Connection {
                id: String::new(),
                source,
            })
    }

    pub(super) async fn link(&self, id: &str) -> Result<Arc<super::link::Link>, PublishError> {
        let timeout = self.inner.config.confirm_timeout;
        self.inner
            .link
            .get(Some(timeout))
            .await
            .map_err(|e| link_error(e, id, timeout))
    }

    /// Publishes one task and returns its id once the broker confirmed it. The task goes
    /// straight to its queue (the default exchange, key = queue name), or through the task
    /// exchange with [`PublisherConfig::via_exchange`]; a delayed one into the delay cascade.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        options: &TaskOptions,
    ) -> Result<TaskId, PublishError> {
        let (envelope, body) = self.prepare(task, payload, options)?;
        let properties = envelope.to_properties();
        self.publish_prepared(&envelope, &body, properties, options, On::Publisher)
            .await?;
        Ok(envelope.id)
    }

    /// Publishes a prepared task where its options say (its queue, or the delay cascade), on
    /// the publisher's channel or another of its connection's.
    pub(super) async fn publish_prepared(
        &self,
        envelope: &Envelope,
        body: &[u8],
        mut properties: BasicProperties,
        options: &TaskOptions,
        on: On<'_>,
    ) -> Result<(), PublishError> {
        let queue = options
            .queue
            .as_deref()
            .unwrap_or(&self.inner.config.default_queue);
        if let Some(priority) = options.priority {
            properties = properties.with_priority(priority.min(9));
        }
        match options.delay.filter(|d| delay::delay_seconds(*d) > 0) {
            None => {
                let config = &self.inner.config;
                let exchange = if config.via_exchange {
                    config.exchange.as_str()
                } else {
                    ""
                };
                self.publish_on(exchange, queue, body, properties, &envelope.id, on)
                    .await
            }
            Some(wait) => {
                self.ensure_queue(queue, &envelope.id).await?;
                self.ensure_delays(&envelope.id).await?;
                let exchange = delay::delay_entry_exchange();
                let key = delay::delay_routing_key(wait, queue);
                self.publish_on(&exchange, &key, body, properties, &envelope.id, on)
                    .await
            }
        }
    }

    /// Publishes a typed task under its [`Task::NAME`] with default options, and returns its
    /// id once the broker confirmed it.
    pub async fn send<T: Task>(&self, task: &T) -> Result<TaskId, PublishError> {
        self.publish(T::NAME, task, &TaskOptions::default()).await
    }

    /// Like [`send`](Self::send), with options: `TaskOptions::new().delay(..).queue(..)`.
    pub async fn send_with<T: Task>(
        &self,
        task: &T,
        options: &TaskOptions,
    ) -> Result<TaskId, PublishError> {
        self.publish(T::NAME, task, options).await
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
        options.prepare(task, payload)
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
        self.publish_on(exchange, routing_key, body, properties, id, On::Publisher)
            .await
    }

    async fn publish_on(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        id: &str,
        on: On<'_>,
    ) -> Result<(), PublishError> {
        let result = self
            .try_publish(exchange, routing_key, body, properties, id, on)
            .await;
        if let Some(metrics) = &self.inner.link.metrics {
            match &result {
                Ok(()) => metrics.published.inc(),
                Err(e) => metrics.failures.with_label_values(&[e.kind()]).inc(),
            }
        }
        result
    }

    async fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        id: &str,
        on: On<'_>,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.config.confirm_timeout;
        let link = self.link(id).await?;
        let channel = match on {
            On::Publisher => &link.channel,
            On::Channel(channel) => channel,
        };
        if !self.inner.link.wait_unblocked(timeout).await {
            return Err(PublishError::Blocked {
                id: id.to_owned(),
                timeout,
            });
        }
        let broken = |source| {
            if let On::Publisher = on {
                self.inner.link.mark_broken(link.generation);
            }
            PublishError::Connection {
                id: id.to_owned(),
                source,
            }
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let started = Instant::now();
        // Sending can stall too (lapin holds writes while the broker blocks the connection),
        // so the timeout covers the publish and its confirm together.
        let publish = async {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await
                .map_err(broken)?;
            confirm.await.map_err(broken)
        };
        let confirmation =
            tokio::time::timeout(timeout, publish)
                .await
                .map_err(|_| PublishError::Timeout {
                    id: id.to_owned(),
                    timeout,
                })??;
        if let Some(metrics) = &self.inner.link.metrics {
            metrics
                .confirm_latency
                .observe(started.elapsed().as_secs_f64());
        }
        if confirmation.is_nack() && matches!(on, On::Publisher) {
            self.inner.link.refused(&link).await;
        }
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

    /// Declares the delay cascade before the first delayed task of each connection.
    async fn ensure_delays(&self, id: &str) -> Result<(), PublishError> {
        use std::sync::atomic::Ordering;
        let link = self.link(id).await?;
        if self.inner.delays_declared.load(Ordering::Acquire) == link.connection {
            return Ok(());
        }
        Topology::declare_delays(&link.conn).await?;
        self.inner
            .delays_declared
            .store(link.connection, Ordering::Release);
        Ok(())
    }

    /// Fails with [`PublishError::Unroutable`] (`NOT_FOUND`) unless `queue` exists. A delayed
    /// task needs this check: the delay cascade's first queue confirms it, so the broker cannot
    /// report a missing work queue at publish time, and the task would be lost when it is
    /// due. One passive declare per queue and connection: a queue seen once is not checked
    /// again until the publisher reconnects. A queue that cannot be checked now (its node is
    /// down, it has no leader) is not refused.
    async fn ensure_queue(&self, queue: &str, id: &str) -> Result<(), PublishError> {
        let link = self.link(id).await?;
        {
            let known = lock(&self.inner.known_queues);
            if known.connection == link.connection && known.names.contains(queue) {
                return Ok(());
            }
        }
        match Topology::queue_exists(&link.conn, queue).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(PublishError::Unroutable {
                    id: id.to_owned(),
                    exchange: String::new(),
                    routing_key: queue.to_owned(),
                    reply: "NOT_FOUND".to_owned(),
                })
            }
            // The queue cannot be asked about now (its node is down, it has no leader): that
            // is no sign it is missing, and the delay cascade can still take the task.
            // Publish, and ask again next time.
            Err(error) if !error.is_permanent() => {
                tracing::debug!(%queue, %error, "could not check the delayed task's queue; publishing");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        }
        let mut known = lock(&self.inner.known_queues);
        if known.connection != link.connection {
            *known = KnownQueues {
                connection: link.connection,
                names: HashSet::new(),
            };
        }
        known.names.insert(queue.to_owned());
        Ok(())
    }

    /// Waits for every outstanding confirm, then closes the channel and connection.
    pub async fn close(&self) {
        self.inner.link.close().await;
    }
}

/// The channel a publish goes out on.
#[derive(Clone, Copy)]
pub(super) enum On<'a> {
    /// The publisher's own.
    Publisher,
    /// Another channel of the publisher's connection (the one receiving a call's reply).
    Channel(&'a Channel),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn link_error(error: LinkError, id: &str, timeout: Duration) -> PublishError {
    match error {
        LinkError::Timeout => PublishError::Unavailable {
            id: id.to_owned(),
            timeout,
        },
        LinkError::Cancelled => PublishError::Connect(ConnectError::Cancelled),
        LinkError::Broker(source) => PublishError::Connection {
            id: id.to_owned(),
            source,
        },
    }
}
