//! Outbound PostgreSQL (`spin:postgres@4.2.0`, also serving spin-sdk 5's 4.0.0): the
//! guest names a server address; the host checks it against `allowed_outbound_hosts`
//! (scheme `postgres`), then serves the connection from a pool kept per address
//! across requests. Value encodings live in [`values`].
//! A guest connection holds a pooled server connection only while it needs one
//! ([`session`]).

// The error type is the interface's `error` variant, fixed by the WIT.
#![allow(clippy::result_large_err)]

use std::error::Error as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub mod listen;
mod session;
mod values;

/// `spin:postgres@4.2.0` (served to 4.0.0 importers too), the outbound PostgreSQL API
/// of spin-sdk 5's `pg4` module and of spin-sdk 7.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin-postgres",
        world: "spin:postgres/host",
        imports: {
            // Creating the row stream can fail (resource table full): trap rather than panic.
            "spin:postgres/postgres.[method]connection.query-async": async | trappable,
            "spin:postgres/postgres.[constructor]connection-builder": async | trappable,
            default: async,
        },
        with: {
            "spin:postgres/postgres.connection": super::PgConnection,
            "spin:postgres/postgres.connection-builder": super::PgConnectionBuilder,
        },
    });
}

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use wasmtime::component::{Accessor, FutureReader, Linker, Resource, StreamReader};

use self::bindings::spin::postgres::postgres::{
    self, Column, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};
use super::allowed_hosts::AllowedHosts;
use super::bounded_map::BoundedMap;
use super::commits::CommitSignals;
use super::{AppContext, Capability, CapabilityView, CheckContext, ComponentContext, InstanceContext, Project, view};
use crate::manifest::Problem;
use crate::runtime_config::Settings;
use crate::state::HostState;
use crate::telemetry::TraceCell;

/// Outbound PostgreSQL, `spin:postgres@4.2.0` (which also satisfies 4.0 importers).
pub struct Postgres;

impl Capability for Postgres {
    type App = PostgresPools;
    type Component = PostgresAccess;
    type Instance = PostgresInstance;

    const RUNTIME_CONFIG_TABLES: &'static [&'static str] = &[PostgresSettings::TABLE];

    fn check(app: &CheckContext<'_>) -> Vec<Problem> {
        app.runtime_config.settings_problems::<PostgresSettings>()
    }

    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<PostgresPools> {
        Ok(PostgresPools {
            pools: BoundedMap::default(),
            settings: app.runtime_config.settings_to_start()?,
            commits: app.commits.clone(),
        })
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        postgres::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(pools: &Arc<PostgresPools>, component: &ComponentContext<'_>) -> anyhow::Result<PostgresAccess> {
        Ok(PostgresAccess {
            component: component.id.clone(),
            allowed: component.allowed_hosts.clone(),
            pools: pools.clone(),
        })
    }

    fn prepare(access: &PostgresAccess, instance: &InstanceContext) -> PostgresInstance {
        PostgresInstance {
            access: access.clone(),
            trace: instance.trace.clone(),
        }
    }
}

/// Per-instance Postgres state: what the component may reach, and the trace its
/// connections' statements report to.
pub struct PostgresInstance {
    access: PostgresAccess,
    trace: TraceCell,
}
use crate::telemetry;
use session::PgSession;
use values::{data_type, db_value, to_sql};

/// `[postgres]` in the runtime config: the pools the host keeps for guests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct PostgresSettings {
    /// Server connections per component and address (guests beyond it wait for one).
    pub max_connections: usize,
    /// Connecting, and waiting for a free pooled connection.
    pub connect_timeout_ms: u64,
    /// Where the servers on this machine keep their sockets (`/var/run/postgresql`
    /// on Debian). An address naming a loopback host is then served through
    /// `<dir>/.s.PGSQL.<port>` instead of TCP: the same server, without a TCP stack
    /// on both ends of every round trip. The guest and the allow list still see the
    /// address it named. Unset: TCP.
    pub local_socket_dir: Option<PathBuf>,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout_ms: 5_000,
            local_socket_dir: None,
        }
    }
}

impl Settings for PostgresSettings {
    const TABLE: &'static str = "postgres";

