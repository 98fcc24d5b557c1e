//! The worker's side of the control stream (docs/wire-format.md §13): the state its records
//! add up to (cancelled tasks, paused queues), the running tasks a cancellation stops, and
//! [`follow`]ing the stream in each session.
//!
//! Checking a task costs one atomic load while nothing is cancelled. Each session reads the
//! stream from where the last one stopped (from its start on boot), after writing a `sync`
//! marker: queues are consumed only once the marker is read back, so a worker never runs a
//! task cancelled before it connected. While the stream cannot be read at boot the worker
//! consumes nothing and `/readyz` says why (503); once synced, losing the stream keeps the
//! state known so far and the queues consumed (`degraded`), and the worker reads it again
//! with backoff.

use crate::consume::subscription::QueueStates;
use crate::Shared;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_common::control::{declare_control_stream, send_record, ControlState, Record, Sync};
use warren_common::{header_u64, now_ms, Pacer, Publisher};

/// Records read before acking them in one go (a stream consumer acks to get more).
const PREFETCH: u16 = 500;

/// How often a synced worker checks whether a snapshot is due and forgets expired
/// cancellations.
const TICK: Duration = Duration::from_secs(30);

/// The running tasks a cancellation may stop: per id, the runs with their creation times.
type Running = HashMap<String, Vec<(u64, Option<u64>, CancellationToken)>>;

/// The control state of a worker, shared by its sessions and tasks.
pub(crate) struct Control {
    stream: String,
    state: RwLock<ControlState>,
    /// Whether any cancellation is known: the one check a task makes when none is.
    any_cancelled: AtomicBool,
    running: Mutex<Running>,
    next_key: AtomicU64,
    /// Bumped whenever a queue is paused or resumed.
    changes: watch::Sender<u64>,
    /// The offset after the last record read, where the next session starts.
    next_offset: Mutex<Option<u64>>,
    snapshot_interval: Duration,
}

impl Control {
    pub(crate) fn new(stream: String, snapshot_interval: Duration) -> Self {
        Control {
            stream,
            state: RwLock::new(ControlState::new()),
            any_cancelled: AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            changes: watch::Sender::new(0),
            next_offset: Mutex::new(None),
            snapshot_interval,
        }
    }

    /// The stream followed.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether a run of task `id` created at `created_ms` is cancelled.
    pub(crate) fn is_cancelled(&self, id: &str, created_ms: Option<u64>) -> bool {
        if !self.any_cancelled.load(Ordering::Acquire) {
            return false;
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.is_cancelled(id, created_ms, now_ms())
    }

    /// Whether `queue` is paused.
    pub(crate) fn is_paused(&self, queue: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.is_paused(queue)
    }

    /// Resolves once `queue`'s pause state is `paused`.
    pub(crate) async fn until(&self, queue: &str, paused: bool) {
        let mut changes = self.changes.subscribe();
        while self.is_paused(queue) != paused {
            // The sender lives as long as `self`.
            let _ = changes.changed().await;
        }
    }

    /// Applies a record read at `offset`, stopping the running tasks it cancels.
    fn apply(&self, offset: u64, record: &Record) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let applied = state.apply(offset, record, now_ms());
        self.any_cancelled
            .store(state.has_cancellations(), Ordering::Release);
        *self.next_offset.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset + 1);
        if !applied.cancelled.is_empty() {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            for id in &applied.cancelled {
                for (_, created, token) in running.get(id).into_iter().flatten() {
                    if state.is_cancelled(id, *created, now_ms()) {
                        token.cancel();
                    }
                }
            }
        }
        drop(state);
        for (queue, paused) in &applied.queues {
            tracing::info!(queue, paused, stream = %self.stream, "control: queue {}",
                if *paused { "paused" } else { "resumed" });
        }
        if !applied.queues.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Forgets expired cancellations; returns a snapshot to write if one is due.
    fn tick(&self, jitter: Duration) -> Option<Record> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        state.expire(now);
        self.any_cancelled
            .store(state.has_cancellations(), Ordering::Release);
        let due = (self.snapshot_interval + jitter).as_millis() as u64;
        let stale = state
            .last_snapshot_ms()
            .is_none_or(|at| now.saturating_sub(at) >= due);
        (stale && !state.is_empty()).then(|| state.snapshot(now))
    }

    /// Lists a running task so that a cancellation of it fires the returned token, until the
    /// guard is dropped.
    fn track(self: &Arc<Self>, id: &str, created_ms: Option<u64>) -> Tracked {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .entry(id.to_owned())
            .or_default()
            .push((key, created_ms, token.clone()));
        drop(running);
        Tracked {
            control: self.clone(),
            id: id.to_owned(),
            key,
            token,
        }
    }
}

/// A running task listed in [`Control`]'s running tasks.
struct Tracked {
    control: Arc<Control>,
    id: String,
    key: u64,
    token: CancellationToken,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut running = self
            .control
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(runs) = running.get_mut(&self.id) {
            runs.retain(|(key, _, _)| *key != self.key);
            if runs.is_empty() {
                running.remove(&self.id);
            }
        }
    }
}

/// Whether the task a handler runs was cancelled (docs/wire-format.md §13). An async handler
/// is stopped at its next await without looking; code that blocks polls
/// [`is_cancelled`](Self::is_cancelled). Cheap to clone; never cancelled when the worker
/// follows no control stream.
#[derive(Clone, Default)]
pub struct Cancellation(Option<Arc<Watched>>);

struct Watched {
    control: Arc<Control>,
    id: String,
    created_ms: Option<u64>,
}

