//! Spin SQLite (`fermyon:spin/sqlite@2.0.0`, and `spin:sqlite@3.x` in [`v3`]): embedded
//! database files opened by label.
//! `default` is `<data_dir>/sqlite_db.db` unless the runtime config's
//! `[sqlite_database.<label>]` (type `spin`, optional `path`) says otherwise; a
//! component may open only the labels in its `sqlite_databases`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use wasmtime::component::{Linker, Resource};

use self::bindings::fermyon::spin::sqlite::{self, Error, QueryResult, RowResult, Value};
use self::bindings3::spin::sqlite::sqlite as api3;
use super::commits::CommitSignals;
use super::wal_checkpoint::{self, Checkpointer};
use super::{AppContext, Capability, CapabilityView, CheckContext, ComponentContext, InstanceContext, Project, view};
use crate::manifest::Problem;
use crate::runtime_config::LabelledTable;
use crate::state::HostState;
use crate::telemetry::{self, Span, TraceCell};

/// `fermyon:spin/sqlite@2.0.0` (spin-sdk 5).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/fermyon-spin",
        world: "fermyon:spin/sqlite-host",
        imports: { default: async },
        with: { "fermyon:spin/sqlite.connection": super::OpenDatabase },
    });
}

/// `spin:sqlite@3.1.0` (served to 3.0.0 importers too), the SQLite API of spin-sdk 5's
/// `sqlite3` module and of spin-sdk 7.
pub(crate) mod bindings3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-sqlite",
        world: "spin:sqlite/host",
        imports: {
            // Creating the row stream can fail (resource table full): trap rather than panic.
            "spin:sqlite/sqlite.[method]connection.execute-async": async | trappable,
            default: async,
        },
        with: {
            "spin:sqlite/sqlite.connection": super::OpenDatabase,
        },
    });
}

/// Spin SQLite, `fermyon:spin/sqlite@2.0.0` and `spin:sqlite@3.x`.
pub struct Sqlite;

/// The labels a component may open, and the application's database files.
#[derive(Clone)]
pub struct SqliteGrant {
    component: Arc<str>,
    allowed: Arc<BTreeSet<String>>,
    databases: Arc<Databases>,
}

/// `[sqlite_database.<label>]` in the runtime config: only embedded files
/// (`type = "spin"`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SqliteDatabaseConfig {
    Spin {
        path: Option<PathBuf>,
        #[serde(default)]
        synchronous: Synchronous,
    },
}

/// `[sqlite_database.<label>]`, named in components' `sqlite_databases`.
const DATABASES: LabelledTable = LabelledTable {
    table: "sqlite_database",
    field: "sqlite_databases",
    noun: "SQLite database",
    labels: |c| &c.sqlite_databases,
};

impl Capability for Sqlite {
    type App = Databases;
    type Component = SqliteGrant;
    type Instance = SqliteAccess;

    const RUNTIME_CONFIG_TABLES: &'static [&'static str] = &[DATABASES.table];

    fn check(app: &CheckContext<'_>) -> Vec<Problem> {
        DATABASES
            .read::<SqliteDatabaseConfig>(app.runtime_config, Some(app.manifest))
            .1
    }

    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<Databases> {
        let (entries, problems) = DATABASES.read::<SqliteDatabaseConfig>(app.runtime_config, None);
        crate::runtime_config::first_error(&problems)?;
        Databases::from_config(&entries, app.runtime_config.dir(), app.data_dir, app.commits)
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        sqlite::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        // 3.1, which also satisfies 3.0 importers.
        api3::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(databases: &Arc<Databases>, component: &ComponentContext<'_>) -> anyhow::Result<SqliteGrant> {
        Ok(SqliteGrant {
            component: component.id.clone(),
            allowed: Arc::new(component.manifest.sqlite_databases.iter().cloned().collect()),
            databases: databases.clone(),
        })
    }

    fn prepare(grant: &SqliteGrant, instance: &InstanceContext) -> SqliteAccess {
        SqliteAccess {
            grant: grant.clone(),
            trace: instance.trace.clone(),
            open_count: 0,
        }
    }
}

