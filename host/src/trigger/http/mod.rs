//! The HTTP trigger: accepts connections, routes each request Spin's way, sets the
//! `spin-*` headers and hands it to the component's [`invoke::ComponentInvoker`].
//! It also provides local service chaining to guests ([`LocalServices`]).

pub mod connections;
pub mod invoke;
pub mod request_body;
pub mod router;
pub mod spin_headers;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use wasmtime::Engine;

use super::{Trigger, TriggerContext};

use crate::app::LoadedComponent;
use crate::capability::outbound_http::{GuestRequest, GuestResponse, LocalServices};
use crate::manifest::{HttpRoute, Manifest};
use crate::metrics::Metrics;
use connections::{ClientConnections, ConnectionLimits};
use invoke::{ComponentInvoker, RequestLimits, error_response, full_body};
use request_body::BodyLimits;
use router::{Route, RoutePattern, Router};
use spin_headers::SpinHeaders;

pub const REQUEST_ID: &str = "x-request-id";
const RESERVED_PREFIX: &str = "/.well-known/spin/";

pub struct HttpApp {
    router: Router,
    invokers: BTreeMap<String, ComponentInvoker>,
    /// The address `http://self` requests are attributed to.
    listen_addr: SocketAddr,
    /// Lets `&self` methods hand owning references to futures that outlive the call.
    me: Weak<HttpApp>,
}

impl HttpApp {
    pub fn new(
        manifest: &Manifest,
        components: &BTreeMap<String, Arc<LoadedComponent>>,
        engine: &Engine,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
        listen_addr: SocketAddr,
        max_concurrent_requests: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let mut routes = Vec::new();
        for trigger in manifest.http_triggers() {
            super::component::<Http>(components, &trigger.component)?;
            if let HttpRoute::Path(raw) = &trigger.route {
                let pattern = RoutePattern::parse(raw).map_err(|e| anyhow::anyhow!(e))?;
                routes.push(Route {
                    pattern,
                    raw: raw.clone(),
                    component: trigger.component.clone(),
                });
            }
        }
        let router = Router::new(routes);
        let slots = Arc::new(tokio::sync::Semaphore::new(max_concurrent_requests));
        Ok(Arc::new_cyclic(|weak: &Weak<HttpApp>| {
            let local: Weak<dyn LocalServices> = weak.clone();
            let invokers = components
                .iter()
                .filter(|(_, c)| c.exports.http.is_some())
                .map(|(id, c)| {
                    let invoker = ComponentInvoker::new(
                        engine.clone(),
                        c.clone(),
                        limits,
                        metrics.clone(),
                        local.clone(),
                        slots.clone(),
                    );
                    (id.clone(), invoker)
                })
                .collect();
            HttpApp {
                router,
                invokers,
                listen_addr,
                me: weak.clone(),
            }
        }))
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes a request as if it arrived on the listener from `client`.
    pub fn handle(
        self: &Arc<Self>,
        mut request: GuestRequest,
        client: SocketAddr,
        scheme: &str,
    ) -> BoxFuture<'static, GuestResponse> {
        let request_id = request_id(&mut request);
        let path = request.uri().path().to_string();
        if let Some(reserved) = path.strip_prefix(RESERVED_PREFIX) {
            return std::future::ready(with_request_id(reserved_response(reserved), &request_id)).boxed();
        }
        let Some(route) = self.router.route(&path) else {
            let message = format!("no route matches {path}");
            return std::future::ready(with_request_id(
                error_response(StatusCode::NOT_FOUND, "not_found", &message),
                &request_id,
            ))
            .boxed();
        };
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let path_and_query = path_and_query(&request);
        SpinHeaders::for_route(&route, scheme, host.as_deref(), &path_and_query, client).apply(request.headers_mut());
        // Give P2 and P3 guests the same absolute URI (P3 would otherwise see only the path).
        let authority = host.unwrap_or_else(|| self.listen_addr.to_string());
        if let Ok(uri) = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
        {
            *request.uri_mut() = uri;
        }
        let component = route.component.to_string();
        let app = self.clone();
        // The guest's response goes out as the guest made it (Spin adds no headers);
        // the host's own answers carry the request id for the logs.
        async move { app.invokers[&component].invoke(request, &request_id).await }.boxed()
    }
}

impl LocalServices for HttpApp {
    fn call_component(&self, id: &str, mut request: GuestRequest) -> Option<BoxFuture<'static, GuestResponse>> {
        self.invokers.get(id)?;
        let request_id = request_id(&mut request);
        let path = request.uri().path().to_string();
        let path_and_query = path_and_query(&request);
        SpinHeaders::for_chained(&path, &path_and_query).apply(request.headers_mut());
        let app = self.me.upgrade()?;
        let id = id.to_string();
        Some(async move { app.invokers[&id].invoke(request, &request_id).await }.boxed())
    }

    fn call_self(&self, request: GuestRequest) -> BoxFuture<'static, GuestResponse> {
        match self.me.upgrade() {
            Some(app) => app.handle(request, self.listen_addr, "http"),
            None => std::future::ready(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the application is shutting down",
            ))
            .boxed(),
        }
    }
}

