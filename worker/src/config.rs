//! The worker's settings, from flags or `WARREN_*` environment variables.

use crate::rate_limit::RateLimit;
use crate::retry::RetryPolicy;
use std::time::Duration;
#[cfg(feature = "runtime")]
use warren_common::AmqpArgs;
#[cfg(feature = "runtime")]
use warren_common::LogFormat;
use warren_common::{Amqp, QueueKind, Retention};

#[cfg(feature = "runtime")]
/// Flags of `warren-worker` (each also read from the environment variable shown by `--help`).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "warren-worker",
    version,
    about = "Run Warren tasks from RabbitMQ queues."
)]
pub struct WorkerArgs {
    /// Broker connection.
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Queue to consume; repeat (or separate with commas) for several.
    #[arg(
        long = "queue",
        env = "WARREN_QUEUES",
        value_delimiter = ',',
        default_value = defaults::QUEUE
    )]
    pub queues: Vec<String>,
    /// Type of the queues, when they have to be declared.
    #[arg(long, env = "WARREN_QUEUE_TYPE", value_enum, default_value_t = QueueKind::default())]
    pub queue_type: QueueKind,
    /// Declare the queues as priority queues honouring priorities up to this (1-9); needs
    /// `--queue-type classic` (quorum queues have no priorities).
    #[arg(long, env = "WARREN_MAX_PRIORITY", value_parser = clap::value_parser!(u8).range(1..=9))]
    pub max_priority: Option<u8>,
    /// The task exchange the worker binds its queues to (producers may publish to it).
    #[arg(long, env = "WARREN_EXCHANGE", default_value = warren_common::DEFAULT_EXCHANGE)]
    pub exchange: String,
    /// Handlers running at once, of every kind (default: 64). An async handler waiting on
    /// I/O costs next to nothing while it waits, so this is sized for waiting, not for CPUs;
    /// CPU-bound handlers are held to --cpu-concurrency as well.
    #[arg(long, env = "WARREN_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Handlers registered as CPU-bound (`HandlerOptions::cpu_bound`, e.g. `demo.cpu`)
    /// running at once (default: number of CPUs), so they never oversubscribe the machine.
    #[arg(long, env = "WARREN_CPU_CONCURRENCY")]
    pub cpu_concurrency: Option<usize>,
    /// Deliveries each consumer may hold unacked (default: 8 × concurrency, 512). Higher is
    /// faster for short tasks; lower keeps long tasks from being hoarded by one worker.
    #[arg(long, env = "WARREN_PREFETCH")]
    pub prefetch: Option<u16>,
    /// Identity of this worker in logs and dead-letter headers (default: host-pid).
    #[arg(long, env = "WARREN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Handler timeout, unless the task type or the task sets its own.
    #[arg(long, env = "WARREN_TASK_TIMEOUT", default_value_t = defaults::TASK_TIMEOUT.into())]
    pub task_timeout: humantime::Duration,
    /// The broker's consumer_timeout: a delivery unacked longer closes the channel, so no
    /// task timeout may exceed it.
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT", default_value_t = defaults::CONSUMER_TIMEOUT.into())]
    pub consumer_timeout: humantime::Duration,
    /// Attempts allowed per task, unless the task type or the task sets its own.
    #[arg(long, env = "WARREN_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[arg(long, env = "WARREN_RETRY_INITIAL", default_value_t = RetryPolicy::default().initial.into())]
    pub retry_initial: humantime::Duration,
    /// Factor applied to the delay for each further attempt.
    #[arg(long, env = "WARREN_RETRY_MULTIPLIER", default_value_t = RetryPolicy::default().multiplier)]
    pub retry_multiplier: f64,
    /// Longest delay between attempts.
    #[arg(long, env = "WARREN_RETRY_MAX", default_value_t = RetryPolicy::default().max.into())]
    pub retry_max: humantime::Duration,
    /// Random spread of each delay, as a fraction (0.2 = ±20%).
    #[arg(long, env = "WARREN_RETRY_JITTER", default_value_t = RetryPolicy::default().jitter)]
    pub retry_jitter: f64,
    /// Largest payload accepted; larger ones are dead-lettered unread.
    #[arg(long, env = "WARREN_MAX_PAYLOAD_BYTES", default_value_t = defaults::MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,
    /// Largest result (a handler's return value, as JSON) carried in the succeeded event and
    /// the reply to a caller; a larger one is left out, the event saying so, and the task
    /// still succeeds.
    #[arg(long, env = "WARREN_MAX_RESULT_BYTES", default_value_t = defaults::MAX_RESULT_BYTES)]
    pub max_result_bytes: usize,
    /// Returns of a task running alone (its x-delivery-count in the quorum queue's isolation
    /// queue) after which it is dead-lettered as `crash_loop` instead of run again.
    #[arg(long, env = "WARREN_CRASH_BUDGET", default_value_t = defaults::CRASH_BUDGET)]
    pub crash_budget: u64,
    /// How long a drain waits for running tasks after the first SIGTERM.
    #[arg(long, env = "WARREN_SHUTDOWN_TIMEOUT", default_value_t = defaults::SHUTDOWN_TIMEOUT.into())]
    pub shutdown_timeout: humantime::Duration,
    /// Dead-letter retention of the queues, when they are declared.
    #[command(flatten)]
    pub retention: Retention,
    /// Limit a task type's rate on this worker: TASK=RATE/UNIT or TASK=RATE/UNIT:BURST, e.g.
    /// demo.cpu=50/s (burst defaults to RATE). Repeat for several task types.
    #[arg(long = "rate-limit", env = "WARREN_RATE_LIMITS", value_delimiter = ',')]
    pub rate_limits: Vec<RateLimit>,
    /// How often the broker's view of each queue is polled (ready messages and consumers,
    /// exported as metrics; also the stall watchdog's period).
    #[arg(long, env = "WARREN_POLL_INTERVAL", default_value_t = defaults::POLL_INTERVAL.into())]
    pub poll_interval: humantime::Duration,
    /// Address of the admin HTTP server (/metrics, /healthz, /readyz); port 0 picks one.
    #[arg(long, env = "WARREN_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    pub admin_addr: std::net::SocketAddr,
    /// Log output format.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,
    /// Record what happens to each task (started, succeeded, retrying, dead-lettered) in
    /// this stream (docs/wire-format.md §11), e.g. warren.events; each task is acked only
    /// once its ending is recorded. The stream is declared with 7 days' retention unless it
    /// exists. Off unless given.
    #[arg(long, env = "WARREN_EVENTS_STREAM", value_name = "STREAM")]
    pub events_stream: Option<String>,
    /// Time between two heartbeats on the events stream (with --events-stream).
    #[arg(long, env = "WARREN_HEARTBEAT_INTERVAL", default_value_t = defaults::HEARTBEAT_INTERVAL.into())]
    pub heartbeat_interval: humantime::Duration,
    /// How long finished tasks wait for the events stream to confirm their ending (with
    /// --events-stream) before the worker gives them back to the broker, unacked, and stops
    /// consuming until events can be recorded again.
    #[arg(long, env = "WARREN_EVENTS_TIMEOUT", default_value_t = defaults::EVENTS_TIMEOUT.into())]
    pub events_timeout: humantime::Duration,
    /// Follow this control stream (docs/wire-format.md §13), e.g. warren.control: skip
    /// cancelled tasks, stop cancelled handlers, stop consuming paused queues. Read from its
    /// start before any queue is consumed. Declared with a day's retention unless it
    /// exists. Off unless given.
    #[arg(long, env = "WARREN_CONTROL_STREAM", value_name = "STREAM")]
    pub control_stream: Option<String>,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The flag named has an unusable value.
    #[error("{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The worker's validated settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Where the broker is.
    pub amqp: Amqp,
    /// Queues consumed.
    pub queues: Vec<String>,
    /// Queue type used when declaring.
    pub queue_type: QueueKind,
    /// Declare priority queues with this maximum priority (classic queues only).
    pub max_priority: Option<u8>,
    /// Task exchange.
    pub exchange: String,
    /// Handlers running at once, of every kind.
    pub concurrency: usize,
    /// CPU-bound handlers (`HandlerOptions::cpu_bound`) running at once; each also counts
    /// against `concurrency`.
    pub cpu_concurrency: usize,
    /// Deliveries each consumer may hold.
    pub prefetch: u16,
    /// Identity in logs and headers.
    pub worker_id: String,
    /// Default handler timeout.
    pub task_timeout: Duration,
    /// The broker's consumer timeout.
    pub consumer_timeout: Duration,
    /// Default maximum attempts.
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Largest result carried, as JSON.
    pub max_result_bytes: usize,
    /// Returns of a task running alone tolerated before `crash_loop`.
    pub crash_budget: u64,
    /// Drain timeout.
    pub shutdown_timeout: Duration,
    /// Period of the queue poller and stall watchdog.
    pub poll_interval: Duration,
    /// Per-task-type rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Dead-letter retention used when declaring.
    pub retention: Retention,
    /// The stream task events are recorded in (`None`: none are).
    pub events_stream: Option<String>,
    /// Time between two heartbeats on the events stream.
    pub heartbeat_interval: Duration,
    /// How long finished tasks wait for their events' confirmation.
    pub events_timeout: Duration,
    /// The control stream followed (`None`: none is).
    pub control_stream: Option<String>,
    /// How old the control stream's last snapshot may get before this worker writes one.
    pub control_snapshot_interval: Duration,
}

