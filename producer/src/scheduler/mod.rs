//! Periodic tasks: the `warren-scheduler` process publishes each schedule's task when it falls
//! due. Any number of replicas may run; one holds the lease (an exclusive queue: the `lease`
//! module) and publishes, the others stand by and take over within about a second of its
//! death. The last published tick of each schedule is kept in RabbitMQ (the `state` module), so a
//! new leader resumes where the last one stopped and applies the schedule's missed-tick
//! policy to the gap. `docs/scheduling.md` describes the whole mechanism and its guarantees.

mod classic_state;
mod leader;
mod lease;
mod metrics;
pub mod schedule;
mod state;

pub use metrics::SchedulerMetrics;
pub use schedule::{parse_task_id, MissedPolicy, Schedule, ScheduleError, Timing};

use crate::defaults::scheduler as defaults;
use leader::Term;
use std::time::{Duration, Instant};
use warren_common::{connect, Amqp, ConnectError, Health, Readiness, Shutdown};

/// A connection lost sooner than this after it was opened is followed by a pause.
const FLAPPING: Duration = Duration::from_secs(5);

/// Longest lease name, so that state queue names stay within AMQP's 255 bytes.
const MAX_LEASE_NAME: usize = 120;

/// What a scheduler replica runs and how.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Broker URLs, tried in turn.
    pub amqp: Amqp,
    /// The task exchange (see [`crate::PublisherConfig::exchange`]).
    pub exchange: String,
    /// Publish through the task exchange rather than straight to the queue (see
    /// [`crate::PublisherConfig::via_exchange`]).
    pub via_exchange: bool,
    /// The schedules (every replica of a group must be given the same ones).
    pub schedules: Vec<Schedule>,
    /// The scheduler group: replicas with the same name share one lease and one state.
    pub lease_name: String,
    /// How often a standby tries to take the lease (also the delay before a failed tick is
    /// tried again).
    pub lease_retry: Duration,
    /// How long each publish waits for the broker's confirm.
    pub confirm_timeout: Duration,
    /// Dead-letter retention used when declaring the schedules' queues.
    pub retention: warren_common::Retention,
    /// Registry the scheduler's metrics are registered in.
    pub metrics: prometheus::Registry,
    /// Readiness for `/readyz`: ready while connected, as leader or standby.
    pub health: Health,
    /// Record a `published` event for each task published (docs/wire-format.md §11.4);
    /// none: record nothing.
    pub events: Option<warren_common::events::PublishedEvents>,
}

impl SchedulerConfig {
    /// A configuration with the defaults of [`crate::defaults::scheduler`] for everything
    /// but the schedules.
    pub fn new(schedules: Vec<Schedule>) -> Self {
        SchedulerConfig {
            amqp: Amqp::default(),
            exchange: warren_common::DEFAULT_EXCHANGE.to_owned(),
            via_exchange: false,
            schedules,
            lease_name: defaults::LEASE_NAME.to_owned(),
            lease_retry: defaults::LEASE_RETRY,
            confirm_timeout: defaults::CONFIRM_TIMEOUT,
            retention: warren_common::Retention::default(),
            metrics: prometheus::Registry::new(),
            health: Health::new(),
            events: None,
        }
    }

    fn connection_name(&self) -> String {
        format!("warren-scheduler {}", self.lease_name)
    }

    /// Checks the settings that do not need the broker ([`run`] checks them too).
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let name = &self.lease_name;
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
        if name.is_empty()
            || name.len() > MAX_LEASE_NAME
            || name.starts_with("amq.")
            || !name.chars().all(allowed)
        {
            return Err(SchedulerError::LeaseName(name.clone()));
        }
        if self.lease_retry.is_zero() {
            return Err(SchedulerError::LeaseRetry);
        }
        Ok(())
    }
}

