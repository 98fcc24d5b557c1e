//! The worker: sessions of (consume connection, publish connection, one consumer per queue)
//! that are rebuilt whenever the broker is lost, and the graceful drain at the end.

use crate::config::{ConfigError, WorkerConfig};
use crate::consume::subscription::{subscribe, Ended, QueueStates};
use crate::metrics::{Totals, WorkerMetrics};
use crate::registry::Registry;
use crate::Shared;
use futures::future::join_all;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_common::events::{declare_events_stream, EventLog};
use warren_common::{
    connect, ConnectError, Health, Pacer, Readiness, Shutdown, Topology, TopologyError,
};
use warren_common::{PublishError, Publisher, PublisherConfig};

/// A worker that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A queue exists with other arguments, or its name is unusable: retrying cannot help.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// What the drain achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Counts over the worker's life.
    pub totals: Totals,
    /// Tasks still running when the shutdown timeout passed (left unacked: the broker
    /// redelivers them).
    pub abandoned: usize,
    /// Settlements that could not be sent (their tasks will be redelivered).
    pub acks_lost: u64,
}

/// How long closing a publisher or a connection may take before the worker goes on without
/// (a wedged channel can hold a close up).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of handlers consuming one or more queues.
pub struct Worker {
    pub(crate) shared: Arc<Shared>,
    health: Health,
}

impl Worker {
    /// A worker running `registry`'s handlers, registering its metrics in `metrics`.
    pub fn new(
        registry: Registry,
        config: WorkerConfig,
        metrics: &prometheus::Registry,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        for (name, entry) in registry.entries() {
            if entry
                .options
                .timeout
                .is_some_and(|t| t >= config.consumer_timeout)
            {
                return Err(WorkerError::Config(ConfigError::Invalid {
                    flag: "--consumer-timeout",
                    problem: format!("task `{name}` has a timeout not shorter than the broker's consumer timeout"),
                }));
            }
        }
        let metrics = WorkerMetrics::new(metrics);
        metrics.concurrency.set(config.concurrency as i64);
        metrics.cpu_concurrency.set(config.cpu_concurrency as i64);
        metrics.prefetch.set(config.prefetch.into());
        let queue_metrics = config
            .queues
            .iter()
            .map(|q| {
                (
                    q.clone(),
                    metrics.for_queue(q, registry.names().into_iter()),
                )
            })
            .collect();
        let cpu_bound = registry.entries().any(|(_, e)| e.options.cpu_bound);
        let cpu_permits = cpu_bound.then(|| Semaphore::new(config.cpu_concurrency));
        let shared = Shared {
            permits: Arc::new(Semaphore::new(config.concurrency)),
            cpu_permits,
            rate_limits: crate::rate_limit::RateLimits::new(&config.rate_limits),
            tasks: TaskTracker::new(),
            topology: Topology::new(config.exchange.clone()),
            events: config
                .events_stream
                .as_ref()
                .map(|stream| EventLog::new(stream.clone(), config.worker_id.clone())),
            control: config.control_stream.as_ref().map(|stream| {
                Arc::new(crate::control::Control::new(
                    stream.clone(),
                    config.control_snapshot_interval,
                ))
            }),
            running: Default::default(),
            started_at_ms: warren_common::now_ms(),
            registry,
            config,
            metrics,
            queue_metrics,
        };
        Ok(Worker {
            shared: Arc::new(shared),
            health: Health::new(),
        })
    }

