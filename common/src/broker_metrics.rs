//! The metrics of a process's session with the broker, `warren_broker_connected` and
//! `warren_broker_reconnects_total`: defined here once for every process (a worker, a
//! publisher), and registered by whichever part of the process owns its broker session (the
//! worker's pool in a worker, the publisher in `warren-producer serve`).

use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, Registry};

/// Handles to the broker-session metrics. Cheap to clone; clones update the same series.
#[derive(Clone, Debug)]
pub struct BrokerMetrics {
    /// 1 while connected to the broker.
    pub connected: IntGauge,
    /// Reconnections since start.
    pub reconnects: IntCounter,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerMetrics {
    /// The metrics, not yet registered anywhere.
    pub fn new() -> Self {
        BrokerMetrics {
            connected: IntGauge::new(
                "warren_broker_connected",
                "1 while connected to the broker.",
            )
            // A valid name and help: creating it cannot fail.
            .expect("metric is valid"),
            reconnects: IntCounter::new(
                "warren_broker_reconnects_total",
                "Reconnections to the broker since the process started.",
            )
            .expect("metric is valid"),
        }
    }

    /// The collectors to register, for a caller that registers several families together.
    pub fn collectors(&self) -> [Box<dyn Collector>; 2] {
        [
            Box::new(self.connected.clone()),
            Box::new(self.reconnects.clone()),
        ]
    }

    /// Registers the metrics in `registry`; an error if it holds them already.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        self.collectors()
            .into_iter()
            .try_for_each(|collector| registry.register(collector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_families_are_exported_once_under_their_names() {
        let registry = Registry::new();
        let metrics = BrokerMetrics::new();
        metrics.register(&registry).unwrap();
        metrics.connected.set(1);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        assert_eq!(
            names,
            ["warren_broker_connected", "warren_broker_reconnects_total"]
        );
        // A second registration in the same registry is refused, not duplicated.
        assert!(BrokerMetrics::new().register(&registry).is_err());
    }
}
