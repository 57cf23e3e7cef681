//! Where an HTTP request becomes a call into a component: a fresh store and instance
//! per request (from the pre-instantiated component), the per-request deadline and
//! memory cap, and the mapping of guest failures to 500/504.
//!
//! Instances are driven by `wasmtime-wasi-http`'s `ProxyHandler`, which runs both
//! P2 and P3 guests and keeps the store alive while a response body streams; our
//! [`HandlerState`] tells it to use each instance for exactly one request.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use tracing::Instrument as _;
use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};

use crate::app::LoadedComponent;
use crate::capability::outbound_http::{GuestRequest, GuestResponse, LocalServices};
use crate::metrics::Metrics;
use crate::state::{HostState, InvocationProbe};
use crate::telemetry::{self, Kind, Span};

pub use crate::instance::RequestLimits;
use crate::instance::{HARD_KILL_GRACE, InvocationFailure, new_store};

struct ComponentHandlerState {
    engine: Engine,
    component: Arc<LoadedComponent>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    local: Weak<dyn LocalServices>,
}

impl HandlerState for ComponentHandlerState {
    type StoreData = HostState;
    type WorkerExpiration = HardDeadline;
    type WorkerState = SingleUse;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, HardDeadline, SingleUse>> {
        let started = Instant::now();
        let mut store = new_store(&self.engine, &self.component, self.limits, self.local.clone());
        let Some((pre, _)) = &self.component.exports.http else {
            wasmtime::bail!("component `{}` has no HTTP handler", self.component.id);
        };
        let proxy = pre.instantiate_async(&mut store).await?;
        self.metrics
            .instantiation_duration
            .with_label_values(&[&*self.component.id])
            .observe(started.elapsed().as_secs_f64());
        Ok(Instance {
            store,
            proxy,
            view: HostState::http_view,
            expiration: HardDeadline::new(self.limits.timeout + HARD_KILL_GRACE),
            state: SingleUse {
                timeout: self.limits.timeout,
            },
        })
    }
}

/// Accepts exactly one request per instance: no state leaks between requests.
struct SingleUse {
    timeout: Duration,
}

impl WorkerState for SingleUse {
    type StoreData = HostState;
    type RequestData = Arc<InvocationProbe>;

    fn should_accept_request(&self, _concurrent: usize, total: usize) -> ShouldAccept {
        if total == 0 {
            ShouldAccept::Yes
        } else {
            ShouldAccept::Never
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, HostState>,
        probe: Arc<InvocationProbe>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let data = store.data_mut();
        data.deadline = Instant::now() + self.timeout;
        let _ = data.output_tags.request_id.set(probe.request_id.clone());
        if let Some(trace) = &probe.trace {
            let _ = data.trace.set(trace.clone());
        }
        data.limiter.probe = probe;
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, _store: Store<HostState>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "component instance ended with an error");
        }
    }
}

/// Backstop expiry polled outside the guest's event loop (see `WorkerState` docs in
/// wasmtime-wasi-http): fires `limit` after the last request started.
struct HardDeadline {
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<Instant>,
}

impl HardDeadline {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            armed_for: None,
        }
    }
}

impl WorkerExpiration for HardDeadline {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        let this = self.get_mut();
        if status == WorkerStatus::Idle {
            // A single-use instance that is idle has nothing left to do.
            return Poll::Ready(());
        }
        if this.armed_for != Some(start) {
            this.armed_for = Some(start);
            this.sleep.as_mut().reset((start + this.limit).into());
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// One component's request entry point.
pub struct ComponentInvoker {
    handler: ProxyHandler<ComponentHandlerState>,
    id: Arc<str>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    /// HTTP requests in components at once, shared by every component of the app: past
    /// it a request is answered 503 at once instead of failing to instantiate.
    slots: Arc<tokio::sync::Semaphore>,
}

impl ComponentInvoker {
    pub fn new(
        engine: Engine,
        component: Arc<LoadedComponent>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
        local: Weak<dyn LocalServices>,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let id = component.id.clone();
        Self {
            handler: ProxyHandler::new(ComponentHandlerState {
                engine,
                component,
                limits,
                metrics: metrics.clone(),
                local,
            }),
            id,
            limits,
            metrics,
            slots,
        }
    }

    /// Runs the component on `request`. Guest failures become error responses here,
    /// so callers (the listener, local chaining) always get a response.
    pub async fn invoke(&self, mut request: GuestRequest, request_id: &str) -> GuestResponse {
        let Ok(_slot) = self.slots.try_acquire() else {
            self.metrics
                .component_errors
                .with_label_values(&[&*self.id, "busy"])
                .inc();
            let mut busy = error_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the shop is at its limit of concurrent requests: retry shortly",
            );
            busy.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return super::with_request_id(busy, request_id);
        };
        let started = Instant::now();
        // The caller's trace (a client's `traceparent`, or the chaining component's
        // span) continues here; the guest sees this invocation's span as its parent.
        let headers = request.headers();
        let parent = telemetry::extract(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        let method = request.method().as_str().to_string();
        let mut span = Span::start(format!("{method} {}", self.id), Kind::Server, parent.as_ref(), true);
        if span.recording() {
            span.set("http.request.method", method);
            span.set("url.path", request.uri().path().to_string());
            span.set("shop.component", self.id.to_string());
            span.set("faas.trigger", "http");
        }
        telemetry::inject(&span.context, request.headers_mut());
        let probe = Arc::new(InvocationProbe::new(request_id, &span.context));
        let in_flight = crate::metrics::InFlight::new(&self.metrics, &self.id, "http");
        let result = self
            .handler
            .handle(probe.clone(), request)
            .instrument(telemetry::log_span(&span.context))
            .await;
        drop(in_flight);
        let elapsed = started.elapsed();
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let failure = InvocationFailure::classify(&error, &probe, elapsed, self.limits.timeout);
                self.metrics
                    .component_errors
                    .with_label_values(&[&*self.id, failure.kind()])
                    .inc();
                let message = match failure {
                    InvocationFailure::Timeout => format!(
                        "component `{}` did not respond within {} ms",
                        self.id,
                        self.limits.timeout.as_millis()
                    ),
                    InvocationFailure::MemoryLimit => format!(
                        "component `{}` exceeded its memory limit of {} MiB",
                        self.id,
                        self.limits.max_memory_bytes >> 20
                    ),
                    InvocationFailure::Trap => format!("component `{}` failed while handling the request", self.id),
                };
                tracing::error!(
                    component = %self.id,
                    request_id,
                    trace_id = span.context.trace_id_hex(),
                    span_id = span.context.span_id_hex(),
                    kind = failure.kind(),
                    error = format!("{error:#}"),
                    "{message}"
                );
                span.fail(message.clone());
                super::with_request_id(error_response(failure.status(), failure.kind(), &message), request_id)
            }
        };
        span.set("http.response.status_code", i64::from(response.status().as_u16()));
        if response.status().is_server_error() {
            span.fail(format!("status {}", response.status().as_u16()));
        }
        span.finish();
        self.metrics
            .http_requests
            .with_label_values(&[&*self.id, response.status().as_str()])
            .inc();
        self.metrics
            .http_request_duration
            .with_label_values(&[&*self.id])
            .observe(elapsed.as_secs_f64());
        response
    }
}

/// A JSON error body in the shop's `{"error": {"code", "message"}}` shape.
pub fn error_response(status: http::StatusCode, code: &str, message: &str) -> GuestResponse {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(body))
        .expect("static response parts are valid")
}

pub fn full_body(data: impl Into<bytes::Bytes>) -> WasiBody {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
