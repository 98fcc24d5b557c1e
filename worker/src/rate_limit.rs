//! Per-task-type rate limits of one worker (`--rate-limit demo.cpu=50/s`), as token buckets
//! from the `governor` crate. A task waiting for a token holds a prefetch slot but no
//! concurrency permit, so other task types keep running beside it.

use governor::{DefaultDirectRateLimiter, Quota};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// `TASK=RATE/UNIT[:BURST]`: at most RATE tasks per UNIT (s, m or h), and BURST at once
/// after a quiet spell (default: one unit's worth of tokens, i.e. RATE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// The task name limited.
    pub task: String,
    /// Tasks allowed per period.
    pub rate: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Tokens the bucket holds.
    pub burst: NonZeroU32,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shape = || {
            format!("`{s}` is not TASK=RATE/UNIT[:BURST], e.g. demo.cpu=50/s or demo.cpu=600/m:20")
        };
        let (task, spec) = s.split_once('=').ok_or_else(shape)?;
        let (rate, rest) = spec.split_once('/').ok_or_else(shape)?;
        let (unit, burst) = match rest.split_once(':') {
            Some((unit, burst)) => (unit, Some(burst)),
            None => (rest, None),
        };
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(shape()),
        };
        let positive = |v: &str| v.trim().parse::<NonZeroU32>().map_err(|_| shape());
        let rate = positive(rate)?;
        let burst = burst.map(positive).transpose()?.unwrap_or(rate);
        if task.trim().is_empty() {
            return Err(shape());
        }
        if (per / rate.get()).is_zero() {
            return Err(format!("`{s}`: at most 1,000,000,000 tasks per second"));
        }
        Ok(RateLimit {
            task: task.trim().to_owned(),
            rate,
            per,
            burst,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{:?}:{}",
            self.task, self.rate, self.per, self.burst
        )
    }
}

/// The limiters of one worker, by task name.
#[derive(Default)]
pub(crate) struct RateLimits(HashMap<String, Arc<DefaultDirectRateLimiter>>);

impl RateLimits {
    pub(crate) fn new(limits: &[RateLimit]) -> Self {
        let limiters = limits.iter().map(|limit| {
            let interval = limit.per / limit.rate.get();
            let quota = Quota::with_period(interval)
                .expect("a positive rate over a positive period gives a positive interval")
                .allow_burst(limit.burst);
            (
                limit.task.clone(),
                Arc::new(DefaultDirectRateLimiter::direct(quota)),
            )
        });
        RateLimits(limiters.collect())
    }

    /// The limiter of `task`, if it is limited.
    pub(crate) fn get(&self, task: &str) -> Option<&DefaultDirectRateLimiter> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(task).map(|limiter| &**limiter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_a_default_burst_of_one_period() {
        let limit: RateLimit = "demo.cpu=50/s".parse().unwrap();
        assert_eq!(
            (limit.rate.get(), limit.per, limit.burst.get()),
            (50, Duration::from_secs(1), 50)
        );
        let limit: RateLimit = "reports=600/m:20".parse().unwrap();
        assert_eq!(
            (limit.rate.get(), limit.per, limit.burst.get()),
            (600, Duration::from_secs(60), 20)
        );
        for bad in [
            "demo.cpu",
            "demo.cpu=50",
            "demo.cpu=0/s",
            "x=2000000000/s",
            "=5/s",
            "x=5/week",
            "x=5/s:0",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}