    fn out_of_range(&self) -> Option<(&'static str, &'static str)> {
        if self.max_connections == 0 || self.max_connections > 10_000 {
            Some(("max_connections", "expected a number from 1 to 10000"))
        } else if self.connect_timeout_ms == 0 {
            Some(("connect_timeout_ms", "expected a number of milliseconds above 0"))
        } else if self
            .local_socket_dir
            .as_ref()
            .is_some_and(|dir| !dir.is_absolute() || !dir.is_dir())
        {
            // Checked here, not at the first guest's connection, whose error would
            // not name the socket.
            Some((
                "local_socket_dir",
                "expected the absolute path of an existing directory",
            ))
        } else {
            None
        }
    }
}

/// Connection pools by component and address, shared by the component's instances.
pub struct PostgresPools {
    pools: BoundedMap<Pool>,
    settings: PostgresSettings,
    /// Told when a guest's write is committed.
    commits: Arc<CommitSignals>,
}

impl PostgresPools {
    fn pool(&self, component: &str, address: &str, config: tokio_postgres::Config) -> Result<Pool, Error> {
        self.pools
            .get_or_create(component, address, || new_pool(config, &self.settings))
    }
}

fn new_pool(config: tokio_postgres::Config, settings: &PostgresSettings) -> Result<Pool, Error> {
    let timeout = Some(Duration::from_millis(settings.connect_timeout_ms));
    // Connections come back to the pool outside any transaction (see
    // `Session::release` and `Drop for Session`), so recycling only checks the
    // connection is still open: a ROLLBACK here would be a round trip per statement.
    let recycling = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    // Components never see server notices (the interface has no place for
    // them); without this each `CREATE … IF NOT EXISTS` and each recycling
    // ROLLBACK would be logged by the driver.
    let mut config = config;
    let options = config.get_options().map(str::to_string);
    config.options(&match options {
        Some(o) if !o.is_empty() => format!("{o} -c client_min_messages=error"),
        _ => "-c client_min_messages=error".to_string(),
    });
    let config = match settings.local_socket_dir.as_deref() {
        Some(dir) => through_local_socket(&config, dir).unwrap_or(config),
        None => config,
    };
    let manager = Manager::from_config(config, tokio_postgres::NoTls, recycling);
    let pool = Pool::builder(manager)
        .max_size(settings.max_connections)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::ConnectionFailed(e.to_string()))?;
    Ok(pool)
}

/// `config` with its one loopback host replaced by the server's socket in `dir`
/// (`None`: it names another host, or several). The rest of the address (user,
/// password, database, options…) carries over.
fn through_local_socket(config: &tokio_postgres::Config, dir: &Path) -> Option<tokio_postgres::Config> {
    use tokio_postgres::config::Host;
    let loopback = |host: &str| host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let ([Host::Tcp(host)], [] | [_]) = (config.get_hosts(), config.get_ports()) else {
        return None;
    };
    if !loopback(host) || !config.get_hostaddrs().iter().all(IpAddr::is_loopback) {
        return None;
    }
    let mut local = tokio_postgres::Config::new();
    local
        .host_path(dir)
        .port(config.get_ports().first().copied().unwrap_or(5432))
        // No TLS over a socket (as libpq): the host connects without it anyway.
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding());
    if let Some(user) = config.get_user() {
        local.user(user);
    }
    if let Some(password) = config.get_password() {
        local.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        local.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        local.options(options);
    }
    if let Some(name) = config.get_application_name() {
        local.application_name(name);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        local.connect_timeout(*timeout);
    }
    Some(local)
}

/// Which servers a component may reach, and the application's pools.
#[derive(Clone)]
pub struct PostgresAccess {
    component: Arc<str>,
    allowed: Arc<AllowedHosts>,
    pools: Arc<PostgresPools>,
}

/// An open connection as the guest holds it.
pub struct PgConnection {
    // Shared so an `async func` call can use it without borrowing the instance table.
    session: Arc<PgSession>,
}

/// spin-sdk 7's connection builder: an address waiting for `build`.
pub struct PgConnectionBuilder {
    address: String,
}

