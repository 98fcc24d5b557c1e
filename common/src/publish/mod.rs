//! Publishing with confirms, for producers and workers alike: a [`Publisher`] returns a task's
//! id only once the broker has confirmed it, pipelines confirms when many tasks are in flight,
//! reconnects when its link is lost, and turns nacks, unroutable messages and lost
//! connections into errors.

mod call;
mod error;
mod link;
mod metrics;
mod options;
mod publisher;

pub use call::{CallError, DIRECT_REPLY_TO};
pub use error::PublishError;
pub use metrics::ProducerMetrics;
pub use options::TaskOptions;
pub use publisher::{Publisher, PublisherConfig, DEFAULT_CONFIRM_TIMEOUT};
