//! The worker's Prometheus metrics: one struct of handles, registered once per worker, with
//! per-queue-and-task handles resolved up front so the hot path never hashes label values.

use crate::outcome::ReasonKind;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::collections::HashMap;
use std::sync::Arc;
use warren_common::BrokerMetrics;

/// The `task` label of tasks whose name no handler is registered under (task names come
/// from the wire, so they must not create metric series without bound).
pub const UNKNOWN_TASK_LABEL: &str = "<unknown>";

/// Every metric the worker exports.
#[derive(Clone)]
pub struct WorkerMetrics {
    received: IntCounterVec,
    succeeded: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    isolated: IntCounterVec,
    dead_lettered: IntCounterVec,
    duration: HistogramVec,
    latency: HistogramVec,
    /// Handlers running now, per queue.
    pub in_progress: IntGaugeVec,
    /// Deliveries received and not yet settled, per queue.
    pub held: IntGaugeVec,
    /// Deliveries returned to their queue (drain, failed routing), per queue.
    pub requeued: IntCounterVec,
    /// Settlements that could not be sent because the channel died, per queue.
    pub acks_lost: IntCounterVec,
    /// Concurrency limit.
    pub concurrency: IntGauge,
    /// Concurrency limit of CPU-bound handlers.
    pub cpu_concurrency: IntGauge,
    /// Prefetch per consumer.
    pub prefetch: IntGauge,
    /// 1 while connected to the broker.
    pub connected: IntGauge,
    /// Reconnections since start.
    pub reconnects: IntCounter,
    /// Ready messages per queue, as the broker reports them.
    pub queue_ready: IntGaugeVec,
    /// Consumers per queue, as the broker reports them.
    pub queue_consumers: IntGaugeVec,
    /// Consumers re-subscribed by the stall watchdog.
    pub stalls: IntCounterVec,
    /// Tasks in `warren.delay.unroutable`: delayed or retried for a queue that no longer
    /// existed when their wait ended (broker-wide, as the broker reports them).
    pub delay_unroutable: IntGauge,
}

/// Handles for one (queue, task) pair.
pub(crate) struct TaskMetrics {
    pub(crate) received: IntCounter,
    pub(crate) succeeded: IntCounter,
    pub(crate) retried: IntCounter,
    pub(crate) isolated: IntCounter,
    pub(crate) duration: Histogram,
    pub(crate) latency: Histogram,
    failed: IntCounterVec,
    dead_lettered: IntCounterVec,
    queue: Arc<str>,
    task: Arc<str>,
}

impl TaskMetrics {
    pub(crate) fn failed(&self, kind: ReasonKind) {
        self.failed
            .with_label_values(&[&*self.queue, &*self.task, kind.as_str()])
            .inc();
    }

    pub(crate) fn dead_lettered(&self, kind: ReasonKind) {
        self.dead_lettered
            .with_label_values(&[&*self.queue, &*self.task, kind.as_str()])
            .inc();
    }
}

/// Per-task handles of one queue, keyed by task name.
pub(crate) struct QueueMetrics {
    by_task: HashMap<String, Arc<TaskMetrics>, foldhash::fast::RandomState>,
    unknown: Arc<TaskMetrics>,
    pub(crate) held: IntGauge,
    pub(crate) in_progress: IntGauge,
    pub(crate) requeued: IntCounter,
    /// Deliveries received on this queue, for the stall watchdog.
    pub(crate) deliveries: std::sync::atomic::AtomicU64,
}