/// Parses `address` and checks every host it names against the allow list.
pub(crate) fn authorize(address: &str, allowed: &AllowedHosts) -> Result<tokio_postgres::Config, Error> {
    let config = tokio_postgres::Config::from_str(address)
        .map_err(|e| Error::ConnectionFailed(format!("invalid address: {e}")))?;
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let host = match host {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => {
                return Err(Error::ConnectionFailed(format!(
                    "unix socket {} is not reachable from components",
                    p.display()
                )));
            }
        };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if !allowed.allows("postgres", &host, Some(port)) {
            return Err(Error::ConnectionFailed(format!(
                "address postgres://{host}:{port} is not permitted: add it to allowed_outbound_hosts"
            )));
        }
    }
    Ok(config)
}

fn query_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::QueryFailed(QueryError::DbError(DbError {
            as_text: db.to_string(),
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            extras: Vec::new(),
        })),
        None if e.is_closed() => Error::ConnectionFailed(e.to_string()),
        None => Error::QueryFailed(QueryError::Text(
            e.source().map(|s| format!("{e}: {s}")).unwrap_or_else(|| e.to_string()),
        )),
    }
}

fn bind(params: Vec<ParameterValue>) -> Result<Vec<Box<dyn ToSql + Sync + Send>>, Error> {
    params.into_iter().map(to_sql).collect()
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

impl CapabilityView<'_, Postgres> {
    fn session(&self, connection: &Resource<PgConnection>) -> Result<Arc<PgSession>, Error> {
        Ok(self
            .table
            .get(connection)
            .map_err(|e| Error::Other(e.to_string()))?
            .session
            .clone())
    }

    /// The pool for `address` if this component may reach it.
    fn pool(&self, address: &str) -> Result<Pool, Error> {
        let access = &self.state.access;
        let config = authorize(address, &access.allowed)?;
        access.pools.pool(&access.component, address, config)
    }

    /// A guest connection on `pool`, starting with `client` (checked out by `open`, so
    /// that `open` reports an unreachable server, as Spin's does).
    fn push(&mut self, pool: Pool, client: Object, address: &str) -> Result<Resource<PgConnection>, Error> {
        // postgres://user@host:port/name?options → name
        let database = address
            .split('?')
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        self.table
            .push(PgConnection {
                session: Arc::new(PgSession::new(pool, client, database, self.state.trace.clone())),
            })
            .map_err(|e| Error::Other(e.to_string()))
    }
}

async fn checkout(pool: Pool) -> Result<Object, Error> {
    pool.get().await.map_err(|e| {
        let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
        Error::ConnectionFailed(format!("{e}{detail}"))
    })
}

/// Prepared statements kept per pooled connection; past this the cache starts over, so
/// a guest sending ever new SQL text cannot grow it (here or on the server) unbounded.
const STATEMENT_CACHE: usize = 256;

/// `statement` prepared on `client`, once per pooled connection: preparing is a round
/// trip of its own, and a service runs the same few statements over and over.
async fn prepare(client: &Object, statement: &str) -> Result<tokio_postgres::Statement, Error> {
    if client.statement_cache.size() >= STATEMENT_CACHE {
        client.statement_cache.clear();
    }
    client.prepare_cached(statement).await.map_err(query_error)
}

/// Runs a query on the guest's connection.
async fn run_query(
    session: &PgSession,
    access: &PostgresAccess,
    statement: &str,
    params: Vec<ParameterValue>,
) -> Result<RowSet, Error> {
    let span = telemetry::database_span(&session.trace, "postgresql", &session.database, statement);
    let rows = session
        .run(
            statement,
            &access.component,
            &access.pools.commits,
            async move |client| query_rows(client, statement, params).await,
            || RowSet {
                columns: Vec::new(),
                rows: Vec::new(),
            },
        )
        .await;
    telemetry::finish_with(span, rows)
}

async fn query_rows(client: &Object, statement: &str, params: Vec<ParameterValue>) -> Result<RowSet, Error> {
    let params = bind(params)?;
    let prepared = prepare(client, statement).await?;
    let rows = client.query(&prepared, &refs(&params)).await.map_err(query_error)?;
    let columns: Vec<Column> = prepared
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            data_type: data_type(c.type_()),
        })
        .collect();
    let rows = rows
        .iter()
        .map(|row| {
            prepared
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| db_value(row, i, c.type_()))
                .collect::<Result<Vec<DbValue>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RowSet { columns, rows })
}