    /// The readiness this worker reports, for the admin server.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics
    }

    /// Runs until `shutdown.drain` fires, then drains: stops consuming, returns prefetched
    /// tasks, waits up to the shutdown timeout for running ones, and closes the connections.
    pub async fn run(self, shutdown: Shutdown) -> Result<DrainReport, WorkerError> {
        // Readiness turns 503 the moment the drain is asked for, not when it is done.
        let health = self.health.clone();
        let drain = shutdown.drain.clone();
        tokio::spawn(async move {
            drain.cancelled().await;
            health.set(Readiness::Draining);
        });
        // Settling what runs: the last session's consume loops, and the sessions retired
        // while the worker went on.
        let mut ackers = Vec::new();
        let mut lost_earlier = 0;
        let mut connections = None;
        let mut first = true;
        let mut fatal = None;
        while !shutdown.drain.is_cancelled() {
            self.health.set_with(
                if first {
                    Readiness::Connecting
                } else {
                    Readiness::Reconnecting
                },
                None,
            );
            if !first {
                self.shared.metrics.reconnects.inc();
            }
            first = false;
            let Some((conn, publisher)) = self.open_session(&shutdown.drain).await else {
                break;
            };
            self.shared.metrics.connected.set(1);
            let events = self.record_events(&publisher);
            let session = self.run_session(&conn, &publisher, &shutdown.drain).await;
            self.shared.metrics.connected.set(0);
            let links = Links { publisher, events };
            if shutdown.drain.is_cancelled() || session.fatal.is_some() {
                ackers.extend(session.ackers);
                connections = Some((conn, links));
                fatal = session.fatal;
                break;
            }
            tracing::warn!("lost the broker; reconnecting");
            ackers.retain_mut(|acker| match acker.now_or_never() {
                Some(lost) => {
                    lost_earlier += lost.unwrap_or(0);
                    false
                }
                None => true,
            });
            let wait = self.shared.config.shutdown_timeout;
            ackers.push(tokio::spawn(retire(session.ackers, conn, links, wait)));
        }
        self.health.set(Readiness::Draining);
        let report = self
            .drain(ackers, lost_earlier, connections, &shutdown.abort)
            .await;
        match fatal {
            Some(error) => Err(error.into()),
            None => Ok(report),
        }
    }

    /// Starts sending the events the worker records, and its heartbeats, through
    /// `publisher`, if it records events, until the returned token is cancelled (once the
    /// session's running tasks are settled: their acks wait for their events).
    fn record_events(&self, publisher: &Publisher) -> Option<CancellationToken> {
        let log = self.shared.events.clone()?;
        let stop = CancellationToken::new();
        let (sender, until) = (publisher.clone(), stop.clone());
        tokio::spawn(async move { log.run(&sender, &until).await });
        let (shared, sender, until) = (self.shared.clone(), publisher.clone(), stop.clone());
        tokio::spawn(async move {
            let started = shared.started_at_ms;
            crate::heartbeat::beat(&shared, &sender, started, &until).await
        });
        Some(stop)
    }

    /// Connects and opens the publisher. `None` when shutting down. Declaring is left to
    /// each queue's subscription, so that one queue the broker cannot serve stops no other.
    async fn open_session(
        &self,
        stop: &CancellationToken,
    ) -> Option<(lapin::Connection, Publisher)> {
        let config = &self.shared.config;
        let name = format!("warren-worker {}", config.worker_id);
        loop {
            let publisher_config = PublisherConfig {
                amqp: config.amqp.clone(),
                exchange: config.exchange.clone(),
                default_queue: config.queues[0].clone(),
                connection_name: format!("{name} publish"),
                ..PublisherConfig::default()
            };
            let (conn, publisher) = futures::future::join(
                connect(&config.amqp, &name, stop),
                Publisher::connect(publisher_config, stop),
            )
            .await;
            match (conn, publisher) {
                (Ok(conn), Ok(publisher)) => return Some((conn, publisher)),
                (Err(ConnectError::Cancelled), _) | (_, Err(PublishError::Connect(_))) => {
                    return None
                }
                (conn, publisher) => {
                    if let Err(error) = &publisher {
                        tracing::warn!(%error, "opening the publisher failed; reconnecting");
                    }
                    if let Ok(conn) = conn {
                        let _ = conn.close(200, "retrying".into()).await;
                    }
                }
            }
        }
    }

    /// Declares and consumes every queue, each on its own (see [`crate::consume::subscription`]), and
    /// the delay cascade, until the drain, the loss of the connection, or a declaration
    /// only a person can fix. Returns the ackers still settling running tasks.
    async fn run_session(
        &self,
        conn: &lapin::Connection,
        publisher: &Publisher,
        drain: &CancellationToken,
    ) -> Ended {
        let stop = drain.child_token();
        let config = &self.shared.config;
        let control = config.control_stream.as_deref();
        let states = QueueStates::new(&config.queues, control, self.health.clone());
        // Retries go through the cascade: try it once before any task can fail.
        let cascade = match declare_cascade(conn, &states, &stop, true).await {
            Some(error) if error.is_permanent() => {
                return Ended {
                    ackers: Vec::new(),
                    fatal: Some(error),
                }
            }
            Some(_) => Some(declare_cascade(conn, &states, &stop, false)),
            None => None,
        };
        let subscriptions = self.shared.config.queues.iter().map(|queue| {
            let (shared, states, stop) = (self.shared.clone(), &states, &stop);
            async move {
                let ended =
                    subscribe(shared, conn, publisher, states, queue.as_str().into(), stop).await;
                if ended.fatal.is_some() {
                    stop.cancel();
                }
                ended
            }
        });
        let background = async {
            let cascade = async {
                match cascade {
                    Some(retrying) => retrying.await.filter(TopologyError::is_permanent),
                    None => None,
                }
            };
            let monitor = async {
                let events = declare_events(&self.shared, conn, &stop);
                let monitor = crate::consume::monitor::monitor(&self.shared, conn, &states, &stop);
                let control = crate::control::follow(&self.shared, conn, publisher, &states, &stop);
                futures::future::join3(events, monitor, control).await;
            };
            let lost = async {
                connection_lost(conn, &stop).await;
                stop.cancel();
            };
            let (fatal, (), ()) = futures::future::join3(cascade, monitor, lost).await;
            fatal
        };
        let (ends, cascade_fatal) =
            futures::future::join(join_all(subscriptions), background).await;
        let mut session = Ended {
            ackers: Vec::new(),
            fatal: cascade_fatal,
        };
        for end in ends {
            session.ackers.extend(end.ackers);
            session.fatal = session.fatal.or(end.fatal);
        }
        session
    }

    /// `lost_earlier`: settlements that retired sessions could not send.
    async fn drain(
        self,
        ackers: Vec<JoinHandle<u64>>,
        lost_earlier: u64,
        connections: Option<(lapin::Connection, Links)>,
        abort: &CancellationToken,
    ) -> DrainReport {
        let shared = &self.shared;
        shared.tasks.close();
        let running = shared.tasks.len();
        tracing::info!(running, timeout = ?shared.config.shutdown_timeout, "draining: waiting for running tasks");
        let mut acks_lost = lost_earlier;
        let wait = async {
            shared.tasks.wait().await;
            for acker in ackers {
                acks_lost += acker.await.unwrap_or(0);
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(shared.config.shutdown_timeout, wait) => {}
            _ = abort.cancelled() => {}
        }
        let abandoned = shared.tasks.len();
        if let Some((conn, links)) = connections {
            crate::heartbeat::farewell(shared, &links.publisher, shared.started_at_ms).await;
            close(conn, links, "drained").await;
        }
        let report = DrainReport {
            totals: shared.metrics.totals(),
            abandoned,
            acks_lost,
        };
        let t = report.totals;
        tracing::info!(
            received = t.received,
            succeeded = t.succeeded,
            failed = t.failed,
            retried = t.retried,
            dead_lettered = t.dead_lettered,
            requeued = t.requeued,
            abandoned,
            acks_lost,
            "drained"
        );
        report
    }
}

