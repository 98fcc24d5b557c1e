//! Settling deliveries on one consumer channel with as few frames as possible.
//!
//! Handlers finish out of order. The [`AckLedger`] tracks which delivery tags are settled and
//! acks the contiguous prefix with one `multiple` ack; a delivery finished behind a slow one
//! is acked on its own once enough such deliveries pile up, or the channel goes quiet, so a
//! long task never holds the rest of the prefetch window hostage. Requeues (returning a
//! delivery to the queue) are sent at once, individually.

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;

/// How a delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Acknowledge: the task is done (or safely moved to another queue).
    Ack(u64),
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
    /// Pending tags beyond a gap are acked individually once this many pile up.
    out_of_order_limit: usize,
}

impl AckLedger {
    /// A ledger for a fresh channel (tags start at 1).
    pub(crate) fn new(prefetch: u16) -> Self {
        AckLedger {
            next: 1,
            pending: BTreeSet::new(),
            sent: BTreeSet::new(),
            out_of_order_limit: usize::from(prefetch / 4).max(1),
        }
    }

    /// Records one settlement, returning a frame to send at once, if any.
    pub(crate) fn record(&mut self, settle: Settle) -> Option<AckAction> {
        match settle {
            Settle::Ack(tag) => {
                self.pending.insert(tag);
                None
            }
            Settle::Requeue(tag) => {
                self.sent.insert(tag);
                Some(AckAction::Requeue(tag))
            }
        }
    }

    /// The frames that settle what was recorded: one `multiple` ack for the contiguous
    /// prefix, and individual acks for the rest if too many wait behind a gap or `force`.
    pub(crate) fn flush(&mut self, force: bool) -> Vec<AckAction> {
        let mut actions = Vec::new();
        let mut highest_pending = None;
        loop {
            if self.pending.remove(&self.next) {
                highest_pending = Some(self.next);
            } else if !self.sent.remove(&self.next) {
                break;
            }
            self.next += 1;
        }
        if let Some(tag) = highest_pending {
            actions.push(AckAction::AckUpTo(tag));
        }
        if force || self.pending.len() >= self.out_of_order_limit {
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

/// How long held-back acks wait for a quiet channel before being sent individually.
const QUIET: Duration = Duration::from_millis(20);

/// Settles deliveries on `channel` until every sender of `settles` is dropped. Returns how
/// many acks could not be sent (the channel died: those tasks will be redelivered).
pub(crate) async fn run_acker(
    channel: Channel,
    mut settles: mpsc::UnboundedReceiver<Settle>,
    prefetch: u16,
) -> u64 {
    let mut ledger = AckLedger::new(prefetch);
    let mut failed = 0u64;
    let mut buffer = Vec::with_capacity(64);
    loop {
        let received = if ledger.has_pending() {
            match tokio::time::timeout(QUIET, settles.recv_many(&mut buffer, 256)).await {
                Ok(n) => n,
                Err(_) => {
                    failed += send(&channel, ledger.flush(true)).await;
                    continue;
                }
            }
        } else {
            settles.recv_many(&mut buffer, 256).await
        };
        if received == 0 {
            // Every sender is gone: settle the rest and stop.
            failed += send(&channel, ledger.flush(true)).await;
            return failed;
        }
        let mut actions: Vec<AckAction> =
            buffer.drain(..).filter_map(|s| ledger.record(s)).collect();
        actions.extend(ledger.flush(false));
        failed += send(&channel, actions).await;
    }
}

/// Sends frames, returning how many failed.
async fn send(channel: &Channel, actions: Vec<AckAction>) -> u64 {
    let mut failed = 0;
    for action in actions {
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
        if let Err(error) = result {
            failed += 1;
            tracing::warn!(?action, %error, "could not settle a delivery; the broker will redeliver it");
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckAction::*;

    #[test]
    fn in_order_completions_become_one_multiple_ack() {
        let mut ledger = AckLedger::new(100);
        for tag in 1..=5 {
            assert_eq!(ledger.record(Settle::Ack(tag)), None);
        }
        assert_eq!(ledger.flush(false), vec![AckUpTo(5)]);
        assert_eq!(ledger.flush(false), vec![]);
    }

    #[test]
    fn a_gap_holds_back_until_it_closes() {
        let mut ledger = AckLedger::new(100);
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.flush(false), vec![]);
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.flush(false), vec![AckUpTo(3)]);
    }

    #[test]
    fn a_slow_head_does_not_hold_the_window_hostage() {
        let mut ledger = AckLedger::new(8); // out-of-order limit 2
        ledger.record(Settle::Ack(2));
        assert_eq!(ledger.flush(false), vec![]);
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.flush(false), vec![AckOne(2), AckOne(3)]);
        // When the head finishes, the multiple ack covers only it: 2 and 3 are not re-acked.
        ledger.record(Settle::Ack(1));
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.flush(false), vec![AckUpTo(4)]);
    }

    #[test]
    fn the_multiple_ack_never_names_an_already_settled_tag() {
        // Acking an unknown tag with `multiple` closes the channel, so the last tag of the
        // prefix must be one still outstanding.
        let mut ledger = AckLedger::new(100);
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.record(Settle::Requeue(2)), Some(Requeue(2)));
        assert_eq!(ledger.flush(false), vec![AckUpTo(1)]);
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.flush(true), vec![AckUpTo(3)]);
    }

    #[test]
    fn forcing_acks_everything_held_back() {
        let mut ledger = AckLedger::new(100);
        ledger.record(Settle::Ack(5));
        assert_eq!(ledger.flush(true), vec![AckOne(5)]);
        assert!(!ledger.has_pending());
    }
}
