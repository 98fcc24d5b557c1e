//! One queue's life within a session: declare it, consume it, and when the broker cannot
//! serve it (its node is down, it has no leader, its consumer was cancelled) back off and
//! try again on the same connection, while the session's other queues go on. Only a lost
//! connection, the drain or a declaration only a person can fix ends it.
//!
//! [`QueueStates`] gathers what each subscription and the delay cascade report into the
//! worker's readiness: `ready`, `degraded` (some queue is not consumed; 200) or
//! `unavailable` (none is; 503), naming what is missing and why.

use crate::consume::consumer::{consume, ConsumerEnd, SessionLink};
use crate::Shared;
use lapin::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_common::Publisher;
use warren_common::{Health, Pacer, QueueSpec, Readiness, TopologyError};

/// Where one queue (or the delay cascade) stands in the current session.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not tried yet in this session.
    Pending,
    /// Consumed (for the cascade: declared).
    Fine,
    /// The broker cannot serve it now, for this reason.
    Unavailable(String),
    /// Paused through the control stream: not consumed, on purpose.
    Paused,
}

/// Name under which the delay cascade's state is kept beside the queues'.
const CASCADE: &str = "the delay cascade";

/// Name under which the control stream's state is kept beside the queues' (`Fine` once the
/// session has read it up to its start).
const CONTROL: &str = "the control stream";

/// The state of every queue of a session, and of the delay cascade, published to readiness.
pub(crate) struct QueueStates {
    health: Health,
    states: Mutex<BTreeMap<String, State>>,
    /// Per queue: fired to re-subscribe it (a stalled consumer).
    resubscribe: HashMap<String, Notify>,
    /// Per queue: how many times it was subscribed in this session.
    subscriptions: HashMap<String, AtomicU64>,
    /// The control stream followed, if any.
    control: Option<String>,
    /// Whether the session has read the control stream up to its start (or follows none).
    synced: tokio::sync::watch::Sender<bool>,
}

impl QueueStates {
    /// The states of `queues`, and of the control stream `control` if the worker follows one.
    pub(crate) fn new(queues: &[String], control: Option<&str>, health: Health) -> Self {
        let mut states: BTreeMap<String, State> =
            queues.iter().map(|q| (q.clone(), State::Pending)).collect();
        states.insert(CASCADE.to_owned(), State::Pending);
        if control.is_some() {
            states.insert(CONTROL.to_owned(), State::Pending);
        }
        let resubscribe = queues.iter().map(|q| (q.clone(), Notify::new())).collect();
        let subscriptions = queues
            .iter()
            .map(|q| (q.clone(), AtomicU64::new(0)))
            .collect();
        QueueStates {
            health,
            states: Mutex::new(states),
            resubscribe,
            subscriptions,
            control: control.map(str::to_owned),
            synced: tokio::sync::watch::Sender::new(control.is_none()),
        }
    }

    /// The session has read the control stream up to its start: its queues may be consumed.
    pub(crate) fn control_synced(&self) {
        self.synced.send_replace(true);
        self.set(CONTROL, State::Fine);
    }

    /// The control stream cannot be read, for `reason`.
    pub(crate) fn control_unavailable(&self, reason: String) {
        self.set(CONTROL, State::Unavailable(reason));
    }

    /// Waits until the session has read the control stream up to its start; `false` if
    /// `stop` fired first.
    pub(crate) async fn control_read(&self, stop: &CancellationToken) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::select! {
            _ = stop.cancelled() => false,
            // The sender lives as long as `self`.
            read = synced.wait_for(|&synced| synced) => read.is_ok(),
        }
    }

    /// `queue` is paused: not consumed, on purpose.
    pub(crate) fn paused(&self, queue: &str) {
        self.set(queue, State::Paused);
    }

    pub(crate) fn consuming(&self, queue: &str) {
        if let Some(count) = self.subscriptions.get(queue) {
            count.fetch_add(1, Ordering::AcqRel);
        }
        self.set(queue, State::Fine);
    }

    /// How many times `queue` was subscribed in this session: a re-subscription asked for
    /// has happened once this grows.
    pub(crate) fn subscriptions(&self, queue: &str) -> u64 {
        self.subscriptions
            .get(queue)
            .map_or(0, |count| count.load(Ordering::Acquire))
    }

    pub(crate) fn unavailable(&self, queue: &str, reason: String) {
        self.set(queue, State::Unavailable(reason));
    }

    /// Whether `queue` is consumed now (the monitor polls only those: polling one the broker
    /// cannot serve would close a channel each time).
    pub(crate) fn is_consumed(&self, queue: &str) -> bool {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(queue) == Some(&State::Fine)
    }

    /// Whether the delay cascade (and so `warren.delay.unroutable`) was declared.
    pub(crate) fn is_cascade_declared(&self) -> bool {
        self.is_consumed(CASCADE)
    }

    pub(crate) fn cascade_declared(&self) {
        self.set(CASCADE, State::Fine);
    }

    pub(crate) fn cascade_unavailable(&self, reason: String) {
        self.set(CASCADE, State::Unavailable(reason));
    }

    /// Asks `queue`'s subscription to cancel its consumer and subscribe again.
    pub(crate) fn resubscribe(&self, queue: &str) {
        if let Some(notify) = self.resubscribe.get(queue) {
            notify.notify_one();
        }
    }

    fn set(&self, what: &str, state: State) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.insert(what.to_owned(), state);
        // Until everything has been tried once the worker is still connecting, unless the
        // control stream it waits for before consuming anything is unavailable (say so).
        let control_down = matches!(states.get(CONTROL), Some(State::Unavailable(_)));
        if !control_down && states.values().any(|s| *s == State::Pending) {
            return;
        }
        let control = self.control.as_deref().unwrap_or("");
        let missing: Vec<String> = states
            .iter()
            .filter_map(|(what, state)| match state {
                State::Unavailable(reason) if what == CASCADE => {
                    Some(format!("{CASCADE} is unavailable ({reason})"))
                }
                State::Unavailable(reason) if what == CONTROL => {
                    Some(format!("{CONTROL} `{control}` is unavailable ({reason})"))
                }
                State::Unavailable(reason) => {
                    Some(format!("queue `{what}` is unavailable ({reason})"))
                }
                _ => None,
            })
            .collect();
        let paused = states
            .iter()
            .filter(|(_, state)| **state == State::Paused)
            .map(|(what, _)| format!("queue `{what}` is paused"));
        let detail: Vec<String> = missing.iter().cloned().chain(paused).collect();
        let detail = (!detail.is_empty()).then(|| detail.join("; "));
        // A paused queue counts as served: a paused worker is healthy.
        let consumed = states.iter().any(|(what, state)| {
            what != CASCADE && what != CONTROL && matches!(state, State::Fine | State::Paused)
        });
        match (missing.is_empty(), consumed) {
            (true, _) => self.health.set_with(Readiness::Ready, detail),
            (false, true) => self.health.set_with(Readiness::Degraded, detail),
            (false, false) => self.health.set_with(Readiness::Unavailable, detail),
        }
    }
}

