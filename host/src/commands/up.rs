//! `shop up`: the small core that wires everything: check, build, compile, then serve
//! each trigger and the admin endpoints until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::ManifestArgs;
use crate::admin::{self, Readiness};
use crate::app::{LoadContext, LoadedComponent, load_components};
use crate::capability::commits::CommitSignals;
use crate::capability::outbound_http::LocalServices;
use crate::capability::{AppCapabilities, AppContext};
use crate::compile_cache::CompileCache;
use crate::component_build::{BuildPolicy, build};
use crate::engine::{self, EngineOptions, EpochTicker};
use crate::events::{self, KafkaSettings};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::runtime_config::RuntimeConfig;
use crate::trigger::cron::Cron;
use crate::trigger::http::invoke::RequestLimits;
use crate::trigger::http::{self, Http, HttpApp};
use crate::trigger::kafka::Kafka;
use crate::trigger::outbox::Outbox;
use crate::trigger::{Trigger, TriggerContext};
use crate::variables::Variables;

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Address of the application's HTTP listener.
    #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "SHOP_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Where embedded state and the compilation cache live.
    #[arg(long, env = "SHOP_DATA_DIR", default_value = ".shop")]
    pub data_dir: PathBuf,
    /// Wall-clock limit for one request in a component.
    #[arg(long, env = "SHOP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Largest request body a client may send (413 past it, before any component
    /// runs); the body must also arrive within the request timeout (else 408).
    #[arg(long, env = "SHOP_MAX_REQUEST_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_request_body_bytes: usize,
    /// HTTP requests (chained calls included) running in components at once; past it a
    /// request gets 503 + Retry-After. Kept under the instance pool (1000), which the
    /// Kafka and cron triggers share.
    #[arg(long, env = "SHOP_MAX_CONCURRENT_REQUESTS", default_value_t = 750)]
    pub max_concurrent_requests: usize,
    /// Open connections one client address may hold (a slow or idle client past it
    /// gets 503 and is closed); 0 for no cap. Behind a proxy every client shares the
    /// proxy's address: raise it there.
    #[arg(long, env = "SHOP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// Requests one client address may have in flight, over all its connections and
    /// HTTP/2 streams (past it: 429 + Retry-After, before any component runs), so one
    /// client cannot take every instance slot; 0 for no cap. Behind a proxy every
    /// client shares the proxy's address: raise it there.
    #[arg(long, env = "SHOP_MAX_REQUESTS_PER_CLIENT", default_value_t = 64)]
    pub max_requests_per_client: usize,
    /// How long a client may take to send a request head before its connection is
    /// closed (slow clients hold sockets otherwise).
    #[arg(long, env = "SHOP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a connection that has sent requests may stay open with no request in
    /// flight before it is closed (HTTP/2; an HTTP/1 keep-alive connection already
    /// closes when its next request head takes longer than the header timeout).
    #[arg(long, env = "SHOP_IDLE_CONNECTION_TIMEOUT_MS", default_value_t = 30_000)]
    pub idle_connection_timeout_ms: u64,
    /// Linear-memory cap per component instance, in MiB.
    #[arg(long, env = "SHOP_MAX_MEMORY_MB", default_value_t = 128)]
    pub max_memory_mb: usize,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "SHOP_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Where compiled components are cached (default: `<data-dir>/cache/compiled`);
    /// several hosts may share one.
    #[arg(long, env = "SHOP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not run build commands, even for missing sources.
    #[arg(long)]
    pub no_build: bool,
    /// Kafka bootstrap servers (`host:port,…`); overrides the runtime config and the
    /// manifest. Without brokers anywhere, the embedded event log is used.
    #[arg(long, env = "SHOP_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let (manifest, runtime_config, problems) = super::load_and_check(&args.manifest)?;
    if super::report(&problems) > 0 {
        anyhow::bail!(
            "{} has errors; fix them and run again (`shop check` lists them)",
            manifest.path.display()
        );
    }
    if !args.no_build {
        build(&manifest, BuildPolicy::MissingOrStale, &[])?;
    }
    let variables = Variables::resolve(&manifest, |k| std::env::var(k).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args, manifest, runtime_config, variables))
}

