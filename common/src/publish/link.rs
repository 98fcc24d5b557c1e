//! The publisher's link to the broker: a connection and a confirm-mode channel, replaced
//! when lost, and the broker's flow-control state (`connection.blocked`).
//!
//! Losing the link fails the publishes whose confirms were outstanding (their callers get an
//! error, never silence); the next publish reconnects, waiting at most the confirm timeout.
//!
//! Refusals (nacks) get a fresh channel on the same connection: the third since the channel
//! was opened does, at most once per [`Pacer`] pause. On RabbitMQ 3.10 a channel opened while
//! a quorum queue had no leader (a node died, ~3 s to elect a new one) has every publish to
//! that queue refused for as long as the old node stays down, while channels opened after the
//! election are fine. Publishes to other queues go on being confirmed on that channel
//! meanwhile, so they do not end the count (in the cluster test, every tenth publish went to
//! the delay cascade and was refused, the nine between confirmed). The old channel is closed
//! once its outstanding confirms have settled.

use super::metrics::ProducerMetrics;
use crate::{connect, Amqp, ConnectError, Health, Pacer, Readiness};
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, Event};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

/// How long a replaced channel's outstanding confirms may take to settle before it is closed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A live connection and its publishing channel.
pub(crate) struct Link {
    pub(crate) conn: Arc<Connection>,
    pub(crate) channel: Channel,
    /// Grows with every new link (a new connection or a fresh channel).
    pub(crate) generation: u64,
    /// The generation of the link that opened the connection.
    pub(crate) connection: u64,
}

/// Refusals on one channel after which the next publish gets a fresh channel.
const REFUSALS_BEFORE_FRESH_CHANNEL: u32 = 3;

/// Refusals on the current channel, and when a fresh channel may be opened next.
struct Refusals {
    count: AtomicU32,
    pacer: std::sync::Mutex<(Pacer, Instant)>,
}

/// Owns the current [`Link`] and replaces it when it breaks.
pub(crate) struct Linker {
    /// Where to connect; `None` for a pinned linker, which publishes on one given connection
    /// and never reconnects.
    amqp: Option<Amqp>,
    name: String,
    current: Arc<RwLock<Option<Arc<Link>>>>,
    /// Woken when the connection is lost, so the link is rebuilt without waiting for a publish.
    lost: Arc<tokio::sync::Notify>,
    reconnecting: Mutex<u64>,
    refusals: Refusals,
    blocked: watch::Sender<bool>,
    pub(crate) health: Health,
    pub(crate) metrics: Option<ProducerMetrics>,
    pub(crate) cancel: CancellationToken,
}

/// Why no link is available.
pub(crate) enum LinkError {
    /// Could not connect within the time allowed.
    Timeout,
    /// Shutting down.
    Cancelled,
    /// Connected, but opening the channel failed.
    Broker(lapin::Error),
}

impl Drop for Linker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Linker {
    pub(crate) fn new(
        amqp: Option<Amqp>,
        name: String,
        metrics: Option<ProducerMetrics>,
        cancel: CancellationToken,
    ) -> Self {
        Linker {
            amqp,
            name,
            current: Arc::new(RwLock::new(None)),
            lost: Arc::new(tokio::sync::Notify::new()),
            reconnecting: Mutex::new(0),
            refusals: Refusals {
                count: AtomicU32::new(0),
                pacer: std::sync::Mutex::new((Pacer::new(), Instant::now())),
            },
            blocked: watch::channel(false).0,
            health: Health::new(),
            metrics,
            cancel,
        }
    }

    /// A linker publishing on `conn` only: once that connection is lost, publishes fail.
    pub(crate) async fn pinned(
        conn: Connection,
        name: String,
        metrics: Option<ProducerMetrics>,
    ) -> Result<Self, lapin::Error> {
        let linker = Linker::new(None, name, metrics, CancellationToken::new());
        let channel = open_confirm_channel(&conn).await?;
        linker.watch_events(&conn, 1);
        let link = Arc::new(Link {
            conn: Arc::new(conn),
            channel,
            generation: 1,
            connection: 1,
        });
        *linker.current.write().unwrap_or_else(|e| e.into_inner()) = Some(link);
        linker.health.set(Readiness::Ready);
        Ok(linker)
    }

    /// The current link, reconnecting first if there is none (waiting at most `wait`).
    pub(crate) async fn get(&self, wait: Option<Duration>) -> Result<Arc<Link>, LinkError> {
        if let Some(link) = self.live() {
            return Ok(link);
        }
        match wait {
            None => self.reconnect().await,
            Some(wait) => tokio::time::timeout(wait, self.reconnect())
                .await
                .unwrap_or(Err(LinkError::Timeout)),
        }
    }

