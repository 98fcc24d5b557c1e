//! The ingest's side of the broker: a [`Publisher`] connected in the background (so the
//! server answers, with 503s and a failing `/readyz`, while the broker is unreachable), the
//! default queue declared once connected, the server's readiness kept equal to the
//! publisher's, and a cache of queues known to exist for delayed tasks.

use super::error::ApiError;
use crate::{PublishError, Publisher, PublisherConfig};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::{Health, QueueSpec, Readiness};

/// How often the server's readiness is brought in line with the publisher's.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Pause between attempts to open the publisher or declare the default queue.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The publisher once connected, shared by every request. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: OnceLock<Publisher>,
    /// Cancels the publisher's reconnection loop; fired only once the server has stopped, so
    /// requests still in flight during a drain can complete.
    link_cancel: CancellationToken,
    known_queues: Mutex<HashSet<String>>,
    fatal: Mutex<Option<PublishError>>,
}

impl Broker {
    /// Starts connecting in the background. Until connected (and the default queue declared)
    /// `health` stays `Connecting`; then it follows the publisher's readiness until `stop`.
    /// A default queue that can never be declared (a mismatch with an existing queue) is
    /// recorded and fires `failed`.
    pub(crate) fn start(
        config: PublisherConfig,
        spec: QueueSpec,
        health: Health,
        stop: CancellationToken,
        failed: CancellationToken,
    ) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                publisher: OnceLock::new(),
                link_cancel: CancellationToken::new(),
                known_queues: Mutex::new(HashSet::new()),
                fatal: Mutex::new(None),
            }),
        };
        let task = broker.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                () = task.keep_connected(config, spec, health, failed) => {}
            }
        });
        broker
    }

    async fn keep_connected(
        &self,
        config: PublisherConfig,
        spec: QueueSpec,
        health: Health,
        failed: CancellationToken,
    ) {
        let publisher = loop {
            match Publisher::connect(config.clone(), &self.inner.link_cancel).await {
                Ok(publisher) => break publisher,
                Err(error) => {
                    tracing::warn!(%error, "cannot open the publishing channel; retrying")
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        loop {
            match publisher.declare(&spec).await {
                Ok(()) => break,
                Err(PublishError::Topology(e)) if e.is_permanent() => {
                    tracing::error!(error = %e, queue = %spec.name, "cannot use the default queue");
                    *lock(&self.inner.fatal) = Some(PublishError::Topology(e));
                    failed.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %spec.name, "declaring the default queue failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        lock(&self.inner.known_queues).insert(spec.name.clone());
        let _ = self.inner.publisher.set(publisher.clone());
        tracing::info!(queue = %spec.name, "connected; accepting tasks");
        follow(&publisher, &spec, &health).await;
    }

    /// The publisher, if it can take tasks now; else the 503 to answer.
    pub(crate) fn ready(&self) -> Result<Publisher, ApiError> {
        let Some(publisher) = self.inner.publisher.get() else {
            return Err(ApiError::unavailable("not connected to the broker yet"));
        };
        match publisher.health().get() {
            Readiness::Ready => Ok(publisher.clone()),
            Readiness::Blocked => Err(ApiError::unavailable(
                "the broker is blocking publishers (memory or disk alarm)",
            )),
            Readiness::Draining => Err(ApiError::unavailable("shutting down")),
            Readiness::Connecting | Readiness::Reconnecting => Err(ApiError::unavailable(
                "lost the broker connection; reconnecting",
            )),
        }
    }

    /// Whether `queue` exists (a passive declare, remembered once true). Needed for delayed
    /// tasks only: they are confirmed by the delay cascade's first queue, so the broker
    /// cannot report a missing work queue at publish time.
    pub(crate) async fn queue_exists(
        &self,
        publisher: &Publisher,
        queue: &str,
    ) -> Result<bool, PublishError> {
        if lock(&self.inner.known_queues).contains(queue) {
            return Ok(true);
        }
        let channel = publisher.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
                lock(&self.inner.known_queues).insert(queue.to_owned());
                Ok(true)
            }
            // The broker closed the channel with 404 NOT_FOUND.
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(PublishError::Connection {
                id: String::new(),
                source,
            }),
        }
    }

    /// Closes the publisher (after its outstanding confirms) and stops reconnecting.
    pub(crate) async fn close(&self) {
        if let Some(publisher) = self.inner.publisher.get() {
            publisher.close().await;
        }
        self.inner.link_cancel.cancel();
    }

    /// The error that made the server stop, if any.
    pub(crate) fn take_fatal(&self) -> Option<PublishError> {
        lock(&self.inner.fatal).take()
    }
}

/// Keeps `health` equal to the publisher's readiness. The publisher reconnects lazily (on its
/// next use), so while it is reconnecting this drives the reconnection by declaring the
/// default queue again, which also restores the queue if the broker lost it.
async fn follow(publisher: &Publisher, spec: &QueueSpec, health: &Health) {
    loop {
        let state = publisher.health().get();
        health.set(state);
        if state == Readiness::Reconnecting {
            if let Err(error) = publisher.declare(spec).await {
                tracing::warn!(%error, "reconnecting to the broker failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            continue;
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
