//! The task registry: task names mapped to typed async handlers. A handler receives its
//! payload already decoded into its own type, plus a [`TaskContext`]; its error type says
//! whether the task may be retried, and what it returns on success (any `Serialize` value,
//! or `()`) is the task's result.

use crate::outcome::{Failure, ReasonKind};
use crate::output::Output;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use warren_common::{Codec, CodecError, Task, TaskId};

/// What a handler knows about the task it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The task id: the same on every attempt and on a republish with the same id, so a
    /// handler can deduplicate with it.
    pub id: TaskId,
    /// The task name.
    pub task: String,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The queue the task came from.
    pub queue: Arc<str>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// Creation time, milliseconds since the epoch: `x-warren-created-ms`, or the time in a
    /// UUIDv7 task id; `None` if the message carries neither.
    pub created_ms: Option<u64>,
    /// Whether the broker delivered this attempt before (a worker died or returned it).
    pub redelivered: bool,
    /// The publisher's W3C `traceparent`, to propagate to work the handler starts.
    pub traceparent: Option<String>,
    /// Whether the task was cancelled (docs/wire-format.md §13): an async handler is stopped
    /// at its next await anyway; code that blocks polls it.
    pub cancellation: crate::Cancellation,
}

/// A failed task. Plain errors converted with `?` are retryable; wrap an error in
/// [`Permanent`] (or call [`TaskError::permanent`]) when another attempt cannot succeed.
///
/// Deliberately not a `std::error::Error`, so that every error type converts into it.
#[derive(Debug)]
pub struct TaskError {
    permanent: bool,
    message: String,
    retry_after: Option<Duration>,
}

impl TaskError {
    /// A failure worth retrying.
    pub fn retryable(message: impl fmt::Display) -> Self {
        TaskError {
            permanent: false,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// A failure no retry can fix: the task goes to the dead letters at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        TaskError {
            permanent: true,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// Run the next attempt after `delay` instead of the worker's backoff, e.g. when a service
    /// answered "429, retry after 30 s": `TaskError::retryable(e).retry_after(d)`. The attempt
    /// still counts against the task's attempts; the delay is rounded up to whole seconds and
    /// capped at the delay cascade's longest (about 8.5 years). A permanent error ignores it.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The delay asked for with [`retry_after`](Self::retry_after).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the task goes to the dead letters without a retry.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    pub(crate) fn into_failure(self) -> Failure {
        let kind = if self.permanent {
            ReasonKind::Permanent
        } else {
            ReasonKind::Error
        };
        Failure::new(kind, self.message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(error: E) -> Self {
        TaskError::retryable(error)
    }
}

/// Marks an error as permanent: `return Err(Permanent(e).into())` or `Err(Permanent(e))?`.
#[derive(Debug)]
pub struct Permanent<E>(pub E);

impl<E: fmt::Display> From<Permanent<E>> for TaskError {
    fn from(Permanent(error): Permanent<E>) -> Self {
        TaskError::permanent(error)
    }
}

/// A payload not yet decoded, for handlers that decode it themselves, e.g. to pick a type by
/// [`TaskContext::schema_version`] (bincode is not self-describing).
#[derive(Clone, Debug)]
pub struct Payload {
    /// The codec named by the message's content type.
    pub codec: Codec,
    /// The encoded bytes.
    pub bytes: Vec<u8>,
}

impl Payload {
    /// Decodes the payload as `T`. An error here is permanent: the message will not decode
    /// on another attempt either.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        self.codec.decode(&self.bytes).map_err(TaskError::permanent)
    }
}

/// Per-task-type settings that override the worker's.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandlerOptions {
    /// Handler timeout for this task type.
    pub timeout: Option<Duration>,
    /// Maximum attempts for this task type.
    pub max_attempts: Option<u32>,
    /// Run each task of this type as a tokio task of its own, so that handlers which compute
    /// between their awaits run in parallel on every core. By default a handler runs inside
    /// its queue's consume loop, which costs less per task: there a handler must not block
    /// or compute for long (hand such work to `tokio::task::spawn_blocking`, or set this).
    pub spawn: bool,
    /// The handler's work is CPU-bound (it computes, or awaits `spawn_blocking` work): at
    /// most `--cpu-concurrency` tasks of such types run at once (default: the number of
    /// CPUs), beside async handlers running up to `--concurrency`. A task waiting for its
    /// turn holds a prefetch slot but no concurrency permit, so other task types keep running.
    pub cpu_bound: bool,
}

pub(crate) type HandlerResult = Result<Output, TaskError>;
type ErasedHandler = dyn Fn(TaskContext, Codec, &[u8]) -> Result<BoxFuture<'static, HandlerResult>, CodecError>
    + Send
    + Sync;

/// A registered handler with its options.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) options: HandlerOptions,
    handler: Arc<ErasedHandler>,
}

