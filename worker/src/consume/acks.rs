//! Settling deliveries on one consumer channel with as few frames as possible.
//!
//! Handlers finish out of order. The [`AckLedger`] tracks which delivery tags are settled and
//! acks the contiguous prefix with one `multiple` ack; a delivery finished behind a slow one
//! is held back until the gap closes, and acked on its own if the gap is still open after
//! [`QUIET`], so a long task never holds the rest of the prefetch window hostage. Requeues
//! (returning a delivery to the queue) are sent at once, individually.
//!
//! [`Acks`] owns the ledger, the frames in flight and the two timers that send what is held
//! back; the consume loop only tells it what was settled, when it is about to wait
//! ([`Acks::idle`]), and waits on [`Acks::due`] while a timer is armed.
//!
//! When the worker records events, a delivery whose event is not yet confirmed by the events
//! stream waits for it before the ledger sees its ack ([`Acks::settle_after`]): a task is
//! never acked before its ending is recorded. If no event is confirmed for the events timeout,
//! the acks give up on those deliveries ([`Acks::stalled`]): the consume loop ends, and the
//! broker gets them back when its channel closes, rather than holding them toward its
//! consumer timeout.

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use warren_common::events::{EventLog, Ticket};

/// How long a delivery finished behind an unfinished one waits for the gap to close before
/// it is acked on its own. A gap left by a fast task closes within microseconds, and one
/// `multiple` ack then settles everything.
pub(crate) const QUIET: Duration = Duration::from_millis(20);

/// The least time between two `multiple` acks sent because the consume loop ran out of work
/// (a tenth of the window finished is acked at once). Every ack frame costs the broker a
/// Raft command (measured: ~20 µs of its CPU on a quorum queue), and a busy loop runs out of
/// work after almost every delivery: an ack each time made the broker the bottleneck. Held
/// longer (1 ms), the acks cost the worker more than they saved the broker: its consume loop
/// spent ~0.45 µs more per task, for the same broker CPU (docs/performance-findings.md, finding 16).
/// A quiet loop (one task now and then) still acks each task as it finishes.
pub(crate) const LINGER: Duration = Duration::from_micros(200);

/// How a delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Acknowledge: the task is done (or safely moved to another queue).
    Ack(u64),
    /// Already acknowledged on its own (a task moved to be run alone): nothing to send.
    Acked(u64),
    /// Return the delivery to its queue for another worker.
    Requeue(u64),
}

/// A frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckAction {
    /// `basic.ack` of every outstanding tag up to and including this one.
    AckUpTo(u64),
    /// `basic.ack` of this tag alone.
    AckOne(u64),
    /// `basic.nack` with requeue of this tag alone.
    Requeue(u64),
}

/// Which tags are settled, and what to send for them.
#[derive(Debug)]
pub(crate) struct AckLedger {
    /// Lowest tag not yet settled.
    next: u64,
    /// Done, beyond `next`, not yet acked.
    pending: BTreeSet<u64>,
    /// Already acked or requeued individually, beyond `next`.
    sent: BTreeSet<u64>,
    /// The highest tag below `next` that is done and not yet acked, if any: what a
    /// `multiple` ack names (never a tag already settled on its own).
    up_to: Option<u64>,
    /// How many tags that `multiple` ack would settle.
    ackable: u64,
}

impl AckLedger {
    /// A ledger for a fresh channel (tags start at 1).
    pub(crate) fn new() -> Self {
        AckLedger {
            next: 1,
            pending: BTreeSet::new(),
            sent: BTreeSet::new(),
            up_to: None,
            ackable: 0,
        }
    }

    /// Records one settlement, returning a frame to send at once, if any.
    pub(crate) fn record(&mut self, settle: Settle) -> Option<AckAction> {
        match settle {
            Settle::Ack(tag) if tag == self.next && self.pending.is_empty() => {
                // The common case, in order: no set to touch.
                self.up_to = Some(tag);
                self.next += 1;
                self.ackable += 1;
                self.skip_sent();
                None
            }
            Settle::Ack(tag) => {
                self.pending.insert(tag);
                self.advance();
                None
            }
            Settle::Requeue(tag) => {
                self.sent.insert(tag);
                self.advance();
                Some(AckAction::Requeue(tag))
            }
            Settle::Acked(tag) => {
                self.sent.insert(tag);
                self.advance();
                None
            }
        }
    }

