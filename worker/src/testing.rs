//! Unit-testing handlers without a broker: run a registered handler on a task and see what a
//! worker would do with it.
//!
//! The task goes through everything a delivery goes through in a worker (the envelope the
//! publisher would write, the payload limit, expiry, the handler lookup, decoding, the
//! timeout, panics, the attempt budget and the retry backoff); only the broker is left out.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use warren_worker::testing::perform;
//! use warren_worker::{Outcome, Registry, Task, TaskContext, TaskError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize {
//!     width: u32,
//! }
//!
//! impl Task for Resize {
//!     const NAME: &'static str = "images.resize";
//! }
//!
//! async fn resize(_: TaskContext, task: Resize) -> Result<(), TaskError> {
//!     if task.width == 0 {
//!         return Err(TaskError::permanent("width must not be 0"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut registry = Registry::new();
//! registry.handle(resize);
//! assert_eq!(perform(&registry, &Resize { width: 640 }).await, Outcome::Ack);
//! assert!(matches!(
//!     perform(&registry, &Resize { width: 0 }).await,
//!     Outcome::DeadLetter(failure) if failure.reason == "width must not be 0"
//! ));
//! # }
//! ```
//!
//! A handler's result is what [`call`] returns, as a caller of `Publisher::call` would get it.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use warren_worker::testing::call;
//! use warren_worker::{Registry, Task, TaskContext, TaskError};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add {
//!     a: u64,
//!     b: u64,
//! }
//!
//! impl Task for Add {
//!     const NAME: &'static str = "math.add";
//! }
//!
//! async fn add(_: TaskContext, task: Add) -> Result<u64, TaskError> {
//!     Ok(task.a + task.b)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut registry = Registry::new();
//! registry.handle(add);
//! let sum: u64 = call(&registry, &Add { a: 2, b: 3 }).await.unwrap();
//! assert_eq!(sum, 5);
//! # }
//! ```

use crate::consume::execute::{self, Arrival, Ran};
use crate::consume::isolation::Mode;
use crate::outcome::{Failure, Outcome, ReasonKind};
use crate::{Registry, Worker, WorkerConfig};
use lapin::BasicProperties;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use warren_common::{Envelope, Task, TaskOptions};

/// The queue a tested task is taken to come from ([`TaskContext::queue`](crate::TaskContext)).
pub const TEST_QUEUE: &str = "test";

/// Runs `task` once through `registry` as a worker with default settings would, as its
/// first attempt, and returns what the worker would do: [`Outcome::Ack`] when it succeeded,
/// [`Outcome::Retry`] with the delay and the failure (a timeout or a panic among them), or
/// [`Outcome::DeadLetter`] with the kind and reason.
pub async fn perform<T: Task>(registry: &Registry, task: &T) -> Outcome {
    Perform::new(registry).task(task).await
}

/// Runs `task` once like [`perform`], and returns its handler's result, or, when it did not
/// succeed, what the worker would do instead.
///
/// # Panics
/// If the handler's result does not decode as `R`: the test asks for the wrong type.
pub async fn call<T: Task, R: DeserializeOwned>(
    registry: &Registry,
    task: &T,
) -> Result<R, Outcome> {
    Perform::new(registry).call(task).await
}

/// A handler run with settings of its own: the attempt number, the publish options, the
/// worker's configuration.
pub struct Perform<'r> {
    registry: &'r Registry,
    config: WorkerConfig,
    options: TaskOptions,
    attempt: u32,
    redelivered: bool,
}

impl<'r> Perform<'r> {
    /// A first attempt with default options and worker settings.
    pub fn new(registry: &'r Registry) -> Self {
        Perform {
            registry,
            config: WorkerConfig::new([TEST_QUEUE]),
            options: TaskOptions::new(),
            attempt: 1,
            redelivered: false,
        }
    }

    /// Run as attempt `attempt` (1-based): the last allowed attempt dead-letters a failure
    /// instead of retrying it.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Publish options the task carries (codec, attempts, timeout, expiry, ...).
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// The worker's settings (timeouts, attempts, backoff, payload limit). Its queues are
    /// replaced by [`TEST_QUEUE`].
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = WorkerConfig {
            queues: vec![TEST_QUEUE.to_owned()],
            ..config
        };
        self
    }

    /// Mark the delivery as redelivered by the broker.
    pub fn redelivered(mut self) -> Self {
        self.redelivered = true;
        self
    }

    /// Runs the typed `task` under its [`Task::NAME`].
    pub async fn task<T: Task>(self, task: &T) -> Outcome {
        self.named(T::NAME, task).await
    }

    /// Runs the typed `task` and returns its handler's result (see [`call`]).
    ///
    /// # Panics
    /// If the handler's result does not decode as `R`.
    pub async fn call<T: Task, R: DeserializeOwned>(self, task: &T) -> Result<R, Outcome> {
        match self.run_named(T::NAME, task).await {
            (Outcome::Ack, Some(output)) => Ok(output.decode().unwrap_or_else(|error| {
                panic!(
                    "the result of `{}` does not decode as asked: {error}",
                    T::NAME
                )
            })),
            (outcome, _) => Err(outcome),
        }
    }

    /// Runs the task named `name` with `payload`, as a producer in any language could send it.
    pub async fn named<P: Serialize + ?Sized>(self, name: &str, payload: &P) -> Outcome {
        self.run_named(name, payload).await.0
    }

    async fn run_named<P: Serialize + ?Sized>(self, name: &str, payload: &P) -> Ran {
        let (mut envelope, body) = match self.options.prepare(name, payload) {
            Ok(prepared) => prepared,
            Err(error) => {
                let failure = Failure::new(ReasonKind::InvalidMessage, error);
                return (Outcome::DeadLetter(failure), None);
            }
        };
        envelope.attempt = self.attempt;
        let properties = envelope.to_properties();
        self.run_raw(&properties, &body).await
    }

    /// Runs a message given as its AMQP properties and body, e.g. one a producer in another
    /// language wrote.
    pub async fn raw(self, properties: &BasicProperties, body: &[u8]) -> Outcome {
        self.run_raw(properties, body).await.0
    }

    async fn run_raw(self, properties: &BasicProperties, body: &[u8]) -> Ran {
        let prometheus = prometheus::Registry::new();
        let worker = match Worker::new(self.registry.clone(), self.config, &prometheus) {
            Ok(worker) => worker,
            Err(error) => {
                let failure = Failure::new(ReasonKind::InvalidMessage, error);
                return (Outcome::DeadLetter(failure), None);
            }
        };
        let shared = &*worker.shared;
        let queue: Arc<str> = Arc::from(TEST_QUEUE);
        let envelope = Envelope::from_properties(properties);
        let task = envelope.as_ref().map_or("", |e| e.task.as_str()).to_owned();
        let metrics = shared.queue_metrics[TEST_QUEUE].task(&task);
        let arrival = Arrival {
            data: body,
            properties,
            redelivered: self.redelivered,
        };
        execute::run(shared, &queue, arrival, envelope, metrics, Mode::Shared).await
    }
}