impl Entry {
    /// Decodes the payload and returns the handler's future, or the decoding error.
    pub(crate) fn start(
        &self,
        ctx: TaskContext,
        codec: Codec,
        body: &[u8],
    ) -> Result<BoxFuture<'static, HandlerResult>, CodecError> {
        (self.handler)(ctx, codec, body)
    }
}

/// Task names mapped to handlers.
#[derive(Clone, Default)]
pub struct Registry {
    /// Looked up once per delivery: a fast hash (task names come from producers, but a
    /// worker only holds the names it registered).
    entries: HashMap<String, Entry, foldhash::fast::RandomState>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for tasks named `name`; its payload type `T` is decoded from JSON
    /// or bincode as the message says. Replaces an earlier handler of the same name.
    pub fn register<T, F, Fut, R, E>(&mut self, name: &str, handler: F) -> &mut Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        self.register_with(name, HandlerOptions::default(), handler)
    }

    /// Registers `handler` for the typed task `T` under its [`Task::NAME`]:
    /// `registry.handle(resize)` for `async fn resize(ctx: TaskContext, task: Resize)`.
    pub fn handle<T, F, Fut, R, E>(&mut self, handler: F) -> &mut Self
    where
        T: Task,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        self.register_with(T::NAME, HandlerOptions::default(), handler)
    }

    /// Like [`handle`](Self::handle), with a timeout or attempt limit of its own.
    pub fn handle_with<T, F, Fut, R, E>(&mut self, options: HandlerOptions, handler: F) -> &mut Self
    where
        T: Task,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        self.register_with(T::NAME, options, handler)
    }

    /// Like [`register`](Self::register), with a timeout or attempt limit of its own.
    pub fn register_with<T, F, Fut, R, E>(
        &mut self,
        name: &str,
        options: HandlerOptions,
        handler: F,
    ) -> &mut Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        let erased = move |ctx: TaskContext, codec: Codec, body: &[u8]| {
            let payload: T = codec.decode(body)?;
            let fut = handler(ctx, payload);
            Ok(async move { fut.await.map(Output::new).map_err(Into::into) }.boxed())
        };
        let entry = Entry {
            options,
            handler: Arc::new(erased),
        };
        self.entries.insert(name.to_owned(), entry);
        self
    }

    /// Registers a handler that receives the payload undecoded, as a [`Payload`].
    pub fn register_raw<F, Fut, R, E>(
        &mut self,
        name: &str,
        options: HandlerOptions,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(TaskContext, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        let erased = move |ctx: TaskContext, codec: Codec, body: &[u8]| {
            let fut = handler(
                ctx,
                Payload {
                    codec,
                    bytes: body.to_vec(),
                },
            );
            Ok(async move { fut.await.map(Output::new).map_err(Into::into) }.boxed())
        };
        let entry = Entry {
            options,
            handler: Arc::new(erased),
        };
        self.entries.insert(name.to_owned(), entry);
        self
    }

    /// The registered task names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Oops;
    impl fmt::Display for Oops {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("oops")
        }
    }
    impl std::error::Error for Oops {}

    #[test]
    fn plain_errors_are_retryable_and_permanent_ones_are_not() {
        let plain: TaskError = Oops.into();
        assert!(!plain.is_permanent());
        let permanent: TaskError = Permanent(Oops).into();
        assert!(permanent.is_permanent());
        assert_eq!(permanent.into_failure().kind, ReasonKind::Permanent);
    }
}
