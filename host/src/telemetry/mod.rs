//! Traces: every invocation and every host call that leaves the process or touches
//! storage is a span in the W3C trace context the invocation arrived with (HTTP
//! `traceparent`, a Kafka record's `traceparent` header) or a new one, and the context
//! travels on with each chained call, outbound request and published record.
//!
//! The ids are always made and passed on (logs carry them too); spans are exported only
//! when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! by OTLP/HTTP protobuf through the OpenTelemetry SDK's batch processor: a bounded
//! queue drained by its own thread, so a slow or absent collector drops spans and
//! never holds up a request.

pub mod context;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor};

pub use context::{TRACEPARENT, TRACESTATE, TraceContext};

struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The collector address from the standard variables, if any.
pub fn configured_endpoint() -> Option<String> {
    ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Starts exporting when the environment names a collector; returns where to. Call
/// once, before any span ends (later calls change nothing).
pub fn init_from_env() -> anyhow::Result<Option<String>> {
    let Some(endpoint) = configured_endpoint() else {
        let _ = EXPORTER.set(None);
        return Ok(None);
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))?;
    // The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; "shop" only when
    // neither names the service.
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("shop");
    }
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource.build());
    let scope = InstrumentationScope::builder("shop-host")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let _ = EXPORTER.set(Some(Exporter { processor, scope }));
    Ok(Some(endpoint))
}

fn exporter() -> Option<&'static Exporter> {
    EXPORTER.get().and_then(Option::as_ref)
}

/// Sends what is queued (at shutdown), waiting at most `timeout`.
pub fn shutdown(timeout: Duration) {
    if let Some(exporter) = exporter() {
        let _ = exporter.processor.shutdown_with_timeout(timeout);
    }
}

/// The trace context of the invocation a store serves, set when it starts (instances
/// are made before they know their request).
pub type TraceCell = Arc<OnceLock<TraceContext>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Producer,
    Consumer,
    Internal,
}

impl From<Kind> for SpanKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Producer => SpanKind::Producer,
            Kind::Consumer => SpanKind::Consumer,
            Kind::Internal => SpanKind::Internal,
        }
    }
}

struct Recording {
    name: Cow<'static, str>,
    kind: Kind,
    parent: Option<(TraceContext, bool)>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

/// One span being timed. It has its context (pass it on) whether or not spans are
/// exported; its timing and attributes are kept only when they are.
pub struct Span {
    pub context: TraceContext,
    recording: Option<Box<Recording>>,
}

impl Span {
    /// A span under `parent` (`remote`: the parent came from another process or
    /// invocation), or the first of a new trace.
    pub fn start(name: impl Into<Cow<'static, str>>, kind: Kind, parent: Option<&TraceContext>, remote: bool) -> Self {
        let context = parent.map_or_else(TraceContext::root, TraceContext::child);
        let recording = (exporter().is_some() && context.sampled).then(|| {
            Box::new(Recording {
                name: name.into(),
                kind,
                parent: parent.map(|p| (p.clone(), remote)),
                start: SystemTime::now(),
                attributes: Vec::new(),
                error: None,
            })
        });
        Self { context, recording }
    }

    /// A span of a host call made by the invocation in `cell`.
    pub fn host_call(cell: &TraceCell, name: impl Into<Cow<'static, str>>, kind: Kind) -> Self {
        Self::start(name, kind, cell.get(), false)
    }

    /// Whether attributes are kept (build costly ones only then).
    pub fn recording(&self) -> bool {
        self.recording.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(recording) = &mut self.recording {
            recording.attributes.push(KeyValue::new(key, value));
        }
    }

    pub fn set_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(recording) = &mut self.recording {
            recording.name = name.into();
        }
    }

    /// Marks the span failed (status ERROR with `message`).
    pub fn fail(&mut self, message: impl Into<String>) {
        if let Some(recording) = &mut self.recording {
            recording.error = Some(message.into());
        }
    }

