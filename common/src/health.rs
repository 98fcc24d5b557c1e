//! A process's health as its admin endpoints report it: `/readyz` answers from a [`Health`],
//! which the parts of the process (the publisher's link, the worker's subscriptions) set.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Not yet connected.
    Connecting = 0,
    /// Connected and working: the only state answered with 200.
    Ready = 1,
    /// Lost the broker; reconnecting.
    Reconnecting = 2,
    /// The broker blocks publishers (memory or disk alarm).
    Blocked = 3,
    /// Shutting down.
    Draining = 4,
    /// Working, but some of what it serves cannot be used now (e.g. one queue's node is
    /// down): answered with 200, and the detail names what is missing.
    Degraded = 5,
    /// Connected, but nothing it serves can be used now: answered with 503 and the detail.
    Unavailable = 6,
}

impl Readiness {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Readiness::Ready,
            2 => Readiness::Reconnecting,
            3 => Readiness::Blocked,
            4 => Readiness::Draining,
            5 => Readiness::Degraded,
            6 => Readiness::Unavailable,
            _ => Readiness::Connecting,
        }
    }

    /// The lowercase name reported by `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Connecting => "connecting",
            Readiness::Ready => "ready",
            Readiness::Reconnecting => "reconnecting",
            Readiness::Blocked => "blocked",
            Readiness::Draining => "draining",
            Readiness::Degraded => "degraded",
            Readiness::Unavailable => "unavailable",
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_serving(self) -> bool {
        matches!(self, Readiness::Ready | Readiness::Degraded)
    }
}

/// The process's readiness, shared between its work and its admin server, with an optional
/// detail saying why it is not plainly ready.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    state: AtomicU8,
    detail: Mutex<Option<String>>,
}

impl Health {
    /// A process still connecting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the state. Once draining, the process stays draining.
    pub fn set(&self, state: Readiness) {
        let _ = self
            .0
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != Readiness::Draining as u8).then_some(state as u8)
            });
    }

    /// The current state.
    pub fn get(&self) -> Readiness {
        Readiness::from_u8(self.0.state.load(Ordering::Acquire))
    }

    /// Sets the state and what `/readyz` says about it (`None`: nothing more than the state).
    pub fn set_with(&self, state: Readiness, detail: Option<String>) {
        *self.0.detail.lock().unwrap_or_else(|e| e.into_inner()) = detail;
        self.set(state);
    }

    /// What `/readyz` says after the state, if anything.
    pub fn detail(&self) -> Option<String> {
        self.0
            .detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_is_final() {
        let health = Health::new();
        assert_eq!(health.get(), Readiness::Connecting);
        health.set(Readiness::Ready);
        health.set(Readiness::Draining);
        health.set(Readiness::Ready);
        assert_eq!(health.get(), Readiness::Draining);
    }
}