/// Most connections one instance may hold open at once.
const MAX_OPEN_CONNECTIONS: usize = 64;
/// Idle connections kept per database file for the next guest `open`.
const MAX_IDLE_CONNECTIONS: usize = 16;
/// Prepared statements cached per connection (a service's queries, roughly).
const STATEMENT_CACHE: usize = 128;
/// How long a writer waits for another to finish (in this process: its turn at the
/// database's writer queue; across processes: SQLite's busy handler).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a commit reaches the disk (`synchronous` in `[sqlite_database.<label>]`). In WAL
/// mode `Normal` survives a crash of this process (SIGKILL included) but not of the
/// machine: a power loss can drop the last commits. `Full` syncs the log on every
/// commit, surviving power loss at one fsync per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// One database file: the connection this process works through, spare connections
/// for reads while that one is busy, and who wants to hear of commits.
///
/// Every write and every transaction of this process runs on `primary`, one session at
/// a time: held from the statement that starts a transaction (or writes outside one)
/// until the connection is back in autocommit. Writers queue for it instead of
/// sleeping in SQLite's busy handler, which backs off by milliseconds and collapses
/// under contention; and a connection's own commits leave its page cache valid, so
/// the hot pages stay in memory instead of being read again after every commit, as
/// they would be on a pool of connections committing by turns.
struct DatabaseFile {
    path: PathBuf,
    synchronous: Synchronous,
    primary: Arc<tokio::sync::Mutex<Connection>>,
    /// Idle connections for reads outside a transaction while `primary` is held.
    readers: Mutex<Vec<Connection>>,
    /// Told which component committed a write here.
    commits: Arc<CommitSignals>,
    /// Woken after every commit of a write here, by whichever component.
    listeners: Mutex<Vec<Arc<tokio::sync::Notify>>>,
    /// Checkpoints the log off the writers' threads.
    checkpointer: Checkpointer,
}

impl DatabaseFile {
    fn connect(path: &Path, synchronous: Synchronous) -> anyhow::Result<Connection> {
        let conn = open_file(path)?;
        conn.pragma_update(None, "synchronous", synchronous.pragma())?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// The writing connection: its log is checkpointed by the [`Checkpointer`], with
    /// SQLite's own checkpoint only as a fallback far beyond the usual threshold.
    fn connect_primary(path: &Path, synchronous: Synchronous) -> anyhow::Result<Connection> {
        let conn = Self::connect(path, synchronous)?;
        wal_checkpoint::hand_over(&conn)?;
        Ok(conn)
    }

    /// Runs a read outside any transaction on a spare connection.
    fn read_aside(&self, statement: &str, parameters: Vec<Value>) -> Result<Executed, Error> {
        let spare = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match spare {
            Some(conn) => conn,
            None => Self::connect(&self.path, self.synchronous).map_err(|e| Error::Io(format!("{e:#}")))?,
        };
        let result = run_statement(&conn, statement, parameters).map_err(to_error);
        // A read that opened a transaction (e.g. a guessed-wrong statement) must not
        // leave it to the next reader.
        if conn.is_autocommit() || conn.execute_batch("ROLLBACK").is_ok() {
            let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if readers.len() < MAX_IDLE_CONNECTIONS {
                readers.push(conn);
            }
        }
        result
    }
}

/// Ends what an abandoned session (a guest that trapped or never committed) left
/// open on the primary connection, so the next session starts clean.
fn release_primary(file: &DatabaseFile, mut primary: tokio::sync::OwnedMutexGuard<Connection>) {
    if primary.is_autocommit() || primary.execute_batch("ROLLBACK").is_ok() {
        return;
    }
    match DatabaseFile::connect_primary(&file.path, file.synchronous) {
        // Closing the stuck connection ends its transaction.
        Ok(fresh) => *primary = fresh,
        Err(e) => tracing::error!(path = %file.path.display(), error = %e, "cannot replace a stuck SQLite connection"),
    }
}

/// A database file as the registry holds it; each guest `open` gets its own
/// [`Database::session`].
#[derive(Clone)]
pub struct Database {
    file: Arc<DatabaseFile>,
}

/// One guest connection. It holds the file's primary connection while its
/// transaction is open, so transactions of concurrent instances never interleave, and
/// gives it back (rolled back if need be) when the guest drops it or its instance ends.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

/// The primary connection while this session's transaction is open, and whether the
/// transaction wrote.
struct InTransaction {
    primary: tokio::sync::OwnedMutexGuard<Connection>,
    wrote: bool,
}

struct SessionInner {
    component: Arc<str>,
    file: Arc<DatabaseFile>,
    transaction: Mutex<Option<InTransaction>>,
    /// Whether its commits are signalled (a guest's are; the host's own are not).
    signals: bool,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        if let Some(open) = self
            .transaction
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            release_primary(&self.file, open.primary);
        }
    }
}

