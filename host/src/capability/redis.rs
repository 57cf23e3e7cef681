//! Outbound Redis (`fermyon:spin/redis@2.0.0`, and spin-sdk 7's `spin:redis@3.0.0`):
//! the guest names a server address; the host checks it against
//! `allowed_outbound_hosts` (scheme `redis`) and serves it from one multiplexed,
//! self-reconnecting connection per address.
//!
//! [`SharedRedis`] is also what the Redis key-value backend uses, and
//! [`RedisSettings`] (the runtime config's `[redis]`) applies to both.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use wasmtime::component::{Linker, Resource};

use self::bindings::fermyon::spin::redis::{self, Error, Payload, RedisParameter, RedisResult};
use self::bindings3::spin::redis::redis as v3;
use super::allowed_hosts::{AllowedHosts, default_port};
use super::bounded_map::BoundedMap;
use super::{AppContext, Capability, CapabilityView, CheckContext, ComponentContext, InstanceContext, Project, view};
use crate::manifest::Problem;
use crate::runtime_config::Settings;
use crate::state::HostState;
use crate::telemetry::TraceCell;

/// `fermyon:spin/redis@2.0.0` (spin-sdk 5).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/fermyon-spin",
        world: "fermyon:spin/redis-host",
        imports: { default: async },
        with: { "fermyon:spin/redis.connection": super::RedisConnection },
    });
}

/// `spin:redis@3.0.0`, the outbound Redis API of spin-sdk 7.
pub(crate) mod bindings3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-redis",
        world: "spin:redis/host",
        imports: { default: async },
        with: {
            "spin:redis/redis.connection": super::RedisConnection,
        },
    });
}

/// Outbound Redis, `fermyon:spin/redis@2.0.0` and `spin:redis@3.0.0`.
pub struct Redis;

/// Which servers a component may reach, and the shared connections to them.
#[derive(Clone)]
pub struct RedisGrant {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
    servers: Arc<RedisServers>,
}

impl Capability for Redis {
    type App = RedisServers;
    type Component = RedisGrant;
    type Instance = RedisAccess;

    const RUNTIME_CONFIG_TABLES: &'static [&'static str] = &[RedisSettings::TABLE];

    fn check(app: &CheckContext<'_>) -> Vec<Problem> {
        app.runtime_config.settings_problems::<RedisSettings>()
    }

    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<RedisServers> {
        Ok(RedisServers {
            servers: BoundedMap::default(),
            settings: app.runtime_config.settings_to_start()?,
        })
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        redis::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        v3::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(servers: &Arc<RedisServers>, component: &ComponentContext<'_>) -> anyhow::Result<RedisGrant> {
        Ok(RedisGrant {
            component: component.id.clone(),
            allowed: component.allowed_hosts.clone(),
            servers: servers.clone(),
        })
    }

    fn prepare(grant: &RedisGrant, instance: &InstanceContext) -> RedisAccess {
        RedisAccess {
            grant: grant.clone(),
            trace: instance.trace.clone(),
        }
    }
}

/// `[redis]` in the runtime config: how long the host waits on a Redis server, for
/// outbound Redis and for Redis key-value stores alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Connecting (a server that does not answer fails the guest's call after this).
    pub connect_timeout_ms: u64,
    /// One command's answer.
    pub response_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
        }
    }
}

impl Settings for RedisSettings {
    const TABLE: &'static str = "redis";

    fn out_of_range(&self) -> Option<(&'static str, &'static str)> {
        let expected = "expected a number of milliseconds above 0";
        if self.connect_timeout_ms == 0 {
            Some(("connect_timeout_ms", expected))
        } else if self.response_timeout_ms == 0 {
            Some(("response_timeout_ms", expected))
        } else {
            None
        }
    }
}

