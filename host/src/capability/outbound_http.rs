//! `wasi:http` for guests, as wasmtime-wasi-http implements it, and outbound HTTP
//! (the 0.2 outgoing-handler and the 0.3 client share this hook):
//! `allowed_outbound_hosts` enforcement, timeouts, and Spin's local service chaining,
//! where `http://<component>.spin.internal/...` reaches that component in-process
//! without a socket. wasmtime-wasi-http's host functions reach the store through
//! [`WasiHttpView`], which yields this capability's state and the resource table only.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::allowed_hosts::AllowedHosts;
use super::{AppContext, Capability, ComponentContext, InstanceContext};
use crate::state::HostState;
use crate::telemetry::{Kind, Span};

/// `wasi:http` types, the 0.2 outgoing handler and the 0.3 client.
pub struct WasiHttp;

/// Whom a component may call.
pub struct HttpGrant {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
}

/// One instance's `wasi:http` context and outbound policy.
pub struct HttpInstance {
    ctx: WasiHttpCtx,
    hooks: OutboundHttp,
}

impl Capability for WasiHttp {
    type App = ();
    type Component = HttpGrant;
    type Instance = HttpInstance;

    fn configure_app(_: &AppContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
        Ok(())
    }

    fn configure(_: &Arc<()>, component: &ComponentContext<'_>) -> anyhow::Result<HttpGrant> {
        Ok(HttpGrant {
            component: component.id.clone(),
            allowed: component.allowed_hosts.clone(),
        })
    }

    fn prepare(grant: &HttpGrant, instance: &InstanceContext) -> HttpInstance {
        HttpInstance {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHttp {
                trace: instance.trace.clone(),
                component: grant.component.clone(),
                allowed: grant.allowed.clone(),
                local: instance.local.clone(),
                timeouts: OutboundTimeouts::default(),
            },
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.capabilities.http.ctx,
            table: &mut self.table,
            hooks: &mut self.capabilities.http.hooks,
        }
    }
}

pub type GuestRequest = http::Request<WasiBody>;
pub type GuestResponse = http::Response<WasiBody>;

/// In-process delivery of requests between components, implemented by the HTTP trigger.
pub trait LocalServices: Send + Sync {
    /// Sends `request` to HTTP component `id`; `None` if there is no such component.
    fn call_component(&self, id: &str, request: GuestRequest) -> Option<BoxFuture<'static, GuestResponse>>;
    /// Routes `request` through the application's public routes (`http://self`).
    fn call_self(&self, request: GuestRequest) -> BoxFuture<'static, GuestResponse>;
}

#[derive(Debug, Clone, Copy)]
pub struct OutboundTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

impl Default for OutboundTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(30),
            between_bytes: Duration::from_secs(30),
        }
    }
}

/// Per-instance outbound HTTP policy; lives in the store so the hook can reach it.
pub struct OutboundHttp {
    /// The calling invocation's trace: each request is a client span in it.
    pub trace: crate::telemetry::TraceCell,
    pub component: Arc<str>,
    pub allowed: Arc<AllowedHosts>,
    pub local: Weak<dyn LocalServices>,
    pub timeouts: OutboundTimeouts,
}

const INTERNAL_SUFFIX: &str = ".spin.internal";

/// Where an outbound request goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    Component(String),
    SelfApp,
    Network,
}

fn destination(host: &str) -> Destination {
    let host = host.to_ascii_lowercase();
    if let Some(id) = host.strip_suffix(INTERNAL_SUFFIX) {
        Destination::Component(id.to_string())
    } else if host == "self" || host == "self.alt" {
        Destination::SelfApp
    } else {
        Destination::Network
    }
}

fn ready<T: Send + 'static>(value: T) -> Box<dyn Future<Output = T> + Send> {
    Box::new(std::future::ready(value))
}