impl std::fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancellation {
    /// The cancellation of the run of `id` created at `created_ms`, if the worker follows a
    /// control stream.
    pub(crate) fn of(shared: &Shared, id: &str, created_ms: Option<u64>) -> Self {
        Cancellation(shared.control.as_ref().map(|control| {
            Arc::new(Watched {
                control: control.clone(),
                id: id.to_owned(),
                created_ms,
            })
        }))
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|w| w.control.is_cancelled(&w.id, w.created_ms))
    }

    /// Resolves once the task is cancelled (never, when the worker follows no control
    /// stream).
    pub async fn cancelled(&self) {
        let Some(watched) = &self.0 else {
            return std::future::pending().await;
        };
        let tracked = watched.control.track(&watched.id, watched.created_ms);
        // A cancellation read before the task was listed fired no token.
        if self.is_cancelled() {
            return;
        }
        tracked.token.cancelled().await;
    }
}

/// Follows the control stream on `conn` for a session, until `stop` fires or the connection
/// is lost. Tells `states` once every record written before the session began is applied
/// (without a control stream, at once).
pub(crate) async fn follow(
    shared: &Shared,
    conn: &Connection,
    publisher: &Publisher,
    states: &QueueStates,
    stop: &CancellationToken,
) {
    let Some(control) = &shared.control else {
        return;
    };
    let mut progress = Progress {
        marker: Sync {
            source: shared.config.worker_id.clone(),
            nonce: uuid::Uuid::new_v4().to_string(),
        },
        sent: false,
        synced: false,
    };
    let mut pacer = Pacer::new();
    while !stop.is_cancelled() && conn.status().connected() {
        let reason = match read(
            shared,
            control,
            conn,
            publisher,
            states,
            &mut progress,
            stop,
        )
        .await
        {
            Ok(()) => return,
            Err(reason) => reason,
        };
        if !conn.status().connected() || stop.is_cancelled() {
            return;
        }
        tracing::warn!(stream = %control.stream, %reason, "cannot follow the control stream; retrying");
        states.control_unavailable(reason);
        if !pacer.pause(stop).await {
            return;
        }
    }
}

/// Where a session's following of the stream stands, across attempts to read it.
struct Progress {
    /// The session's sync marker.
    marker: Sync,
    /// Whether the marker is on the stream.
    sent: bool,
    /// Whether it was read back: every record written before the session is applied.
    synced: bool,
}

/// Declares the stream, writes the session's marker once, and reads records until `stop`
/// (`Ok`) or the stream is lost (`Err`, why).
async fn read(
    shared: &Shared,
    control: &Control,
    conn: &Connection,
    publisher: &Publisher,
    states: &QueueStates,
    progress: &mut Progress,
    stop: &CancellationToken,
) -> Result<(), String> {
    let stream = control.stream.as_str();
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("{what} `{stream}`: {e}");
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| failed("opening a channel for", &e))?;
    declare_control_stream(&channel, stream)
        .await
        .map_err(|e| failed("declaring", &e))?;
    if !progress.sent {
        send_record(publisher, stream, &Record::Sync(progress.marker.clone()))
            .await
            .map_err(|e| failed("writing a sync marker to", &e))?;
        progress.sent = true;
    }
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| failed("opening a channel for", &e))?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| failed("reading", &e))?;
    let start = *control
        .next_offset
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut args = FieldTable::default();
    let offset = match start {
        Some(next) => AMQPValue::LongLongInt(next.try_into().unwrap_or(i64::MAX)),
        None => AMQPValue::LongString("first".into()),
    };
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "warren-control".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(|e| failed("reading", &e))?;
    if progress.synced {
        // Read again after losing it: caught up as before.
        states.control_synced();
    }
    let jitter = jitter(&shared.config.worker_id, control.snapshot_interval);
    let mut tick = tokio::time::interval(TICK.min(control.snapshot_interval));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = channel.close(200, "stopping".into()).await;
                return Ok(());
            }
            next = consumer.next() => {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(failed("reading", &error)),
                    None => return Err(format!("the broker cancelled the reading of `{stream}`")),
                };
                let headers = delivery.properties.headers().clone().unwrap_or_default();
                let offset = header_u64(&headers, "x-stream-offset").ok().flatten();
                match (Record::from_body(&delivery.data), offset) {
                    (Ok(record), Some(offset)) => {
                        if !progress.synced && record == Record::Sync(progress.marker.clone()) {
                            progress.synced = true;
                            tracing::info!(stream, offset, "control stream read up to the session's start");
                            states.control_synced();
                        }
                        control.apply(offset, &record);
                    }
                    (Err(error), _) => tracing::warn!(stream, offset, %error, "skipping a control record that cannot be read"),
                    (_, None) => tracing::warn!(stream, "skipping a control record without its offset"),
                }
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    return Err(failed("reading", &error));
                }
            }
            _ = tick.tick(), if progress.synced => {
                if let Some(snapshot) = control.tick(jitter) {
                    match send_record(publisher, stream, &snapshot).await {
                        Ok(()) => tracing::info!(stream, "control: wrote a snapshot"),
                        Err(error) => tracing::warn!(stream, %error, "could not write a control snapshot"),
                    }
                }
            }
        }
    }
}

/// Up to a tenth of the snapshot interval, different for each worker, so that workers
/// finding the last snapshot old do not all write one at once.
fn jitter(worker_id: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    worker_id.hash(&mut hasher);
    let tenth = interval.as_millis() as u64 / 10;
    Duration::from_millis(hasher.finish() % tenth.max(1))
}