/// Process-wide SQLite settings, before the first connection (SQLite refuses them
/// afterwards, and then nothing changes): no memory statistics, which otherwise take
/// a global mutex around every allocation and free of every connection, the host's
/// and the embedded log's alike, to count what nobody reads.
pub fn configure_process() {
    // SAFETY: `sqlite3_config` with an integer argument, as SQLITE_CONFIG_MEMSTATUS
    // takes; called before SQLite is initialised it only sets a flag.
    let code = unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
    if code != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(code, "SQLite was initialised already; memory statistics stay on");
    }
}

/// Opens (creating if needed) an embedded database file. WAL lets readers proceed
/// during writes; the busy timeout makes concurrent writers (other instances, other
/// processes) wait for the lock instead of failing.
pub fn open_file(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // With the query planner's stability guarantee a cached statement stays prepared:
    // without it SQLite re-prepares one on every run that binds a `LIMIT ?` (or a
    // `LIKE ?`) parameter.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // No memory map: SQLite unmaps it whenever another connection has committed, and
    // each munmap is a TLB shootdown on every core, costlier than the reads it saves.
    conn.pragma_update(None, "mmap_size", 0)?;
    Ok(conn)
}

/// Whether `statement` may start writing or opens a transaction: the cue to run it on
/// the primary connection, waiting for it if need be. A wrong guess costs only
/// waiting; SQLite's own locking stays in charge.
fn needs_primary(statement: &str) -> bool {
    match super::leading_keyword(statement).as_str() {
        // `WITH` may lead an INSERT or UPDATE: counted as a write.
        "SELECT" | "VALUES" | "EXPLAIN" | "PRAGMA" | "COMMIT" | "END" | "ROLLBACK" | "RELEASE" | "" => false,
        _ => true,
    }
}

impl Database {
    /// Opens the file (creating it if needed) at start-up with its primary connection.
    pub fn open(path: &Path, synchronous: Synchronous, commits: Arc<CommitSignals>) -> anyhow::Result<Self> {
        let primary = DatabaseFile::connect_primary(path, synchronous)?;
        let checkpointer = Checkpointer::start(path, move |path| DatabaseFile::connect(path, synchronous))?;
        let file = Arc::new(DatabaseFile {
            path: path.to_path_buf(),
            synchronous,
            primary: Arc::new(tokio::sync::Mutex::new(primary)),
            readers: Mutex::default(),
            commits,
            listeners: Mutex::default(),
            checkpointer,
        });
        Ok(Self { file })
    }

    /// A guest connection of its own to this file, for `component`.
    pub fn session(&self, component: Arc<str>) -> Session {
        self.new_session(component, true)
    }

    /// A connection of the host's own (an outbox relay's), whose commits wake no one:
    /// they only take away what was already signalled.
    pub fn quiet_session(&self, name: Arc<str>) -> Session {
        self.new_session(name, false)
    }

    fn new_session(&self, component: Arc<str>, signals: bool) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                component,
                file: self.file.clone(),
                transaction: Mutex::default(),
                signals,
            }),
        }
    }

    /// Notifies `wake` (coalesced) after every commit of a write to this file by a
    /// component's session, whichever component it is.
    pub fn watch_commits(&self, wake: Arc<tokio::sync::Notify>) {
        self.file
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(wake);
    }
}

impl Session {
    /// Runs one statement: inside this session's open transaction on the primary
    /// connection; otherwise on the primary when it is free or the statement needs it
    /// (then waiting for it), and a read on a spare connection while another session
    /// holds it.
    ///
    /// The statement runs on this thread: a statement takes microseconds, less than
    /// handing it to a blocking thread and back costs, and the primary's lock (not
    /// SQLite's) is what writers of this process wait for. Only a writer of another
    /// process sharing the file can make it wait in SQLite's busy handler.
    pub async fn execute(&self, statement: String, parameters: Vec<Value>) -> Result<Executed, Error> {
        let inner = &self.inner;
        let open = inner.transaction.lock().unwrap_or_else(PoisonError::into_inner).take();
        let (primary, wrote_before) = match open {
            Some(open) => (open.primary, open.wrote),
            None => match inner.file.primary.clone().try_lock_owned() {
                Ok(primary) => (primary, false),
                Err(_) if !needs_primary(&statement) => return inner.file.read_aside(&statement, parameters),
                Err(_) => {
                    let queue = inner.file.primary.clone().lock_owned();
                    let primary = tokio::time::timeout(BUSY_TIMEOUT, queue)
                        .await
                        .map_err(|_| Error::Io("database is locked (another writer held it too long)".into()))?;
                    (primary, false)
                }
            },
        };
        let changes_before = primary.total_changes();
        let result = run_statement(&primary, &statement, parameters).map_err(to_error);
        let wrote = wrote_before
            || primary.total_changes() != changes_before
            || result.as_ref().is_ok_and(|executed| executed.write.is_some());
        if primary.is_autocommit() {
            // A COMMIT, or a statement outside a transaction, has ended.
            drop(primary);
            if wrote && result.is_ok() {
                inner.file.checkpointer.committed();
                if inner.signals {
                    inner.file.commits.committed(&inner.component);
                    for wake in inner
                        .file
                        .listeners
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                    {
                        wake.notify_one();
                    }
                }
            }
        } else {
            *inner.transaction.lock().unwrap_or_else(PoisonError::into_inner) = Some(InTransaction { primary, wrote });
        }
        result
    }
}

