//! Following the events stream into the index: the one writer of the index file.
//!
//! Deliveries are applied many to a transaction (up to [`MAX_DELIVERIES`], or whatever came
//! within [`MAX_WAIT`] of the first), the transaction stores the last one's offset, and they
//! are acked only once it has committed. On start the follower resumes after the stored
//! offset, and says so when it cannot: the stored offset is past the stream's end, or another
//! batch is there now (the stream was recreated: it reads the stream again from its start), or
//! the first offset it gets is past the stored one (retention removed events it had not read).
//! Either way the index records a gap, counts it and goes on; it never skips silently.

use super::metrics::IndexMetrics;
use super::query::Readers;
use super::store::{Batch, GapReason, LastBatch, Store};
use super::workers::{self, Presence};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use std::cmp::Ordering;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warren_common::events::{declare_events_stream, read_record, Heartbeat, Record};
use warren_common::{connect, header_string, header_u64, now_ms, Amqp, Pacer};

/// Most deliveries applied in one transaction.
const MAX_DELIVERIES: usize = 500;
/// How long a delivery waits for more to share its transaction.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Deliveries the broker sends ahead, so that the next transaction fills while one commits.
const PREFETCH: u16 = 2 * MAX_DELIVERIES as u16;
/// How often ended tasks past the index retention are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most tasks deleted in one transaction (the writer holds the file meanwhile).
const SWEEP_CHUNK: usize = 10_000;
/// How often the follower looks for workers gone silent.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);
/// How long a gone worker stays listed.
const GONE_KEPT: Duration = Duration::from_secs(3600);
/// How long the follower waits for the stream's last messages when looking for its end.
const PROBE_IDLE: Duration = Duration::from_secs(2);
/// How long the last chunk's deliveries may pause before [`current_end`] takes the end as
/// found.
const CHUNK_IDLE: Duration = Duration::from_millis(200);
/// The longest [`current_end`] reads: a stream written without pause has no idle moment.
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// The offset header of a stream delivery.
const OFFSET_HEADER: &str = "x-stream-offset";

/// Why following stopped before being told to: reconnect and resume from the stored offset.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("cannot declare the events stream: {0}")]
    Declare(#[from] warren_common::TopologyError),
    #[error("cannot write the index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("a delivery has no `x-stream-offset` header: is `{0}` a stream?")]
    NoOffset(String),
    #[error("the consumer was closed")]
    Closed,
}

/// How a pass over the stream ended.
enum Flow {
    /// Told to stop.
    Stopped,
    /// Read the stream again from its start (it was recreated).
    Restart,
}

/// The writer of the index.
pub(crate) struct Follower {
    /// The readers, told whether the index has caught up.
    pub(crate) readers: Arc<Readers>,
    pub(crate) amqp: Amqp,
    pub(crate) stream: String,
    pub(crate) store: Arc<Mutex<Store>>,
    pub(crate) metrics: IndexMetrics,
    pub(crate) retention: Duration,
}

/// What to do with a delivery while resuming.
enum Resume {
    /// Already applied.
    Skip,
    /// New: apply it.
    Apply,
    /// The stream was recreated: read it again from its start.
    Restart,
}

/// What the follower expects of the first delivery after resuming.
enum Expect {
    /// The batch at the stored offset (earlier offsets are passed over).
    Stored(LastBatch),
    /// Anything: reading from the start, or resumed.
    Anything,
}

