//! One queue's consume loop on one channel. Deliveries are taken as the prefetch allows,
//! wait in order for a concurrency permit, and run inside the loop itself (each through the
//! stages of [`crate::consume::delivery`]), which also settles them ([`crate::consume::acks`]):
//! finishing a task, acking it and starting the next involve no other task, channel or
//! thread (a handler registered with `spawn` runs on a task of its own).
//! On stop the consumer is cancelled and every delivery not yet started goes back to the
//! queue, while the running ones finish and are settled.

use crate::consume::acks::Acks;
use crate::consume::delivery::{Deliveries, Settled};
use crate::Shared;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_common::Publisher;

/// The consumer tag of every consume loop. The broker puts it in every delivery it sends and
/// spends CPU on it per delivery in proportion to its length: a tag of `<hostname>-<pid>/<queue>`
/// (38 bytes in the benchmark, more under Kubernetes' pod names) cost it ~0.4 µs per task more
/// than this one, ~6% of its work on a no-op task (docs/performance-findings.md, finding 19). Each
/// consumer has a channel of its own, so the tag need not be unique; the worker's identity
/// is on its connection (`warren-worker <worker id>`).
pub(crate) const CONSUMER_TAG: &str = "warren";

/// How long a stopping consumer keeps returning deliveries the broker had already sent.
const RETURN_WINDOW: Duration = Duration::from_secs(5);
/// How long a stopping consumer waits for the broker to confirm its cancel.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the consumer of a paused queue waits, before its cancel, for the broker to have
/// sent it all it may send (see [`exhaust_credit`]).
const PAUSE_SETTLE: Duration = Duration::from_secs(2);
/// How often, meanwhile, it looks whether the queue has anything left to send.
const PAUSE_POLL: Duration = Duration::from_millis(50);

/// Why a consume loop stopped taking deliveries.
pub(crate) enum ConsumerEnd {
    /// Asked to stop. The handle resolves, to the number of settlements that could not be
    /// sent, once every running task has finished and been settled.
    Stopped(JoinHandle<u64>),
    /// The channel, the connection or the subscription was lost. Running tasks still finish
    /// (their acks fail: the broker redelivers them); the handle, when the loop had started,
    /// resolves to how many deliveries' settlements could not be sent.
    Lost {
        /// Why.
        reason: String,
        /// The consume loop, still finishing what runs.
        acker: Option<JoinHandle<u64>>,
    },
}

/// What a consumer needs from its session.
pub(crate) struct SessionLink<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) publisher: &'a Publisher,
    /// Told once the queue is consumed.
    pub(crate) states: &'a crate::consume::subscription::QueueStates,
    /// Fired to end the session (drain, or another consumer of the session was lost).
    pub(crate) stop: &'a CancellationToken,
}

/// Consumes `queue` until `link.stop` fires or the subscription is lost.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    link: SessionLink<'_>,
    queue: Arc<str>,
) -> ConsumerEnd {
    let (consumer, channel) = match subscribe(&shared, link.conn, &queue).await {
        Ok(pair) => pair,
        Err(error) => {
            return ConsumerEnd::Lost {
                reason: format!("subscribing to `{queue}` failed: {error}"),
                acker: None,
            }
        }
    };
    if let Err(reason) = crate::consume::isolation::start(&shared, &link, &queue).await {
        return ConsumerEnd::Lost {
            reason,
            acker: None,
        };
    }
    tracing::info!(queue = %queue, prefetch = shared.config.prefetch, "consuming");
    link.states.consuming(&queue);
    let (ended, end) = oneshot::channel();
    let owned = Owned {
        shared,
        publisher: link.publisher.clone(),
        queue: queue.clone(),
        stop: link.stop.clone(),
    };
    let running = tokio::spawn(owned.run(channel, consumer, ended));
    match end.await {
        Ok(None) => ConsumerEnd::Stopped(running),
        Ok(Some(reason)) => ConsumerEnd::Lost {
            reason,
            acker: Some(running),
        },
        Err(_) => ConsumerEnd::Lost {
            reason: format!("the consume loop of `{queue}` ended unexpectedly"),
            acker: Some(running),
        },
    }
}

async fn subscribe(
    shared: &Shared,
    conn: &Connection,
    queue: &str,
) -> Result<(Consumer, Channel), lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, channel))
}