impl WorkerConfig {
    /// Settings for consuming `queues` with every other value at its default.
    pub fn new(queues: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let concurrency = defaults::concurrency();
        WorkerConfig {
            amqp: Amqp::default(),
            queues: queues.into_iter().map(Into::into).collect(),
            queue_type: QueueKind::default(),
            max_priority: None,
            exchange: warren_common::DEFAULT_EXCHANGE.to_owned(),
            concurrency,
            cpu_concurrency: defaults::cpu_concurrency(),
            prefetch: defaults::prefetch(concurrency),
            worker_id: defaults::worker_id(),
            task_timeout: defaults::TASK_TIMEOUT,
            consumer_timeout: defaults::CONSUMER_TIMEOUT,
            max_attempts: defaults::MAX_ATTEMPTS,
            retry: RetryPolicy::default(),
            max_payload_bytes: defaults::MAX_PAYLOAD_BYTES,
            max_result_bytes: defaults::MAX_RESULT_BYTES,
            crash_budget: defaults::CRASH_BUDGET,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            poll_interval: defaults::POLL_INTERVAL,
            rate_limits: Vec::new(),
            retention: Retention::default(),
            events_stream: None,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            events_timeout: defaults::EVENTS_TIMEOUT,
            control_stream: None,
            control_snapshot_interval: warren_common::control::SNAPSHOT_INTERVAL,
        }
    }