impl Follower {
    /// Follows the stream until `stop` fires, reconnecting (with backoff) whenever the broker
    /// or the file fails; what was committed before stays.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut pacer = Pacer::new();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            let name = format!("warren-producer serve index {}", self.stream);
            let Ok(conn) = connect(&self.amqp, &name, &stop).await else {
                return;
            };
            let failed = loop {
                match self.follow(&conn, &stop, &mut pacer, &mut sweep).await {
                    Ok(Flow::Stopped) => {
                        let _ = conn.close(200, "stopping".into()).await;
                        tracing::info!(stream = %self.stream, "status index stopped");
                        return;
                    }
                    Ok(Flow::Restart) => continue,
                    Err(error) => break error,
                }
            };
            if let FollowError::Index(_) = failed {
                self.metrics.failure();
            }
            tracing::warn!(stream = %self.stream, error = %failed, "status index stopped following; resuming from its stored offset");
            let _ = conn.close(200, "resuming".into()).await;
            if !pacer.pause(&stop).await {
                return;
            }
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass: from the stored offset (or the start) until stopped or failed.
    async fn follow(
        &self,
        conn: &Connection,
        stop: &CancellationToken,
        pacer: &mut Pacer,
        sweep: &mut tokio::time::Interval,
    ) -> Result<Flow, FollowError> {
        declare_events_stream(conn, &self.stream).await?;
        let stored = self.store().progress().last.clone();
        let expect = match stored {
            None => Expect::Anything,
            Some(last) => match stream_end(conn, &self.stream, last.offset).await? {
                Some(end) if end >= last.offset => Expect::Stored(last),
                end => {
                    tracing::warn!(stream = %self.stream, stored = last.offset, end, "the events stream ends before the index's stored offset: it was recreated; reading it from its start");
                    self.gap(GapReason::Recreated, None).await?;
                    Expect::Anything
                }
            },
        };
        let (start, from) = match &expect {
            Expect::Stored(last) => (
                AMQPValue::LongLongInt(i64::try_from(last.offset).unwrap_or(i64::MAX)),
                last.offset.to_string(),
            ),
            Expect::Anything => (AMQPValue::LongString("first".into()), "first".to_owned()),
        };
        tracing::info!(stream = %self.stream, from = %from, "status index following the events stream");
        let (channel, mut consumer) = consume(conn, &self.stream, PREFETCH, start).await?;
        // Where the stream ends now, found beside the reading: caught up once applied.
        self.caught_up(false);
        let end = current_end(conn, &self.stream);
        let flow = self
            .read(&mut consumer, expect, end, stop, pacer, sweep)
            .await;
        let _ = channel.close(200, "done".into()).await;
        flow
    }

