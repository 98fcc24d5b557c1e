//! Dead-letter tooling: list, replay and purge the dead letters of a work queue `Q`, which
//! live in its dead-letter queue `Q.dead`.
//!
//! AMQP cannot read a queue without taking its messages. So every operation makes one pass
//! over `Q.dead`, a page of messages at a time: it takes them out, settles what it acts on (a
//! replayed dead letter once its republish is confirmed, a purged one at once) and puts the
//! rest back at the tail in their order, republished with confirms (the `checkout` module says
//! why not requeued). After the pass the queue is in its order again: a listing changes
//! nothing a user can see, an interrupted operation never loses a dead letter, and the cost
//! grows with the whole queue, not with the number shown. Dead letters arriving during a pass
//! may end up among the ones put back. Run one operation on a queue at a time: two at once
//! would interleave what they put back.

mod checkout;
mod events;
mod pass;
mod properties;
mod replay;
mod view;

pub use events::BROKER_DEAD_LETTER_DELIVERY_COUNT;
pub use replay::Selection;
pub use view::{DeadLetter, Filter};
pub use warren_common::BROKER_KIND_PREFIX;

use crate::{PublishError, Publisher};
use events::BrokerEvents;
use pass::Pass;
use std::time::Duration;
use warren_common::{dead_letter_queue_name, inspect_queue, now_ms, Retention, TopologyError};

/// A dead-letter operation that could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// `Q.dead` does not exist (a passive declare answered 404).
    #[error("no dead-letter queue for `{queue}` (looked for `{dlq}`): is the queue name right?")]
    NoDeadLetterQueue {
        /// The work queue given.
        queue: String,
        /// The dead-letter queue looked for.
        dlq: String,
    },
    /// No connection or channel to the broker could be had.
    #[error("could not reach the broker: {0}")]
    Unavailable(#[source] Box<PublishError>),
    /// The broker could not say how the queue is (a passive declare failed, but not because
    /// the queue does not exist: e.g. its node is down).
    #[error("{action} on `{queue}` failed: {source}; check the broker and run the command again (dead letters not settled go back to the queue)")]
    Queue {
        /// What was being done.
        action: &'static str,
        /// The queue.
        queue: String,
        /// The error.
        source: Box<TopologyError>,
    },
    /// A broker or connection error.
    #[error("{action} on `{queue}` failed: {source}; check the broker and run the command again (dead letters not settled go back to the queue)")]
    Broker {
        /// What was being done.
        action: &'static str,
        /// The queue.
        queue: String,
        /// The error.
        source: lapin::Error,
    },
    /// Some dead letters could not be put back in order.
    #[error("could not put {unsettled} dead letters back into `{queue}` in order: {source}; none is lost (the broker returns what was not settled to the queue), but some may now appear twice or out of order, and what this command deleted or replayed may still be there: list the queue to check")]
    PutBack {
        /// The dead-letter queue.
        queue: String,
        /// Dead letters not put back.
        unsettled: usize,
        /// Why putting back failed.
        source: Box<PublishError>,
    },
    /// Some selected dead letters could not be republished; they stay in the queue.
    #[error("replayed {replayed} dead letters, but {failed} could not be republished and stay in `{queue}`: {source}; fix the cause and replay them again")]
    ReplayFailed {
        /// The dead-letter queue.
        queue: String,
        /// Dead letters replayed.
        replayed: usize,
        /// Dead letters that could not be republished.
        failed: usize,
        /// The first failure.
        source: Box<PublishError>,
    },
    /// The events stream to record broker dead letters in does not exist: check its name
    /// (the workers' `--events-stream`).
    #[error("no events stream `{0}`: is it the workers' --events-stream?")]
    NoEventsStream(String),
    /// The events of broker dead letters were not confirmed in time; the dead letters of
    /// that page were not settled (they stay in the queue).
    #[error("the events stream `{stream}` did not confirm the broker dead letters' events within {timeout:?}; nothing was settled on that page: check the stream and run the command again")]
    EventsNotRecorded {
        /// The stream.
        stream: String,
        /// The time waited.
        timeout: Duration,
    },
    /// Requested ids are not in the queue (the others were replayed).
    #[error("replayed {replayed} dead letters, but `{queue}` has no dead letter with id {}: check the ids with `warren-producer dead-letters list`", .missing.join(", "))]
    MissingIds {
        /// The dead-letter queue.
        queue: String,
        /// Dead letters replayed.
        replayed: usize,
        /// The ids not found.
        missing: Vec<String>,
    },
}

impl DeadLetterError {
    fn unavailable(source: PublishError) -> Self {
        DeadLetterError::Unavailable(Box::new(source))
    }

    fn queue(action: &'static str, queue: &str, source: TopologyError) -> Self {
        DeadLetterError::Queue {
            action,
            queue: queue.to_owned(),
            source: Box::new(source),
        }
    }

    fn broker(action: &'static str, queue: &str, source: lapin::Error) -> Self {
        DeadLetterError::Broker {
            action,
            queue: queue.to_owned(),
            source,
        }
    }
}

