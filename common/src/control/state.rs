//! What the control records add up to: the cancellations in force and the last decision
//! about each queue. Records apply in stream order (their offsets); a snapshot adds what its
//! reader does not know yet and never undoes a later decision the reader has seen, so a
//! snapshot written by a worker that had not read the newest records is harmless.

use super::{Cancel, Record, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The last pause or resume of a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDecision {
    /// The queue.
    pub queue: String,
    /// Whether it is paused.
    pub paused: bool,
    /// The stream offset of the record that decided it.
    pub offset: u64,
}

/// What applying a record changed, for a worker to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tasks now cancelled (or cancelled more widely).
    pub cancelled: Vec<String>,
    /// Queues whose state changed: (queue, paused now).
    pub queues: Vec<(String, bool)>,
}

/// The control state.
#[derive(Clone, Debug, Default)]
pub struct ControlState {
    cancelled: HashMap<String, Cancel>,
    queues: BTreeMap<String, (bool, u64)>,
    /// When the newest snapshot read was written.
    last_snapshot_ms: Option<u64>,
}

impl ControlState {
    /// An empty state (nothing cancelled or paused).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `record`, read at stream `offset`, at `now_ms`.
    pub fn apply(&mut self, offset: u64, record: &Record, now_ms: u64) -> Applied {
        match record {
            Record::Cancel(cancel) => Applied {
                cancelled: self
                    .cancel(cancel, now_ms)
                    .then(|| cancel.id.clone())
                    .into_iter()
                    .collect(),
                queues: Vec::new(),
            },
            Record::Pause(r) => Applied {
                queues: self.decide(&r.queue, true, offset).into_iter().collect(),
                cancelled: Vec::new(),
            },
            Record::Resume(r) => Applied {
                queues: self.decide(&r.queue, false, offset).into_iter().collect(),
                cancelled: Vec::new(),
            },
            Record::Snapshot(snapshot) => self.merge(snapshot, now_ms),
            Record::Sync(_) => Applied::default(),
        }
    }

    fn cancel(&mut self, cancel: &Cancel, now_ms: u64) -> bool {
        if cancel.expires_ms <= now_ms {
            return false;
        }
        match self.cancelled.get_mut(&cancel.id) {
            // A later cancellation of the same id covers more runs and lasts longer.
            Some(known) => {
                let wider = cancel.at_ms > known.at_ms || cancel.expires_ms > known.expires_ms;
                known.at_ms = known.at_ms.max(cancel.at_ms);
                known.expires_ms = known.expires_ms.max(cancel.expires_ms);
                wider
            }
            None => {
                self.cancelled.insert(cancel.id.clone(), cancel.clone());
                true
            }
        }
    }

    /// Records a decision about `queue` made at `offset`, unless a later one is known.
    /// Returns the queue's new state when it changed.
    fn decide(&mut self, queue: &str, paused: bool, offset: u64) -> Option<(String, bool)> {
        let was = match self.queues.get(queue) {
            Some(&(_, known)) if known > offset => return None,
            Some(&(was, _)) => was,
            None => false,
        };
        self.queues.insert(queue.to_owned(), (paused, offset));
        (was != paused).then(|| (queue.to_owned(), paused))
    }

    fn merge(&mut self, snapshot: &Snapshot, now_ms: u64) -> Applied {
        self.last_snapshot_ms = self.last_snapshot_ms.max(Some(snapshot.at_ms));
        let mut applied = Applied::default();
        for cancel in &snapshot.cancelled {
            if self.cancel(cancel, now_ms) {
                applied.cancelled.push(cancel.id.clone());
            }
        }
        for decision in &snapshot.queues {
            let changed = self.decide(&decision.queue, decision.paused, decision.offset);
            applied.queues.extend(changed);
        }
        applied
    }

    /// Whether a run of task `id` created at `created_ms` is cancelled at `now_ms`.
    pub fn is_cancelled(&self, id: &str, created_ms: Option<u64>, now_ms: u64) -> bool {
        self.cancelled
            .get(id)
            .is_some_and(|c| c.expires_ms > now_ms && c.covers(created_ms))
    }

    /// Whether any cancellation is known (expired ones until [`expire`](Self::expire)).
    pub fn has_cancellations(&self) -> bool {
        !self.cancelled.is_empty()
    }

    /// Whether `queue` is paused.
    pub fn is_paused(&self, queue: &str) -> bool {
        self.queues.get(queue).is_some_and(|&(paused, _)| paused)
    }

