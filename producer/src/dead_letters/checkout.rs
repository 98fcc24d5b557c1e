//! A checkout of one page of a dead-letter queue: its first messages taken out (AMQP cannot
//! read a queue without taking its messages), the ones an operation deletes or replays
//! settled, and the ones it keeps put back at the tail in their original order. A [`Pass`]
//! over every page rotates the whole queue back into its order.
//!
//! What was measured on RabbitMQ 3.10.8 quorum queues decides how:
//! - Putting back is a republish, not a requeue. A closed channel requeues its messages out
//!   of order (the last ones first), and `basic.nack` with requeue keeps the order for a few
//!   hundred messages but not for a thousand or more (returns reach the queue in batches,
//!   applied in hash order). A republish on one channel keeps publishing order.
//! - Settling must stay under 32 outstanding commands per channel. Past that the channel
//!   holds settlements back, and closing it in that state drops them: the acked messages come
//!   back. Each `basic.get` delivery needs a command of its own (1,467 of 1,500 came back
//!   after one cumulative ack), so messages are taken by one consumer, whose deliveries one
//!   cumulative ack settles together, and a page sends at most [`MAX_ACKS`] acks (20,000
//!   messages acked in 79 batches had the last batch come back).
//! - A consumer's prefetch is its page size, so it is never delivered a message past the
//!   page (with prefetch 0 a quorum queue delivers at most 2,000 unacked messages anyway).
//!
//! The originals are acked only after their copies are confirmed, and never past a message
//! not yet settled: a crash mid-way leaves duplicates at worst, and anything unacked when the
//! channel closes goes back to the queue. Nothing is ever lost.
//!
//! [`Pass`]: super::pass::Pass

use super::properties::put_back_properties;
use super::DeadLetterError;
use crate::{PublishError, Publisher, DEFAULT_CONFIRM_TIMEOUT};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{Channel, Confirmation, Consumer, PublisherConfirm};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use warren_common::now_ms;

/// Republished copies whose confirms are awaited together.
const PUT_BACK_WINDOW: usize = 256;

/// Most acks one checkout sends (each is one settlement command; see the module docs).
const MAX_ACKS: usize = 16;

/// Most messages in one page: all are held in memory until the page is settled.
pub(super) const PAGE: u16 = 4096;

/// How long to wait for the next message of a page before deciding someone else took it.
const IDLE: Duration = Duration::from_secs(10);

/// One page of a dead-letter queue, taken out and not yet settled.
pub(super) struct Checkout {
    publisher: Publisher,
    channel: Channel,
    queue: String,
    /// The consumer, until it stops taking.
    consumer: Option<Consumer>,
    /// Messages of the page not yet taken.
    remaining: u16,
    /// Delivered to the consumer before it stopped, not yet taken.
    stragglers: VecDeque<Delivery>,
    /// Delivery tags of the messages taken, in order.
    taken: Vec<DeliveryTag>,
    kept: Vec<Delivery>,
    deleted: HashSet<DeliveryTag>,
    /// Delivery tag up to which everything is acked.
    acked: Option<DeliveryTag>,
    /// The queue's retention age, which copies put back must not restart.
    max_age: Option<Duration>,
}