/// Why a scheduler stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The lease name cannot be used.
    #[error(
        "--lease-name `{0}`: must be 1 to 120 letters, digits, `_`, `-`, `.` or `:`, \
         not starting with `amq.`"
    )]
    LeaseName(String),
    /// The lease retry interval is zero.
    #[error("--lease-retry must be more than zero")]
    LeaseRetry,
    /// The broker refuses the lease queue (permissions, or a queue of that name with other
    /// settings).
    #[error("the broker refuses the lease queue `{queue}`: {source}")]
    Lease {
        /// The lease queue.
        queue: String,
        /// The broker's error.
        source: lapin::Error,
    },
    /// The broker refuses a state queue: one of that name exists with other settings, or the
    /// user may not use it.
    #[error(
        "the state queue `{queue}` cannot be used (delete it to reset the schedule): {source}"
    )]
    State {
        /// The state queue.
        queue: String,
        /// The broker's error.
        source: Box<warren_common::TopologyError>,
    },
    /// The metrics could not be registered (already registered in the same registry).
    #[error("registering the scheduler metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs one scheduler replica until `shutdown.drain` fires: connects, stands by until it
/// takes the lease, then publishes ticks until it loses the lease (and stands by again) or is
/// asked to stop (and closes the lease connection, so that a standby takes over at once).
pub async fn run(config: SchedulerConfig, shutdown: Shutdown) -> Result<(), SchedulerError> {
    config.validate()?;
    let names = config.schedules.iter().map(|s| s.name.as_str());
    let metrics = SchedulerMetrics::new(&config.metrics, names)?;
    let result = replica(&config, &metrics, &shutdown).await;
    metrics.leader.set(0);
    config.health.set(Readiness::Draining);
    result
}

async fn replica(
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    shutdown: &Shutdown,
) -> Result<(), SchedulerError> {
    let lease_queue = lease::queue_name(&config.lease_name);
    let cancel = &shutdown.drain;
    let mut standing_by = false;
    loop {
        let conn = match connect(&config.amqp, &config.connection_name(), cancel).await {
            Ok(conn) => conn,
            Err(ConnectError::Cancelled) => return Ok(()),
        };
        config.health.set(Readiness::Ready);
        let connected = Instant::now();
        let retry = config.lease_retry;
        match lease::acquire(&conn, &lease_queue, retry, &mut standing_by, cancel).await {
            lease::Acquired::Held => {
                standing_by = false;
                if lead(conn, config, metrics, &lease_queue, cancel).await? == Term::Drained {
                    return Ok(());
                }
            }
            lease::Acquired::Recycle => {
                tracing::debug!(lease = %lease_queue, "opening a fresh standby connection");
                let _ = conn.close(200, "recycled".into()).await;
                continue;
            }
            lease::Acquired::Cancelled => {
                let _ = conn.close(200, "shutting down".into()).await;
                return Ok(());
            }
            lease::Acquired::Lost(error) => {
                let error = error.map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(%error, "lost the broker connection while standing by; reconnecting");
                standing_by = false;
            }
            lease::Acquired::Refused(source) => {
                let _ = conn.close(200, "lease refused".into()).await;
                let queue = lease_queue;
                return Err(SchedulerError::Lease { queue, source });
            }
        }
        config.health.set(Readiness::Reconnecting);
        // Reconnect at once after a connection that lasted (ticks are due), but pause after
        // one that failed quickly, so that a broker refusing the same way is not hammered.
        if connected.elapsed() < FLAPPING {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry.min(Duration::from_secs(1))) => {}
            }
        }
    }
}

/// One term as leader on `conn`, which holds the lease.
async fn lead(
    conn: lapin::Connection,
    config: &SchedulerConfig,
    metrics: &SchedulerMetrics,
    lease_queue: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Term, SchedulerError> {
    metrics.leader.set(1);
    let schedules = config.schedules.len();
    tracing::info!(lease = lease_queue, schedules, "became leader");
    let term = leader::lead(conn, config, metrics, cancel).await;
    metrics.leader.set(0);
    match term {
        Ok(Term::Drained) => tracing::info!(lease = lease_queue, "stopped leading: lease released"),
        Ok(Term::Lost) => {
            tracing::warn!(
                lease = lease_queue,
                "no longer leader: reconnecting to stand by"
            );
        }
        Err(_) => {}
    }
    term
}
