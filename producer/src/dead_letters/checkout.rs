//! A checkout of a dead-letter queue: every message taken out (AMQP cannot read a queue
//! without taking its messages), the ones an operation deletes or replays settled, and the
//! ones it keeps put back in their original order.
//!
//! What was measured on RabbitMQ 3.10.8 quorum queues decides how:
//! - Putting back is a republish, not a requeue. A closed channel requeues its messages out
//!   of order (the last ones first), and `basic.nack` with requeue keeps the order for a few
//!   hundred messages but not for a thousand or more (returns reach the queue in batches,
//!   applied in hash order). A republish on one channel keeps publishing order.
//! - Messages are taken with one consumer, not `basic.get`. Each `basic.get` delivery is
//!   settled by a command of its own; past 32 outstanding commands the channel holds them
//!   back, and closing the channel in that state drops them, so acked messages came back
//!   (1,467 of 1,500 after one cumulative ack). A consumer's deliveries are settled together,
//!   one command per ack. `basic.get` only picks up what arrives after the consumer stopped.
//! - Acks are cumulative (`multiple`), one per batch of confirmed copies.
//!
//! So a crash mid-way leaves duplicates at worst, and anything unacked when the channel
//! closes goes back to the queue: nothing is ever lost.

use super::properties::put_back_properties;
use super::DeadLetterError;
use crate::{PublishError, Publisher, DEFAULT_CONFIRM_TIMEOUT};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{Channel, Confirmation, Consumer, PublisherConfirm};
use std::collections::VecDeque;
use std::time::Duration;
use warren_common::now_ms;

/// Republished copies whose confirms are awaited together, and acked with one cumulative ack.
const PUT_BACK_WINDOW: usize = 256;

/// How long the consumer waits for the next of the messages counted at the start before
/// deciding someone else took them.
const IDLE: Duration = Duration::from_secs(3);

/// Prefetch of the consumer: unlimited, since every message is held until the end anyway.
const UNLIMITED: u16 = 0;

/// The consumer taking the messages counted when the checkout started.
struct Taking {
    consumer: Consumer,
    remaining: u32,
}

/// Messages taken out of a dead-letter queue and not yet settled.
pub(super) struct Checkout {
    publisher: Publisher,
    channel: Channel,
    queue: String,
    /// The consumer, until it has delivered the messages counted at the start.
    taking: Option<Taking>,
    /// Delivered to the consumer after it was told to stop, and not yet taken.
    stragglers: VecDeque<Delivery>,
    kept: Vec<Delivery>,
    /// The queue's retention age, which copies put back must not restart.
    max_age: Option<Duration>,
    /// Delivery tag of the last message taken (tags grow in the order messages are taken).
    last_taken: Option<DeliveryTag>,
}

impl Checkout {
    /// Starts a checkout of `queue` on a channel of its own.
    pub(super) async fn open(
        publisher: &Publisher,
        queue: &str,
        max_age: Option<Duration>,
    ) -> Result<Self, DeadLetterError> {
        let channel = publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        let broker = |action| move |e| DeadLetterError::broker(action, queue, e);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let ready = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(broker("counting dead letters"))?
            .message_count();
        let mut taking = None;
        if ready > 0 {
            channel
                .basic_qos(UNLIMITED, BasicQosOptions::default())
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
            taking = Some(Taking {
                consumer,
                remaining: ready,
            });
        }
        Ok(Checkout {
            publisher: publisher.clone(),
            channel,
            queue: queue.to_owned(),
            taking,
            stragglers: VecDeque::new(),
            kept: Vec::new(),
            max_age,
            last_taken: None,
        })
    }

    /// Takes the next message, or `None` once the queue is empty.
    pub(super) async fn take(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        let delivery = match self.consume().await? {
            Some(delivery) => Some(delivery),
            None => match self.stragglers.pop_front() {
                Some(delivery) => Some(delivery),
                None => self.get().await?,
            },
        };
        if let Some(delivery) = &delivery {
            self.last_taken = Some(delivery.delivery_tag);
        }
        Ok(delivery)
    }