/// What a consume loop owns, so that it can run as a task of its own.
struct Owned {
    shared: Arc<Shared>,
    publisher: Publisher,
    queue: Arc<str>,
    stop: CancellationToken,
}

/// Where a consume loop is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking deliveries and running them.
    Taking,
    /// Stopped: returning deliveries the broker still sends, finishing the running ones.
    Returning,
    /// Finishing the running ones.
    Finishing,
}

impl Owned {
    /// The consume loop. Tells `ended` why it stopped taking deliveries (`None`: asked to),
    /// then finishes and settles what runs. Returns how many settlements could not be sent.
    async fn run(
        self,
        channel: Channel,
        mut consumer: Consumer,
        ended: oneshot::Sender<Option<String>>,
    ) -> u64 {
        // Whether the queue was paused when the loop was stopped: then what never started goes
        // back by copy, even if the queue is resumed before it is all given back.
        let pausing = AtomicBool::new(false);
        // The highest delivery tag received on the channel.
        let mut last_tag = 0;
        let deliveries = Deliveries {
            pausing: &pausing,
            shared: &self.shared,
            publisher: &self.publisher,
            queue: &self.queue,
            metrics: &self.shared.queue_metrics[&*self.queue],
            stop: &self.stop,
            channel: &channel,
        };
        let permits = &*self.shared.permits;
        // One `multiple` ack at least every tenth of the window while tasks keep finishing.
        let ack_every = u64::from(self.shared.config.prefetch / 10).max(1);
        let config = &self.shared.config;
        let events = self.shared.events.as_ref();
        let mut acks = Acks::new(&channel, ack_every, events, config.events_timeout);
        let mut ended = Some(ended);
        let mut phase = Phase::Taking;
        let mut waiting: VecDeque<Delivery> = VecDeque::new();
        let mut running = FuturesUnordered::new();
        let stopped = self.stop.cancelled();
        let returned = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stopped, returned);
        loop {
            let taking = phase == Phase::Taking;
            let receiving = phase != Phase::Finishing;
            tokio::select! {
                biased;
                _ = &mut stopped, if taking => {
                    if deliveries.is_paused() {
                        pausing.store(true, Ordering::Release);
                        let prefetch = self.shared.config.prefetch;
                        let sent = acks.sent();
                        exhaust_credit(deliveries, &mut consumer, &mut waiting, sent, &mut last_tag, prefetch).await;
                    }
                    phase = Phase::Returning;
                    returned.as_mut().reset(Instant::now() + RETURN_WINDOW);
                    let cancel =
                        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                    if tokio::time::timeout(CANCEL_TIMEOUT, cancel).await.is_err() {
                        // A wedged channel: its deliveries go back when the session's
                        // connection is closed.
                        tracing::warn!(queue = %self.queue, timeout = ?CANCEL_TIMEOUT,
                            "the broker did not confirm the consumer's cancel; going on");
                    }
                    for delivery in waiting.drain(..) {
                        deliveries.returned(&mut acks, delivery, &mut running);
                    }
                    if let Some(ended) = ended.take() {
                        let _ = ended.send(None);
                    }
                }
                Some((settle, after)) = running.next(), if !running.is_empty() => {
                    acks.settle_after(settle, after);
                }
                () = acks.due(), if acks.timing() => {}
                permit = permits.acquire(), if taking && !waiting.is_empty() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let delivery = waiting.pop_front().expect("checked non-empty");
                    deliveries.begin(delivery, permit, &mut acks, &mut running);
                }
                next = consumer.next(), if receiving => match (phase, next) {
                    (Phase::Taking, Some(Ok(delivery))) => {
                        take(deliveries, delivery, &mut waiting, &mut acks, &mut running);
                    }
                    (_, Some(Ok(delivery))) => deliveries.returned(&mut acks, delivery, &mut running),
                    (Phase::Taking, end) => {
                        let reason = match end {
                            Some(Err(error)) => format!("consumer of `{}` failed: {error}", deliveries.queue),
                            _ => format!("the broker cancelled the consumer of `{}`", deliveries.queue),
                        };
                        phase = Phase::Finishing;
                        deliveries.metrics.held.sub(waiting.len() as i64);
                        waiting.clear();
                        if let Some(ended) = ended.take() {
                            let _ = ended.send(Some(reason));
                        }
                    }
                    (_, _) => phase = Phase::Finishing,
                },
                _ = &mut returned, if phase == Phase::Returning => phase = Phase::Finishing,
                else => break,
            }
            // Take whatever else is ready without waiting (acks go out as the batch grows).
            loop {
                let mut progressed = false;
                while let Some(Some((settle, after))) = running.next().now_or_never() {
                    acks.settle_after(settle, after);
                    progressed = true;
                }
                if phase == Phase::Taking {
                    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                        last_tag = delivery.delivery_tag;
                        take(deliveries, delivery, &mut waiting, &mut acks, &mut running);
                        progressed = true;
                    }
                    while !waiting.is_empty() {
                        let Ok(permit) = permits.try_acquire() else {
                            break;
                        };
                        let delivery = waiting.pop_front().expect("checked non-empty");
                        deliveries.begin(delivery, permit, &mut acks, &mut running);
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            if acks.stalled() && phase == Phase::Taking {
                // Taking more would only run tasks that cannot be acked either.
                phase = Phase::Finishing;
                deliveries.metrics.held.sub(waiting.len() as i64);
                waiting.clear();
                let stream = events.map_or("", |log| log.stream());
                let reason = format!(
                    "cannot record events in `{stream}`: no ending confirmed within {}",
                    humantime::format_duration(config.events_timeout)
                );
                if let Some(ended) = ended.take() {
                    let _ = ended.send(Some(reason));
                }
            }
            // About to wait: what is done is acked, or its ack scheduled.
            acks.idle();
        }
        let lost = acks.finish().await;
        self.shared
            .metrics
            .acks_lost
            .with_label_values(&[&*self.queue])
            .inc_by(lost);
        // What the channel still holds (a delivery the broker sent after the return window)
        // goes back to the queue; a wedged channel is left to the connection's close.
        if channel.status().connected() {
            let close = channel.close(200, "consumer done".into());
            let _ = tokio::time::timeout(CANCEL_TIMEOUT, close).await;
        }
        lost
    }
}

