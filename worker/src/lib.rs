//! Warren's worker pool: register typed handlers in a [`Registry`], then [`Worker::run`]
//! consumes the configured queues with manual acks and a prefetch limit, runs handlers
//! concurrently, and routes each result (ack, retry through the broker's delay cascade, or
//! dead letter with its reason). A delivery's path, from arrival to ack, is laid out file by
//! file in `src/consume/` (its `mod.rs` lists them in order).

mod config;
mod consume;
mod control;
mod heartbeat;
mod metrics;
mod outcome;
mod output;
mod pool;
mod rate_limit;
mod registry;
mod retry;
#[cfg(feature = "runtime")]
mod runtime;
pub mod testing;

#[cfg(feature = "runtime")]
pub use config::WorkerArgs;
pub use config::{defaults, ConfigError, WorkerConfig};
pub use control::Cancellation;
pub use metrics::{Totals, WorkerMetrics, UNKNOWN_TASK_LABEL};
pub use outcome::{Failure, Outcome, ReasonKind};
pub use pool::{DrainReport, Worker, WorkerError};
pub use rate_limit::RateLimit;
pub use registry::{HandlerOptions, Payload, Permanent, Registry, TaskContext, TaskError};
pub use retry::RetryPolicy;
#[cfg(feature = "runtime")]
pub use runtime::{run, run_with};
pub use warren_common::Task;

use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// What every consumer and task of a worker shares.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) config: WorkerConfig,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) queue_metrics: HashMap<String, metrics::QueueMetrics>,
    pub(crate) permits: Arc<Semaphore>,
    /// Permits of CPU-bound handlers (`HandlerOptions::cpu_bound`), taken besides one of
    /// `permits`; `None` when no handler is CPU-bound (no lookup per delivery then).
    pub(crate) cpu_permits: Option<Semaphore>,
    pub(crate) rate_limits: rate_limit::RateLimits,
    pub(crate) tasks: TaskTracker,
    pub(crate) topology: warren_common::Topology,
    /// The control stream's state (cancellations, pauses), if the worker follows one.
    pub(crate) control: Option<Arc<control::Control>>,
    /// Where task events are recorded, if they are.
    pub(crate) events: Option<warren_common::events::EventLog>,
    /// The tasks running that recorded `started`, for the heartbeats.
    pub(crate) running: heartbeat::Running,
    /// When the worker started, by its clock.
    pub(crate) started_at_ms: u64,
}