async fn run_execute(
    session: &PgSession,
    access: &PostgresAccess,
    statement: &str,
    params: Vec<ParameterValue>,
) -> Result<u64, Error> {
    let span = telemetry::database_span(&session.trace, "postgresql", &session.database, statement);
    let changed = session
        .run(
            statement,
            &access.component,
            &access.pools.commits,
            async move |client| {
                let params = bind(params)?;
                let prepared = prepare(client, statement).await?;
                client.execute(&prepared, &refs(&params)).await.map_err(query_error)
            },
            || 0,
        )
        .await;
    telemetry::finish_with(span, changed)
}

impl postgres::Host for CapabilityView<'_, Postgres> {}

impl postgres::HostConnection for CapabilityView<'_, Postgres> {
    async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, Error> {
        let pool = self.pool(&address)?;
        let client = checkout(pool.clone()).await?;
        self.push(pool, client, &address)
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let session = self.session(&connection)?;
        run_query(&session, &self.state.access, &statement, params).await
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let session = self.session(&connection)?;
        run_execute(&session, &self.state.access, &statement, params).await
    }

    async fn drop(&mut self, connection: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl postgres::HostConnectionBuilder for CapabilityView<'_, Postgres> {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgConnectionBuilder>> {
        Ok(self.table.push(PgConnectionBuilder { address })?)
    }

    async fn set_ca_root(&mut self, _: Resource<PgConnectionBuilder>, _: String) -> Result<(), Error> {
        // Connections are plain TCP (NoTls) for now; refusing is better than silently
        // connecting without the certificate the guest asked for.
        Err(Error::Other(
            "TLS connections are not supported by this host yet".into(),
        ))
    }

    async fn build(&mut self, builder: Resource<PgConnectionBuilder>) -> Result<Resource<PgConnection>, Error> {
        let address = self
            .table
            .get(&builder)
            .map_err(|e| Error::Other(e.to_string()))?
            .address
            .clone();
        postgres::HostConnection::open(self, address).await
    }

    async fn drop(&mut self, builder: Resource<PgConnectionBuilder>) -> wasmtime::Result<()> {
        self.table.delete(builder)?;
        Ok(())
    }
}

// The `async func` half of 4.2.0 (spin-sdk 7), reached through wasmtime's store
// accessor.

/// The guest's connection and what its statements report to.
fn session_of<U>(
    store: &Accessor<U, Project<Postgres>>,
    c: &Resource<PgConnection>,
) -> Result<(Arc<PgSession>, PostgresAccess), Error> {
    store.with(|mut view| {
        let view = view.get();
        Ok((view.session(c)?, view.state.access.clone()))
    })
}

async fn open_with<U>(
    store: &Accessor<U, Project<Postgres>>,
    address: String,
) -> Result<Resource<PgConnection>, Error> {
    let pool = store.with(|mut view| view.get().pool(&address))?;
    let client = checkout(pool.clone()).await?;
    store.with(|mut view| view.get().push(pool, client, &address))
}

impl<U> postgres::HostConnectionWithStore<U> for Project<Postgres> {
    async fn open_async(store: &Accessor<U, Self>, address: String) -> Result<Resource<PgConnection>, Error> {
        open_with(store, address).await
    }

