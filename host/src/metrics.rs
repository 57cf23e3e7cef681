//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use shop_broker::{Consumer, TopicPartition};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub instantiation_duration: HistogramVec,
    pub component_errors: IntCounterVec,
    pub component_loads: IntCounterVec,
    /// Kafka trigger, by component, topic and partition.
    pub messages_handled: IntCounterVec,
    pub messages_failed: IntCounterVec,
    pub messages_retried: IntCounterVec,
    pub messages_dead_lettered: IntCounterVec,
    /// Messages committed without a call: their type is not in `event_types`.
    pub messages_filtered: IntCounterVec,
    pub message_handler_duration: HistogramVec,
    /// Kafka triggers started again after their consumer failed, by component.
    pub kafka_trigger_restarts: IntCounterVec,
    /// Cron trigger, by component and outcome (`ok`, `error`, `skipped`).
    pub cron_runs: IntCounterVec,
    /// Records not handled yet, by component, group, topic and partition (set at
    /// each scrape from [`Metrics::lag`]).
    pub kafka_consumer_lag: IntGaugeVec,
    /// Component instances running now, by component and trigger kind.
    pub instances_in_flight: IntGaugeVec,
    /// From a record's publication to the end of the handler call that took it.
    pub record_end_to_end: HistogramVec,
    /// Records published by components, by topic and CloudEvents type.
    pub events_published: IntCounterVec,
    /// Where each partition a Kafka trigger works on stands.
    pub lag: LagBook,
    /// The names of the metrics triggers and capabilities registered themselves.
    registered: Mutex<Vec<String>>,
}

/// The handled position of every partition a Kafka trigger holds, with the consumer
/// that knows its high watermark: their difference is the partition's lag.
#[derive(Default)]
pub struct LagBook {
    partitions: Mutex<HashMap<LagKey, HeldPartition>>,
}

/// (component, group, topic, partition): the gauge's labels.
type LagKey = [String; 4];

/// The handled position of a held partition, and the consumer holding it.
type HeldPartition = (Arc<AtomicI64>, Weak<dyn Consumer>);

/// A partition's place in the [`LagBook`] while its worker runs: the offset of the
/// first record not handled yet (negative until the worker has seen one).
pub struct LagEntry {
    key: LagKey,
    pub position: Arc<AtomicI64>,
    book: Weak<Metrics>,
}

impl LagBook {
    fn each(&self, mut f: impl FnMut(&LagKey, i64, &dyn Consumer)) {
        let partitions = self.partitions.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, (position, consumer)) in partitions.iter() {
            if let Some(consumer) = consumer.upgrade() {
                f(key, position.load(Ordering::Relaxed), consumer.as_ref());
            }
        }
    }
}

impl Drop for LagEntry {
    fn drop(&mut self) {
        if let Some(metrics) = self.book.upgrade() {
            metrics
                .lag
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.key);
            let labels: Vec<&str> = self.key.iter().map(String::as_str).collect();
            let _ = metrics.kafka_consumer_lag.remove_label_values(&labels);
        }
    }
}

/// The components' producer, counting what they publish by topic and event type.
pub struct CountingProducer {
    inner: Arc<dyn shop_broker::Producer>,
    metrics: Arc<Metrics>,
}

impl CountingProducer {
    pub fn wrap(inner: Arc<dyn shop_broker::Producer>, metrics: Arc<Metrics>) -> Arc<dyn shop_broker::Producer> {
        Arc::new(Self { inner, metrics })
    }
}

#[async_trait::async_trait]
impl shop_broker::Producer for CountingProducer {
    async fn publish(
        &self,
        message: shop_broker::OutgoingMessage,
    ) -> Result<shop_broker::Delivery, shop_broker::BrokerError> {
        let topic = message.topic.clone();
        let event_type = message
            .headers
            .iter()
            .find(|(name, _)| name == "ce_type")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let delivery = self.inner.publish(message).await?;
        self.metrics
            .events_published
            .with_label_values(&[&topic, &event_type])
            .inc();
        Ok(delivery)
    }
}

