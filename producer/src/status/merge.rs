//! The merge rule (docs/wire-format.md §11.6): which of a task's events decides its status,
//! whatever order they arrive in. Events are ranked, never by a clock: by replays from the
//! dead letters, then attempt, then delivery count, then phase (`published` before a run's
//! `started`, before its ending), then by where they are in the stream. The highest-ranked event seen is the task's status; so applying an event
//! twice, or a batch again, changes nothing.
//!
//! The status client (`status-client` without `status`) uses only [`State`].
#![cfg_attr(not(feature = "status"), allow(dead_code))]

use serde::{Deserialize, Serialize};
use warren_common::events::{EventKind, Stamped};

/// What the index says became of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// It was published (or replayed) and no run of it is known yet: it is queued, or
    /// waiting in the delay cascade.
    Published,
    /// A worker is running it (its latest event is a `started`).
    Running,
    /// Its latest event is a `started` of a worker now gone (farewell or silent): it waits
    /// for its redelivery, whose events decide it again. Derived, never recorded.
    Lost,
    /// An attempt failed and another is due at `retry_at`.
    Retrying,
    /// Its handler succeeded.
    Succeeded,
    /// It was dead-lettered; `error.kind` says why.
    DeadLettered,
    /// It was dead-lettered because its expiry passed before it could run.
    Expired,
    /// It was cancelled (the control stream): not run, or its handler stopped.
    Cancelled,
    /// No event of it has reached the index.
    Unknown,
}

impl State {
    /// The states the index stores (all but `unknown`).
    pub const INDEXED: [State; 8] = [
        State::Published,
        State::Running,
        State::Lost,
        State::Retrying,
        State::Succeeded,
        State::DeadLettered,
        State::Expired,
        State::Cancelled,
    ];

    /// The state an event leaves its task in.
    pub fn after(kind: EventKind) -> State {
        match kind {
            EventKind::Published => State::Published,
            EventKind::Started => State::Running,
            EventKind::Succeeded => State::Succeeded,
            EventKind::Retrying => State::Retrying,
            EventKind::DeadLettered => State::DeadLettered,
            EventKind::Expired => State::Expired,
            EventKind::Cancelled => State::Cancelled,
        }
    }

    /// Its name in the API and in the index file.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Published => "published",
            State::Running => "running",
            State::Lost => "lost",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::DeadLettered => "dead_lettered",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Unknown => "unknown",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<State> {
        [State::Unknown]
            .into_iter()
            .chain(State::INDEXED)
            .find(|s| s.as_str() == name)
    }

    /// Whether nothing follows unless the task is delivered or published again.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::DeadLettered | State::Expired | State::Cancelled
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event is in the stream: events later in the stream are greater. The epoch
/// counts the times the index found its stream recreated (offsets start again at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) epoch: u64,
    /// The stream offset of the event's batch.
    pub(crate) offset: u64,
    /// The event's sequence number (its line within the batch).
    pub(crate) seq: u64,
}

/// An event's rank among its task's events; the field order is the comparison order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    /// `replays`, 0 when absent: a replay from the dead letters outranks everything before
    /// it, even when it runs as attempt 1 again (`--reset-attempts`).
    pub(crate) replays: u32,
    /// `attempt`, 0 when absent.
    pub(crate) attempt: u32,
    /// `delivery_count`, 0 when absent.
    pub(crate) delivery_count: u64,
    /// 0 for `published`, 1 for `started`, 2 for an ending (`succeeded`, `retrying`,
    /// `dead_lettered`, `expired`, `cancelled`).
    pub(crate) phase: u8,
    pub(crate) position: Position,
}

impl Rank {
    /// The rank of `event`, read from the batch at `offset` of the stream's `epoch`.
    pub(crate) fn of(event: &Stamped, epoch: u64, offset: u64) -> Rank {
        let e = &event.event;
        Rank {
            replays: e.replays.unwrap_or(0),
            attempt: e.attempt.unwrap_or(0),
            delivery_count: e.delivery_count.unwrap_or(0),
            phase: phase(e.event),
            position: Position {
                epoch,
                offset,
                seq: event.seq,
            },
        }
    }

    /// Whether this event and `other` belong to the same run (replays, attempt and delivery
    /// count).
    pub(crate) fn same_run(&self, other: &Rank) -> bool {
        (self.replays, self.attempt, self.delivery_count)
            == (other.replays, other.attempt, other.delivery_count)
    }
}

/// An event's phase in its run: `published` before `started` before an ending.
fn phase(kind: EventKind) -> u8 {
    match kind {
        EventKind::Published => 0,
        EventKind::Started => 1,
        EventKind::Succeeded
        | EventKind::Retrying
        | EventKind::DeadLettered
        | EventKind::Expired
        | EventKind::Cancelled => 2,
    }
}

/// Whether an event of rank `event` replaces a status decided by an event of rank `stored`
/// (none: the task is new). Equal ranks are the same event, applied again: nothing changes.
pub(crate) fn supersedes(event: &Rank, stored: Option<&Rank>) -> bool {
    stored.is_none_or(|stored| event > stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(attempt: u32, delivery_count: u64, phase: u8, offset: u64, seq: u64) -> Rank {
        Rank {
            replays: 0,
            attempt,
            delivery_count,
            phase,
            position: Position {
                epoch: 0,
                offset,
                seq,
            },
        }
    }

    #[test]
    fn ranks_compare_attempt_then_delivery_count_then_phase_then_position() {
        let published = rank(1, 0, 0, 60, 0);
        let started = rank(1, 0, 1, 50, 9);
        let ended = rank(1, 0, 2, 10, 2);
        assert!(supersedes(&started, Some(&published)));
        assert!(!supersedes(&published, Some(&started)), "a late publish");
        assert!(!supersedes(&published, Some(&ended)));
        assert!(supersedes(&ended, Some(&started)));
        assert!(!supersedes(&started, Some(&ended)), "a late start");
        let rerun = rank(1, 1, 1, 5, 0);
        assert!(supersedes(&rerun, Some(&ended)));
        let next_attempt = rank(2, 0, 1, 1, 0);
        assert!(supersedes(&next_attempt, Some(&rerun)));
        assert!(!supersedes(&ended, Some(&ended)), "the same event again");
        let later_in_stream = rank(1, 0, 2, 11, 0);
        assert!(supersedes(&later_in_stream, Some(&ended)));
        assert!(supersedes(&started, None));
    }

    #[test]
    fn a_replay_outranks_the_dead_letter_even_as_attempt_one() {
        let dead = rank(5, 2, 2, 10, 0);
        let replayed = Rank {
            replays: 1,
            ..rank(1, 0, 0, 20, 0)
        };
        assert!(supersedes(&replayed, Some(&dead)));
        let rerun_ended = Rank {
            replays: 1,
            ..rank(1, 0, 2, 5, 0)
        };
        assert!(supersedes(&rerun_ended, Some(&replayed)), "arrived earlier");
        assert!(
            !supersedes(&dead, Some(&rerun_ended)),
            "the old run read again"
        );
    }

    #[test]
    fn states_have_one_name_each() {
        for state in State::INDEXED.into_iter().chain([State::Unknown]) {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("queued"), None);
    }
}
