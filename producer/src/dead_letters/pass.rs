//! A pass over a whole dead-letter queue, page by page: each page is checked out, acted on
//! and settled before the next, so memory holds one page at most. Every page puts back what
//! it keeps at the tail, so once the pass has gone through the messages counted at its start,
//! the queue is back in its order. With broker events on, a page is settled only once the
//! events of the broker dead letters it took are confirmed.

use super::checkout::{Checkout, PAGE};
use super::events::BrokerEvents;
use super::{DeadLetter, DeadLetterError, PassProgress};
use crate::Publisher;
use lapin::message::Delivery;
use std::time::Duration;
use warren_common::events::Ticket;
use warren_common::inspect_queue;

/// A pass over the dead letters of one queue.
pub(super) struct Pass {
    publisher: Publisher,
    queue: String,
    max_age: Option<Duration>,
    /// Messages in the queue when the pass started.
    total: u32,
    /// Messages taken by finished pages.
    done: u32,
    page: Option<Checkout>,
    /// Size of the current page.
    asked: u16,
    /// The last page was shorter than asked: the queue is exhausted.
    exhausted: bool,
    /// Where broker dead letters' events go, if anywhere.
    events: Option<BrokerEvents>,
    /// The last event the current page recorded.
    recorded: Option<Ticket>,
    progress: Option<PassProgress>,
}

impl Pass {
    /// Counts the messages of `queue` (a passive declare: exact for ready messages).
    pub(super) async fn start(
        publisher: &Publisher,
        queue: &str,
        max_age: Option<Duration>,
        events: Option<BrokerEvents>,
        progress: Option<PassProgress>,
    ) -> Result<Self, DeadLetterError> {
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        let total = inspect_queue(&channel, queue)
            .await
            .map_err(|e| DeadLetterError::queue("counting dead letters", queue, e))?
            .ready;
        let _ = channel.close(200, "counted".into()).await;
        if let Some(progress) = &progress {
            progress.set(total.into(), 0);
        }
        Ok(Pass {
            publisher: publisher.clone(),
            queue: queue.to_owned(),
            max_age,
            total,
            done: 0,
            page: None,
            asked: 0,
            exhausted: false,
            events,
            recorded: None,
            progress,
        })
    }

    /// Settles the current page, if any, and checks out the next; false once the pass has
    /// gone through every message counted at the start.
    pub(super) async fn next_page(&mut self) -> Result<bool, DeadLetterError> {
        if let (Some(events), Some(ticket)) = (&self.events, self.recorded.take()) {
            events.confirmed(ticket).await?;
        }
        if let Some(page) = self.page.take() {
            let taken = page.taken();
            page.finish().await?;
            self.done = self
                .done
                .saturating_add(u32::try_from(taken).unwrap_or(u32::MAX));
            self.exhausted = taken < usize::from(self.asked);
            if let Some(progress) = &self.progress {
                progress.set(self.total.into(), self.done.into());
            }
        }
        if self.exhausted || self.done >= self.total {
            return Ok(false);
        }
        let size = u16::try_from(self.total - self.done).map_or(PAGE, |left| left.min(PAGE));
        let page = Checkout::open(&self.publisher, &self.queue, size, self.max_age).await?;
        self.page = Some(page);
        self.asked = size;
        Ok(true)
    }

    /// The next message of the current page, or `None` at its end.
    pub(super) async fn take(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        let Some(page) = &mut self.page else {
            return Ok(None);
        };
        let taken = page.take().await?;
        if let (Some(events), Some(delivery)) = (&self.events, &taken) {
            let dead = DeadLetter::from_message(&delivery.properties, &delivery.data);
            if let Some(ticket) = events.record(&dead) {
                self.recorded = Some(ticket);
            }
        }
        Ok(taken)
    }

    /// Keeps a message of the current page: it is put back when the page is settled.
    pub(super) fn keep(&mut self, delivery: Delivery) {
        if let Some(page) = &mut self.page {
            page.keep(delivery);
        }
    }

    /// Lets a message of the current page go: it leaves the queue when the page is settled.
    pub(super) fn delete(&mut self, delivery: Delivery) {
        if let Some(page) = &mut self.page {
            page.delete(delivery);
        }
    }
}