/// A statement's rows plus what it changed (captured with the statement, so the guest
/// connection's rowid and change count never mix in another statement's).
#[derive(Debug)]
pub struct Executed {
    pub result: QueryResult,
    /// Set when the statement wrote: (rows changed, rowid if it inserted one).
    pub write: Option<(u64, Option<i64>)>,
}

fn to_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => Error::DatabaseFull,
        _ => Error::Io(e.to_string()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Real(r) => ToSqlOutput::Owned(SqlValue::Real(*r)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Null => ToSqlOutput::Owned(SqlValue::Null),
        })
    }
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn run_statement(conn: &Connection, statement: &str, parameters: Vec<Value>) -> rusqlite::Result<Executed> {
    let mut stmt = conn.prepare_cached(statement)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let writes = !stmt.readonly();
    let rowid_before = conn.last_insert_rowid();
    let mut rows_out = Vec::new();
    let mut rows = stmt.query(rusqlite::params_from_iter(parameters.iter()))?;
    while let Some(row) = rows.next()? {
        let values = (0..columns.len())
            .map(|i| row.get_ref(i).map(from_sql))
            .collect::<rusqlite::Result<_>>()?;
        rows_out.push(RowResult { values });
    }
    drop(rows);
    let write = writes.then(|| {
        let rowid = conn.last_insert_rowid();
        (conn.changes(), (rowid != rowid_before).then_some(rowid))
    });
    Ok(Executed {
        result: QueryResult {
            columns,
            rows: rows_out,
        },
        write,
    })
}

/// Every database label the application can open.
#[derive(Clone, Default)]
pub struct Databases {
    databases: BTreeMap<String, Database>,
}

impl Databases {
    /// The databases of the runtime config's `[sqlite_database.<label>]` entries;
    /// `default` falls back to `<data_dir>/sqlite_db.db`. Relative `path`s resolve
    /// against `base_dir` (the runtime config file's directory).
    pub fn from_config(
        config: &BTreeMap<String, SqliteDatabaseConfig>,
        base_dir: &Path,
        data_dir: &Path,
        commits: &Arc<CommitSignals>,
    ) -> anyhow::Result<Self> {
        let mut databases = BTreeMap::new();
        for (label, entry) in config {
            let SqliteDatabaseConfig::Spin { path, synchronous } = entry;
            let path = match path {
                Some(p) => base_dir.join(p),
                None => data_dir.join(format!("sqlite_db_{label}.db")),
            };
            let key = format!("sqlite_database.{label}");
            databases.insert(
                label.clone(),
                Database::open(&path, *synchronous, commits.clone()).with_context(|| key.clone())?,
            );
        }
        if !databases.contains_key("default") {
            databases.insert(
                "default".into(),
                Database::open(&data_dir.join("sqlite_db.db"), Synchronous::default(), commits.clone())
                    .context("default SQLite database")?,
            );
        }
        Ok(Self { databases })
    }

    /// The database labelled `label`.
    pub fn get(&self, label: &str) -> Option<&Database> {
        self.databases.get(label)
    }
}

/// An open connection as the guest holds it.
pub struct OpenDatabase {
    database: Session,
    label: Arc<str>,
    last_insert_rowid: i64,
    changes: u64,
}

impl OpenDatabase {
    fn record(&mut self, write: Option<(u64, Option<i64>)>) {
        if let Some((changes, rowid)) = write {
            self.changes = changes;
            if let Some(rowid) = rowid {
                self.last_insert_rowid = rowid;
            }
        }
    }
}

/// Per-instance SQLite state: which labels this component may open, and how many
/// connections this instance holds.
pub struct SqliteAccess {
    grant: SqliteGrant,
    trace: TraceCell,
    open_count: usize,
}