impl RedisSettings {
    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// A Redis server reached through one lazily made connection manager. The first use
/// connects (bounded by a timeout, so an unreachable server fails the guest's call
/// quickly); a failed connect is retried on the next use, and the manager reconnects
/// by itself after the server comes back.
#[derive(Clone)]
pub struct SharedRedis {
    client: ::redis::Client,
    connection: Arc<OnceCell<ConnectionManager>>,
    settings: RedisSettings,
}

impl SharedRedis {
    pub fn new(url: &str, settings: RedisSettings) -> anyhow::Result<Self> {
        Ok(Self {
            client: ::redis::Client::open(url)?,
            connection: Arc::new(OnceCell::new()),
            settings,
        })
    }

    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let connect_timeout = self.settings.connect_timeout();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(Duration::from_millis(self.settings.response_timeout_ms)))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| async {
                tokio::time::timeout(connect_timeout, self.client.get_connection_manager_with_config(config))
                    .await
                    .map_err(|_| "redis unavailable: connect timed out".to_string())?
                    .map_err(|e| format!("redis unavailable: {e}"))
            })
            .await
            .cloned()
    }
}

/// Outbound connections by component and address, shared by the component's instances.
pub struct RedisServers {
    servers: BoundedMap<SharedRedis>,
    settings: RedisSettings,
}

impl RedisServers {
    fn server(&self, component: &str, address: &str) -> Result<SharedRedis, Error> {
        self.servers.get_or_create(component, address, || {
            SharedRedis::new(address, self.settings).map_err(|_| Error::InvalidAddress)
        })
    }
}

/// Per-instance outbound Redis state.
pub struct RedisAccess {
    grant: RedisGrant,
    trace: TraceCell,
}

/// An open connection as the guest holds it.
pub struct RedisConnection {
    connection: ConnectionManager,
}

/// Spin answers `invalid-address` both for malformed and for disallowed addresses.
fn authorize(address: &str, allowed: &AllowedHosts, trace: &crate::telemetry::TraceCell) -> Result<(), Error> {
    let info: ::redis::ConnectionInfo = address.parse().map_err(|_| Error::InvalidAddress)?;
    let (scheme, host, port) = match info.addr() {
        ::redis::ConnectionAddr::Tcp(host, port) => ("redis", host.clone(), *port),
        ::redis::ConnectionAddr::TcpTls { host, port, .. } => ("rediss", host.clone(), *port),
        _ => return Err(Error::InvalidAddress),
    };
    let port = Some(port).or(default_port(scheme));
    if allowed.allows(scheme, &host, port) {
        Ok(())
    } else {
        let (trace_id, span_id) = crate::telemetry::ids(trace);
        tracing::warn!(
            destination = %format!("{scheme}://{host}"),
            trace_id,
            span_id,
            "outbound redis denied: not in allowed_outbound_hosts"
        );
        Err(Error::InvalidAddress)
    }
}

fn to_error(e: ::redis::RedisError) -> Error {
    match e.kind() {
        ::redis::ErrorKind::UnexpectedReturnType => Error::TypeError,
        _ if e.code() == Some("WRONGTYPE") => Error::TypeError,
        _ => Error::Other(e.to_string()),
    }
}

/// Flattens a reply into Spin's list of results (arrays become their elements).
fn flatten(value: ::redis::Value, out: &mut Vec<RedisResult>) {
    use ::redis::Value as V;
    match value {
        V::Nil => out.push(RedisResult::Nil),
        V::Int(i) => out.push(RedisResult::Int64(i)),
        V::BulkString(b) => out.push(RedisResult::Binary(b)),
        V::SimpleString(s) => out.push(RedisResult::Status(s)),
        V::Okay => out.push(RedisResult::Status("OK".into())),
        V::Array(items) | V::Set(items) => items.into_iter().for_each(|v| flatten(v, out)),
        V::Boolean(b) => out.push(RedisResult::Int64(b as i64)),
        V::Double(d) => out.push(RedisResult::Binary(d.to_string().into_bytes())),
        V::VerbatimString { text, .. } => out.push(RedisResult::Binary(text.into_bytes())),
        V::BigNumber(n) => out.push(RedisResult::Binary(n)),
        V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        V::Attribute { data, .. } => flatten(*data, out),
        V::Push { data, .. } => data.into_iter().for_each(|v| flatten(v, out)),
        V::ServerError(e) => out.push(RedisResult::Status(format!("{e:?}"))),
        _ => out.push(RedisResult::Nil),
    }
}

