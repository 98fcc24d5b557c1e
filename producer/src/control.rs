//! Writing to the control stream (docs/wire-format.md §13): cancelling a task, pausing and
//! resuming a queue. One implementation under the Rust API, the CLI and the HTTP ingest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warren_common::control::{
    declare_control_stream, send_record, Cancel, Record, DEFAULT_CANCEL_HORIZON,
};
use warren_common::{inspect_queue, PublishError, Publisher, TopologyError};

pub use warren_common::control::DEFAULT_CONTROL_STREAM;

/// A control record that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The task id is empty.
    #[error("the task id is empty")]
    EmptyId,
    /// The queue does not exist (nothing consumes a queue never declared).
    #[error("queue `{0}` does not exist")]
    UnknownQueue(String),
    /// The broker could not declare the control stream or check the queue.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The record was not confirmed: it may or may not be on the stream; sending it again
    /// is harmless.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Writes cancellations, pauses and resumes to a control stream through a [`Publisher`], each
/// confirmed by the broker before it returns. Workers following the stream (`--control-stream`)
/// act on them.
///
/// ```no_run
/// # async fn run(publisher: warren_producer::Publisher) -> Result<(), warren_producer::ControlError> {
/// let control = warren_producer::Control::new(publisher, warren_producer::DEFAULT_CONTROL_STREAM);
/// control.pause("emails").await?;
/// control.cancel("0190a5b4-2f1c-7c3e-9d6a-3b2f1e0c4d5a").await?;
/// control.resume("emails").await?;
/// # Ok(()) }
/// ```
pub struct Control {
    publisher: Publisher,
    stream: String,
    horizon: Duration,
    declared: AtomicBool,
}

impl Control {
    /// Writes to `stream` (declared on first use, with Warren's retention) through
    /// `publisher`.
    pub fn new(publisher: Publisher, stream: impl Into<String>) -> Self {
        Control {
            publisher,
            stream: stream.into(),
            horizon: DEFAULT_CANCEL_HORIZON,
            declared: AtomicBool::new(false),
        }
    }

    /// How long a cancellation stays in force (default: 7 days); past it, workers forget it.
    pub fn with_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// The stream written to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Cancels task `id`: workers do not run it (acking it, recording `cancelled`) and stop
    /// its handler if it runs; runs created after now (a republish) are not affected.
    /// Returns the record written.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, ControlError> {
        if id.trim().is_empty() {
            return Err(ControlError::EmptyId);
        }
        let cancel = Cancel::new(id, self.horizon);
        self.send(&Record::Cancel(cancel.clone())).await?;
        Ok(cancel)
    }

    /// Pauses `queue`: every worker following the stream stops consuming it until resumed
    /// (running tasks finish; prefetched ones go back to the queue).
    pub async fn pause(&self, queue: &str) -> Result<(), ControlError> {
        self.check_queue(queue).await?;
        self.send(&Record::pause(queue)).await
    }

    /// Resumes `queue`.
    pub async fn resume(&self, queue: &str) -> Result<(), ControlError> {
        self.check_queue(queue).await?;
        self.send(&Record::resume(queue)).await
    }

    async fn check_queue(&self, queue: &str) -> Result<(), ControlError> {
        if queue.is_empty() {
            return Err(ControlError::UnknownQueue(queue.to_owned()));
        }
        let channel = self.publisher.create_channel().await?;
        let inspected = inspect_queue(&channel, queue).await;
        let _ = channel.close(200, "checked".into()).await;
        match inspected {
            Ok(_) => Ok(()),
            Err(TopologyError::NotFound(_)) => Err(ControlError::UnknownQueue(queue.to_owned())),
            Err(error) => Err(error.into()),
        }
    }

    async fn send(&self, record: &Record) -> Result<(), ControlError> {
        if !self.declared.load(Ordering::Acquire) {
            let channel = self.publisher.create_channel().await?;
            let declared = declare_control_stream(&channel, &self.stream).await;
            let _ = channel.close(200, "declared".into()).await;
            declared?;
            self.declared.store(true, Ordering::Release);
        }
        send_record(&self.publisher, &self.stream, record).await?;
        tracing::info!(stream = %self.stream, record = record.kind(), "control record written");
        Ok(())
    }
}