impl CapabilityView<'_, Sqlite> {
    /// Opens `label` for this instance if the component declared it (both API
    /// generations share this).
    fn open_database(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
        let access = &self.state;
        let grant = &access.grant;
        if !grant.allowed.contains(&label) {
            return Err(Error::AccessDenied);
        }
        let component = grant.component.clone();
        let Some(database) = grant.databases.databases.get(&label).map(|d| d.session(component)) else {
            return Err(Error::NoSuchDatabase);
        };
        if access.open_count >= MAX_OPEN_CONNECTIONS {
            return Err(Error::Io(format!(
                "too many open connections (at most {MAX_OPEN_CONNECTIONS})"
            )));
        }
        let resource = self
            .table
            .push(OpenDatabase {
                database,
                label: Arc::from(label.as_str()),
                last_insert_rowid: 0,
                changes: 0,
            })
            .map_err(|e| Error::Io(e.to_string()))?;
        self.state.open_count += 1;
        Ok(resource)
    }

    /// The connection's session, and a span for `statement` on it.
    fn database(&self, connection: &Resource<OpenDatabase>, statement: &str) -> Result<(Session, Span), Error> {
        let open = self.table.get(connection).map_err(|_| Error::InvalidConnection)?;
        let span = telemetry::database_span(&self.state.trace, "sqlite", &open.label, statement);
        Ok((open.database.clone(), span))
    }

    /// Remembers what a statement changed on the guest's connection.
    fn record_write(&mut self, connection: &Resource<OpenDatabase>, write: Option<(u64, Option<i64>)>) {
        if let Ok(open) = self.table.get_mut(connection) {
            open.record(write);
        }
    }

    fn close_database(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        self.state.open_count = self.state.open_count.saturating_sub(1);
        Ok(())
    }
}

impl sqlite::Host for CapabilityView<'_, Sqlite> {}

impl sqlite::HostConnection for CapabilityView<'_, Sqlite> {
    async fn open(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
        self.open_database(label)
    }

    async fn execute(
        &mut self,
        connection: Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let (database, span) = self.database(&connection, &statement)?;
        let executed = telemetry::finish_with(span, database.execute(statement, parameters).await)?;
        self.record_write(&connection, executed.write);
        Ok(executed.result)
    }

    async fn drop(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
        self.close_database(connection)
    }
}

/// `spin:sqlite@3.x`: the same databases and rules; 3.0.0 (spin-sdk 5's `sqlite3`)
/// uses the blocking functions, 3.1.0 (spin-sdk 7) adds `async func` twins, served
/// through wasmtime's store accessor.
pub mod v3 {
    use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

    use super::{Error as E2, OpenDatabase, QueryResult as Q2, Sqlite, Value as V2};
    use crate::capability::sqlite::bindings3::spin::sqlite::sqlite::{
        self as api, Error, QueryResult, RowResult, Value,
    };
    use crate::capability::{CapabilityView, Project};
    use crate::telemetry;

    fn convert_error(e: E2) -> Error {
        match e {
            E2::NoSuchDatabase => Error::NoSuchDatabase,
            E2::AccessDenied => Error::AccessDenied,
            E2::InvalidConnection => Error::InvalidConnection,
            E2::DatabaseFull => Error::DatabaseFull,
            E2::Io(m) => Error::Io(m),
        }
    }

    fn to_v2(v: Value) -> V2 {
        match v {
            Value::Integer(i) => V2::Integer(i),
            Value::Real(r) => V2::Real(r),
            Value::Text(t) => V2::Text(t),
            Value::Blob(b) => V2::Blob(b),
            Value::Null => V2::Null,
        }
    }

    fn from_v2(v: V2) -> Value {
        match v {
            V2::Integer(i) => Value::Integer(i),
            V2::Real(r) => Value::Real(r),
            V2::Text(t) => Value::Text(t),
            V2::Blob(b) => Value::Blob(b),
            V2::Null => Value::Null,
        }
    }

    fn rows(result: Q2) -> (Vec<String>, Vec<RowResult>) {
        let rows = result
            .rows
            .into_iter()
            .map(|r| RowResult {
                values: r.values.into_iter().map(from_v2).collect(),
            })
            .collect();
        (result.columns, rows)
    }

    fn connection_field<T>(
        view: &CapabilityView<'_, Sqlite>,
        c: &Resource<OpenDatabase>,
        field: impl Fn(&OpenDatabase) -> T,
    ) -> T
    where
        T: Default,
    {
        view.table.get(c).map(field).unwrap_or_default()
    }