    fn live(&self) -> Option<Arc<Link>> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|l| l.channel.status().connected())
            .cloned()
    }

    /// Forgets the link of `generation` (if still current) so the next publish reconnects.
    pub(crate) fn mark_broken(&self, generation: u64) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|l| l.generation == generation) {
            *guard = None;
            self.health.set(Readiness::Reconnecting);
            if let Some(m) = &self.metrics {
                m.connected.set(0);
            }
            tracing::warn!(connection = %self.name, "lost the publishing link; will reconnect");
        }
    }

    async fn reconnect(&self) -> Result<Arc<Link>, LinkError> {
        let mut generation = self.reconnecting.lock().await;
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let Some(amqp) = &self.amqp else {
            return Err(LinkError::Cancelled);
        };
        let conn = match connect(amqp, &self.name, &self.cancel).await {
            Ok(conn) => conn,
            Err(ConnectError::Cancelled) => return Err(LinkError::Cancelled),
        };
        let channel = open_confirm_channel(&conn)
            .await
            .map_err(LinkError::Broker)?;
        *generation += 1;
        if *generation > 1 {
            if let Some(m) = &self.metrics {
                m.reconnects.inc();
            }
        }
        self.watch_events(&conn, *generation);
        let link = Arc::new(Link {
            conn: Arc::new(conn),
            channel,
            generation: *generation,
            connection: *generation,
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
        self.blocked.send_replace(false);
        self.health.set(Readiness::Ready);
        if let Some(m) = &self.metrics {
            m.connected.set(1);
            m.blocked.set(0);
        }
        Ok(link)
    }

    /// Follows the connection's events: blocked/unblocked and errors.
    fn watch_events(&self, conn: &Connection, generation: u64) {
        let mut events = conn.events_listener();
        let blocked = self.blocked.clone();
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let current = self.current.clone();
        let lost = self.lost.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::ConnectionBlocked(reason) => {
                        tracing::warn!(connection = %name, %reason, generation, "broker blocks publishers");
                        blocked.send_replace(true);
                        health.set(Readiness::Blocked);
                        if let Some(m) = &metrics {
                            m.blocked.set(1);
                        }
                    }
                    Event::ConnectionUnblocked => {
                        tracing::info!(connection = %name, "broker unblocked publishers");
                        blocked.send_replace(false);
                        health.set(Readiness::Ready);
                        if let Some(m) = &metrics {
                            m.blocked.set(0);
                        }
                    }
                    // A channel-level error (e.g. a refused declare on another channel) leaves
                    // the connection up; anything else ends it.
                    Event::Error(error) if error.is_amqp_soft_error() => {
                        tracing::debug!(connection = %name, %error, "channel error");
                    }
                    Event::Error(error) => {
                        tracing::warn!(connection = %name, %error, "publishing connection lost");
                        blocked.send_replace(false);
                        let mut guard = current.write().unwrap_or_else(|e| e.into_inner());
                        if guard.as_ref().is_some_and(|l| l.connection == generation) {
                            *guard = None;
                            health.set(Readiness::Reconnecting);
                            if let Some(m) = &metrics {
                                m.connected.set(0);
                            }
                        }
                        drop(guard);
                        lost.notify_one();
                    }
                    _ => {}
                }
            }
        });
    }

    /// Rebuilds the link in the background whenever its connection is lost, so readiness
    /// recovers without traffic. Holds the linker only weakly: stops once it is dropped or
    /// closed.
    pub(crate) fn keep_alive(linker: &Arc<Linker>) {
        if linker.amqp.is_none() {
            return;
        }
        let weak = Arc::downgrade(linker);
        let lost = linker.lost.clone();
        let cancel = linker.cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = lost.notified() => {}
                }
                loop {
                    let Some(linker) = weak.upgrade() else { return };
                    match linker.get(Some(Duration::from_secs(10))).await {
                        Ok(_) => break,
                        Err(LinkError::Cancelled) => return,
                        Err(_) => continue,
                    }
                }
            }
        });
    }

    /// Notes a refused publish on `link`; at the third since its channel was opened, replaces
    /// the channel with a fresh one on the same connection (at most once per pause of the
    /// pacer, whose pause grows with each replacement: a queue that keeps refusing, e.g. one
    /// at its length limit, costs a channel every 10 s at most).
    pub(crate) async fn refused(&self, link: &Arc<Link>) {
        let count = self.refusals.count.fetch_add(1, Ordering::Relaxed) + 1;
        if count < REFUSALS_BEFORE_FRESH_CHANNEL {
            return;
        }
        {
            let mut pacer = self
                .refusals
                .pacer
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if Instant::now() < pacer.1 {
                return;
            }
            let pause = pacer.0.next_delay();
            pacer.1 = Instant::now() + pause;
        }
        let mut generation = self.reconnecting.lock().await;
        if self
            .live()
            .is_none_or(|current| current.generation != link.generation)
        {
            return;
        }
        let channel = match open_confirm_channel(&link.conn).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(connection = %self.name, %error, "could not open a fresh publishing channel");
                return;
            }
        };
        *generation += 1;
        let fresh = Arc::new(Link {
            conn: link.conn.clone(),
            channel,
            generation: *generation,
            connection: link.connection,
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        self.refusals.count.store(0, Ordering::Relaxed);
        tracing::warn!(connection = %self.name, refused = count,
            "the broker refused publishes on this channel; publishing on a fresh one");
        let old = link.channel.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SETTLE_TIMEOUT, old.wait_for_confirms()).await;
            let _ = old.close(200, "replaced".into()).await;
        });
    }

    /// Waits while the broker blocks publishers; false if still blocked after `wait`.
    pub(crate) async fn wait_unblocked(&self, wait: Duration) -> bool {
        let mut rx = self.blocked.subscribe();
        if !*rx.borrow() {
            return true;
        }
        let unblocked = tokio::time::timeout(wait, rx.wait_for(|blocked| !blocked)).await;
        unblocked.is_ok()
    }

    /// Waits for outstanding confirms, then closes the channel and the connection.
    pub(crate) async fn close(&self) {
        let link = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(link) = link {
            let _ = link.channel.wait_for_confirms().await;
            let _ = link.channel.close(200, "bye".into()).await;
            let _ = link.conn.close(200, "bye".into()).await;
        }
        self.cancel.cancel();
    }
}

async fn open_confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