async fn serve(
    args: UpArgs,
    manifest: Manifest,
    runtime_config: RuntimeConfig,
    variables: Variables,
) -> anyhow::Result<ExitCode> {
    let limits = RequestLimits {
        timeout: Duration::from_millis(args.request_timeout_ms),
        max_memory_bytes: args.max_memory_mb << 20,
    };
    let engine = engine::build(&EngineOptions {
        max_memory_bytes: limits.max_memory_bytes,
        ..EngineOptions::default()
    })?;
    let _ticker = EpochTicker::start(engine.clone());
    let cache = CompileCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("cache").join("compiled")),
    );
    let metrics = Arc::new(Metrics::new());
    if let Some(endpoint) = crate::telemetry::init_from_env()? {
        tracing::info!(endpoint, "exporting traces by OTLP/HTTP");
    }

    let broker = if events::needed(&manifest) {
        let settings = KafkaSettings::resolve(&manifest, &runtime_config, args.kafka_brokers.as_deref())?;
        Some(events::connect(&settings, &args.data_dir)?)
    } else {
        None
    };
    let commits = Arc::new(CommitSignals::default());
    let producer = broker
        .as_ref()
        .map(|b| crate::metrics::CountingProducer::wrap(b.producer(), metrics.clone()));
    let capabilities = AppCapabilities::configure(&AppContext {
        runtime_config: &runtime_config,
        data_dir: &args.data_dir,
        commits: &commits,
        producer: producer.clone(),
    })?;
    let components = load_components(
        &manifest,
        &LoadContext {
            engine: &engine,
            cache: &cache,
            variables: &variables,
            capabilities: &capabilities,
        },
    )?;
    for c in components.values() {
        metrics
            .component_loads
            .with_label_values(&[&*c.id, c.cache.as_str()])
            .inc();
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
    let listen_addr = listener.local_addr()?;
    let app = HttpApp::new(
        &manifest,
        &components,
        &engine,
        limits,
        metrics.clone(),
        listen_addr,
        args.max_concurrent_requests,
    )?;
    let local: std::sync::Weak<dyn LocalServices> = Arc::downgrade(&app) as _;

    // Not ready until serving and every Kafka trigger is subscribed.
    let readiness = Arc::new(Readiness::default());
    // Triggers run until `stop` turns true.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let context = TriggerContext {
        manifest: &manifest,
        engine: &engine,
        components: &components,
        limits,
        metrics: &metrics,
        local: &local,
        commits: &commits,
        readiness: &readiness,
        stop: &stop_rx,
    };
    let drain = Duration::from_millis(args.drain_timeout_ms);
    // Routes are printed before `app` moves into its trigger, and only once every
    // trigger has started: "Serving" means serving.
    let routes = routes_listing(&app, &manifest, &components, listen_addr, admin_listener.local_addr()?);
    let mut tasks = JoinSet::new();
    Http {
        app,
        listener,
        body_limits: http::request_body::BodyLimits {
            max_bytes: args.max_request_body_bytes,
            timeout: Duration::from_millis(args.request_timeout_ms),
        },
        connection_limits: http::connections::ConnectionLimits {
            max_per_client: args.max_connections_per_client,
            max_requests_per_client: args.max_requests_per_client,
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(args.idle_connection_timeout_ms),
        },
        drain,
    }
    .start(&context, &mut tasks)?;
    if let Some(broker) = &broker {
        Kafka { broker: broker.clone() }.start(&context, &mut tasks)?;
    }
    Cron.start(&context, &mut tasks)?;
    Outbox {
        producer: producer.clone(),
        sqlite: capabilities.sqlite.clone(),
    }
    .start(&context, &mut tasks)?;
    print!("{routes}");

    let admin_task = tokio::spawn(admin::serve(admin_listener, metrics.clone(), readiness.clone()));
    readiness.set(true);
    shutdown_signal().await;
    readiness.set(false);
    tracing::info!("shutdown requested");
    let _ = stop.send(true);
    // The HTTP listener closes and drains its requests (within `drain`); Kafka workers
    // finish the message in hand and commit; cron runs finish.
    let margin = Duration::from_secs(1);
    if tokio::time::timeout(drain + margin, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("triggers did not stop within the drain timeout; uncommitted messages will be redelivered");
    }
    admin_task.abort();
    // The batch processor's last export blocks: off the async workers.
    let _ = tokio::task::spawn_blocking(|| crate::telemetry::shutdown(Duration::from_secs(2))).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// What `shop up` prints once serving: the URL, every route and trigger, the admin
/// endpoints.
fn routes_listing(
    app: &HttpApp,
    manifest: &Manifest,
    components: &BTreeMap<String, Arc<LoadedComponent>>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let app_name = &manifest.raw.application.name;
    let version = manifest.raw.application.version.as_deref().unwrap_or("");
    let _ = writeln!(out, "Serving {app_name} {version} on http://{listen}");
    let _ = writeln!(out, "Available Routes:");
    for route in app.router().routes() {
        let pattern = route.pattern.to_string();
        let (base, wildcard) = match pattern.strip_suffix("...") {
            Some(base) => (base.trim_end_matches('/').to_string(), " (wildcard)"),
            None => (pattern.clone(), ""),
        };
        let world = components
            .get(&route.component)
            .and_then(|c| c.exports.http.as_ref())
            .map(|(_, world)| world.as_str())
            .unwrap_or("?");
        let _ = writeln!(out, "  {}: http://{listen}{base}{wildcard} [{world}]", route.component);
    }
    for trigger in manifest.http_triggers() {
        if trigger.route == crate::manifest::HttpRoute::Private {
            let id = &trigger.component;
            let _ = writeln!(out, "  {id}: private (http://{id}.spin.internal only)");
        }
    }
    for trigger in manifest.kafka_triggers() {
        let _ = writeln!(
            out,
            "  {}: kafka {} (group {})",
            trigger.component,
            trigger.topics.join(", "),
            trigger.group
        );
    }
    for trigger in manifest.cron_triggers() {
        let _ = writeln!(out, "  {}: cron \"{}\"", trigger.component, trigger.expression);
    }
    for outbox in manifest.outbox_triggers() {
        let _ = writeln!(
            out,
            "  {}: outbox `{}` published to {}",
            outbox.component,
            outbox.table,
            outbox.topics.join(", ")
        );
    }
    let _ = writeln!(out, "Admin: http://{admin}/healthz /readyz /metrics");
    out
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