    /// Runs a statement for `c` and records what it changed.
    async fn run<U>(
        store: &Accessor<U, Project<Sqlite>>,
        c: &Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<Q2, Error> {
        let (database, span) = store.with(|mut view| view.get().database(c, &statement).map_err(convert_error))?;
        let parameters = parameters.into_iter().map(to_v2).collect();
        let executed =
            telemetry::finish_with(span, database.execute(statement, parameters).await).map_err(convert_error)?;
        store.with(|mut view| view.get().record_write(c, executed.write));
        Ok(executed.result)
    }

    impl api::Host for CapabilityView<'_, Sqlite> {}

    impl api::HostConnection for CapabilityView<'_, Sqlite> {
        async fn open(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
            self.open_database(label).map_err(convert_error)
        }

        async fn execute(
            &mut self,
            c: Resource<OpenDatabase>,
            statement: String,
            parameters: Vec<Value>,
        ) -> Result<QueryResult, Error> {
            let (database, span) = self.database(&c, &statement).map_err(convert_error)?;
            let parameters = parameters.into_iter().map(to_v2).collect();
            let executed =
                telemetry::finish_with(span, database.execute(statement, parameters).await).map_err(convert_error)?;
            self.record_write(&c, executed.write);
            let (columns, rows) = rows(executed.result);
            Ok(QueryResult { columns, rows })
        }

        async fn last_insert_rowid(&mut self, c: Resource<OpenDatabase>) -> i64 {
            connection_field(self, &c, |o| o.last_insert_rowid)
        }

        async fn changes(&mut self, c: Resource<OpenDatabase>) -> u64 {
            connection_field(self, &c, |o| o.changes)
        }

        async fn drop(&mut self, c: Resource<OpenDatabase>) -> wasmtime::Result<()> {
            self.close_database(c)
        }
    }

    impl<U> api::HostConnectionWithStore<U> for Project<Sqlite> {
        async fn open_async(store: &Accessor<U, Self>, label: String) -> Result<Resource<OpenDatabase>, Error> {
            store.with(|mut view| view.get().open_database(label).map_err(convert_error))
        }

        #[allow(clippy::type_complexity)] // the shape is fixed by the WIT
        async fn execute_async(
            store: &Accessor<U, Self>,
            c: Resource<OpenDatabase>,
            statement: String,
            parameters: Vec<Value>,
        ) -> wasmtime::Result<Result<(Vec<String>, StreamReader<RowResult>, FutureReader<Result<(), Error>>), Error>>
        {
            // The statement runs to completion first: an error before any row is the
            // call's error, as Spin reports it.
            let (columns, rows) = match run(store, &c, statement, parameters).await {
                Ok(result) => rows(result),
                Err(e) => return Ok(Err(e)),
            };
            store.with(|mut access| {
                let rows = StreamReader::new(&mut access, rows)?;
                let done = FutureReader::new(&mut access, async { wasmtime::Result::<_>::Ok(Ok(())) })?;
                Ok(Ok((columns, rows, done)))
            })
        }

        async fn last_insert_rowid_async(store: &Accessor<U, Self>, c: Resource<OpenDatabase>) -> i64 {
            store.with(|mut view| connection_field(&view.get(), &c, |o| o.last_insert_rowid))
        }