    #[allow(clippy::type_complexity)] // the shape is fixed by the WIT
    async fn query_async(
        store: &Accessor<U, Self>,
        c: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<(Vec<Column>, StreamReader<Vec<DbValue>>, FutureReader<Result<(), Error>>), Error>>
    {
        let (session, access) = match session_of(store, &c) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let RowSet { columns, rows } = match run_query(&session, &access, &statement, params).await {
            Ok(set) => set,
            Err(e) => return Ok(Err(e)),
        };
        store.with(|mut access| {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async { wasmtime::Result::<_>::Ok(Ok(())) })?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn execute_async(
        store: &Accessor<U, Self>,
        c: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let (session, access) = session_of(store, &c)?;
        run_execute(&session, &access, &statement, params).await
    }
}

impl<U> postgres::HostConnectionBuilderWithStore<U> for Project<Postgres> {
    async fn build_async(
        store: &Accessor<U, Self>,
        builder: Resource<PgConnectionBuilder>,
    ) -> Result<Resource<PgConnection>, Error> {
        let address = store.with(|mut view| {
            view.get()
                .table
                .get(&builder)
                .map(|b| b.address.clone())
                .map_err(|e| Error::Other(e.to_string()))
        })?;
        open_with(store, address).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_address_can_be_served_through_the_local_socket() {
        use tokio_postgres::config::Host;
        let dir = Path::new("/var/run/postgresql");
        let parse = |address: &str| tokio_postgres::Config::from_str(address).unwrap();
        let local = through_local_socket(
            &parse("postgres://app:secret@127.0.0.1:5433/shop?application_name=orders&options=-c%20x%3D1"),
            dir,
        )
        .unwrap();
        assert_eq!(local.get_hosts(), [Host::Unix(dir.to_path_buf())]);
        assert_eq!(local.get_ports(), [5433]);
        assert_eq!(
            (local.get_user(), local.get_password(), local.get_dbname()),
            (Some("app"), Some(&b"secret"[..]), Some("shop"))
        );
        assert_eq!(
            (local.get_application_name(), local.get_options()),
            (Some("orders"), Some("-c x=1"))
        );
        let local = through_local_socket(&parse("host=localhost user=app"), dir).unwrap();
        assert_eq!(local.get_ports(), [5432]);
        for elsewhere in [
            "postgres://app@db.internal/shop",
            "postgres://app@10.0.0.1:5432/shop",
            "host=127.0.0.1,db.internal user=app",
            "host=127.0.0.1 hostaddr=10.0.0.1 user=app",
        ] {
            assert!(through_local_socket(&parse(elsewhere), dir).is_none(), "{elsewhere}");
        }
    }

    #[test]
    fn addresses_are_checked_against_allowed_hosts() {
        let allowed = AllowedHosts::parse(["postgres://db.internal:5432"]).unwrap();
        assert!(authorize("postgres://app@db.internal/shop", &allowed).is_ok());
        assert!(authorize("host=db.internal port=5432 user=app", &allowed).is_ok());
        for denied in [
            "postgres://app@db.internal:6543/shop",
            "postgres://app@other/shop",
            "host=/tmp user=x",
        ] {
            assert!(
                matches!(authorize(denied, &allowed), Err(Error::ConnectionFailed(_))),
                "{denied}"
            );
        }
        assert!(matches!(
            authorize("not a url ://", &allowed),
            Err(Error::ConnectionFailed(_))
        ));
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;
    use postgres::HostConnection as _;

    #[tokio::test]
    async fn an_instance_reaches_only_granted_servers() {
        let fixture = Fixture::new("postgres", "allowed_outbound_hosts = [\"postgres://db.internal\"]");
        let mut instance = fixture.instance::<Postgres>();
        let mut view = instance.view();
        let refused = view.open("postgres://app@elsewhere/shop".into()).await;
        assert!(matches!(refused, Err(Error::ConnectionFailed(m)) if m.contains("not permitted")));
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::runtime_config::RuntimeConfig;

    #[test]
    fn postgres_settings_are_typed_and_range_checked() {
        let read = |text: &str| {
            RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(text).unwrap())
                .settings::<PostgresSettings>()
        };
        let fine = read("[postgres]\nmax_connections = 4\nmax_conections = 5\n").unwrap();
        assert_eq!(fine.value.max_connections, 4);
        assert_eq!(
            fine.value.connect_timeout_ms,
            PostgresSettings::default().connect_timeout_ms
        );
        assert_eq!(fine.warnings[0].key, "postgres.max_conections");
        let socket_dir = |dir: &str| read(&format!("[postgres]\nlocal_socket_dir = {dir:?}\n"));
        let here = std::env::temp_dir();
        assert_eq!(
            socket_dir(&here.display().to_string()).unwrap().value.local_socket_dir,
            Some(here.clone())
        );
        for bad in ["run/postgresql", &here.join("shop-no-such-dir").display().to_string()] {
            let bad = socket_dir(bad).err().unwrap();
            assert_eq!(
                (bad.key.as_str(), bad.message.as_str()),
                (
                    "postgres.local_socket_dir",
                    "expected the absolute path of an existing directory"
                )
            );
        }
        let bad = read("[postgres]\nmax_connections = 0\n").err().unwrap();
        assert_eq!(
            (bad.key.as_str(), bad.message.as_str()),
            ("postgres.max_connections", "expected a number from 1 to 10000")
        );
        assert_eq!(read("").unwrap().value, PostgresSettings::default());
    }
}
