//! The scheduler's Prometheus metrics: ticks published and missed per schedule, and whether
//! this replica is the leader.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Every metric a scheduler exports, registered once and shared by its loops.
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    /// Ticks whose task the broker confirmed, by schedule.
    pub published: IntCounterVec,
    /// Ticks not published because no scheduler held the lease when they fell due, by schedule.
    pub missed: IntCounterVec,
    /// Ticks whose task could not be published (retried), by schedule.
    pub failures: IntCounterVec,
    /// 1 while this replica holds the lease and publishes ticks.
    pub leader: IntGauge,
}

impl SchedulerMetrics {
    /// Creates the metrics, with a zero series for each of `schedules`, and registers them in
    /// `registry`.
    pub fn new<'a>(
        registry: &Registry,
        schedules: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, prometheus::Error> {
        let by_schedule =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["schedule"]);
        let metrics = SchedulerMetrics {
            published: by_schedule(
                "warren_scheduler_ticks_published_total",
                "Ticks whose task the broker confirmed.",
            )?,
            missed: by_schedule(
                "warren_scheduler_ticks_missed_total",
                "Ticks not published because no scheduler held the lease when they fell due.",
            )?,
            failures: by_schedule(
                "warren_scheduler_tick_failures_total",
                "Attempts to publish a tick's task that failed (the tick is retried).",
            )?,
            leader: IntGauge::new(
                "warren_scheduler_leader",
                "1 while this replica holds the lease and publishes ticks.",
            )?,
        };
        for schedule in schedules {
            metrics.published.with_label_values(&[schedule]);
            metrics.missed.with_label_values(&[schedule]);
            metrics.failures.with_label_values(&[schedule]);
        }
        registry.register(Box::new(metrics.published.clone()))?;
        registry.register(Box::new(metrics.missed.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        Ok(metrics)
    }
}