impl CapabilityView<'_, Redis> {
    fn connection(&self, connection: &Resource<RedisConnection>) -> Result<ops::Traced, Error> {
        self.table
            .get(connection)
            .map(|c| ops::Traced {
                connection: c.connection.clone(),
                trace: self.state.trace.clone(),
            })
            .map_err(|e| Error::Other(e.to_string()))
    }

    /// The shared server for `address` if this component may reach it.
    fn server(&self, address: &str) -> Result<SharedRedis, Error> {
        let grant = &self.state.grant;
        authorize(address, &grant.allowed, &self.state.trace)?;
        grant.servers.server(&grant.component, address)
    }
}

/// The commands themselves, shared by both API generations; each one a span.
mod ops {
    use std::future::Future;

    use ::redis::AsyncCommands as _;
    use ::redis::aio::ConnectionManager;

    use super::{Error, Payload, RedisParameter, RedisResult, flatten, to_error};
    use crate::telemetry::{self, TraceCell};

    /// A guest's connection, with the trace its commands belong to.
    pub struct Traced {
        pub connection: ConnectionManager,
        pub trace: TraceCell,
    }

    impl Traced {
        async fn run<T, F: Future<Output = Result<T, Error>>>(
            self,
            command: &str,
            f: impl FnOnce(ConnectionManager) -> F,
        ) -> Result<T, Error> {
            let span = telemetry::database_span(&self.trace, "redis", "", command);
            telemetry::finish_with(span, f(self.connection).await)
        }
    }

    pub async fn publish(c: Traced, channel: String, payload: Payload) -> Result<(), Error> {
        c.run("PUBLISH", |mut c| async move {
            c.publish::<_, _, ()>(channel, payload).await.map_err(to_error)
        })
        .await
    }

    pub async fn get(c: Traced, key: String) -> Result<Option<Payload>, Error> {
        c.run("GET", |mut c| async move { c.get(key).await.map_err(to_error) })
            .await
    }

    pub async fn set(c: Traced, key: String, value: Payload) -> Result<(), Error> {
        c.run("SET", |mut c| async move { c.set(key, value).await.map_err(to_error) })
            .await
    }

    pub async fn incr(c: Traced, key: String) -> Result<i64, Error> {
        c.run("INCR", |mut c| async move { c.incr(key, 1).await.map_err(to_error) })
            .await
    }

    pub async fn del(c: Traced, keys: Vec<String>) -> Result<u32, Error> {
        c.run("DEL", |mut c| async move { c.del(keys).await.map_err(to_error) })
            .await
    }

    pub async fn sadd(c: Traced, key: String, values: Vec<String>) -> Result<u32, Error> {
        c.run(
            "SADD",
            |mut c| async move { c.sadd(key, values).await.map_err(to_error) },
        )
        .await
    }

    pub async fn smembers(c: Traced, key: String) -> Result<Vec<String>, Error> {
        c.run("SMEMBERS", |mut c| async move {
            let mut members: Vec<String> = c.smembers(key).await.map_err(to_error)?;
            members.sort();
            Ok(members)
        })
        .await
    }

    pub async fn srem(c: Traced, key: String, values: Vec<String>) -> Result<u32, Error> {
        c.run(
            "SREM",
            |mut c| async move { c.srem(key, values).await.map_err(to_error) },
        )
        .await
    }