type SendResult = Result<(GuestResponse, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: GuestRequest,
        options: Option<RequestOptions>,
        _request_body_sent: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let Some(host) = uri.host().map(str::to_string) else {
            return ready(Err(HttpError::HttpRequestUriInvalid));
        };
        if !self.allowed.allows(&scheme, &host, uri.port_u16()) {
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let (trace_id, span_id) = crate::telemetry::ids(&self.trace);
            tracing::warn!(
                component = %self.component,
                trace_id,
                span_id,
                destination = %format!("{scheme}://{host}{port}"),
                "outbound request denied: destination not in allowed_outbound_hosts"
            );
            return ready(Err(HttpError::HttpRequestDenied));
        }
        let no_local = || {
            tracing::error!("local service chaining requested while the application is shutting down");
            ready(Err(HttpError::DestinationUnavailable))
        };
        let mut span = Span::host_call(&self.trace, request.method().as_str().to_string(), Kind::Client);
        if span.recording() {
            span.set("http.request.method", request.method().as_str().to_string());
            span.set("url.full", uri.to_string());
            span.set("server.address", host.clone());
        }
        // The callee continues this trace, unless the guest chose a context itself.
        if !request.headers().contains_key(crate::telemetry::TRACEPARENT) {
            crate::telemetry::inject(&span.context, request.headers_mut());
        }
        let sent = self.route(request, options, &host, no_local);
        Box::new(async move {
            let result = Box::into_pin(sent).await;
            match &result {
                Ok((response, _)) => {
                    span.set("http.response.status_code", i64::from(response.status().as_u16()));
                    if response.status().is_server_error() {
                        span.fail(format!("status {}", response.status().as_u16()));
                    }
                }
                Err(error) => span.fail(format!("{error:?}")),
            }
            span.finish();
            result
        })
    }
}

impl OutboundHttp {
    fn route(
        &self,
        mut request: GuestRequest,
        options: Option<RequestOptions>,
        host: &str,
        no_local: impl Fn() -> Box<dyn Future<Output = SendResult> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        match destination(host) {
            Destination::Component(id) => {
                let Some(local) = self.local.upgrade() else {
                    return no_local();
                };
                // Spin drops the Host header of chained requests.
                request.headers_mut().remove(http::header::HOST);
                match local.call_component(&id, request) {
                    Some(response) => Box::new(async move { Ok((response.await, ready(Ok(())))) }),
                    None => {
                        let (trace_id, span_id) = crate::telemetry::ids(&self.trace);
                        tracing::warn!(
                            component = %self.component,
                            target = %id,
                            trace_id,
                            span_id,
                            "local service chaining to unknown component"
                        );
                        ready(Err(HttpError::DestinationNotFound))
                    }
                }
            }
            Destination::SelfApp => {
                let Some(local) = self.local.upgrade() else {
                    return no_local();
                };
                let response = local.call_self(request);
                Box::new(async move { Ok((response.await, ready(Ok(())))) })
            }
            Destination::Network => {
                let defaults = self.timeouts;
                let options = options.unwrap_or_default();
                let options = RequestOptions {
                    connect_timeout: options.connect_timeout.or(Some(defaults.connect)),
                    first_byte_timeout: options.first_byte_timeout.or(Some(defaults.first_byte)),
                    between_bytes_timeout: options.between_bytes_timeout.or(Some(defaults.between_bytes)),
                };
                Box::new(async move {
                    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
                    Ok((response.map(BodyExt::boxed_unsync), io))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_destinations() {
        assert_eq!(
            destination("chain-back.spin.internal"),
            Destination::Component("chain-back".into())
        );
        assert_eq!(
            destination("Chain-Back.spin.internal"),
            Destination::Component("chain-back".into())
        );
        assert_eq!(destination("self"), Destination::SelfApp);
        assert_eq!(destination("example.com"), Destination::Network);
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;

    fn request(uri: &str) -> GuestRequest {
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder().uri(uri).body(body).unwrap()
    }

    async fn send(hooks: &mut OutboundHttp, uri: &str) -> Result<u16, HttpError> {
        let sent = hooks.send_request(request(uri), None, Box::new(std::future::ready(Ok(()))));
        Box::into_pin(sent)
            .await
            .map(|(response, _)| response.status().as_u16())
    }

    #[tokio::test]
    async fn requests_go_only_where_allowed_and_chaining_needs_a_running_app() {
        let fixture = Fixture::new(
            "http",
            "allowed_outbound_hosts = [\"https://api.example\", \"http://*.spin.internal\"]",
        );
        let mut instance = fixture.instance::<WasiHttp>();
        let hooks = &mut instance.state.hooks;
        assert!(matches!(
            send(hooks, "https://elsewhere.example/").await,
            Err(HttpError::HttpRequestDenied)
        ));
        assert!(matches!(
            send(hooks, "http://api.example/").await,
            Err(HttpError::HttpRequestDenied)
        ));
        // Allowed, but this instance belongs to no serving app (the fixture's is gone).
        assert!(matches!(
            send(hooks, "http://products.spin.internal/x").await,
            Err(HttpError::DestinationUnavailable)
        ));
    }
}
