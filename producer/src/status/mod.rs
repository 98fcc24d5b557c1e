//! The task status index of `warren-producer serve --index`: it follows the events stream
//! (docs/wire-format.md §11) into an SQLite file and answers what became of each task, by id
//! or in filtered listings (`GET /v1/tasks/{id}`, `GET /v1/tasks`).
//!
//! One writer, the [`follow`] task, applies the stream's batches under the merge rule of
//! §11.6 ([`merge`]), in transactions that also store the stream offset they reach
//! ([`store`]), so the file always holds the stream up to that offset and a restart resumes
//! there. The HTTP handlers read through their own read-only connections ([`query`]). Each
//! replica of `serve` keeps its own file: answers are eventually consistent, and a status
//! just recorded may not be in another replica's index yet.
//!
//! The answers' types ([`api`]) and, with the `status-client` feature, a Rust client of the
//! API ([`StatusClient`]) need neither SQLite nor the server: the `status` feature adds those.

pub mod api;
mod apply;
#[cfg(feature = "status-client")]
mod client;
#[cfg(feature = "status")]
pub(crate) mod dead_letters;
#[cfg(feature = "status")]
mod follow;
#[cfg(feature = "status")]
pub(crate) mod history;
mod merge;
#[cfg(feature = "status")]
mod metrics;
#[cfg(feature = "status")]
pub(crate) mod query;
#[cfg(feature = "status")]
pub(crate) mod queues;
#[cfg(feature = "status")]
mod seed;
#[cfg(feature = "status")]
pub(crate) mod store;
#[cfg(feature = "status")]
pub(crate) mod throughput;
#[cfg(feature = "status-client")]
pub(crate) mod transport;
#[cfg(feature = "status")]
pub(crate) mod workers;

pub use api::{
    IndexState, Liveness, TaskError, TaskList, TaskStatus, TaskTimeline, TimelineEvent, Timestamp,
    Worker, WorkerList,
};
#[cfg(feature = "status-client")]
pub use client::{ClientError, StatusClient, TaskQuery, DEFAULT_REQUEST_TIMEOUT};
pub use merge::State;
#[cfg(feature = "status")]
pub use seed::{seed_index, Seed, SEED_REASON_KINDS};
#[cfg(feature = "status")]
pub use store::IndexError;

#[cfg(feature = "status")]
use {
    crate::defaults::index as defaults,
    follow::Follower,
    metrics::IndexMetrics,
    query::Readers,
    std::path::PathBuf,
    std::sync::{Arc, Mutex},
    std::time::Duration,
    store::Store,
    tokio::task::JoinHandle,
    tokio_util::sync::CancellationToken,
    warren_common::Amqp,
};

#[cfg(feature = "status")]
/// Settings of the status index.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// The events stream to follow (declared with Warren's retention if missing).
    pub stream: String,
    /// The SQLite file, created if missing. One per replica: never share it.
    pub path: PathBuf,
    /// How long an ended task (succeeded, dead-lettered, expired) stays in the index.
    pub retention: Duration,
}

#[cfg(feature = "status")]
impl IndexConfig {
    /// An index of `stream` in the file at `path`, keeping ended tasks for the default
    /// retention ([`crate::defaults::index::RETENTION`]).
    pub fn new(stream: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        IndexConfig {
            stream: stream.into(),
            path: path.into(),
            retention: defaults::RETENTION,
        }
    }
}

#[cfg(feature = "status")]
/// A running index: its readers, and the task following the stream.
pub(crate) struct StatusIndex {
    pub(crate) readers: Arc<Readers>,
    follower: JoinHandle<()>,
}

#[cfg(feature = "status")]
impl StatusIndex {
    /// Opens the index file and starts following the stream (connecting with `amqp`) until
    /// `stop` fires. Metrics go to `registry`.
    pub(crate) fn start(
        config: &IndexConfig,
        amqp: Amqp,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> Result<StatusIndex, IndexError> {
        let mut store = Store::open(&config.path, &config.stream)?;
        store.resume_workers(warren_common::now_ms())?;
        let metrics = IndexMetrics::new(registry).map_err(IndexError::Metrics)?;
        restore_metrics(&store, &metrics)?;
        let readers = Readers::new(&config.path);
        let follower = Follower {
            readers: readers.clone(),
            amqp,
            stream: config.stream.clone(),
            store: Arc::new(Mutex::new(store)),
            metrics,
            retention: config.retention,
        };
        tracing::info!(stream = %config.stream, path = %config.path.display(), "status index open");
        Ok(StatusIndex {
            readers,
            follower: tokio::spawn(follower.run(stop)),
        })
    }

    /// Waits for the follower to commit what it read and stop (once `stop` has fired).
    pub(crate) async fn stopped(self) {
        let _ = self.follower.await;
    }
}

#[cfg(feature = "status")]
/// Sets the metrics that describe the file from what it holds.
fn restore_metrics(store: &Store, metrics: &IndexMetrics) -> rusqlite::Result<()> {
    let conn = store.connection();
    let mut counts = conn.prepare("SELECT queue, state, tasks FROM counts")?;
    let mut rows = counts.query([])?;
    while let Some(row) = rows.next()? {
        let queue: String = row.get(0)?;
        let state = store::state_column(row, 1)?;
        metrics.set_count(&queue, state, row.get(2)?);
    }
    let gaps: i64 = conn.query_row("SELECT count(*) FROM gaps", [], |r| r.get(0))?;
    metrics.incomplete(gaps > 0);
    metrics.workers(workers::count(conn)?);
    let progress = store.progress();
    if let Some(last) = &progress.last {
        metrics.committed(&Default::default(), 0, 0, last.offset);
    }
    metrics.last_event(progress.last_event_at_ms);
    Ok(())
}

#[cfg(feature = "status")]
#[cfg(test)]
mod tests;