    /// Checks settings that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |flag, problem: String| Err(ConfigError::Invalid { flag, problem });
        if self.queues.is_empty() || self.queues.iter().any(String::is_empty) {
            return invalid("--queue", "give at least one non-empty queue name".into());
        }
        if self.max_priority.is_some() && self.queue_type != QueueKind::Classic {
            return invalid(
                "--max-priority",
                "priority queues must be classic: add --queue-type classic".into(),
            );
        }
        let mut limited = std::collections::HashSet::new();
        if let Some(twice) = self.rate_limits.iter().find(|l| !limited.insert(&l.task)) {
            return invalid(
                "--rate-limit",
                format!("task `{}` is given more than one limit", twice.task),
            );
        }
        if self.poll_interval.is_zero() {
            return invalid("--poll-interval", "must be longer than zero".into());
        }
        if self.concurrency == 0 {
            return invalid("--concurrency", "must be at least 1".into());
        }
        if self.cpu_concurrency == 0 {
            return invalid("--cpu-concurrency", "must be at least 1".into());
        }
        if self.prefetch == 0 {
            return invalid(
                "--prefetch",
                "must be at least 1 (0 would mean unlimited)".into(),
            );
        }
        if self.task_timeout >= self.consumer_timeout {
            return invalid(
                "--task-timeout",
                format!(
                    "{} is not shorter than the broker's consumer timeout ({}); the broker would \
                     close the channel first. Raise consumer_timeout in rabbitmq.conf and pass \
                     it with --consumer-timeout",
                    humantime::format_duration(self.task_timeout),
                    humantime::format_duration(self.consumer_timeout)
                ),
            );
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            return invalid(
                "--retry-multiplier",
                "must be a number of at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return invalid("--retry-jitter", "must be between 0 and 1".into());
        }
        Ok(())
    }
}

#[cfg(feature = "runtime")]
impl TryFrom<&WorkerArgs> for WorkerConfig {
    type Error = ConfigError;

