//! The index's metrics, registered in the serve process's registry: how many events it has
//! applied, how far into the stream it is and how old its newest event is (its lag), the
//! gaps it found, and the task counts per queue and state that it keeps in the file.

use super::merge::State;
use super::store::{Applied, CountChanges, GapReason};
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The index's metric handles.
#[derive(Clone, Debug)]
pub(crate) struct IndexMetrics {
    events: IntCounterVec,
    batches: IntCounter,
    invalid_batches: IntCounter,
    offset: IntGauge,
    last_event: Gauge,
    gaps: IntCounterVec,
    incomplete: IntGauge,
    tasks: IntGaugeVec,
    workers: IntGaugeVec,
    deleted: IntCounter,
    failures: IntCounter,
    caught_up: IntGauge,
    lag: Gauge,
}

impl IndexMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = IndexMetrics {
            events: IntCounterVec::new(
                Opts::new(
                    "warren_index_events_total",
                    "Events read by the status index, by outcome: applied (changed a status), \
                     superseded (outranked by the status indexed), outdated (of a task not \
                     indexed, older than the index retention).",
                ),
                &["outcome"],
            )?,
            batches: IntCounter::new(
                "warren_index_batches_total",
                "Stream messages (batches of events) read by the status index.",
            )?,
            invalid_batches: IntCounter::new(
                "warren_index_invalid_batches_total",
                "Stream messages not in the events format, passed over (logged).",
            )?,
            offset: IntGauge::new(
                "warren_index_offset",
                "The last stream offset the status index applied (committed).",
            )?,
            last_event: Gauge::new(
                "warren_index_last_event_timestamp_seconds",
                "The newest event time (its source's clock) the status index applied: \
                 time() minus this is its lag while events flow.",
            )?,
            gaps: IntCounterVec::new(
                Opts::new(
                    "warren_index_gaps_total",
                    "Times the status index found events it can no longer read: removed by the \
                     stream's retention before it read them, or a recreated stream.",
                ),
                &["reason"],
            )?,
            incomplete: IntGauge::new(
                "warren_index_incomplete",
                "1 once the status index has found a gap (its answers name the time from \
                 which events may be missing), else 0.",
            )?,
            tasks: IntGaugeVec::new(
                Opts::new(
                    "warren_index_tasks",
                    "Tasks in the status index, by queue and state.",
                ),
                &["queue", "state"],
            )?,
            workers: IntGaugeVec::new(
                Opts::new(
                    "warren_index_workers",
                    "Workers in the status index, by status: alive, or gone (drained, or silent \
                     for three heartbeat intervals) within the last hour.",
                ),
                &["status"],
            )?,
            deleted: IntCounter::new(
                "warren_index_deleted_total",
                "Ended tasks deleted from the status index by its retention.",
            )?,
            failures: IntCounter::new(
                "warren_index_failures_total",
                "Times the status index could not write its file; it reads the events again.",
            )?,
            caught_up: IntGauge::new(
                "warren_index_caught_up",
                "1 once the status index has applied the stream up to where it ended when the \
                 index (re)connected, else 0 (it is catching up on a backlog).",
            )?,
            lag: Gauge::new(
                "warren_index_lag_seconds",
                "At the status index's last commit: its time minus the newest event time it \
                 applied (the event's source's clock); grows while it falls behind a burst.",
            )?,
        };
        registry.register(Box::new(metrics.caught_up.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.events.clone()))?;
        registry.register(Box::new(metrics.batches.clone()))?;
        registry.register(Box::new(metrics.invalid_batches.clone()))?;
        registry.register(Box::new(metrics.offset.clone()))?;
        registry.register(Box::new(metrics.last_event.clone()))?;
        registry.register(Box::new(metrics.gaps.clone()))?;
        registry.register(Box::new(metrics.incomplete.clone()))?;
        registry.register(Box::new(metrics.tasks.clone()))?;
        registry.register(Box::new(metrics.workers.clone()))?;
        registry.register(Box::new(metrics.deleted.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        Ok(metrics)
    }

    /// A committed transaction of `batches` batches (`invalid` of them not in the format),
    /// up to `offset`.
    pub(crate) fn committed(&self, applied: &Applied, batches: usize, invalid: usize, offset: u64) {
        self.events
            .with_label_values(&["applied"])
            .inc_by(applied.applied);
        self.events
            .with_label_values(&["superseded"])
            .inc_by(applied.superseded);
        self.events
            .with_label_values(&["outdated"])
            .inc_by(applied.outdated);
        self.batches.inc_by(batches as u64);
        self.invalid_batches.inc_by(invalid as u64);
        self.offset.set(i64::try_from(offset).unwrap_or(i64::MAX));
        self.count(&applied.counts);
    }

    /// The newest event time applied.
    pub(crate) fn last_event(&self, at_ms: Option<u64>) {
        if let Some(ms) = at_ms {
            self.last_event.set(ms as f64 / 1000.0);
        }
    }

    /// Changes of the task counts.
    pub(crate) fn count(&self, changes: &CountChanges) {
        for ((queue, state), delta) in changes {
            self.tasks
                .with_label_values(&[queue.as_str(), state.as_str()])
                .add(*delta);
        }
    }

    /// The counts as stored, at start.
    pub(crate) fn set_count(&self, queue: &str, state: State, tasks: i64) {
        self.tasks
            .with_label_values(&[queue, state.as_str()])
            .set(tasks);
    }

    /// The workers indexed, alive and gone.
    pub(crate) fn workers(&self, (alive, gone): (i64, i64)) {
        self.workers.with_label_values(&["alive"]).set(alive);
        self.workers.with_label_values(&["gone"]).set(gone);
    }

    /// A gap found.
    pub(crate) fn gap(&self, reason: GapReason) {
        self.gaps.with_label_values(&[reason.as_str()]).inc();
    }

    /// Whether the index may miss events.
    pub(crate) fn incomplete(&self, incomplete: bool) {
        self.incomplete.set(i64::from(incomplete));
    }

    /// Tasks deleted by retention.
    pub(crate) fn deleted(&self, changes: &CountChanges) {
        let deleted: i64 = changes.values().map(|d| -d).sum();
        self.deleted.inc_by(deleted.max(0) as u64);
        self.count(changes);
    }

    /// Whether the index has caught up with the stream's end as of its (re)connection.
    pub(crate) fn caught_up(&self, caught_up: bool) {
        self.caught_up.set(i64::from(caught_up));
    }

    /// How far the newest event of a commit (`newest_ms`) is behind `now_ms`.
    pub(crate) fn lag(&self, newest_ms: u64, now_ms: u64) {
        self.lag
            .set(now_ms.saturating_sub(newest_ms) as f64 / 1000.0);
    }

    /// A failed write.
    pub(crate) fn failure(&self) {
        self.failures.inc();
    }
}