impl Checkout {
    /// Starts a checkout of the first `page` messages of `queue`, on a channel of its own.
    pub(super) async fn open(
        publisher: &Publisher,
        queue: &str,
        page: u16,
        max_age: Option<Duration>,
    ) -> Result<Self, DeadLetterError> {
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        let broker = |action| move |e| DeadLetterError::broker(action, queue, e);
        // The page size as prefetch: never a delivery past the page, and never 0 (unlimited).
        let page = page.max(1);
        channel
            .basic_qos(page, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch"))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("consuming dead letters"))?;
        Ok(Checkout {
            publisher: publisher.clone(),
            channel,
            queue: queue.to_owned(),
            consumer: Some(consumer),
            remaining: page,
            stragglers: VecDeque::new(),
            taken: Vec::new(),
            kept: Vec::new(),
            deleted: HashSet::new(),
            acked: None,
            max_age,
        })
    }

    /// How many messages were taken.
    pub(super) fn taken(&self) -> usize {
        self.taken.len()
    }

    /// Takes the next message, or `None` at the end of the page (or of the queue).
    pub(super) async fn take(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        let delivery = match self.consume().await? {
            Some(delivery) => Some(delivery),
            None => self.stragglers.pop_front(),
        };
        if let Some(delivery) = &delivery {
            self.taken.push(delivery.delivery_tag);
        }
        Ok(delivery)
    }

    /// The consumer's next delivery until the page is complete; then, or once none comes in
    /// time, stops the consumer and keeps what it delivered meanwhile as stragglers.
    async fn consume(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        let Some(consumer) = &mut self.consumer else {
            return Ok(None);
        };
        if self.remaining > 0 {
            match tokio::time::timeout(IDLE, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    self.remaining -= 1;
                    return Ok(Some(delivery));
                }
                Ok(Some(Err(e))) => {
                    let error = DeadLetterError::broker("consuming dead letters", &self.queue, e);
                    return Err(error);
                }
                // Cancelled by the broker, or nothing came in time: the queue is shorter.
                Ok(None) | Err(_) => {}
            }
        }
        let Some(mut consumer) = self.consumer.take() else {
            return Ok(None);
        };
        self.channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| DeadLetterError::broker("stopping the consumer", &self.queue, e))?;
        // Deliveries sent before the cancel come first; the stream ends after them.
        while let Some(item) = consumer.next().await {
            let delivery = item
                .map_err(|e| DeadLetterError::broker("consuming dead letters", &self.queue, e))?;
            self.stragglers.push_back(delivery);
        }
        Ok(None)
    }

    /// Keeps a message: it is put back when the checkout finishes.
    pub(super) fn keep(&mut self, delivery: Delivery) {
        self.kept.push(delivery);
    }

    /// Lets a message go: it leaves the queue when the checkout finishes.
    pub(super) fn delete(&mut self, delivery: Delivery) {
        self.deleted.insert(delivery.delivery_tag);
    }

    /// Puts back every kept message in the order it was taken, acks every message settled,
    /// and closes the channel.
    pub(super) async fn finish(mut self) -> Result<(), DeadLetterError> {
        self.kept.sort_by_key(|d| d.delivery_tag);
        let kept = std::mem::take(&mut self.kept);
        let limit = self.ack_limit(&kept);
        let mut result = self.put_back(&kept, limit).await;
        if result.is_ok() && limit > self.acked {
            if let Some(limit) = limit {
                result = self.ack_up_to(limit).await;
            }
        }
        // Whatever is still unacked (after a failure) returns to the queue now.
        let _ = self.channel.close(200, "dead letters settled".into()).await;
        result
    }

    /// The last delivery tag an ack may cover: the one before the first message taken but
    /// neither kept nor deleted (the caller's bug; it is then left to return to the queue).
    fn ack_limit(&self, kept: &[Delivery]) -> Option<DeliveryTag> {
        let kept: HashSet<DeliveryTag> = kept.iter().map(|d| d.delivery_tag).collect();
        let settled = |tag: &&DeliveryTag| kept.contains(tag) || self.deleted.contains(tag);
        match self.taken.iter().position(|tag| !settled(&tag)) {
            None => self.taken.last().copied(),
            Some(0) => None,
            Some(i) => Some(self.taken[i - 1]),
        }
    }

    /// Republishes the kept messages in order, acking the originals (and everything let go
    /// before them, up to `limit`) once their copies are confirmed, in at most [`MAX_ACKS`]
    /// acks.
    async fn put_back(
        &mut self,
        kept: &[Delivery],
        limit: Option<DeliveryTag>,
    ) -> Result<(), DeadLetterError> {
        if kept.is_empty() {
            return Ok(());
        }
        let channel = self.confirm_channel().await?;
        let ack_every = self.taken.len().div_ceil(MAX_ACKS).max(PUT_BACK_WINDOW);
        let (mut settled, mut confirmed) = (0, 0);
        let mut result = Ok(());
        for chunk in kept.chunks(PUT_BACK_WINDOW) {
            if let Err(source) = self.put_back_chunk(&channel, chunk).await {
                result = Err(DeadLetterError::PutBack {
                    queue: self.queue.clone(),
                    unsettled: kept.len() - settled,
                    source: Box::new(source),
                });
                break;
            }
            confirmed += chunk.len();
            let tag = Some(kept[confirmed - 1].delivery_tag).min(limit);
            if (confirmed - settled >= ack_every || confirmed == kept.len()) && tag > self.acked {
                if let Some(tag) = tag {
                    result = self.ack_up_to(tag).await;
                }
                if result.is_err() {
                    break;
                }
                settled = confirmed;
            }
        }
        let _ = channel.close(200, "put back".into()).await;
        result
    }

    async fn confirm_channel(&self) -> Result<Channel, DeadLetterError> {
        let channel = self
            .publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| DeadLetterError::broker("enabling confirms", &self.queue, e))?;
        Ok(channel)
    }

    /// Republishes a chunk in order and waits for every confirm; the first failure wins.
    async fn put_back_chunk(
        &self,
        channel: &Channel,
        chunk: &[Delivery],
    ) -> Result<(), PublishError> {
        let now = now_ms();
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            let props = put_back_properties(&delivery.properties, self.max_age, now);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    options,
                    &delivery.data,
                    props,
                )
                .await
                .map_err(|e| connection_error(&message_id(delivery), e))?;
            confirms.push((message_id(delivery), confirm));
        }
        let mut first_error = None;
        for (id, confirm) in confirms {
            if let Err(error) = confirmed(confirm, &id, &self.queue).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Acks every message taken up to and including `tag` with one cumulative ack.
    async fn ack_up_to(&mut self, tag: DeliveryTag) -> Result<(), DeadLetterError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| DeadLetterError::broker("acking dead letters", &self.queue, e))?;
        self.acked = Some(tag);
        Ok(())
    }
}

/// Waits for a republished copy's confirm; a nack or a return is a failure.
async fn confirmed(confirm: PublisherConfirm, id: &str, queue: &str) -> Result<(), PublishError> {
    let confirmation = tokio::time::timeout(DEFAULT_CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| PublishError::Timeout {
            id: id.to_owned(),
            timeout: DEFAULT_CONFIRM_TIMEOUT,
        })?
        .map_err(|source| connection_error(id, source))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            id: id.to_owned(),
            exchange: String::new(),
            routing_key: queue.to_owned(),
            reply: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => {
            Err(PublishError::Nacked { id: id.to_owned() })
        }
    }
}

fn connection_error(id: &str, source: lapin::Error) -> PublishError {
    PublishError::Connection {
        id: id.to_owned(),
        source,
    }
}

fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}