impl QueueMetrics {
    pub(crate) fn task(&self, name: &str) -> &Arc<TaskMetrics> {
        self.by_task.get(name).unwrap_or(&self.unknown)
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("metric is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ];
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let metric = HistogramVec::new(opts, labels).expect("metric is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn scalar_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("metric is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl WorkerMetrics {
    /// Creates and registers every worker metric in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let qt = &["queue", "task"];
        let qtr = &["queue", "task", "reason"];
        let q = &["queue"];
        // The worker's pool owns the process's broker session, so it registers its metrics.
        let broker = BrokerMetrics::new();
        broker.register(registry).expect("metric registered once");
        WorkerMetrics {
            received: counter(registry, "warren_tasks_received_total", "Task deliveries received.", qt),
            succeeded: counter(registry, "warren_tasks_succeeded_total", "Tasks whose handler succeeded.", qt),
            failed: counter(registry, "warren_tasks_failed_total", "Task attempts that failed, by reason.", qtr),
            retried: counter(registry, "warren_tasks_retried_total", "Tasks scheduled for another attempt.", qt),
            isolated: counter(registry, "warren_tasks_isolated_total", "Deliveries returned to the work queue repeatedly without being settled, moved to its isolation queue to run alone.", qt),
            dead_lettered: counter(registry, "warren_tasks_dead_lettered_total", "Tasks moved to the dead-letter queue, by reason.", qtr),
            duration: histogram(registry, "warren_task_duration_seconds", "Time spent in the handler.", qt),
            latency: histogram(registry, "warren_queue_latency_seconds", "Time from the task becoming due (created, or the end of a delay or retry backoff) to its handler starting.", qt),
            in_progress: gauge(registry, "warren_tasks_in_progress", "Handlers running now.", q),
            held: gauge(registry, "warren_deliveries_held", "Deliveries received and not yet acked (prefetched or running).", q),
            requeued: counter(registry, "warren_deliveries_requeued_total", "Deliveries returned to the queue unprocessed.", q),
            acks_lost: counter(registry, "warren_acks_lost_total", "Settlements lost with their channel (the broker redelivers those tasks).", q),
            concurrency: scalar_gauge(registry, "warren_worker_concurrency", "Maximum handlers running at once."),
            cpu_concurrency: scalar_gauge(registry, "warren_worker_cpu_concurrency", "Maximum CPU-bound handlers running at once."),
            prefetch: scalar_gauge(registry, "warren_worker_prefetch", "Deliveries each consumer may hold unacked."),
            connected: broker.connected,
            reconnects: broker.reconnects,
            queue_ready: gauge(registry, "warren_queue_ready_messages", "Messages ready in the queue, as the broker reports them.", q),
            queue_consumers: gauge(registry, "warren_queue_consumers", "Consumers of the queue, as the broker reports them.", q),
            stalls: counter(registry, "warren_consumer_stalls_total", "Consumers re-subscribed after receiving nothing while their queue had ready messages.", q),
            delay_unroutable: scalar_gauge(registry, "warren_delay_unroutable_messages", "Tasks in warren.delay.unroutable: their delay ended for a queue that no longer existed."),
        }
    }

    /// Resolves handles for every registered task on `queue` (and one for unknown tasks).
    pub(crate) fn for_queue<'a>(
        &self,
        queue: &str,
        tasks: impl Iterator<Item = &'a str>,
    ) -> QueueMetrics {
        let make = |task: &str| {
            Arc::new(TaskMetrics {
                received: self.received.with_label_values(&[queue, task]),
                succeeded: self.succeeded.with_label_values(&[queue, task]),
                retried: self.retried.with_label_values(&[queue, task]),
                isolated: self.isolated.with_label_values(&[queue, task]),
                duration: self.duration.with_label_values(&[queue, task]),
                latency: self.latency.with_label_values(&[queue, task]),
                failed: self.failed.clone(),
                dead_lettered: self.dead_lettered.clone(),
                queue: queue.into(),
                task: task.into(),
            })
        };
        QueueMetrics {
            by_task: tasks.map(|t| (t.to_owned(), make(t))).collect(),
            unknown: make(UNKNOWN_TASK_LABEL),
            held: self.held.with_label_values(&[queue]),
            in_progress: self.in_progress.with_label_values(&[queue]),
            requeued: self.requeued.with_label_values(&[queue]),
            deliveries: Default::default(),
        }
    }

    /// Totals over all labels, for the summary logged at shutdown.
    pub fn totals(&self) -> Totals {
        let sum = |c: &IntCounterVec| -> u64 {
            use prometheus::core::Collector;
            c.collect()
                .iter()
                .flat_map(|mf| {
                    mf.get_metric()
                        .iter()
                        .map(|m| m.get_counter().get_value() as u64)
                })
                .sum()
        };
        Totals {
            received: sum(&self.received),
            succeeded: sum(&self.succeeded),
            failed: sum(&self.failed),
            retried: sum(&self.retried),
            dead_lettered: sum(&self.dead_lettered),
            requeued: sum(&self.requeued),
        }
    }
}

/// Counts over the worker's lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Deliveries received.
    pub received: u64,
    /// Tasks succeeded.
    pub succeeded: u64,
    /// Attempts failed.
    pub failed: u64,
    /// Tasks scheduled for another attempt.
    pub retried: u64,
    /// Tasks dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries returned to the queue.
    pub requeued: u64,
}
