//! Writing to the events stream: the [`EventLog`] that batches a process's events and sends
//! them with confirms, the workers' heartbeats, and declaring the stream.

use super::{
    Event, Heartbeat, DEFAULT_EVENTS_MAX_AGE, EVENTS_CONTENT_TYPE, FAREWELL, FIRST_SEQ_HEADER,
    HEARTBEAT, RECORD_HEADER, SOURCE_HEADER,
};
use crate::connect::Pacer;
use crate::declare::{declare_queue, open, TopologyError};
use crate::header_value::{int_value, text_value};
use crate::publish::Publisher;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Sends `heartbeat` to `stream` through `publisher` (as a farewell with `farewell`), with a
/// confirm.
pub async fn send_heartbeat(
    publisher: &Publisher,
    stream: &str,
    heartbeat: &Heartbeat,
    farewell: bool,
) -> Result<(), crate::PublishError> {
    let body = serde_json::to_vec(heartbeat).expect("a heartbeat serializes");
    let mut headers = FieldTable::default();
    headers.insert(SOURCE_HEADER.into(), text_value(&heartbeat.worker));
    let record = if farewell { FAREWELL } else { HEARTBEAT };
    headers.insert(RECORD_HEADER.into(), text_value(record));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    publisher
        .publish_raw("", stream, &body, properties, record)
        .await
}
/// Which batch a recorded event went into: it is on the stream once
/// [`EventLog::is_confirmed`] says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A batch taken from the buffer: sent, and sent again, until the broker confirms it.
struct Batch {
    /// Its number (from 0).
    number: u64,
    /// The sequence number of its first event.
    first: u64,
    body: Arc<Vec<u8>>,
}

/// The events recorded and not yet confirmed.
struct Buffer {
    /// The events recorded since the last batch was taken.
    body: Vec<u8>,
    events: u64,
    /// The number of the batch being filled (from 0).
    batch: u64,
    /// The sequence number of the next event recorded.
    next_seq: u64,
    /// The batch taken and not yet confirmed. Every sender sends this one until it is
    /// confirmed, and takes the next only then: a sender that stops (its session ended) leaves
    /// it to the next, and the confirmed batches are always a prefix.
    in_flight: Option<Batch>,
}

struct Inner {
    stream: String,
    source: String,
    buffer: Mutex<Buffer>,
    /// Wakes the senders when the buffer stops being empty.
    wake: Notify,
    /// How many batches, from the first, the broker has confirmed.
    confirmed: watch::Sender<u64>,
    /// Whether the last attempt to send a batch failed.
    failing: watch::Sender<bool>,
    /// How many senders have started: only the latest goes on after a failure.
    senders: AtomicU64,
}