    /// The consumer's next delivery while it has counted messages to deliver; then stops it
    /// and keeps whatever it delivered meanwhile as stragglers.
    async fn consume(&mut self) -> Result<Option<Delivery>, DeadLetterError> {
        let Some(taking) = &mut self.taking else {
            return Ok(None);
        };
        if taking.remaining > 0 {
            match tokio::time::timeout(IDLE, taking.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    taking.remaining -= 1;
                    return Ok(Some(delivery));
                }
                Ok(Some(Err(e))) => {
                    return Err(DeadLetterError::broker(
                        "consuming dead letters",
                        &self.queue,
                        e,
                    ))
                }
                // Cancelled by the broker, or fewer messages than counted: go on with gets.
                Ok(None) | Err(_) => {}
            }
        }
        let Some(mut taking) = self.taking.take() else {
            return Ok(None);
        };
        let tag = taking.consumer.tag();
        self.channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(|e| DeadLetterError::broker("stopping the consumer", &self.queue, e))?;
        // Deliveries sent before the cancel came through first; the stream ends after them.
        while let Some(item) = taking.consumer.next().await {
            let delivery = item
                .map_err(|e| DeadLetterError::broker("consuming dead letters", &self.queue, e))?;
            self.stragglers.push_back(delivery);
        }
        Ok(None)
    }

    /// A message that arrived after the consumer stopped, taken with `basic.get`.
    async fn get(&self) -> Result<Option<Delivery>, DeadLetterError> {
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| DeadLetterError::broker("taking a dead letter", &self.queue, e))?;
        Ok(got.map(|message| message.delivery))
    }

    /// Keeps a message: it is put back when the checkout finishes.
    pub(super) fn keep(&mut self, delivery: Delivery) {
        self.kept.push(delivery);
    }

    /// Lets a message go: it leaves the queue when the checkout finishes.
    pub(super) fn delete(&mut self, delivery: Delivery) {
        drop(delivery);
    }

    /// Puts back every kept message in the order it was taken, acks every message taken,
    /// and closes the channel.
    pub(super) async fn finish(mut self) -> Result<(), DeadLetterError> {
        self.kept.sort_by_key(|d| d.delivery_tag);
        let kept = std::mem::take(&mut self.kept);
        let mut result = self.put_back(&kept).await;
        if result.is_ok() {
            // What is left after the last kept message was let go: ack it all at once.
            let last_kept = kept.last().map(|d| d.delivery_tag);
            if let Some(last) = self.last_taken.filter(|&t| Some(t) > last_kept) {
                result = self.ack_up_to(last).await;
            }
        }
        // Whatever is still unacked (after a failure) returns to the queue now.
        let _ = self.channel.close(200, "dead letters settled".into()).await;
        result
    }

    async fn put_back(&self, kept: &[Delivery]) -> Result<(), DeadLetterError> {
        if kept.is_empty() {
            return Ok(());
        }
        let channel = self
            .publisher
            .create_channel()
            .await
            .map_err(DeadLetterError::unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| DeadLetterError::broker("enabling confirms", &self.queue, e))?;
        let mut settled = 0;
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
            // Every copy up to here is confirmed: ack the originals, and everything let go
            // before them, at once.
            let last = chunk[chunk.len() - 1].delivery_tag;
            if let Err(error) = self.ack_up_to(last).await {
                result = Err(error);
                break;
            }
            settled += chunk.len();
        }
        let _ = channel.close(200, "put back".into()).await;
        result
    }

    /// Republishes a chunk in order and waits for every confirm; the first failure wins, but
    /// every confirm is awaited so the chunk is settled either way.
    async fn put_back_chunk(
        &self,
        channel: &Channel,
        chunk: &[Delivery],
    ) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(chunk.len());
        for delivery in chunk {
            let confirm = self
                .republish(channel, delivery)
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

    async fn republish(
        &self,
        channel: &Channel,
        delivery: &Delivery,
    ) -> Result<PublisherConfirm, lapin::Error> {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                options,
                &delivery.data,
                put_back_properties(&delivery.properties, self.max_age, now_ms()),
            )
            .await
    }

    /// Acks every message taken up to and including `tag` with one cumulative ack.
    async fn ack_up_to(&self, tag: DeliveryTag) -> Result<(), DeadLetterError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| DeadLetterError::broker("acking dead letters", &self.queue, e))
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
