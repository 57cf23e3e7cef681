//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

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
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

const MESSAGE_LABELS: &[&str] = &["component", "topic", "partition"];

const LATENCY_BUCKETS: &[f64] = &[
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
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_request_duration.clone()),
            Box::new(instantiation_duration.clone()),
            Box::new(component_errors.clone()),
            Box::new(component_loads.clone()),
            Box::new(messages_handled.clone()),
            Box::new(messages_failed.clone()),
            Box::new(messages_retried.clone()),
            Box::new(messages_dead_lettered.clone()),
            Box::new(messages_filtered.clone()),
            Box::new(message_handler_duration.clone()),
            Box::new(kafka_trigger_restarts.clone()),
            Box::new(cron_runs.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
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
        }
    }

    pub fn render(&self) -> String {
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