    fn try_from(args: &WorkerArgs) -> Result<Self, ConfigError> {
        let concurrency = args.concurrency.unwrap_or_else(defaults::concurrency);
        let config = WorkerConfig {
            amqp: args.amqp.resolve().map_err(|e| ConfigError::Invalid {
                flag: e.flag,
                problem: e.problem,
            })?,
            queues: args.queues.clone(),
            queue_type: args.queue_type,
            max_priority: args.max_priority,
            exchange: args.exchange.clone(),
            concurrency,
            cpu_concurrency: args
                .cpu_concurrency
                .unwrap_or_else(defaults::cpu_concurrency),
            prefetch: args
                .prefetch
                .unwrap_or_else(|| defaults::prefetch(concurrency)),
            worker_id: args.worker_id.clone().unwrap_or_else(defaults::worker_id),
            task_timeout: args.task_timeout.into(),
            consumer_timeout: args.consumer_timeout.into(),
            max_attempts: args.max_attempts,
            retry: RetryPolicy {
                initial: args.retry_initial.into(),
                multiplier: args.retry_multiplier,
                max: args.retry_max.into(),
                jitter: args.retry_jitter,
            },
            max_payload_bytes: args.max_payload_bytes,
            max_result_bytes: args.max_result_bytes,
            crash_budget: args.crash_budget,
            shutdown_timeout: args.shutdown_timeout.into(),
            poll_interval: args.poll_interval.into(),
            rate_limits: args.rate_limits.clone(),
            retention: args.retention,
            events_stream: args.events_stream.clone(),
            heartbeat_interval: args.heartbeat_interval.into(),
            events_timeout: args.events_timeout.into(),
            control_stream: args.control_stream.clone(),
            control_snapshot_interval: warren_common::control::SNAPSHOT_INTERVAL,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The worker's defaults, in one place: [`WorkerConfig::new`] and `warren-worker`'s flags
/// both take them from here.
pub mod defaults {
    use std::time::Duration;

    /// Time between two heartbeats.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

    /// How long finished tasks wait for the events stream: longer than a stream leader's
    /// election (a few seconds), far shorter than the broker's consumer timeout.
    pub const EVENTS_TIMEOUT: Duration = Duration::from_secs(30);

    /// The queue consumed when none is named.
    pub const QUEUE: &str = "default";
    /// Handler timeout, unless the task type or the task sets its own.
    pub const TASK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// RabbitMQ's default `consumer_timeout`.
    pub const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// Attempts per task, unless the task type or the task sets its own.
    pub const MAX_ATTEMPTS: u32 = 5;
    /// Largest payload accepted.
    pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
    /// Largest result carried, as JSON: 64 KiB. Results travel in the events stream, which
    /// keeps them for its retention, and a reply; bulky output belongs in storage of its
    /// own, with the result naming where.
    pub const MAX_RESULT_BYTES: usize = 64 * 1024;
    /// Returns of a task running alone tolerated before it is dead-lettered as `crash_loop`.
    pub const CRASH_BUDGET: u64 = 5;
    /// How long a drain waits for running tasks.
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Period of the queue poller and the stall watchdog.
    pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
    /// The admin server's address.
    pub const ADMIN_ADDR: &str = "0.0.0.0:9090";

    /// Handlers running at once, of every kind: 64. Most handlers wait on I/O (a database,
    /// an HTTP service, a timer), and a waiting async handler costs a few hundred bytes and
    /// no CPU, so the default is sized for waiting: 2,000 tasks sleeping 10 ms drain in
    /// ~0.35 s at 64 where the number of CPUs (2) took ~11 s. CPU-bound handlers are held to
    /// [`cpu_concurrency`] besides (docs/performance.md, "Defaults").
    pub const CONCURRENCY: usize = 64;

    /// Handlers running at once: [`CONCURRENCY`].
    pub fn concurrency() -> usize {
        CONCURRENCY
    }

    /// CPU-bound handlers running at once: the number of CPUs, so that they never
    /// oversubscribe the machine whatever the concurrency of the async ones.
    pub fn cpu_concurrency() -> usize {
        num_cpus::get().max(1)
    }

    /// Deliveries each consumer may hold: 8 × concurrency (512 by default). Short tasks need
    /// a window well above the concurrency, or the broker waits for acks before it sends
    /// more (W1 drained ~0.7× as fast at a prefetch of 250 as at 1,000).
    pub fn prefetch(concurrency: usize) -> u16 {
        u16::try_from(concurrency.saturating_mul(8)).unwrap_or(u16::MAX)
    }

    /// `host-pid`.
    pub fn worker_id() -> String {
        let host = hostname().unwrap_or_else(|| "worker".to_owned());
        format!("{host}-{}", std::process::id())
    }

    /// The machine's host name, if it has one.
    pub(crate) fn hostname() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_handlers_get_a_wide_default_and_cpu_bound_ones_the_cpus() {
        let config = WorkerConfig::new(["q"]);
        assert_eq!(config.concurrency, 64);
        assert_eq!(config.cpu_concurrency, num_cpus::get());
        assert_eq!(config.prefetch, 512);
        assert_eq!(defaults::prefetch(2), 16);
        assert_eq!(defaults::prefetch(100_000), u16::MAX);
        config.validate().expect("the defaults are valid");
    }

    #[test]
    fn a_cpu_concurrency_of_zero_is_refused() {
        let mut config = WorkerConfig::new(["q"]);
        config.cpu_concurrency = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("--cpu-concurrency"), "{error}");
    }
}
