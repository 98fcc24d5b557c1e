//! Publishing Warren tasks: a [`Publisher`] that returns a task's id only once the broker has
//! confirmed it, pipelines confirms when many tasks are in flight, and turns nacks, unroutable
//! messages and lost connections into errors. Also the `warren-producer` command line.

pub mod cli;
mod dead_letters;
mod error;
mod http;
mod link;
mod metrics;
mod publisher;
pub mod scheduler;

pub use dead_letters::{
    DeadLetter, DeadLetterError, DeadLetterQueue, Filter, Listing, Selection, BROKER_KIND_PREFIX,
};
pub use error::PublishError;
#[doc(hidden)]
pub use http::read_task_body;
pub use http::{
    serve_ingest, BearerToken, ConnectionLimits, IngestConfig, IngestError,
    DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
};
pub use metrics::ProducerMetrics;
pub use publisher::{Publisher, PublisherConfig, TaskOptions, DEFAULT_CONFIRM_TIMEOUT};
pub use warren_common::{Codec, QueueKind, QueueSpec, TaskId};