fn path_and_query(request: &GuestRequest) -> String {
    request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string()
}

/// Uses the caller's `X-Request-Id` or assigns one, and makes sure the guest sees it.
fn request_id(request: &mut GuestRequest) -> String {
    if let Some(id) = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 200
    {
        return id.to_string();
    }
    let id = uuid::Uuid::new_v4().to_string();
    request.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&id).expect("uuid is a valid header value"),
    );
    id
}

/// A host-made answer, tagged with the request's id for the logs.
pub fn with_request_id(mut response: GuestResponse, request_id: &str) -> GuestResponse {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// Spin's reserved `/.well-known/spin/` endpoints.
/// Headers on what the host answers itself (reserved endpoints): they are not pages,
/// so a browser may neither render, frame nor sniff them.
const OWN_RESPONSE_HEADERS: [(http::HeaderName, &str); 3] = [
    (
        http::header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (http::header::REFERRER_POLICY, "no-referrer"),
];

fn reserved_response(rest: &str) -> GuestResponse {
    let mut response = match rest {
        "health" => http::Response::new(full_body("OK")),
        "info" => {
            let body = serde_json::json!({ "host": "shop", "version": env!("CARGO_PKG_VERSION") }).to_string();
            let mut r = http::Response::new(full_body(body));
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        _ => error_response(StatusCode::NOT_FOUND, "not_found", "no such reserved endpoint"),
    };
    for (name, value) in OWN_RESPONSE_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The HTTP trigger: `app`'s routes served on `listener`.
pub struct Http {
    pub app: Arc<HttpApp>,
    pub listener: TcpListener,
    pub body_limits: BodyLimits,
    pub connection_limits: ConnectionLimits,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain: Duration,
}

impl Trigger for Http {
    const TYPE: &'static str = "http";
    const EXPORT: &'static str = "wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3";

    fn exported(component: &LoadedComponent) -> bool {
        component.exports.http.is_some()
    }

    /// Accepts connections until `stop`, then drains (the routes were checked when
    /// the app was built).
    ///
    /// The accept loop runs on a thread of its own rather than as a task on a runtime
    /// worker: the connection tasks it spawns then go through the runtime's shared
    /// queue and spread over the workers, where spawned from a worker they would start
    /// in that worker's own queue. `bench-http` measured ~10 % more requests/s this way.
    fn start(self, context: &TriggerContext<'_>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
        let mut stop = context.stop.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let runtime = tokio::runtime::Handle::current();
        tasks.spawn_blocking(move || {
            runtime.block_on(serve(
                self.app,
                self.listener,
                self.body_limits,
                self.connection_limits,
                shutdown,
                self.drain,
            ))
        });
        Ok(())
    }
}

/// 429 for a client that already has `max` requests in flight.
fn too_many_requests_from_client(max: usize) -> GuestResponse {
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        &format!("this client already has {max} requests in flight; wait for their answers"),
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and
/// gives in-flight requests up to `drain` to finish. `connection_limits` bound what
/// one client's connections may hold (their number, and time to send a head).
pub async fn serve(
    app: Arc<HttpApp>,
    listener: TcpListener,
    body_limits: BodyLimits,
    connection_limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let max_connections_per_client = connection_limits.max_per_client;
    let connections = ClientConnections::new(max_connections_per_client);
    let requests_in_flight = ClientConnections::new(connection_limits.max_requests_per_client);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = connections.open(client.ip()) else {
            tracing::debug!(%client, "connection refused: too many from this client");
            tokio::spawn(connections::refuse(stream, max_connections_per_client));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let requests_in_flight = requests_in_flight.clone();
        let activity = connections::ConnectionActivity::new();
        let activity_of_requests = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let in_flight = activity_of_requests.begin();
            // Taken before the body is read: a client past its cap costs no instance.
            let place = requests_in_flight.open(client.ip());
            let max_requests = connection_limits.max_requests_per_client;
            async move {
                let _in_flight = in_flight;
                let Some(_place) = place else {
                    return Ok::<_, Infallible>(too_many_requests_from_client(max_requests));
                };
                let response = match request_body::read(request, body_limits).await {
                    Ok(request) => app.handle(request, client, "http").await,
                    Err(refused) => refused,
                };
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A client that never finishes its request head holds a connection: not for long.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(connection_limits.header_read_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Idle past its limit with nothing in flight, the connection is dropped.
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = activity.idle_past(connection_limits) => {
                    tracing::debug!(%client, "idle connection closed");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("HTTP listener closed; draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "in-flight requests did not finish in time; closing"
        );
    }
}