/// Declares the delay cascade (retries and delayed tasks go through it). With `once`, tries
/// once and returns the error; else retries with backoff while the broker cannot serve it,
/// until `stop` fires, and returns only a declaration only a person can fix.
async fn declare_cascade(
    conn: &lapin::Connection,
    states: &QueueStates,
    stop: &CancellationToken,
    once: bool,
) -> Option<TopologyError> {
    let mut pacer = Pacer::new();
    loop {
        match Topology::declare_delays(conn).await {
            Ok(()) => {
                states.cascade_declared();
                return None;
            }
            Err(error) if error.is_permanent() => {
                stop.cancel();
                return Some(error);
            }
            Err(error) => {
                if !conn.status().connected() {
                    return None;
                }
                tracing::warn!(%error, "cannot declare the delay cascade; retrying");
                states.cascade_unavailable(error.to_string());
                if error.is_channels_exhausted() {
                    stop.cancel();
                    return None;
                }
                if once {
                    return Some(error);
                }
                if !pacer.pause(stop).await {
                    return None;
                }
            }
        }
    }
}

/// Resolves once `conn` is no longer connected, or `stop` fired.
async fn connection_lost(conn: &lapin::Connection, stop: &CancellationToken) {
    const POLL: Duration = Duration::from_millis(100);
    while conn.status().connected() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Declares the events stream, if the worker records events, retrying with backoff while the
/// broker cannot (the events' flusher meanwhile retries its batch), until `stop` fires.
async fn declare_events(shared: &Shared, conn: &lapin::Connection, stop: &CancellationToken) {
    let Some(log) = &shared.events else {
        return;
    };
    let mut pacer = Pacer::new();
    while conn.status().connected() {
        match declare_events_stream(conn, log.stream()).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(stream = log.stream(), %error, "cannot declare the events stream; retrying");
                if !pacer.pause(stop).await {
                    return;
                }
            }
        }
    }
}

/// A session's publishing side: the publisher, and the token that stops sending events
/// through it.
struct Links {
    publisher: Publisher,
    events: Option<CancellationToken>,
}

/// Closes a session the worker left while going on (the broker was lost, or a consumer
/// stalled): once its running tasks are settled (waiting at most `wait`), its publisher and
/// connection are closed, so that the broker requeues whatever its channels still hold, even
/// a wedged one. Returns how many settlements could not be sent.
async fn retire(
    ackers: Vec<JoinHandle<u64>>,
    conn: lapin::Connection,
    links: Links,
    wait: Duration,
) -> u64 {
    let mut lost = 0;
    let settle = async {
        for acker in ackers {
            lost += acker.await.unwrap_or(0);
        }
    };
    let _ = tokio::time::timeout(wait, settle).await;
    close(conn, links, "session ended").await;
    lost
}

/// Stops the session's events, then closes its publisher and connection, each within
/// [`CLOSE_TIMEOUT`].
async fn close(conn: lapin::Connection, links: Links, reason: &str) {
    if let Some(events) = links.events {
        events.cancel();
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, links.publisher.close()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await;
}