    /// Applies what `consumer` delivers, checking the first delivery against `expect`.
    async fn read(
        &self,
        consumer: &mut Consumer,
        mut expect: Expect,
        end: impl Future<Output = Result<Option<u64>, lapin::Error>>,
        stop: &CancellationToken,
        pacer: &mut Pacer,
        sweep: &mut tokio::time::Interval,
    ) -> Result<Flow, FollowError> {
        let mut pending: Vec<(u64, Delivery)> = Vec::new();
        tokio::pin!(end);
        // Where the stream ended when this pass started: unknown until found.
        let mut target: Option<Option<u64>> = None;
        let mut deadline = Instant::now();
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    self.flush(&mut pending).await?;
                    return Ok(Flow::Stopped);
                }
                _ = sweep.tick() => {
                    self.sweep().await?;
                    continue;
                }
                _ = liveness.tick() => {
                    self.check_workers().await?;
                    continue;
                }
                found = &mut end, if target.is_none() => {
                    target = Some(found?);
                    self.check_caught_up(target);
                    continue;
                }
                _ = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                    self.flush(&mut pending).await?;
                    self.check_caught_up(target);
                    continue;
                }
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    self.flush(&mut pending).await?;
                    return Err(error.into());
                }
                None => {
                    self.flush(&mut pending).await?;
                    return Err(FollowError::Closed);
                }
            };
            pacer.reset();
            let offset =
                offset_of(&delivery).ok_or_else(|| FollowError::NoOffset(self.stream.clone()))?;
            match self.resume(&delivery, offset, &mut expect).await? {
                Resume::Skip => continue,
                Resume::Restart => return Ok(Flow::Restart),
                Resume::Apply => {}
            }
            if pending.is_empty() {
                deadline = Instant::now() + MAX_WAIT;
            }
            pending.push((offset, delivery));
            if pending.len() >= MAX_DELIVERIES {
                self.flush(&mut pending).await?;
                self.check_caught_up(target);
            }
        }
    }

    /// Says the index caught up once it has committed the stream up to `target`, where the
    /// stream ended when this pass started (`Some(None)`: it was empty; `None`: not found yet).
    fn check_caught_up(&self, target: Option<Option<u64>>) {
        let Some(end) = target else { return };
        if self.readers.caught_up() {
            return;
        }
        let committed = self.store().progress().last.as_ref().map(|l| l.offset);
        if end.is_none_or(|end| committed >= Some(end)) {
            tracing::info!(stream = %self.stream, offset = committed, "status index caught up with the events stream");
            self.caught_up(true);
        }
    }

    fn caught_up(&self, caught_up: bool) {
        self.readers.set_caught_up(caught_up);
        self.metrics.caught_up(caught_up);
    }

    /// Checks a delivery against what the stored offset leads to expect: offsets up to the
    /// stored one were applied (skip them); a batch other than the stored one at its offset
    /// means a recreated stream; a first offset past it means retention removed events.
    async fn resume(
        &self,
        delivery: &Delivery,
        offset: u64,
        expect: &mut Expect,
    ) -> Result<Resume, FollowError> {
        let Expect::Stored(last) = &*expect else {
            return Ok(Resume::Apply);
        };
        match offset.cmp(&last.offset) {
            Ordering::Less => {
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(Resume::Skip)
            }
            Ordering::Equal if is_batch(delivery, last) => {
                delivery.ack(BasicAckOptions::default()).await?;
                *expect = Expect::Anything;
                Ok(Resume::Skip)
            }
            Ordering::Equal => {
                tracing::warn!(stream = %self.stream, offset, "another batch is at the index's stored offset: the stream was recreated; reading it from its start");
                self.gap(GapReason::Recreated, None).await?;
                Ok(Resume::Restart)
            }
            Ordering::Greater => {
                tracing::warn!(stream = %self.stream, stored = last.offset, resumed = offset, "the events after the index's stored offset were removed by the stream's retention before it read them: the index is incomplete");
                self.gap(GapReason::Retention, Some(offset)).await?;
                *expect = Expect::Anything;
                Ok(Resume::Apply)
            }
        }
    }

    /// Applies the pending deliveries in one transaction, then acks them.
    async fn flush(&self, pending: &mut Vec<(u64, Delivery)>) -> Result<(), FollowError> {
        let Some((offset, last)) = pending.last() else {
            return Ok(());
        };
        let offset = *offset;
        let batches: Vec<Batch> = pending.iter().map(|(o, d)| self.batch(*o, d)).collect();
        let invalid = batches.iter().filter(|b| b.source.is_empty()).count();
        let count = batches.len();
        let horizon = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let newest_event = batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.event.at_ms))
            .max();
        let store = self.store.clone();
        let (applied, newest, workers) = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let applied = store.apply(&batches, horizon, now_ms())?;
            let workers = workers::count(store.connection())?;
            Ok::<_, rusqlite::Error>((applied, store.progress().last_event_at_ms, workers))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.metrics.workers(workers);
        self.metrics.committed(&applied, count, invalid, offset);
        self.metrics.last_event(newest);
        if let Some(at_ms) = newest_event {
            self.metrics.lag(at_ms, now_ms());
        }
        // Acking only grants credit: nothing is removed from a stream.
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        pending.clear();
        Ok(())
    }

    /// A delivery's batch: events, or a worker's heartbeat or farewell; a message not in the
    /// format is logged and passed over.
    fn batch(&self, offset: u64, delivery: &Delivery) -> Batch {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        match read_record(&headers, &delivery.data) {
            Ok(Record::Heartbeat(heartbeat)) => presence(offset, heartbeat, false),
            Ok(Record::Farewell(heartbeat)) => presence(offset, heartbeat, true),
            Ok(Record::Events(events)) => Batch {
                offset,
                source: events.first().map(|e| e.source.clone()).unwrap_or_default(),
                first_seq: events.first().map_or(0, |e| e.seq),
                events,
                presence: None,
            },
            Err(error) => {
                tracing::warn!(stream = %self.stream, offset, %error, "passing over a stream message that is not a batch of events");
                Batch {
                    offset,
                    source: String::new(),
                    first_seq: 0,
                    events: Vec::new(),
                    presence: None,
                }
            }
        }
    }

    async fn gap(&self, reason: GapReason, resumed: Option<u64>) -> Result<(), FollowError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            store.record_gap(reason, resumed, now_ms())
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.metrics.gap(reason);
        self.metrics.incomplete(true);
        Ok(())
    }

    /// Marks gone the workers silent for their intervals (their running tasks become lost)
    /// and forgets those gone for [`GONE_KEPT`].
    async fn check_workers(&self) -> Result<(), FollowError> {
        let store = self.store.clone();
        let now = now_ms();
        let forget = now.saturating_sub(GONE_KEPT.as_millis() as u64);
        let ((counts, silent), workers) = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let checked = store.check_workers(now, forget)?;
            Ok::<_, rusqlite::Error>((checked, workers::count(store.connection())?))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.metrics.count(&counts);
        self.metrics.workers(workers);
        for worker in silent {
            tracing::info!(stream = %self.stream, worker = %worker, "worker silent for its heartbeat intervals: gone, its running tasks lost");
        }
        Ok(())
    }

    /// Deletes the tasks that ended longer than the retention ago.
    async fn sweep(&self) -> Result<(), FollowError> {
        let before = now_ms().saturating_sub(self.retention.as_millis() as u64);
        loop {
            let store = self.store.clone();
            let changes = tokio::task::spawn_blocking(move || {
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                store.sweep(before, SWEEP_CHUNK)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            let deleted: i64 = changes.values().map(|d| -d).sum();
            self.metrics.deleted(&changes);
            if deleted > 0 {
                tracing::info!(stream = %self.stream, deleted, "deleted ended tasks past the index retention");
            }
            if deleted < SWEEP_CHUNK as i64 {
                return Ok(());
            }
        }
    }
}

/// The batch of a heartbeat (a farewell if `farewell`).
fn presence(offset: u64, heartbeat: Heartbeat, farewell: bool) -> Batch {
    Batch {
        offset,
        source: heartbeat.worker.clone(),
        first_seq: 0,
        events: Vec::new(),
        presence: Some(Presence {
            heartbeat,
            farewell,
        }),
    }
}

/// Whether `delivery` is the batch `last` describes.
fn is_batch(delivery: &Delivery, last: &LastBatch) -> bool {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let source = header_string(&headers, warren_common::events::SOURCE_HEADER).unwrap_or_default();
    let first = header_u64(&headers, warren_common::events::FIRST_SEQ_HEADER)
        .ok()
        .flatten()
        .unwrap_or(0);
    (source.as_str(), first) == (last.source.as_str(), last.first_seq)
}

fn offset_of(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    header_u64(headers, OFFSET_HEADER).ok().flatten()
}

/// A consumer of `stream` from `start` (an `x-stream-offset` value).
async fn consume(
    conn: &Connection,
    stream: &str,
    prefetch: u16,
    start: AMQPValue,
) -> Result<(Channel, Consumer), lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), start);
    let consumer = channel
        .basic_consume(
            stream.into(),
            "warren-index".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    Ok((channel, consumer))
}

