//! The outbox trigger's own figures, per outbox (component and database).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::metrics::{LATENCY_BUCKETS, Metrics};

const LABELS: &[&str] = &["component", "database"];

/// The families, registered once per host.
pub struct OutboxFamilies {
    backlog: IntGaugeVec,
    published: IntCounterVec,
    dead_lettered: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
}

impl OutboxFamilies {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), LABELS).expect("valid metric");
        OutboxFamilies {
            backlog: IntGaugeVec::new(
                Opts::new(
                    "outbox_backlog",
                    "Rows in an outbox not published yet, as its relay last saw them",
                ),
                LABELS,
            )
            .expect("valid metric"),
            published: counter("outbox_published_total", "Outbox rows published and deleted"),
            dead_lettered: counter(
                "outbox_dead_lettered_total",
                "Outbox rows that could not be published as they were, sent to the dead-letter topic",
            ),
            errors: counter("outbox_relay_errors_total", "Relay passes that failed on the database"),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "outbox_relay_latency_seconds",
                    "From a row's created_at to its publication",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                LABELS,
            )
            .expect("valid metric"),
        }
    }

    /// The families, added to the host's `/metrics`.
    pub fn register(metrics: &Metrics) -> anyhow::Result<Self> {
        let families = Self::new();
        metrics.register(Box::new(families.backlog.clone()))?;
        metrics.register(Box::new(families.published.clone()))?;
        metrics.register(Box::new(families.dead_lettered.clone()))?;
        metrics.register(Box::new(families.errors.clone()))?;
        metrics.register(Box::new(families.latency.clone()))?;
        Ok(families)
    }

    pub fn of(&self, component: &str, database: &str) -> OutboxMetrics {
        let labels = [component, database];
        OutboxMetrics {
            backlog: self.backlog.with_label_values(&labels),
            published: self.published.with_label_values(&labels),
            dead_lettered: self.dead_lettered.with_label_values(&labels),
            errors: self.errors.with_label_values(&labels),
            latency: self.latency.with_label_values(&labels),
        }
    }
}

/// One outbox's figures.
pub struct OutboxMetrics {
    pub backlog: IntGauge,
    pub published: IntCounter,
    pub dead_lettered: IntCounter,
    pub errors: IntCounter,
    pub latency: Histogram,
}

#[cfg(test)]
impl OutboxMetrics {
    pub fn unregistered() -> Self {
        OutboxFamilies::new().of("test", "test")
    }
}