/// What a subscription leaves behind when it ends.
pub(crate) struct Ended {
    /// The consume loops still settling their running tasks; each resolves to the number of
    /// deliveries whose settlement could not be sent.
    pub(crate) ackers: Vec<JoinHandle<u64>>,
    /// A declaration only a person can fix (the worker stops).
    pub(crate) fatal: Option<TopologyError>,
}

/// Declares and consumes `queue` until `stop` fires (the drain, or the session's connection
/// was lost) or its declaration fails for good.
pub(crate) async fn subscribe(
    shared: Arc<Shared>,
    conn: &Connection,
    publisher: &Publisher,
    states: &QueueStates,
    queue: Arc<str>,
    stop: &CancellationToken,
) -> Ended {
    let config = &shared.config;
    let spec = QueueSpec::new(queue.to_string(), config.queue_type)
        .with_max_priority(config.max_priority)
        .with_retention(config.retention);
    let mut ackers = Vec::new();
    let mut pacer = Pacer::new();
    // Nothing runs before the control records written so far are applied.
    if !states.control_read(stop).await {
        return Ended {
            ackers,
            fatal: None,
        };
    }
    while !stop.is_cancelled() && conn.status().connected() {
        if let Some(control) = shared.control.as_ref().filter(|c| c.is_paused(&queue)) {
            tracing::info!(queue = %queue, stream = control.stream(), "queue paused; not consuming it until resumed");
            states.paused(&queue);
            tokio::select! {
                _ = stop.cancelled() => break,
                () = control.until(&queue, false) => {}
            }
            tracing::info!(queue = %queue, "queue resumed");
            continue;
        }
        if let Err(error) = shared.topology.declare(conn, &spec).await {
            if error.is_permanent() {
                return Ended {
                    ackers,
                    fatal: Some(error),
                };
            }
            if !conn.status().connected() {
                break;
            }
            if error.is_channels_exhausted() {
                tracing::warn!(queue = %queue, %error, "no channel left on the connection; reconnecting");
                stop.cancel();
                break;
            }
            tracing::warn!(queue = %queue, %error, "cannot declare the queue; retrying");
            states.unavailable(&queue, error.reason());
            if !pacer.pause(stop).await {
                break;
            }
            continue;
        }
        let (end, restarted) = consume_once(&shared, conn, publisher, states, &queue, stop).await;
        match end {
            ConsumerEnd::Stopped(acker) => {
                ackers.push(acker);
                if restarted {
                    pacer.reset();
                }
            }
            ConsumerEnd::Lost { reason, acker } => {
                ackers.extend(acker);
                if !conn.status().connected() || stop.is_cancelled() {
                    break;
                }
                tracing::warn!(queue = %queue, %reason, "consumer lost; subscribing again");
                states.unavailable(&queue, reason);
                if !pacer.pause(stop).await {
                    break;
                }
                // Tasks run while events cannot be recorded could not be acked either.
                if let Some(events) = shared.events.as_ref().filter(|log| log.is_failing()) {
                    tracing::warn!(queue = %queue, stream = events.stream(),
                        "waiting until events can be recorded before consuming again");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        () = events.recovered() => {}
                    }
                }
            }
        }
    }
    Ended {
        ackers,
        fatal: None,
    }
}

/// One subscription of `queue`, until it ends or the monitor asks for a fresh one (then
/// `true`: the consumer was cancelled on purpose).
async fn consume_once(
    shared: &Arc<Shared>,
    conn: &Connection,
    publisher: &Publisher,
    states: &QueueStates,
    queue: &Arc<str>,
    stop: &CancellationToken,
) -> (ConsumerEnd, bool) {
    let own_stop = stop.child_token();
    let link = SessionLink {
        conn,
        publisher,
        states,
        stop: &own_stop,
    };
    let consuming = consume(shared.clone(), link, queue.clone());
    tokio::pin!(consuming);
    let restart = states.resubscribe[&**queue].notified();
    // A pause stops the consumer as a re-subscription does; the loop then waits for the
    // resume before subscribing again.
    let paused = async {
        match &shared.control {
            Some(control) => control.until(queue, true).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        end = &mut consuming => (end, false),
        _ = restart => {
            own_stop.cancel();
            (consuming.await, true)
        }
        () = paused => {
            own_stop.cancel();
            (consuming.await, true)
        }
    }
}