/// The result of [`DeadLetterQueue::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The dead letters shown: the first ones selected, up to the limit, oldest first.
    pub shown: Vec<DeadLetter>,
    /// How many dead letters the filter selected (shown or not).
    pub matching: usize,
    /// How many dead letters the queue holds.
    pub total: usize,
}

/// The dead-letter queue of one work queue, and the operations on it.
#[derive(Clone)]
pub struct DeadLetterQueue {
    publisher: Publisher,
    exchange: String,
    queue: String,
    dlq: String,
    max_age: Option<Duration>,
    events: Option<BrokerEvents>,
    progress: Option<PassProgress>,
}

/// How far the pass of a list, replay or purge has gone through a dead-letter queue, for
/// showing progress while it runs ([`DeadLetterQueue::with_progress`]).
#[derive(Clone, Debug, Default)]
pub struct PassProgress(std::sync::Arc<ProgressCounts>);

#[derive(Debug, Default)]
struct ProgressCounts {
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl PassProgress {
    /// Dead letters in the queue when the pass started.
    pub fn total(&self) -> u64 {
        self.0.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dead letters the pass has gone through (acted on or put back).
    pub fn done(&self) -> u64 {
        self.0.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set(&self, total: u64, done: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.total.store(total, Relaxed);
        self.0.done.store(done, Relaxed);
    }
}

impl DeadLetterQueue {
    /// Opens the dead-letter queue of `queue`, checking that it exists. Replays are published
    /// through `publisher` to `exchange` (the task exchange, `warren` by default).
    pub async fn open(
        publisher: &Publisher,
        queue: &str,
        exchange: &str,
    ) -> Result<Self, DeadLetterError> {
        let dlq = dead_letter_queue_name(queue);
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        match inspect_queue(&channel, &dlq).await {
            // A refused declare has closed the channel already.
            Err(TopologyError::NotFound(_)) => {
                return Err(DeadLetterError::NoDeadLetterQueue {
                    queue: queue.to_owned(),
                    dlq,
                })
            }
            Err(e) => return Err(DeadLetterError::queue("checking the queue", &dlq, e)),
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
            }
        }
        Ok(DeadLetterQueue {
            publisher: publisher.clone(),
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            dlq,
            max_age: Some(Retention::default().max_age),
            events: None,
            progress: None,
        })
    }

    /// The age limit the dead-letter queue was declared with (its `x-message-ttl`; zero for
    /// none), 14 days unless set. Dead letters put back keep the time they had left instead
    /// of starting the limit afresh.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age).filter(|age| !age.is_zero());
        self
    }

    /// Reports the progress of each pass (list, replay, purge) into `progress`.
    pub fn with_progress(mut self, progress: PassProgress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Records a `dead_lettered` event in the events stream `stream` (the workers'
    /// `--events-stream`), as `source`, for each dead letter the broker wrote by itself (a
    /// quorum queue's delivery limit) that a list, replay or purge passes over, so that the
    /// status index learns how those tasks ended (docs/wire-format.md §11.4). A page of dead
    /// letters is settled only once its events are confirmed.
    pub async fn record_broker_dead_letters(
        mut self,
        stream: &str,
        source: &str,
    ) -> Result<Self, DeadLetterError> {
        self.events = Some(BrokerEvents::start(&self.publisher, stream, source).await?);
        Ok(self)
    }

    /// The work queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter queue's name (`<queue>.dead`).
    pub fn dead_letter_queue(&self) -> &str {
        &self.dlq
    }

    /// The first `limit` dead letters selected by `filter`, oldest first. Every dead letter
    /// stays in the queue, in its order.
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Listing, DeadLetterError> {
        let mut pass = Pass::start(
            &self.publisher,
            &self.dlq,
            self.max_age,
            self.events.clone(),
            self.progress.clone(),
        )
        .await?;
        let now = now_ms();
        let mut listing = Listing::default();
        while pass.next_page().await? {
            while let Some(delivery) = pass.take().await? {
                listing.total += 1;
                let dead = DeadLetter::from_message(&delivery.properties, &delivery.data);
                if filter.matches(&dead, now) {
                    listing.matching += 1;
                    if listing.shown.len() < limit {
                        listing.shown.push(dead);
                    }
                }
                pass.keep(delivery);
            }
        }
        Ok(listing)
    }

    /// Deletes the dead letters selected by `filter` (an empty filter selects all) and
    /// returns how many were deleted. The others stay, in their order.
    pub async fn purge(&self, filter: &Filter) -> Result<usize, DeadLetterError> {
        let mut pass = Pass::start(
            &self.publisher,
            &self.dlq,
            self.max_age,
            self.events.clone(),
            self.progress.clone(),
        )
        .await?;
        let now = now_ms();
        let mut deleted = 0;
        while pass.next_page().await? {
            while let Some(delivery) = pass.take().await? {
                let dead = DeadLetter::from_message(&delivery.properties, &delivery.data);
                if filter.matches(&dead, now) {
                    pass.delete(delivery);
                    deleted += 1;
                } else {
                    pass.keep(delivery);
                }
            }
        }
        Ok(deleted)
    }
}
