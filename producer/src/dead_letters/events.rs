//! Broker dead letters into the events stream: a task the broker dead-lettered by itself (a
//! quorum queue's `x-delivery-limit`) never gets a worker's ending, so a dead-letter pass that
//! meets one records a `dead_lettered` event for it (docs/wire-format.md §11.4), ranked after
//! every run of its attempt, and waits for the broker to confirm it before the page that
//! holds the dead letter is settled (a purge or replay then cannot lose the ending).

use super::{DeadLetter, DeadLetterError};
use crate::Publisher;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use warren_common::events::{Event, EventError, EventKind, EventLog, Ticket};
use warren_common::{inspect_queue, TopologyError};

/// The `delivery_count` of a broker dead letter's event: above any run's (a quorum queue
/// dead-letters long before), and the largest integer every JSON reader reads exactly.
pub const BROKER_DEAD_LETTER_DELIVERY_COUNT: u64 = (1 << 53) - 1;

/// How long a page waits for its events to be confirmed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer of broker dead letters' events, shared by the passes of one
/// [`super::DeadLetterQueue`]; its sender stops when the last clone is dropped.
#[derive(Clone)]
pub(super) struct BrokerEvents {
    log: EventLog,
    _sender: Arc<DropGuard>,
}

impl BrokerEvents {
    /// Records into `stream` (which must exist: the workers' `--events-stream`) as `source`,
    /// sending through `publisher`.
    pub(super) async fn start(
        publisher: &Publisher,
        stream: &str,
        source: &str,
    ) -> Result<Self, DeadLetterError> {
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        match inspect_queue(&channel, stream).await {
            Err(TopologyError::NotFound(_)) => {
                return Err(DeadLetterError::NoEventsStream(stream.to_owned()))
            }
            Err(e) => {
                return Err(DeadLetterError::queue(
                    "checking the events stream",
                    stream,
                    e,
                ))
            }
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
            }
        }
        let log = EventLog::new(stream, source);
        let stop = CancellationToken::new();
        let (sender, publisher, token) = (log.clone(), publisher.clone(), stop.clone());
        tokio::spawn(async move { sender.run(&publisher, &token).await });
        Ok(BrokerEvents {
            log,
            _sender: Arc::new(stop.drop_guard()),
        })
    }

    /// Records the ending of `dead` if the broker dead-lettered it; the ticket to wait for.
    pub(super) fn record(&self, dead: &DeadLetter) -> Option<Ticket> {
        if !dead.is_from_broker() {
            return None;
        }
        let record = &dead.record;
        let kind = record.kind.to_string();
        let event = Event {
            at_ms: record.last_failure_ms.unwrap_or_else(warren_common::now_ms),
            attempt: Some(u32::try_from(record.attempts).unwrap_or(u32::MAX)),
            delivery_count: Some(BROKER_DEAD_LETTER_DELIVERY_COUNT),
            error: Some(EventError {
                kind: Cow::Borrowed(&kind),
                reason: Cow::Borrowed(&record.reason),
            }),
            ..Event::new(
                EventKind::DeadLettered,
                dead.id.as_deref()?,
                dead.task.as_deref().unwrap_or(""),
                record.original_queue.as_deref().unwrap_or(""),
            )
        };
        Some(self.log.record(&event))
    }

    /// Waits until the event of `ticket` (and every one before it) is confirmed.
    pub(super) async fn confirmed(&self, ticket: Ticket) -> Result<(), DeadLetterError> {
        tokio::time::timeout(CONFIRM_TIMEOUT, self.log.confirmed(ticket))
            .await
            .map_err(|_| DeadLetterError::EventsNotRecorded {
                stream: self.log.stream().to_owned(),
                timeout: CONFIRM_TIMEOUT,
            })
    }
}
