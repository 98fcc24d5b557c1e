//! Retry backoff: how long the broker holds a failed task before its next attempt.
//! All use of the `backoff` crate lives here.

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use std::time::Duration;

/// Exponential backoff with jitter between attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Factor applied for each further attempt.
    pub multiplier: f64,
    /// Longest delay.
    pub max: Duration,
    /// Random spread around each delay, as a fraction (0.2 = ±20%).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): about
    /// `initial × multiplier^(attempt-1)`, capped at `max`, with jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let mut backoff = ExponentialBackoff {
            current_interval: self.initial,
            initial_interval: self.initial,
            randomization_factor: self.jitter.clamp(0.0, 1.0),
            multiplier: self.multiplier.max(1.0),
            max_interval: self.max,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        backoff.reset();
        let mut delay = self.initial;
        // Bounded: past ~64 doublings every delay is capped at `max` anyway.
        for _ in 0..attempt.clamp(1, 64) {
            delay = backoff.next_backoff().unwrap_or(self.max);
        }
        delay.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let delays: Vec<u64> = (1..=10).map(|a| policy.delay_after(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let d = policy.delay_after(3).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
    }
}