        async fn changes_async(store: &Accessor<U, Self>, c: Resource<OpenDatabase>) -> u64 {
            store.with(|mut view| connection_field(&view.get(), &c, |o| o.changes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_value_type_round_trips() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-unit-{}", std::process::id()));
        let db = Database::open(&dir.join("t.db"), Synchronous::Full, Arc::default())
            .unwrap()
            .session("test".into());
        db.execute("CREATE TABLE t (i, r, s, b, n)".into(), vec![])
            .await
            .unwrap();
        let values = vec![
            Value::Integer(-7),
            Value::Real(2.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 1, 255]),
            Value::Null,
        ];
        let inserted = db
            .execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)".into(), values.clone())
            .await
            .unwrap();
        assert!(inserted.result.columns.is_empty() && inserted.result.rows.is_empty());
        assert_eq!(inserted.write, Some((1, Some(1))));
        let result = db.execute("SELECT i, r, s, b, n FROM t".into(), vec![]).await.unwrap();
        assert_eq!(result.write, None, "a SELECT changes nothing");
        let result = result.result;
        assert_eq!(result.columns, ["i", "r", "s", "b", "n"]);
        assert_eq!(format!("{:?}", result.rows[0].values), format!("{values:?}"));
        let err = db.execute("SELEKT".into(), vec![]).await.unwrap_err();
        assert!(matches!(err, Error::Io(m) if m.contains("syntax error")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn each_guest_connection_has_its_own_transactions() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-sessions-{}", std::process::id()));
        let template = Database::open(&dir.join("t.db"), Synchronous::Normal, Arc::default()).unwrap();
        let (a, b) = (template.session("a".into()), template.session("b".into()));
        a.execute("CREATE TABLE t (v)".into(), vec![]).await.unwrap();
        a.execute("BEGIN".into(), vec![]).await.unwrap();
        a.execute("INSERT INTO t VALUES (1)".into(), vec![]).await.unwrap();
        let count = |db: &Session| {
            let db = db.clone();
            async move {
                let r = db.execute("SELECT COUNT(*) FROM t".into(), vec![]).await.unwrap();
                match r.result.rows[0].values[0] {
                    Value::Integer(n) => n,
                    ref other => panic!("count is {other:?}"),
                }
            }
        };
        assert_eq!(count(&b).await, 0, "b does not see a's open transaction");
        assert_eq!(count(&a).await, 1);
        a.execute("ROLLBACK".into(), vec![]).await.unwrap();
        assert_eq!(count(&a).await, 0, "the rollback undid a's work");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn count_of(result: &Executed) -> i64 {
        match result.result.rows[0].values[0] {
            Value::Integer(n) => n,
            ref other => panic!("count is {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_left_in_a_transaction_is_rolled_back_before_reuse() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-reuse-{}", std::process::id()));
        let db = Database::open(&dir.join("t.db"), Synchronous::Normal, Arc::default()).unwrap();
        let first = db.session("test".into());
        first.execute("CREATE TABLE t (v)".into(), vec![]).await.unwrap();
        first.execute("BEGIN IMMEDIATE".into(), vec![]).await.unwrap();
        first.execute("INSERT INTO t VALUES (1)".into(), vec![]).await.unwrap();
        drop(first); // a guest that trapped mid-transaction
        let next = db.session("test".into());
        // The same primary connection: a BEGIN would fail if the old transaction lived on.
        next.execute("BEGIN IMMEDIATE".into(), vec![]).await.unwrap();
        let count = next.execute("SELECT COUNT(*) FROM t".into(), vec![]).await.unwrap();
        assert_eq!(count_of(&count), 0, "the abandoned insert was rolled back");
        assert!(
            db.file.primary.try_lock().is_err(),
            "`next` holds the primary connection"
        );
        next.execute("COMMIT".into(), vec![]).await.unwrap();
        assert!(db.file.primary.try_lock().is_ok(), "given back at the commit");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_take_turns_and_lose_nothing() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-writers-{}", std::process::id()));
        let db = Database::open(&dir.join("t.db"), Synchronous::Normal, Arc::default()).unwrap();
        let setup = db.session("test".into());
        setup
            .execute("CREATE TABLE counter (n INTEGER)".into(), vec![])
            .await
            .unwrap();
        setup
            .execute("INSERT INTO counter VALUES (0)".into(), vec![])
            .await
            .unwrap();
        drop(setup);
        // Read-modify-write transactions from 32 sessions at once: each waits its turn
        // (none fails with SQLITE_BUSY, none loses an update) and gives the turn back.
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let session = db.session("test".into());
                tokio::spawn(async move {
                    session.execute("BEGIN IMMEDIATE".into(), vec![]).await.unwrap();
                    let n = session.execute("SELECT n FROM counter".into(), vec![]).await.unwrap();
                    let next = count_of(&n) + 1;
                    tokio::task::yield_now().await;
                    session
                        .execute("UPDATE counter SET n = ?".into(), vec![Value::Integer(next)])
                        .await
                        .unwrap();
                    session.execute("COMMIT".into(), vec![]).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let check = db.session("test".into());
        let n = check.execute("SELECT n FROM counter".into(), vec![]).await.unwrap();
        assert_eq!(count_of(&n), 32);
        assert!(
            db.file.primary.try_lock().is_ok(),
            "the primary connection is free once everyone committed"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn statements_that_need_the_primary_connection() {
        for write in [
            "INSERT INTO t VALUES (1)",
            "  update t set v = 1",
            "BEGIN IMMEDIATE",
            "begin exclusive transaction",
            "BEGIN",
            "BEGIN DEFERRED",
            "SAVEPOINT a",
            "CREATE TABLE IF NOT EXISTS t (v)",
            "DELETE FROM t",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        ] {
            assert!(needs_primary(write), "{write}");
        }
        for read in ["SELECT 1", "COMMIT", "ROLLBACK", "PRAGMA user_version", ""] {
            assert!(!needs_primary(read), "{read}");
        }
    }

    #[tokio::test]
    async fn commits_signal_the_committing_component() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-wake-{}", std::process::id()));
        let commits = Arc::new(CommitSignals::default());
        let db = Database::open(&dir.join("t.db"), Synchronous::Normal, commits.clone()).unwrap();
        let relay = Arc::new(tokio::sync::Notify::new());
        commits.watch("service", relay.clone());
        let woken = || {
            let relay = relay.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), relay.notified())
                    .await
                    .is_ok()
            }
        };
        let service = db.session("service".into());
        service.execute("CREATE TABLE t (v)".into(), vec![]).await.unwrap();
        assert!(woken().await, "a write outside a transaction wakes the relay");
        service.execute("BEGIN IMMEDIATE".into(), vec![]).await.unwrap();
        service
            .execute("INSERT INTO t VALUES (1)".into(), vec![])
            .await
            .unwrap();
        assert!(!woken().await, "nothing is committed yet");
        service.execute("COMMIT".into(), vec![]).await.unwrap();
        assert!(woken().await, "the commit wakes the relay");
        service.execute("SELECT * FROM t".into(), vec![]).await.unwrap();
        assert!(!woken().await, "a read wakes no one");
        let own = db.session("relay".into());
        own.execute("DELETE FROM t".into(), vec![]).await.unwrap();
        assert!(!woken().await, "commits of components it does not watch do not wake it");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod capability_tests {
    use wasmtime::component::Resource;

    use super::*;
    use crate::capability::testing::Fixture;
    use sqlite::HostConnection as _;

    #[tokio::test]
    async fn an_instance_opens_only_granted_databases_and_sees_its_writes() {
        let fixture = Fixture::new("sqlite", "sqlite_databases = [\"default\", \"undefined\"]");
        let mut instance = fixture.instance::<Sqlite>();
        let mut view = instance.view();
        assert!(matches!(view.open("orders".into()).await, Err(Error::AccessDenied)));
        assert!(matches!(
            view.open("undefined".into()).await,
            Err(Error::NoSuchDatabase)
        ));
        let db = view.open("default".into()).await.unwrap();
        assert_eq!(view.state.open_count, 1);
        let again = || Resource::<OpenDatabase>::new_borrow(db.rep());
        view.execute(again(), "CREATE TABLE t (v)".into(), vec![])
            .await
            .unwrap();
        view.execute(again(), "INSERT INTO t VALUES (?)".into(), vec![Value::Integer(7)])
            .await
            .unwrap();
        assert_eq!(view.table.get(&db).unwrap().changes, 1);
        let read = view.execute(again(), "SELECT v FROM t".into(), vec![]).await.unwrap();
        assert_eq!(
            format!("{:?}", read.rows[0].values),
            format!("{:?}", [Value::Integer(7)])
        );
        view.drop(db).await.unwrap();
        assert_eq!(view.state.open_count, 0);
    }
}

#[cfg(test)]
mod config_tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::Manifest;
    use crate::runtime_config::RuntimeConfig;

    #[test]
    fn database_labels_must_be_defined_and_entries_embedded_files() {
        let manifest = Manifest::parse(
            Path::new("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.c]\nsource = \"c.wasm\"\n\
             sqlite_databases = [\"default\", \"orders\", \"remote\", \"missing\"]\n",
        )
        .unwrap();
        let text = "[sqlite_database.orders]\ntype = \"spin\"\nsynchronous = \"full\"\n\
                    [sqlite_database.remote]\ntype = \"libsql\"\nurl = \"https://x\"\n";
        let runtime_config = RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(text).unwrap());
        let (entries, problems) = DATABASES.read::<SqliteDatabaseConfig>(&runtime_config, Some(&manifest));
        assert_eq!(
            entries["orders"],
            SqliteDatabaseConfig::Spin {
                path: None,
                synchronous: Synchronous::Full
            }
        );
        let found: Vec<_> = problems.iter().map(|p| (p.file.as_str(), p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                ("rc.toml", "sqlite_database.remote.type"),
                ("spin.toml", "component.c.sqlite_databases")
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("unknown variant `libsql`"), "{problems:?}");
        assert!(problems[1].message.contains("`missing`"), "{problems:?}");
    }
}
