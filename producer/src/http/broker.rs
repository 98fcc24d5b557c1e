//! The ingest's side of the broker: a [`Publisher`] connected in the background (so the
//! server answers, with 503s and a failing `/readyz`, while the broker is unreachable), the
//! default queue declared once connected, the server's readiness kept in line with the
//! publisher's, and a cache of queues known to exist for delayed tasks.
//!
//! The broker's health has one source in this process: the publisher's link
//! ([`Publisher::health`]), which notices a lost connection as soon as lapin reports it (a
//! closed socket, a missed heartbeat, the broker closing the connection) and reconnects in the
//! background. The server only follows it, adding what the link cannot know: `Connecting`
//! until the default queue is declared, the declaration again after every reconnection (so a
//! broker that lost the queue gets it back before tasks are accepted), and `Draining`.

use super::error::ApiError;
use crate::{PublishError, Publisher, PublisherConfig};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_common::events::PublishedEvents;
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
    /// The server's readiness: the publisher's, once the default queue is declared on its
    /// current link.
    health: Health,
    /// Cancels the publisher's reconnection loop; fired only once the server has stopped, so
    /// requests still in flight during a drain can complete.
    link_cancel: CancellationToken,
    fatal: Mutex<Option<PublishError>>,
}

impl Broker {
    /// Starts connecting in the background. Until connected (and the default queue declared)
    /// `health` stays `Connecting`; then it follows the publisher's readiness until `stop`.
    /// A default queue that can never be declared (a mismatch with an existing queue) is
    /// recorded and fires `failed`.
    pub(crate) fn start(
        config: PublisherConfig,
        events: Option<PublishedEvents>,
        spec: QueueSpec,
        health: Health,
        stop: CancellationToken,
        failed: CancellationToken,
    ) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                publisher: OnceLock::new(),
                health,
                link_cancel: CancellationToken::new(),
                fatal: Mutex::new(None),
            }),
        };
        let task = broker.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                () = task.keep_connected(config, events, spec, failed) => {}
            }
        });
        broker
    }

    async fn keep_connected(
        &self,
        mut config: PublisherConfig,
        events: Option<PublishedEvents>,
        spec: QueueSpec,
        failed: CancellationToken,
    ) {
        let publisher = loop {
            match Publisher::connect(config.clone(), &self.inner.link_cancel).await {
                Ok(publisher) => break publisher,
                Err(error) => {
                    // The failed attempt registered the producer metrics already, and
                    // registering them twice panics: later attempts go without.
                    if config.metrics.take().is_some() {
                        tracing::warn!("producer metrics are frozen until the server restarts");
                    }
                    tracing::warn!(%error, "cannot open the publishing channel; retrying");
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
        let publisher = match events {
            Some(events) => publisher.with_events(events),
            None => publisher,
        };
        let _ = self.inner.publisher.set(publisher.clone());
        tracing::info!(queue = %spec.name, "connected; accepting tasks");
        follow(&publisher, &spec, &self.inner.health).await;
    }

    /// The publisher, if it can take tasks now; else the 503 to answer.
    pub(crate) fn ready(&self) -> Result<Publisher, ApiError> {
        let Some(publisher) = self.inner.publisher.get() else {
            return Err(ApiError::unavailable("not connected to the broker yet"));
        };
        let state = match (publisher.health().get(), self.inner.health.get()) {
            // Requests received before a drain started are still served.
            (Readiness::Ready, Readiness::Draining) => Readiness::Ready,
            (Readiness::Ready, server) => server,
            (publisher, _) => publisher,
        };
        match state {
            Readiness::Ready => Ok(publisher.clone()),
            Readiness::Blocked => Err(ApiError::unavailable(
                "the broker is blocking publishers (memory or disk alarm)",
            )),
            Readiness::Draining => Err(ApiError::unavailable("shutting down")),
            Readiness::Connecting
            | Readiness::Reconnecting
            | Readiness::Degraded
            | Readiness::Unavailable => Err(ApiError::unavailable(
                "lost the broker connection; reconnecting",
            )),
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

/// Keeps `health` in line with the publisher's readiness; whenever the link is lost, holds it
/// at `Reconnecting` until the default queue is declared on a new link (which also restores
/// the queue if the broker lost it).
async fn follow(publisher: &Publisher, spec: &QueueSpec, health: &Health) {
    let link = publisher.health();
    loop {
        let state = link.get();
        health.set(state);
        if state == Readiness::Reconnecting {
            tracing::warn!("lost the broker connection; answering 503 until reconnected");
            reconnect(publisher, spec).await;
            continue;
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// Reconnects, retrying until the default queue is declared on a new link.
async fn reconnect(publisher: &Publisher, spec: &QueueSpec) {
    while let Err(error) = publisher.declare(spec).await {
        tracing::warn!(%error, "reconnecting to the broker failed; retrying");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    tracing::info!(queue = %spec.name, "reconnected; accepting tasks");
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