/// Counts an instance as in flight until dropped.
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub fn new(metrics: &Metrics, component: &str, trigger: &str) -> Self {
        let gauge = metrics.instances_in_flight.with_label_values(&[component, trigger]);
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

const MESSAGE_LABELS: &[&str] = &["component", "topic", "partition"];

pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const INSTANTIATION_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("shop".into()), None).expect("valid registry prefix");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests handled, by component and status code",
            ),
            &["component", "status"],
        )
        .expect("valid metric");
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request arrival to response head, by component",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["component"],
        )
        .expect("valid metric");
        let instantiation_duration = HistogramVec::new(
            HistogramOpts::new(
                "component_instantiation_duration_seconds",
                "Time to create a store and instantiate a component for one request",
            )
            .buckets(INSTANTIATION_BUCKETS.to_vec()),
            &["component"],
        )
        .expect("valid metric");
        let component_errors = IntCounterVec::new(
            Opts::new(
                "component_errors_total",
                "Invocations that failed, by component and kind",
            ),
            &["component", "kind"],
        )
        .expect("valid metric");
        let component_loads = IntCounterVec::new(
            Opts::new(
                "component_loads_total",
                "Components loaded at start-up, by compilation cache outcome",
            ),
            &["component", "cache"],
        )
        .expect("valid metric");
        let messages_handled = counter(
            "kafka_messages_handled_total",
            "Messages whose handler succeeded (offset committed after it)",
            MESSAGE_LABELS,
        );
        let messages_failed = counter(
            "kafka_handler_failures_total",
            "Handler attempts that returned an error, trapped or timed out",
            MESSAGE_LABELS,
        );
        let messages_retried = counter(
            "kafka_messages_retried_total",
            "Retries of a failed message",
            MESSAGE_LABELS,
        );
        let messages_dead_lettered = counter(
            "kafka_messages_dead_lettered_total",
            "Messages sent to the dead-letter topic after their last retry",
            MESSAGE_LABELS,
        );
        let messages_filtered = counter(
            "kafka_messages_filtered_total",
            "Messages committed without calling the component: their ce_type is not in the trigger's event_types",
            &["component", "topic"],
        );
        let message_handler_duration = HistogramVec::new(
            HistogramOpts::new(
                "kafka_handler_duration_seconds",
                "Time for one handler attempt, instantiation included",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["component", "topic"],
        )
        .expect("valid metric");
        let kafka_trigger_restarts = counter(
            "kafka_trigger_restarts_total",
            "Kafka triggers started again after their consumer closed or could not subscribe",
            &["component"],
        );
        let cron_runs = counter(
            "cron_runs_total",
            "Cron trigger firings, by component and outcome",
            &["component", "outcome"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let kafka_consumer_lag = gauge(
            "kafka_consumer_lag",
            "Records of a partition the trigger's group has not handled yet: its high watermark minus the handled position",
            &["component", "group", "topic", "partition"],
        );
        let instances_in_flight = gauge(
            "instances_in_flight",
            "Component instances running now, by component and trigger kind",
            &["component", "trigger"],
        );
        let record_end_to_end = HistogramVec::new(
            HistogramOpts::new(
                "kafka_record_end_to_end_seconds",
                "From a record's publication to the end of the handler call that took it",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["component", "topic"],
        )
        .expect("valid metric");
        let events_published = counter(
            "events_published_total",
            "Records published by components, by topic and CloudEvents type",
            &["topic", "type"],
        );
        let metrics = Self {
            registry,
            http_requests,
            http_request_duration,
            instantiation_duration,
            component_errors,
            component_loads,
            messages_handled,
            messages_failed,
            messages_retried,
            messages_dead_lettered,
            messages_filtered,
            message_handler_duration,
            kafka_trigger_restarts,
            cron_runs,
            kafka_consumer_lag,
            instances_in_flight,
            record_end_to_end,
            events_published,
            lag: LagBook::default(),
            registered: Mutex::default(),
        };
        for collector in metrics.collectors() {
            metrics.registry.register(collector).expect("metric registered once");
        }
        metrics
    }

    /// Every metric, for the registry.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_request_duration.clone()),
            Box::new(self.instantiation_duration.clone()),
            Box::new(self.component_errors.clone()),
            Box::new(self.component_loads.clone()),
            Box::new(self.messages_handled.clone()),
            Box::new(self.messages_failed.clone()),
            Box::new(self.messages_retried.clone()),
            Box::new(self.messages_dead_lettered.clone()),
            Box::new(self.messages_filtered.clone()),
            Box::new(self.message_handler_duration.clone()),
            Box::new(self.kafka_trigger_restarts.clone()),
            Box::new(self.cron_runs.clone()),
            Box::new(self.kafka_consumer_lag.clone()),
            Box::new(self.instances_in_flight.clone()),
            Box::new(self.record_end_to_end.clone()),
            Box::new(self.events_published.clone()),
        ]
    }

    /// Puts a trigger's partition in the lag book until the entry is dropped.
    pub fn track_lag(
        self: &Arc<Self>,
        component: &str,
        group: &str,
        partition: &TopicPartition,
        consumer: &Arc<dyn Consumer>,
    ) -> LagEntry {
        let key = [
            component.to_string(),
            group.to_string(),
            partition.topic.clone(),
            partition.partition.to_string(),
        ];
        let position = Arc::new(AtomicI64::new(-1));
        self.lag
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), (position.clone(), Arc::downgrade(consumer)));
        LagEntry {
            key,
            position,
            book: Arc::downgrade(self),
        }
    }

    /// Adds a trigger's or capability's own metrics to `/metrics`.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        let names = collector.desc().into_iter().map(|d| format!("shop_{}", d.fq_name));
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
        self.registry.register(collector)
    }

    /// Sets the lag gauges from the positions and watermarks of now.
    fn refresh(&self) {
        self.lag.each(|key, position, consumer| {
            if position < 0 {
                return;
            }
            let partition = TopicPartition {
                topic: key[2].clone(),
                partition: key[3].parse().unwrap_or(0),
            };
            if let Some(high) = consumer.high_watermark(&partition) {
                let labels: Vec<&str> = key.iter().map(String::as_str).collect();
                self.kafka_consumer_lag
                    .with_label_values(&labels)
                    .set((high - position).max(0));
            }
        });
    }

    /// The names of every metric this host exports (for the dashboard's test).
    #[cfg(test)]
    fn names(&self) -> std::collections::BTreeSet<String> {
        let registered = self.registered.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| format!("shop_{}", d.fq_name)))
            .chain(registered)
            .collect()
    }

    pub fn render(&self) -> String {
        self.refresh();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to memory cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names a PromQL expression uses (`shop_…`, histogram suffixes off).
    fn metrics_in(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("shop_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.push(base.to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn every_dashboard_query_names_a_metric_the_host_exports() {
        let metrics = Metrics::new();
        crate::trigger::outbox::OutboxFamilies::register(&metrics).unwrap();
        let exported = metrics.names();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../ops/grafana/shop-dashboard.json")).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 8, "{} panels", panels.len());
        for panel in panels {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{} has no query", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                let names = metrics_in(expr);
                assert!(!names.is_empty(), "{}: {expr} names no shop metric", panel["title"]);
                for name in names {
                    assert!(exported.contains(&name), "{}: {name} is not exported", panel["title"]);
                }
            }
        }
        assert_eq!(metrics_in("rate(shop_x_bucket[1m]) / shop_y"), ["shop_x", "shop_y"]);
    }

    /// A stand-in consumer whose high watermark a test sets.
    struct Watermark(AtomicI64);

    #[async_trait::async_trait]
    impl Consumer for Watermark {
        async fn next_event(&self) -> Result<shop_broker::ConsumerEvent, shop_broker::BrokerError> {
            Err(shop_broker::BrokerError::Closed)
        }
        async fn commit(&self, _: &TopicPartition, _: i64) -> Result<(), shop_broker::BrokerError> {
            Ok(())
        }
        async fn close(&self) {}
        fn high_watermark(&self, _: &TopicPartition) -> Option<i64> {
            Some(self.0.load(Ordering::Relaxed))
        }
    }

    #[test]
    fn lag_is_the_watermark_minus_the_handled_position_while_the_partition_is_held() {
        let metrics = Arc::new(Metrics::new());
        let consumer: Arc<dyn Consumer> = Arc::new(Watermark(AtomicI64::new(10)));
        let partition = TopicPartition {
            topic: "t".into(),
            partition: 2,
        };
        let entry = metrics.track_lag("handler", "g", &partition, &consumer);
        let line = r#"shop_kafka_consumer_lag{component="handler",group="g",partition="2",topic="t"}"#;
        assert!(!metrics.render().contains(line), "no value before the first record");
        entry.position.store(4, Ordering::Relaxed);
        assert!(metrics.render().contains(&format!("{line} 6")));
        entry.position.store(10, Ordering::Relaxed);
        assert!(metrics.render().contains(&format!("{line} 0")));
        drop(entry);
        assert!(!metrics.render().contains(line), "a released partition has no lag here");
    }
}