    /// The paused queues.
    pub fn paused(&self) -> impl Iterator<Item = &str> {
        self.queues
            .iter()
            .filter(|(_, &(paused, _))| paused)
            .map(|(queue, _)| queue.as_str())
    }

    /// Forgets the cancellations expired at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.cancelled.retain(|_, c| c.expires_ms > now_ms);
    }

    /// When the newest snapshot read was written.
    pub fn last_snapshot_ms(&self) -> Option<u64> {
        self.last_snapshot_ms
    }

    /// Whether there is nothing to snapshot (no queue ever paused, nothing cancelled).
    pub fn is_empty(&self) -> bool {
        self.cancelled.is_empty() && self.queues.is_empty()
    }

    /// A snapshot of the state in force at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> Record {
        let mut cancelled: Vec<Cancel> = self
            .cancelled
            .values()
            .filter(|c| c.expires_ms > now_ms)
            .cloned()
            .collect();
        cancelled.sort_by(|a, b| a.id.cmp(&b.id));
        Record::Snapshot(Snapshot {
            at_ms: now_ms,
            queues: self
                .queues
                .iter()
                .map(|(queue, &(paused, offset))| QueueDecision {
                    queue: queue.clone(),
                    paused,
                    offset,
                })
                .collect(),
            cancelled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancel(id: &str, at_ms: u64, expires_ms: u64) -> Record {
        Record::Cancel(Cancel {
            id: id.into(),
            at_ms,
            expires_ms,
        })
    }

    #[test]
    fn cancellations_apply_to_older_runs_until_they_expire() {
        let mut state = ControlState::new();
        assert!(!state.has_cancellations());
        let applied = state.apply(1, &cancel("a", 100, 1000), 50);
        assert_eq!(applied.cancelled, ["a"]);
        assert!(state.is_cancelled("a", Some(90), 500));
        assert!(!state.is_cancelled("a", Some(101), 500));
        assert!(!state.is_cancelled("b", Some(90), 500));
        assert!(!state.is_cancelled("a", Some(90), 1000));
        // Already expired when read: not kept.
        assert_eq!(state.apply(2, &cancel("c", 1, 2), 50), Applied::default());
        state.expire(1000);
        assert!(!state.has_cancellations());
    }

    #[test]
    fn the_last_decision_in_stream_order_wins_even_over_a_stale_snapshot() {
        let mut state = ControlState::new();
        let q = |queue: &str| super::super::QueueRecord {
            queue: queue.into(),
            at_ms: 0,
        };
        let applied = state.apply(10, &Record::Pause(q("q")), 0);
        assert_eq!(applied.queues, [("q".to_owned(), true)]);
        assert!(state.is_paused("q"));
        // A snapshot written by a worker that had seen only an older resume.
        let stale = state_with(&[("q", false, 5)]);
        assert_eq!(state.apply(11, &stale, 0), Applied::default());
        assert!(state.is_paused("q"));
        let applied = state.apply(12, &Record::Resume(q("q")), 0);
        assert_eq!(applied.queues, [("q".to_owned(), false)]);
        assert!(!state.is_paused("q"));
        // A reader that starts after retention removed everything but a snapshot.
        let mut late = ControlState::new();
        late.apply(20, &state.snapshot(7), 0);
        assert!(!late.is_paused("q"));
        late.apply(21, &state_with(&[("p", true, 15)]), 0);
        assert_eq!(late.paused().collect::<Vec<_>>(), ["p"]);
        assert_eq!(late.last_snapshot_ms(), Some(7));
    }

    fn state_with(queues: &[(&str, bool, u64)]) -> Record {
        Record::Snapshot(Snapshot {
            at_ms: 1,
            queues: queues
                .iter()
                .map(|&(queue, paused, offset)| QueueDecision {
                    queue: queue.into(),
                    paused,
                    offset,
                })
                .collect(),
            cancelled: vec![],
        })
    }

    #[test]
    fn a_snapshot_carries_cancellations_in_force() {
        let mut state = ControlState::new();
        state.apply(1, &cancel("a", 100, 1000), 0);
        state.apply(2, &cancel("b", 100, 200), 0);
        let mut late = ControlState::new();
        let applied = late.apply(9, &state.snapshot(300), 300);
        assert_eq!(applied.cancelled, ["a"]);
        assert!(late.is_cancelled("a", Some(1), 300));
        assert!(!late.is_cancelled("b", Some(1), 150));
    }
}
