//! Replays and purges started from the console run in the background, one at a time per
//! queue: each is one pass over the dead-letter queue (the CLI's own operation,
//! [`crate::DeadLetterQueue`]), and two passes over the same queue at once would interleave
//! what they put back and replay some dead letters twice. A page shows the queue's job and its
//! progress; its outcome stays until the next job on that queue.
//!
//! This module also keeps the messages that say what an action did ("replayed 12 dead
//! letters"), shown once on the page the action redirects to.

use crate::{DeadLetterError, PassProgress};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an action's message waits to be shown.
const FLASH_LIFETIME: Duration = Duration::from_secs(300);

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    Replay,
    Purge,
}

impl JobKind {
    fn past(self) -> &'static str {
        match self {
            JobKind::Replay => "replayed",
            JobKind::Purge => "purged",
        }
    }
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JobState {
    Running,
    Done(String),
    Failed(String),
}

/// A job as a page shows it.
#[derive(Clone, Debug)]
pub(crate) struct JobView {
    pub(crate) kind: JobKind,
    /// What it acts on ("3 selected dead letters").
    pub(crate) what: String,
    pub(crate) started_ms: u64,
    pub(crate) state: JobState,
    /// Dead letters gone through, of those in the queue when its pass started.
    pub(crate) done: u64,
    pub(crate) total: u64,
}

struct Job {
    kind: JobKind,
    what: String,
    started_ms: u64,
    state: JobState,
    progress: PassProgress,
}

/// The jobs, by queue, and the messages waiting to be shown.
#[derive(Default)]
pub(crate) struct Jobs {
    by_queue: Mutex<HashMap<String, Job>>,
    flashes: Mutex<HashMap<String, (String, Instant)>>,
}

impl Jobs {
    /// Starts `kind` on `queue`, running `run` (which reports into the progress it is given
    /// and returns how many dead letters it acted on); refused while another job runs on the
    /// queue.
    pub(crate) fn start<F, Fut>(
        self: &Arc<Self>,
        queue: &str,
        kind: JobKind,
        what: String,
        run: F,
    ) -> Result<(), String>
    where
        F: FnOnce(PassProgress) -> Fut,
        Fut: Future<Output = Result<usize, DeadLetterError>> + Send + 'static,
    {
        let progress = PassProgress::default();
        {
            let mut jobs = lock(&self.by_queue);
            if let Some(job) = jobs.get(queue).filter(|j| j.state == JobState::Running) {
                return Err(format!(
                    "`{queue}` already has a job running ({} {}): one pass over a dead-letter queue at a time",
                    match job.kind {
                        JobKind::Replay => "replay of",
                        JobKind::Purge => "purge of",
                    },
                    job.what
                ));
            }
            jobs.insert(
                queue.to_owned(),
                Job {
                    kind,
                    what: what.clone(),
                    started_ms: warren_common::now_ms(),
                    state: JobState::Running,
                    progress: progress.clone(),
                },
            );
        }
        let work = run(progress);
        let jobs = self.clone();
        let queue = queue.to_owned();
        tokio::spawn(async move {
            let state = match work.await {
                Ok(n) => {
                    let noun = if n == 1 {
                        "dead letter"
                    } else {
                        "dead letters"
                    };
                    JobState::Done(format!("{} {n} {noun} of `{queue}`", kind.past()))
                }
                Err(e) => JobState::Failed(e.to_string()),
            };
            match &state {
                JobState::Failed(error) => {
                    tracing::warn!(%queue, %what, %error, "console dead-letter job failed")
                }
                _ => {
                    tracing::info!(%queue, %what, kind = kind.past(), "console dead-letter job done")
                }
            }
            if let Some(job) = lock(&jobs.by_queue).get_mut(&queue) {
                job.state = state;
            }
        });
        Ok(())
    }

    /// The job of `queue` (running, or the last one's outcome).
    pub(crate) fn of(&self, queue: &str) -> Option<JobView> {
        lock(&self.by_queue).get(queue).map(|job| JobView {
            kind: job.kind,
            what: job.what.clone(),
            started_ms: job.started_ms,
            state: job.state.clone(),
            done: job.progress.done(),
            total: job.progress.total(),
        })
    }

    /// Keeps `message` to show once; returns its key for `?done=`.
    pub(crate) fn say(&self, message: String) -> String {
        let key = format!("{:032x}", rand::random::<u128>());
        let mut flashes = lock(&self.flashes);
        flashes.retain(|_, (_, at)| at.elapsed() < FLASH_LIFETIME);
        flashes.insert(key.clone(), (message, Instant::now()));
        key
    }

    /// The message kept under `key`, once.
    pub(crate) fn flash(&self, key: &str) -> Option<String> {
        lock(&self.flashes)
            .remove(key)
            .filter(|(_, at)| at.elapsed() < FLASH_LIFETIME)
            .map(|(message, _)| message)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