    fn advance(&mut self) {
        loop {
            if self.pending.remove(&self.next) {
                self.up_to = Some(self.next);
                self.ackable += 1;
            } else if !self.sent.remove(&self.next) {
                break;
            }
            self.next += 1;
        }
    }

    fn skip_sent(&mut self) {
        while self.sent.remove(&self.next) {
            self.next += 1;
        }
    }

    /// Finished deliveries one `multiple` ack would settle now.
    pub(crate) fn ackable(&self) -> u64 {
        self.ackable
    }

    /// The frames that settle what was recorded: one `multiple` ack for the contiguous
    /// prefix, and with `force` individual acks for those held back behind a gap.
    pub(crate) fn flush(&mut self, force: bool) -> Vec<AckAction> {
        let mut actions = Vec::new();
        if let Some(tag) = self.up_to.take() {
            actions.push(AckAction::AckUpTo(tag));
            self.ackable = 0;
        }
        if force {
            for tag in std::mem::take(&mut self.pending) {
                self.sent.insert(tag);
                actions.push(AckAction::AckOne(tag));
            }
        }
        actions
    }

    /// Whether acks are being held back, waiting for a gap to close.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// One consumer channel's ledger and the frames it sends.
///
/// Sending a frame never makes the consume loop wait: lapin queues the frame at once and
/// resolves its future only when its I/O thread has written it, a round trip through another
/// thread that would hold up every task of the queue. The futures are kept and reaped later,
/// to count the frames that could not be sent.
pub(crate) struct Acks<'a> {
    channel: &'a Channel,
    ledger: AckLedger,
    /// Finished deliveries that are acked at once, with one frame.
    every: u64,
    /// When the last `multiple` ack was sent.
    last_sent: Option<Instant>,
    sending: FuturesUnordered<BoxFuture<'a, (AckAction, u64, lapin::Result<()>)>>,
    /// Deliveries whose settlement could not be sent (the channel died: those tasks will be
    /// redelivered). A failed `multiple` ack counts every delivery it covered.
    lost: u64,
    /// Fires when deliveries held back behind a gap have waited [`QUIET`].
    quiet: Timer,
    /// Fires when a `multiple` ack deferred by [`LINGER`] is due.
    linger: Timer,
    /// The worker's events and their confirmations, when it records events.
    events: Option<(&'a EventLog, watch::Receiver<u64>)>,
    /// Settlements waiting, in order, for the confirmation of their event.
    awaiting: VecDeque<(Ticket, Settle)>,
    /// How long the first of `awaiting` may wait without any event confirmed.
    events_timeout: Duration,
    /// Fires when the first of `awaiting` has waited `events_timeout`.
    stall: Timer,
    /// Set once the events stream stalled: nothing waiting for an event is acked any more.
    stalled: bool,
    /// Deliveries covered by the frames sent so far.
    sent: u64,
}

/// A timer that is either armed for a deadline or off.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Timer {
    fn new() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }

    /// Arms the timer for `deadline`, unless it is armed already.
    fn arm(&mut self, deadline: Instant) {
        if !self.armed {
            self.armed = true;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl<'a> Acks<'a> {
    /// Acks on `channel`, one `multiple` ack as soon as `every` deliveries can be settled,
    /// each once its event in `events` (if any) is confirmed, waiting at most
    /// `events_timeout` for a confirmation.
    pub(crate) fn new(
        channel: &'a Channel,
        every: u64,
        events: Option<&'a EventLog>,
        events_timeout: Duration,
    ) -> Self {
        Acks {
            channel,
            ledger: AckLedger::new(),
            every,
            last_sent: None,
            sending: FuturesUnordered::new(),
            lost: 0,
            quiet: Timer::new(),
            linger: Timer::new(),
            events: events.map(|log| (log, log.confirmations())),
            awaiting: VecDeque::new(),
            events_timeout,
            stall: Timer::new(),
            stalled: false,
            sent: 0,
        }
    }

    /// Records a settlement; a requeue is sent at once, an ack once `every` are ackable or
    /// at the next [`flush`](Self::flush).
    pub(crate) fn settle(&mut self, settle: Settle) {
        if let Some(action) = self.ledger.record(settle) {
            self.send(action);
        }
        if self.ledger.ackable() >= self.every {
            self.flush(false);
        }
    }

    /// Records a settlement once the event of `after` (if any) is confirmed: at once if it
    /// is, else when [`due`](Self::due) sees its confirmation. Settlements keep their order.
    pub(crate) fn settle_after(&mut self, settle: Settle, after: Option<Ticket>) {
        match (after, self.events.as_ref()) {
            (Some(ticket), Some((log, _)))
                if !self.awaiting.is_empty() || !log.is_confirmed(ticket) =>
            {
                if self.stalled {
                    // Left unacked: the broker delivers it again once the channel closes.
                    self.lost += 1;
                    return;
                }
                if self.awaiting.is_empty() {
                    self.stall.arm(Instant::now() + self.events_timeout);
                }
                self.awaiting.push_back((ticket, settle));
            }
            _ => self.settle(settle),
        }
    }

    /// Whether the acks gave up waiting for the events stream: the consume loop should stop
    /// taking deliveries and end.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled
    }

    /// Records the settlements whose events are confirmed now.
    fn release(&mut self) {
        let Some((log, _)) = self.events else {
            return;
        };
        let before = self.awaiting.len();
        while let Some(&(ticket, settle)) = self.awaiting.front() {
            if !log.is_confirmed(ticket) {
                break;
            }
            self.awaiting.pop_front();
            self.settle(settle);
        }
        if self.awaiting.len() < before {
            // Events are being recorded: the next one waiting gets a timeout of its own.
            self.stall.armed = false;
            if !self.awaiting.is_empty() {
                self.stall.arm(Instant::now() + self.events_timeout);
            }
        }
    }

    /// Sends the `multiple` ack for the contiguous prefix; with `force`, also acks the
    /// deliveries held back behind a gap.
    fn flush(&mut self, force: bool) {
        let covered = self.ledger.ackable();
        for action in self.ledger.flush(force) {
            let deliveries = match action {
                AckAction::AckUpTo(_) => {
                    self.last_sent = Some(Instant::now());
                    covered
                }
                AckAction::AckOne(_) | AckAction::Requeue(_) => 1,
            };
            self.send_covering(action, deliveries);
        }
    }

    /// For a loop about to wait: sends the `multiple` ack for what is done now, unless one
    /// went out less than [`LINGER`] ago (then it goes out when that is up, with whatever
    /// finishes meanwhile), and arms the [`QUIET`] timer for deliveries held behind a gap.
    pub(crate) fn idle(&mut self) {
        if self.ledger.ackable() > 0 {
            match self.last_sent.map(|at| at + LINGER) {
                Some(due) if due > Instant::now() => self.linger.arm(due),
                _ => self.flush(false),
            }
        }
        if !self.ledger.has_pending() {
            self.quiet.armed = false;
        } else {
            self.quiet.arm(Instant::now() + QUIET);
        }
    }

    /// Whether a timer is armed or a settlement waits for its event: only then may the loop
    /// wait on [`due`](Self::due).
    pub(crate) fn timing(&self) -> bool {
        self.quiet.armed || self.linger.armed || !self.awaiting.is_empty()
    }

    /// Waits for the first armed timer, or more confirmed events, and sends what it was
    /// waiting for.
    pub(crate) async fn due(&mut self) {
        let awaiting = !self.awaiting.is_empty();
        let confirmed = async {
            let changed = match &mut self.events {
                Some((_, confirmations)) => confirmations.changed().await.is_ok(),
                None => false,
            };
            // The log outlives the loop (its sender is never dropped before).
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = confirmed, if awaiting => {
                self.release();
            }
            () = &mut self.quiet.sleep, if self.quiet.armed => {
                self.quiet.armed = false;
                self.flush(true);
            }
            () = &mut self.linger.sleep, if self.linger.armed => {
                self.linger.armed = false;
                self.flush(false);
            }
            () = &mut self.stall.sleep, if self.stall.armed => {
                self.stall.armed = false;
                self.stalled = true;
                self.lost += self.awaiting.len() as u64;
                tracing::warn!(waiting = self.awaiting.len(), timeout = ?self.events_timeout,
                    "no event recorded in time; leaving these tasks to the broker to deliver again");
                self.awaiting.clear();
            }
        }
    }

    /// How many deliveries the frames sent so far settled: with the highest delivery tag
    /// received, how many the channel holds unsettled.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Flushes everything, waits until every frame is written (or has failed), and returns
    /// how many deliveries' settlements could not be sent.
    pub(crate) async fn finish(mut self) -> u64 {
        self.flush(true);
        while let Some((action, deliveries, result)) = self.sending.next().await {
            self.count(action, deliveries, result);
        }
        self.lost
    }

    fn send(&mut self, action: AckAction) {
        self.send_covering(action, 1);
    }

    /// Sends `action`, which settles `deliveries` deliveries.
    fn send_covering(&mut self, action: AckAction, deliveries: u64) {
        self.sent += deliveries;
        let channel = self.channel;
        let frame = async move {
            let result = match action {
                AckAction::AckUpTo(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                }
                AckAction::AckOne(tag) => channel.basic_ack(tag, BasicAckOptions::default()).await,
                AckAction::Requeue(tag) => {
                    let options = BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    };
                    channel.basic_nack(tag, options).await
                }
            };
            (action, deliveries, result)
        };
        self.sending.push(frame.boxed());
        // The first poll queues the frame (in the order the ledger produced them); it also
        // reaps the frames already written.
        while let Some(Some((action, deliveries, result))) = self.sending.next().now_or_never() {
            self.count(action, deliveries, result);
        }
    }

    fn count(&mut self, action: AckAction, deliveries: u64, result: lapin::Result<()>) {
        if let Err(error) = result {
            self.lost += deliveries;
            tracing::warn!(?action, deliveries, %error, "could not settle deliveries; the broker will redeliver them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckAction::*;

    #[test]
    fn in_order_completions_become_one_multiple_ack() {
        let mut ledger = AckLedger::new();
        for tag in 1..=5 {
            assert_eq!(ledger.record(Settle::Ack(tag)), None);
        }
        assert_eq!(ledger.ackable(), 5);
        assert_eq!(ledger.flush(false), vec![AckUpTo(5)]);
        assert_eq!(ledger.ackable(), 0);
        assert_eq!(ledger.flush(false), vec![]);
    }

    #[test]
    fn a_gap_holds_back_until_it_closes() {
        let mut ledger = AckLedger::new();
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.ackable(), 0);
        assert_eq!(ledger.flush(false), vec![]);
        assert!(ledger.has_pending());
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.ackable(), 3);
        assert_eq!(ledger.flush(false), vec![AckUpTo(3)]);
        assert!(!ledger.has_pending());
    }

    #[test]
    fn a_slow_head_does_not_hold_the_window_hostage() {
        let mut ledger = AckLedger::new();
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.flush(false), vec![]);
        // The gap stayed open too long: the consume loop forces them out.
        assert_eq!(ledger.flush(true), vec![AckOne(2), AckOne(3)]);
        // When the head finishes, the multiple ack covers only it: 2 and 3 are not re-acked.
        ledger.record(Settle::Ack(1));
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.flush(false), vec![AckUpTo(4)]);
    }

    #[test]
    fn the_multiple_ack_never_names_an_already_settled_tag() {
        // Acking an unknown tag with `multiple` closes the channel, so the last tag of the
        // prefix must be one still outstanding.
        let mut ledger = AckLedger::new();
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.record(Settle::Requeue(2)), Some(Requeue(2)));
        assert_eq!(ledger.flush(false), vec![AckUpTo(1)]);
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.flush(true), vec![AckUpTo(3)]);
        ledger.record(Settle::Ack(5));
        assert_eq!(ledger.record(Settle::Requeue(4)), Some(Requeue(4)));
        assert_eq!(ledger.flush(false), vec![AckUpTo(5)]);
        assert_eq!(ledger.record(Settle::Requeue(6)), Some(Requeue(6)));
        assert_eq!(ledger.flush(true), vec![]);
    }

    #[test]
    fn forcing_acks_everything_held_back() {
        let mut ledger = AckLedger::new();
        ledger.record(Settle::Ack(5));
        assert_eq!(ledger.flush(true), vec![AckOne(5)]);
        assert!(!ledger.has_pending());
    }
}