/// A process's writer to the events stream. Cheap to clone; [`record`](Self::record) never
/// waits, and [`run`](Self::run) sends what is recorded.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("stream", &self.inner.stream)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl EventLog {
    /// A log writing to `stream` as `source` (the worker's or publisher's id).
    pub fn new(stream: impl Into<String>, source: impl Into<String>) -> Self {
        EventLog {
            inner: Arc::new(Inner {
                stream: stream.into(),
                source: source.into(),
                buffer: Mutex::new(Buffer {
                    body: Vec::new(),
                    events: 0,
                    batch: 0,
                    next_seq: 0,
                    in_flight: None,
                }),
                wake: Notify::new(),
                confirmed: watch::Sender::new(0),
                failing: watch::Sender::new(false),
                senders: AtomicU64::new(0),
            }),
        }
    }

    /// The stream this log writes to.
    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event, to be sent with the next batch.
    pub fn record(&self, event: &Event<'_>) -> Ticket {
        let mut buffer = self.buffer();
        event.write_json(&mut buffer.body);
        buffer.body.push(b'\n');
        buffer.events += 1;
        buffer.next_seq += 1;
        let ticket = Ticket(buffer.batch + 1);
        let first = buffer.events == 1;
        drop(buffer);
        if first {
            self.inner.wake.notify_waiters();
        }
        ticket
    }

    /// Whether the batch holding the event of `ticket` is confirmed.
    pub fn is_confirmed(&self, ticket: Ticket) -> bool {
        *self.inner.confirmed.borrow() >= ticket.0
    }

    /// Resolves once the batch holding the event of `ticket` is confirmed.
    pub async fn confirmed(&self, ticket: Ticket) {
        let mut confirmations = self.inner.confirmed.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = confirmations.wait_for(|&done| done >= ticket.0).await;
    }

    /// Whether the last attempt to send a batch failed (the stream is missing or refuses
    /// writes, or the connection is lost).
    pub fn is_failing(&self) -> bool {
        *self.inner.failing.borrow()
    }

    /// Resolves once a batch is sent again after a failure (at once if none failed).
    pub async fn recovered(&self) {
        let mut failing = self.inner.failing.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = failing.wait_for(|&failing| !failing).await;
    }

    /// Resolves whenever more batches are confirmed.
    pub fn confirmations(&self) -> watch::Receiver<u64> {
        self.inner.confirmed.subscribe()
    }

    /// The batch to send: the one in flight, or else the buffered events taken as the next.
    /// Returns (batch number, first seq, body).
    fn next_batch(&self) -> Option<(u64, u64, Arc<Vec<u8>>)> {
        let mut buffer = self.buffer();
        if buffer.in_flight.is_none() {
            if buffer.events == 0 {
                return None;
            }
            let first = buffer.next_seq - buffer.events;
            let number = buffer.batch;
            buffer.batch += 1;
            buffer.events = 0;
            // The next batch is likely the size of this one: one allocation, not a doubling
            // series.
            let capacity = buffer.body.len();
            let body = std::mem::replace(&mut buffer.body, Vec::with_capacity(capacity));
            buffer.in_flight = Some(Batch {
                number,
                first,
                body: Arc::new(body),
            });
        }
        let batch = buffer.in_flight.as_ref()?;
        Some((batch.number, batch.first, batch.body.clone()))
    }

    /// Marks batch `number` confirmed, if it is the one in flight (another sender may have
    /// had it confirmed first).
    fn sent(&self, number: u64) {
        let mut buffer = self.buffer();
        if buffer.in_flight.as_ref().map(|batch| batch.number) != Some(number) {
            return;
        }
        buffer.in_flight = None;
        drop(buffer);
        // The batches before it are confirmed already: the one in flight is the next.
        self.inner.confirmed.send_replace(number + 1);
    }

    /// Sends what is recorded, one batch at a time with a confirm, through `publisher`,
    /// until `stop` fires. A batch the broker refuses is sent again (with backoff) before any
    /// later one, so the confirmed batches are always a prefix.
    ///
    /// A worker starts a sender per connection, and the last session's may still be
    /// running: they share the batch in flight (it may reach the stream twice; applying it
    /// again changes nothing, docs/wire-format.md §11.2), and a sender that fails once a later one has
    /// started stops, leaving the work to it.
    pub async fn run(&self, publisher: &Publisher, stop: &CancellationToken) {
        let inner = &self.inner;
        let me = inner.senders.fetch_add(1, Ordering::SeqCst) + 1;
        let superseded = || inner.senders.load(Ordering::SeqCst) != me;
        let mut pacer = Pacer::new();
        loop {
            let wake = inner.wake.notified();
            tokio::pin!(wake);
            // Registered before looking, so that an event recorded meanwhile wakes it.
            wake.as_mut().enable();
            let Some((batch, first, body)) = self.next_batch() else {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = wake => continue,
                }
            };
            let mut headers = FieldTable::default();
            headers.insert(SOURCE_HEADER.into(), text_value(&inner.source));
            headers.insert(FIRST_SEQ_HEADER.into(), int_value(first));
            let properties = BasicProperties::default()
                .with_content_type(EVENTS_CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_headers(headers);
            let sent = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                sent = publisher.publish_raw("", &inner.stream, &body, properties, "events") => sent,
            };
            match sent {
                Ok(()) => {
                    self.sent(batch);
                    inner.failing.send_replace(false);
                    pacer.reset();
                }
                Err(error) if superseded() => {
                    tracing::debug!(stream = %inner.stream, %error, "a later sender records the events");
                    return;
                }
                Err(error) => {
                    inner.failing.send_replace(true);
                    tracing::warn!(stream = %inner.stream, %error, "could not record events; sending them again");
                    if !pacer.pause(stop).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Declares the events stream `name` with Warren's retention, unless it exists (then its own
/// retention stands: a stream's arguments cannot change after its declaration).
pub async fn declare_events_stream(conn: &Connection, name: &str) -> Result<(), TopologyError> {
    if crate::Topology::queue_exists(conn, name).await? {
        return Ok(());
    }
    let channel = open(conn, name).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(DEFAULT_EVENTS_MAX_AGE.into()),
    );
    let declared = declare_queue(&channel, name, args).await;
    let _ = channel.close(200, "declared".into()).await;
    match declared {
        // Another process declared it meanwhile, with other arguments: its stand.
        Err(TopologyError::Mismatch { .. }) => Ok(()),
        other => other,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{read_batch, EventError, EventKind};

    #[test]
    fn a_batch_reads_back_with_consecutive_sequence_numbers() {
        let log = EventLog::new("s", "worker-1");
        let mut failed = Event::new(EventKind::Retrying, "id-2", "t", "q");
        failed.attempt = Some(1);
        failed.error = Some(EventError {
            kind: "error".into(),
            reason: "line\nbreak \"quoted\"".into(),
        });
        failed.retry_at_ms = Some(5);
        let first = log.record(&Event::new(EventKind::Succeeded, "id-1", "t", "q"));
        let second = log.record(&failed);
        assert_eq!(first, second);
        assert!(!log.is_confirmed(first));
        let (batch, seq, body) = log.next_batch().expect("two events");
        assert_eq!((batch, seq), (0, 0));
        let mut headers = FieldTable::default();
        headers.insert(SOURCE_HEADER.into(), text_value("worker-1"));
        headers.insert(FIRST_SEQ_HEADER.into(), int_value(seq));
        let events = read_batch(&headers, &body).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].seq, 1);
        assert_eq!(events[1].source, "worker-1");
        assert_eq!(events[1].event, failed.into_owned());
        // The next event goes into the next batch, taken once the first is confirmed.
        let third = log.record(&Event::new(EventKind::Started, "id-3", "t", "q"));
        assert!(third > first);
        log.sent(0);
        assert!(log.is_confirmed(first) && !log.is_confirmed(third));
        assert_eq!(log.next_batch().map(|(b, s, _)| (b, s)), Some((1, 2)));
    }

    /// A worker that reconnects starts a second sender while the first may still hold a
    /// batch: the second must send that batch, not the next, or the next one's confirm would
    /// mark the first's events confirmed (and their tasks acked) while they were never sent.
    #[test]
    fn every_sender_sends_the_batch_in_flight_until_it_is_confirmed() {
        let log = EventLog::new("s", "worker-1");
        let first = log.record(&Event::new(EventKind::Succeeded, "id-1", "t", "q"));
        let (old, _, _) = log.next_batch().expect("one event");
        // Recorded while the old sender's batch is unconfirmed.
        let second = log.record(&Event::new(EventKind::Succeeded, "id-2", "t", "q"));
        let (new, _, _) = log.next_batch().expect("the batch in flight");
        assert_eq!(new, old, "a second sender sends the batch in flight again");
        log.sent(new);
        assert!(log.is_confirmed(first) && !log.is_confirmed(second));
        // The old sender's confirm of the same batch, arriving late, moves nothing.
        let (next, _, _) = log.next_batch().expect("the second event");
        log.sent(old);
        assert!(!log.is_confirmed(second));
        assert_eq!(log.next_batch().map(|(b, _, _)| b), Some(next));
        log.sent(next);
        assert!(log.is_confirmed(second));
        assert_eq!(log.next_batch().map(|(b, _, _)| b), None);
    }
}
