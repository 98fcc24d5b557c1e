//! Publishing Warren tasks: a [`Publisher`] that returns a task's id only once the broker has
//! confirmed it, pipelines confirms when many tasks are in flight, and turns nacks, unroutable
//! messages and lost connections into errors.

mod control;
mod dead_letters;
#[cfg(any(feature = "http", feature = "scheduler"))]
pub mod defaults;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "scheduler")]
pub mod scheduler;
#[cfg(any(feature = "status", feature = "status-client"))]
pub mod status;

pub use control::{Control, ControlError, DEFAULT_CONTROL_STREAM};
pub use dead_letters::{
    DeadLetter, DeadLetterError, DeadLetterQueue, Filter, Listing, PassProgress, Selection,
    BROKER_DEAD_LETTER_DELIVERY_COUNT, BROKER_KIND_PREFIX,
};
#[cfg(feature = "http")]
#[doc(hidden)]
pub use http::read_task_body;
#[cfg(feature = "http")]
pub use http::{serve_ingest, BearerToken, ConnectionLimits, IngestConfig, IngestError};
#[cfg(feature = "console")]
pub use http::{ConsoleConfig, ManagementUrl};
pub use warren_common::reply::{Reply, ReplyStatus};
pub use warren_common::{
    CallError, Codec, ProducerMetrics, PublishError, Publisher, PublisherConfig, QueueKind,
    QueueSpec, Task, TaskId, TaskOptions, DEFAULT_CONFIRM_TIMEOUT,
};
