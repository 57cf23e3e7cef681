//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub instantiation_duration: HistogramVec,
    pub component_errors: IntCounterVec,
    pub component_loads: IntCounterVec,
}

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
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_request_duration.clone()),
            Box::new(instantiation_duration.clone()),
            Box::new(component_errors.clone()),
            Box::new(component_loads.clone()),
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