    /// Ends the span now and queues it for export.
    pub fn finish(self) {
        let (Some(recording), Some(exporter)) = (self.recording, exporter()) else {
            return;
        };
        let Recording {
            name,
            kind,
            parent,
            start,
            attributes,
            error,
        } = *recording;
        let state = self
            .context
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let (parent_span_id, parent_span_is_remote) = match &parent {
            Some((p, remote)) => (SpanId::from_bytes(p.span_id), *remote),
            None => (SpanId::INVALID, false),
        };
        exporter.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.context.trace_id),
                SpanId::from_bytes(self.context.span_id),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id,
            parent_span_is_remote,
            span_kind: kind.into(),
            name,
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: exporter.scope.clone(),
        });
    }
}

/// A client span for one statement on a database (`system`: OpenTelemetry's
/// `db.system.name`, e.g. `sqlite`, `postgresql`, `redis`).
pub fn database_span(cell: &TraceCell, system: &'static str, namespace: &str, statement: &str) -> Span {
    let mut span = Span::host_call(cell, "", Kind::Client);
    if span.recording() {
        let operation = statement.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        span.set_name(format!("{operation} {namespace}"));
        span.set("db.system.name", system);
        span.set("db.namespace", namespace.to_string());
        span.set("db.operation.name", operation);
        // Statements carry placeholders, not values: no secrets, bounded size.
        span.set("db.query.text", statement.chars().take(1024).collect::<String>());
    }
    span
}

/// Ends `span` with `result`'s outcome, and passes the result on.
pub fn finish_with<T, E: std::fmt::Debug>(mut span: Span, result: Result<T, E>) -> Result<T, E> {
    if let Err(error) = &result {
        span.fail(format!("{error:?}"));
    }
    span.finish();
    result
}

/// Writes `context` as the request's `traceparent` (and `tracestate`), replacing what
/// was there.
pub fn inject(context: &TraceContext, headers: &mut http::HeaderMap) {
    headers.remove(TRACESTATE);
    for (name, value) in context.headers() {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The trace and span ids of the invocation in `cell`, for the fields of a log event
/// (empty outside an invocation).
pub fn ids(cell: &TraceCell) -> (String, String) {
    cell.get()
        .map(|c| (c.trace_id_hex(), c.span_id_hex()))
        .unwrap_or_default()
}

/// A `tracing` span for an invocation, so that every host log event it causes
/// (a denied request, a failed publish, …) names its trace and span.
pub fn log_span(context: &TraceContext) -> tracing::Span {
    tracing::info_span!(
        "invocation",
        trace_id = %context.trace_id_hex(),
        span_id = %context.span_id_hex()
    )
}

/// The context a request or record carries, from its `traceparent`/`tracestate`.
pub fn extract<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<TraceContext> {
    TraceContext::parse(header(TRACEPARENT)?, header(TRACESTATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_pass_their_context_on_without_an_exporter() {
        let _ = EXPORTER.set(None);
        let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap();
        let mut span = Span::start("GET /", Kind::Server, Some(&incoming), true);
        assert!(!span.recording());
        span.set("http.request.method", "GET");
        assert_eq!(span.context.trace_id, incoming.trace_id);
        assert_ne!(span.context.span_id, incoming.span_id);
        let cell: TraceCell = Arc::default();
        cell.set(span.context.clone()).unwrap();
        let call = Span::host_call(&cell, "sqlite", Kind::Client);
        assert_eq!(call.context.trace_id, incoming.trace_id);
        span.finish();
        call.finish();
        let root = Span::start("cron", Kind::Internal, None, false);
        assert_ne!(root.context.trace_id, incoming.trace_id);
    }

    #[test]
    fn the_context_comes_from_the_standard_headers() {
        let headers = [
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "a=b"),
        ];
        let find = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let context = extract(find).unwrap();
        assert_eq!(context.state.as_deref(), Some("a=b"));
        assert_eq!(extract(|_| None), None);
        assert_eq!(extract(|_| Some("garbage")), None);
    }
}