/// Before the consumer of a paused queue is cancelled: waits (at most [`PAUSE_SETTLE`], acking
/// nothing meanwhile: `sent` deliveries are settled) until the broker can send it nothing more, because the channel holds a
/// full prefetch window unsettled or the queue has nothing ready. A quorum queue returns what
/// it sent to a consumer being cancelled, raising its delivery count; once the window is full
/// nothing is on its way. What arrives meanwhile waits with the rest, to be given back.
async fn exhaust_credit(
    deliveries: Deliveries<'_>,
    consumer: &mut Consumer,
    waiting: &mut VecDeque<Delivery>,
    sent: u64,
    last_tag: &mut u64,
    prefetch: u16,
) {
    let deadline = Instant::now() + PAUSE_SETTLE;
    // A prefetch of 0 is no limit: only an empty queue sends nothing more.
    while prefetch == 0 || last_tag.saturating_sub(sent) < u64::from(prefetch) {
        let poll = (Instant::now() + PAUSE_POLL).min(deadline);
        match tokio::time::timeout_at(poll, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                *last_tag = delivery.delivery_tag;
                deliveries.taken();
                waiting.push_back(delivery);
            }
            Ok(_) => return,
            Err(_) if Instant::now() >= deadline => return,
            Err(_) => {
                match warren_common::inspect_queue(deliveries.channel, deliveries.queue).await {
                    Ok(state) if state.ready > 0 => {}
                    _ => return,
                }
            }
        }
    }
}

/// Takes a delivery from the consumer: started at once if nothing waits before it and a
/// concurrency permit is free, else queued in order.
fn take<'a>(
    deliveries: Deliveries<'a>,
    delivery: Delivery,
    waiting: &mut VecDeque<Delivery>,
    acks: &mut Acks<'_>,
    running: &mut FuturesUnordered<BoxFuture<'a, Settled>>,
) {
    deliveries.taken();
    if !waiting.is_empty() {
        waiting.push_back(delivery);
        return;
    }
    match deliveries.shared.permits.try_acquire() {
        Ok(permit) => deliveries.begin(delivery, permit, acks, running),
        Err(_) => waiting.push_back(delivery),
    }
}
