//! The producer's Prometheus metrics.

use crate::BrokerMetrics;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric a publisher exports.
#[derive(Clone, Debug)]
pub struct ProducerMetrics {
    /// Tasks confirmed by the broker.
    pub published: IntCounter,
    /// Time from publish to confirm.
    pub confirm_latency: Histogram,
    /// Publishes that failed, by kind (nack, unroutable, blocked, timeout, connection).
    pub failures: IntCounterVec,
    /// 1 while connected to the broker (a [`BrokerMetrics`] family).
    pub connected: IntGauge,
    /// 1 while the broker blocks publishers (memory or disk alarm).
    pub blocked: IntGauge,
    /// Reconnections since start (a [`BrokerMetrics`] family).
    pub reconnects: IntCounter,
}

impl ProducerMetrics {
    /// Creates and registers the metrics in `registry`, or `None` (with a warning) if the
    /// registry already holds them, e.g. from another publisher of the same process.
    pub fn register(registry: &Registry) -> Option<Self> {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let broker = BrokerMetrics::new();
        let metrics = ProducerMetrics {
            published: IntCounter::new(
                "warren_producer_published_total",
                "Tasks published and confirmed by the broker.",
            )
            .expect("metric is valid"),
            confirm_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "warren_producer_confirm_seconds",
                    "Time from publishing a task to the broker's confirm.",
                )
                .buckets(buckets),
            )
            .expect("metric is valid"),
            failures: IntCounterVec::new(
                Opts::new(
                    "warren_producer_publish_failures_total",
                    "Publishes not confirmed, by kind.",
                ),
                &["kind"],
            )
            .expect("metric is valid"),
            connected: broker.connected.clone(),
            blocked: IntGauge::new(
                "warren_producer_blocked",
                "1 while the broker blocks publishers (resource alarm).",
            )
            .expect("metric is valid"),
            reconnects: broker.reconnects.clone(),
        };
        for kind in ["nack", "unroutable", "blocked", "timeout", "connection"] {
            metrics.failures.with_label_values(&[kind]);
        }
        let own: [Box<dyn prometheus::core::Collector>; 4] = [
            Box::new(metrics.published.clone()),
            Box::new(metrics.confirm_latency.clone()),
            Box::new(metrics.failures.clone()),
            Box::new(metrics.blocked.clone()),
        ];
        for collector in own.into_iter().chain(broker.collectors()) {
            if let Err(error) = registry.register(collector) {
                tracing::warn!(%error, "producer metrics already registered; this publisher exports none");
                return None;
            }
        }
        Some(metrics)
    }
}