    pub async fn execute(
        c: Traced,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let name = command.to_ascii_uppercase();
        c.run(&name, |mut c| async move {
            let mut cmd = ::redis::cmd(&command);
            for argument in arguments {
                match argument {
                    RedisParameter::Int64(i) => cmd.arg(i),
                    RedisParameter::Binary(b) => cmd.arg(b),
                };
            }
            let value: ::redis::Value = cmd.query_async(&mut c).await.map_err(to_error)?;
            let mut out = Vec::new();
            flatten(value, &mut out);
            Ok(out)
        })
        .await
    }
}

impl redis::Host for CapabilityView<'_, Redis> {}

impl redis::HostConnection for CapabilityView<'_, Redis> {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, Error> {
        let server = self.server(&address)?;
        let connection = server.connection().await.map_err(Error::Other)?;
        self.table
            .push(RedisConnection { connection })
            .map_err(|e| Error::Other(e.to_string()))
    }

    async fn publish(&mut self, c: Resource<RedisConnection>, channel: String, payload: Payload) -> Result<(), Error> {
        ops::publish(self.connection(&c)?, channel, payload).await
    }

    async fn get(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Option<Payload>, Error> {
        ops::get(self.connection(&c)?, key).await
    }

    async fn set(&mut self, c: Resource<RedisConnection>, key: String, value: Payload) -> Result<(), Error> {
        ops::set(self.connection(&c)?, key, value).await
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
        ops::incr(self.connection(&c)?, key).await
    }

    async fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
        ops::del(self.connection(&c)?, keys).await
    }

    async fn sadd(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        ops::sadd(self.connection(&c)?, key, values).await
    }

    async fn smembers(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Vec<String>, Error> {
        ops::smembers(self.connection(&c)?, key).await
    }

    async fn srem(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        ops::srem(self.connection(&c)?, key, values).await
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        ops::execute(self.connection(&c)?, command, arguments).await
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

/// spin-sdk 7's `spin:redis@3.0.0`: the same connections, commands and address rules
/// behind `async func`s, reached through wasmtime's store accessor.
mod v3_impl {
    use wasmtime::component::{Accessor, Resource};

    use super::{Error as E2, Redis, RedisConnection, RedisParameter as P2, RedisResult as R2, ops};
    use crate::capability::redis::bindings3::spin::redis::redis::{self as v3, Error, RedisParameter, RedisResult};
    use crate::capability::{CapabilityView, Project};

    fn convert(e: E2) -> Error {
        match e {
            E2::InvalidAddress => Error::InvalidAddress,
            E2::TooManyConnections => Error::TooManyConnections,
            E2::TypeError => Error::TypeError,
            E2::Other(m) => Error::Other(m),
        }
    }

    fn connection<U>(store: &Accessor<U, Project<Redis>>, c: &Resource<RedisConnection>) -> Result<ops::Traced, Error> {
        store.with(|mut view| view.get().connection(c).map_err(convert))
    }

    impl v3::Host for CapabilityView<'_, Redis> {}

    impl v3::HostConnection for CapabilityView<'_, Redis> {
        async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
            self.table.delete(c)?;
            Ok(())
        }
    }

    impl<U> v3::HostConnectionWithStore<U> for Project<Redis> {
        async fn open(store: &Accessor<U, Self>, address: String) -> Result<Resource<RedisConnection>, Error> {
            let server = store.with(|mut view| view.get().server(&address).map_err(convert))?;
            let connection = server.connection().await.map_err(Error::Other)?;
            store.with(|mut view| {
                view.get()
                    .table
                    .push(RedisConnection { connection })
                    .map_err(|e| Error::Other(e.to_string()))
            })
        }

        async fn publish(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            channel: String,
            payload: Vec<u8>,
        ) -> Result<(), Error> {
            ops::publish(connection(store, &c)?, channel, payload)
                .await
                .map_err(convert)
        }

        async fn get(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            key: String,
        ) -> Result<Option<Vec<u8>>, Error> {
            ops::get(connection(store, &c)?, key).await.map_err(convert)
        }

        async fn set(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            key: String,
            value: Vec<u8>,
        ) -> Result<(), Error> {
            ops::set(connection(store, &c)?, key, value).await.map_err(convert)
        }

        async fn incr(store: &Accessor<U, Self>, c: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
            ops::incr(connection(store, &c)?, key).await.map_err(convert)
        }

        async fn del(store: &Accessor<U, Self>, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
            ops::del(connection(store, &c)?, keys).await.map_err(convert)
        }

        async fn sadd(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            key: String,
            values: Vec<String>,
        ) -> Result<u32, Error> {
            ops::sadd(connection(store, &c)?, key, values).await.map_err(convert)
        }

        async fn smembers(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            key: String,
        ) -> Result<Vec<String>, Error> {
            ops::smembers(connection(store, &c)?, key).await.map_err(convert)
        }

        async fn srem(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            key: String,
            values: Vec<String>,
        ) -> Result<u32, Error> {
            ops::srem(connection(store, &c)?, key, values).await.map_err(convert)
        }

        async fn execute(
            store: &Accessor<U, Self>,
            c: Resource<RedisConnection>,
            command: String,
            arguments: Vec<RedisParameter>,
        ) -> Result<Vec<RedisResult>, Error> {
            let arguments = arguments
                .into_iter()
                .map(|a| match a {
                    RedisParameter::Int64(i) => P2::Int64(i),
                    RedisParameter::Binary(b) => P2::Binary(b),
                })
                .collect();
            let results = ops::execute(connection(store, &c)?, command, arguments)
                .await
                .map_err(convert)?;
            Ok(results
                .into_iter()
                .map(|r| match r {
                    R2::Nil => RedisResult::Nil,
                    R2::Status(s) => RedisResult::Status(s),
                    R2::Int64(i) => RedisResult::Int64(i),
                    R2::Binary(b) => RedisResult::Binary(b),
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_against_allowed_hosts() {
        let allowed = AllowedHosts::parse(["redis://cache.internal"]).unwrap();
        assert!(authorize("redis://cache.internal/2", &allowed, &Default::default()).is_ok());
        assert!(authorize("redis://cache.internal:6379", &allowed, &Default::default()).is_ok());
        assert!(matches!(
            authorize("redis://cache.internal:7000", &allowed, &Default::default()),
            Err(Error::InvalidAddress)
        ));
        assert!(matches!(
            authorize("redis://elsewhere", &allowed, &Default::default()),
            Err(Error::InvalidAddress)
        ));
        assert!(matches!(
            authorize("not an address", &allowed, &Default::default()),
            Err(Error::InvalidAddress)
        ));
    }

    #[test]
    fn arrays_are_flattened() {
        use ::redis::Value as V;
        let mut out = Vec::new();
        flatten(
            V::Array(vec![V::Int(1), V::Nil, V::BulkString(b"x".to_vec()), V::Okay]),
            &mut out,
        );
        assert_eq!(
            format!("{out:?}"),
            format!(
                "{:?}",
                vec![
                    RedisResult::Int64(1),
                    RedisResult::Nil,
                    RedisResult::Binary(b"x".to_vec()),
                    RedisResult::Status("OK".into())
                ]
            )
        );
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::redis::bindings::fermyon::spin::redis::HostConnection as _;
    use crate::capability::testing::Fixture;

    #[tokio::test]
    async fn an_instance_reaches_only_granted_servers() {
        let fixture = Fixture::new("redis", "allowed_outbound_hosts = [\"redis://cache.internal\"]");
        let mut instance = fixture.instance::<Redis>();
        let mut view = instance.view();
        assert!(matches!(
            view.open("redis://elsewhere".into()).await,
            Err(Error::InvalidAddress)
        ));
    }
}