/// Where the stream ends about now: the highest offset of its last chunk (read until its
/// deliveries pause for [`CHUNK_IDLE`], at most [`PROBE_LIMIT`]); none for an empty stream.
async fn current_end(conn: &Connection, stream: &str) -> Result<Option<u64>, lapin::Error> {
    let (channel, mut consumer) =
        consume(conn, stream, 100, AMQPValue::LongString("last".into())).await?;
    let limit = Instant::now() + PROBE_LIMIT;
    let mut end = None;
    loop {
        let idle = if end.is_none() {
            PROBE_IDLE
        } else {
            CHUNK_IDLE
        };
        let wait = idle.min(limit.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                end = end.max(offset_of(&delivery));
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok(Some(Err(error))) => return Err(error),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = channel.close(200, "found the end".into()).await;
    Ok(end)
}

/// The highest offset of the stream, read from its last chunk until one at least `want` is
/// seen or none comes for [`PROBE_IDLE`]; none for an empty stream.
async fn stream_end(
    conn: &Connection,
    stream: &str,
    want: u64,
) -> Result<Option<u64>, lapin::Error> {
    let (channel, mut consumer) =
        consume(conn, stream, 100, AMQPValue::LongString("last".into())).await?;
    let mut end = None;
    while end < Some(want) {
        match tokio::time::timeout(PROBE_IDLE, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                end = end.max(offset_of(&delivery));
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok(Some(Err(error))) => return Err(error),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = channel.close(200, "found the end".into()).await;
    Ok(end)
}
