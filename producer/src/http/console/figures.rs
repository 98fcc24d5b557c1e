//! The queues' numbers as the broker has them. AMQP cannot list queues and a passive declare
//! answers only ready messages and consumers, so each Warren queue (and its dead-letter queue)
//! is declared passively, on one channel, at most once a second however many pages refresh.
//! With the management API configured, its per-queue figures (unacknowledged messages, rates)
//! are added.

use super::management::{Management, QueueStats};
use crate::http::broker::Broker;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_common::{dead_letter_queue_name, inspect_queue, TopologyError};

/// How long an answer is reused.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// One queue's numbers; `None` where the broker could not say.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueFigures {
    /// The queue does not exist.
    pub(crate) missing: bool,
    pub(crate) ready: Option<u64>,
    pub(crate) consumers: Option<u64>,
    /// Messages in its dead-letter queue: the authoritative count of its dead letters.
    pub(crate) dead: Option<u64>,
    /// From the management API.
    pub(crate) stats: Option<QueueStats>,
}

/// The numbers of a set of queues at one moment.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    queues: Vec<String>,
    taken: Option<Instant>,
    pub(crate) figures: HashMap<String, QueueFigures>,
    /// Why some numbers are missing (the broker or the management API could not answer).
    pub(crate) problems: Vec<String>,
}

/// Reads and caches the numbers.
pub(crate) struct Figures {
    broker: Broker,
    management: Option<Management>,
    channel: tokio::sync::Mutex<Option<lapin::Channel>>,
    last: Mutex<Arc<Snapshot>>,
}

impl Figures {
    pub(crate) fn new(broker: Broker, management: Option<Management>) -> Figures {
        Figures {
            broker,
            management,
            channel: tokio::sync::Mutex::new(None),
            last: Mutex::new(Arc::default()),
        }
    }

    /// The numbers of `queues`, at most a second old.
    pub(crate) async fn of(&self, queues: &[String]) -> Arc<Snapshot> {
        let cached = lock(&self.last).clone();
        let fresh = cached.taken.is_some_and(|t| t.elapsed() < FRESH_FOR);
        if fresh && cached.queues == queues {
            return cached;
        }
        // One reader at a time: a burst of refreshes waits for one round of declares.
        let mut channel = self.channel.lock().await;
        let cached = lock(&self.last).clone();
        if cached.taken.is_some_and(|t| t.elapsed() < FRESH_FOR) && cached.queues == queues {
            return cached;
        }
        let mut snapshot = Snapshot {
            queues: queues.to_vec(),
            taken: Some(Instant::now()),
            ..Snapshot::default()
        };
        self.declare_all(&mut channel, &mut snapshot).await;
        if let Some(management) = &self.management {
            match management.queues().await {
                Ok(stats) => {
                    for (queue, figures) in snapshot.figures.iter_mut() {
                        figures.stats = stats.get(queue).cloned();
                    }
                }
                Err(e) => snapshot.problems.push(format!("management API: {e}")),
            }
        }
        let snapshot = Arc::new(snapshot);
        *lock(&self.last) = snapshot.clone();
        snapshot
    }

    async fn declare_all(&self, channel: &mut Option<lapin::Channel>, snapshot: &mut Snapshot) {
        for queue in snapshot.queues.clone() {
            let mut figures = QueueFigures::default();
            match self.inspect(channel, &queue).await {
                Ok(Some((ready, consumers))) => {
                    figures.ready = Some(ready);
                    figures.consumers = Some(consumers);
                }
                Ok(None) => figures.missing = true,
                Err(problem) => {
                    snapshot.problems.push(problem);
                    snapshot.figures.insert(queue, figures);
                    break;
                }
            }
            if let Ok(Some((dead, _))) =
                self.inspect(channel, &dead_letter_queue_name(&queue)).await
            {
                figures.dead = Some(dead);
            }
            snapshot.figures.insert(queue, figures);
        }
    }

    /// Ready messages and consumers of `queue`; `None` if it does not exist.
    async fn inspect(
        &self,
        channel: &mut Option<lapin::Channel>,
        queue: &str,
    ) -> Result<Option<(u64, u64)>, String> {
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            let publisher = self
                .broker
                .ready()
                .map_err(|e| format!("the broker: {}", e.body.error))?;
            let opened = publisher
                .create_channel()
                .await
                .map_err(|e| format!("the broker: {e}"))?;
            *channel = Some(opened);
        }
        let Some(open) = channel.as_ref() else {
            return Err("the broker: no channel".to_owned());
        };
        match inspect_queue(open, queue).await {
            Ok(state) => Ok(Some((state.ready.into(), state.consumers.into()))),
            Err(TopologyError::NotFound(_)) => {
                // The refusal closed the channel.
                *channel = None;
                Ok(None)
            }
            Err(e) => {
                *channel = None;
                Err(format!("the broker: {e}"))
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
