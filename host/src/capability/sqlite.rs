//! Spin SQLite (`fermyon:spin/sqlite@2.0.0`, and `spin:sqlite@3.x` in [`v3`]): embedded
//! database files opened by label.
//! `default` is `<data_dir>/sqlite_db.db` unless the runtime config's
//! `[sqlite_database.<label>]` (type `spin`, optional `path`) says otherwise; a
//! component may open only the labels in its `sqlite_databases`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use wasmtime::component::Resource;

use super::Backends;
use crate::bindings::fermyon::spin::sqlite::{self, Error, QueryResult, RowResult, Value};
use crate::state::HostState;

/// Most connections one instance may hold open at once.
const MAX_OPEN_CONNECTIONS: usize = 64;

/// A database file, and one connection to it. The label's registry entry is a
/// template; each guest `open` gets its own [`Database::session`], so transactions of
/// concurrent instances never interleave on a shared connection (SQLite's locking and
/// the busy timeout order them instead).
#[derive(Clone)]
pub struct Database {
    path: Arc<Path>,
    /// Opened on first use, so `open` itself does no I/O.
    conn: Arc<Mutex<Option<Connection>>>,
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
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Database {
    /// Creates the file if needed (and checks it opens) at start-up.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        drop(open_file(path)?);
        Ok(Self {
            path: path.into(),
            conn: Arc::default(),
        })
    }

    /// A handle with a connection of its own to the same file.
    pub fn session(&self) -> Self {
        Self {
            path: self.path.clone(),
            conn: Arc::default(),
        }
    }

    /// Runs one statement on a blocking thread.
    pub async fn execute(&self, statement: String, parameters: Vec<Value>) -> Result<Executed, Error> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = conn
                .lock()
                .map_err(|_| Error::Io("database connection poisoned".into()))?;
            if slot.is_none() {
                *slot = Some(open_file(&path).map_err(|e| Error::Io(format!("{e:#}")))?);
            }
            let conn = slot.as_ref().expect("connection opened above");
            run_statement(conn, &statement, parameters).map_err(to_error)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
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
    let mut stmt = conn.prepare(statement)?;
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
    pub fn from_config(config: Option<&toml::Table>, base_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let mut databases = BTreeMap::new();
        for (label, entry) in config.into_iter().flatten() {
            let key = format!("sqlite_database.{label}");
            let table = entry.as_table().with_context(|| format!("{key}: expected a table"))?;
            match table.get("type").and_then(|t| t.as_str()) {
                Some("spin") => {}
                other => anyhow::bail!("{key}.type: expected \"spin\", found {other:?}"),
            }
            let path = match table.get("path").and_then(|p| p.as_str()) {
                Some(p) => base_dir.join(p),
                None => data_dir.join(format!("sqlite_db_{label}.db")),
            };
            databases.insert(label.clone(), Database::open(&path).with_context(|| key.clone())?);
        }
        if !databases.contains_key("default") {
            databases.insert(
                "default".into(),
                Database::open(&data_dir.join("sqlite_db.db")).context("default SQLite database")?,
            );
        }
        Ok(Self { databases })
    }
}

/// An open connection as the guest holds it.
pub struct OpenDatabase {
    database: Database,
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

/// Per-instance SQLite state: which labels this component may open.
pub struct SqliteAccess {
    pub allowed: Arc<BTreeSet<String>>,
    pub backends: Arc<Backends>,
    pub open_count: usize,
}

impl HostState {
    /// Opens `label` for this instance if the component declared it (both API
    /// generations share this).
    fn open_sqlite_database(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
        let access = &self.sqlite;
        if !access.allowed.contains(&label) {
            return Err(Error::AccessDenied);
        }
        let Some(database) = access.backends.sqlite.databases.get(&label).map(Database::session) else {
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
                last_insert_rowid: 0,
                changes: 0,
            })
            .map_err(|e| Error::Io(e.to_string()))?;
        self.sqlite.open_count += 1;
        Ok(resource)
    }

    fn sqlite_database(&self, connection: &Resource<OpenDatabase>) -> Result<Database, Error> {
        Ok(self
            .table
            .get(connection)
            .map_err(|_| Error::InvalidConnection)?
            .database
            .clone())
    }

    /// Remembers what a statement changed on the guest's connection.
    fn record_sqlite_write(&mut self, connection: &Resource<OpenDatabase>, write: Option<(u64, Option<i64>)>) {
        if let Ok(open) = self.table.get_mut(connection) {
            open.record(write);
        }
    }

    fn close_sqlite_database(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        self.sqlite.open_count = self.sqlite.open_count.saturating_sub(1);
        Ok(())
    }
}

impl sqlite::Host for HostState {}

impl sqlite::HostConnection for HostState {
    async fn open(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
        self.open_sqlite_database(label)
    }

    async fn execute(
        &mut self,
        connection: Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let database = self.sqlite_database(&connection)?;
        let executed = database.execute(statement, parameters).await?;
        self.record_sqlite_write(&connection, executed.write);
        Ok(executed.result)
    }

    async fn drop(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
        self.close_sqlite_database(connection)
    }
}

/// `spin:sqlite@3.x`: the same databases and rules; 3.0.0 (spin-sdk 5's `sqlite3`)
/// uses the blocking functions, 3.1.0 (spin-sdk 7) adds `async func` twins, served
/// through wasmtime's store accessor.
pub mod v3 {
    use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

    use super::{Database, Error as E2, OpenDatabase, QueryResult as Q2, Value as V2};
    use crate::bindings::sqlite3::spin::sqlite::sqlite::{self as api, Error, QueryResult, RowResult, Value};
    use crate::state::HostState;

    pub struct SpinSqlite3;

    impl wasmtime::component::HasData for SpinSqlite3 {
        type Data<'a> = &'a mut HostState;
    }

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

    fn connection_field<T>(state: &HostState, c: &Resource<OpenDatabase>, field: impl Fn(&OpenDatabase) -> T) -> T
    where
        T: Default,
    {
        state.table.get(c).map(field).unwrap_or_default()
    }

    /// Runs a statement for `c` and records what it changed.
    async fn run<U>(
        store: &Accessor<U, SpinSqlite3>,
        c: &Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<Q2, Error> {
        let database: Database = store.with(|mut view| view.get().sqlite_database(c).map_err(convert_error))?;
        let parameters = parameters.into_iter().map(to_v2).collect();
        let executed = database.execute(statement, parameters).await.map_err(convert_error)?;
        store.with(|mut view| view.get().record_sqlite_write(c, executed.write));
        Ok(executed.result)
    }

    impl api::Host for &mut HostState {}

    impl api::HostConnection for &mut HostState {
        async fn open(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
            self.open_sqlite_database(label).map_err(convert_error)
        }

        async fn execute(
            &mut self,
            c: Resource<OpenDatabase>,
            statement: String,
            parameters: Vec<Value>,
        ) -> Result<QueryResult, Error> {
            let database = self.sqlite_database(&c).map_err(convert_error)?;
            let parameters = parameters.into_iter().map(to_v2).collect();
            let executed = database.execute(statement, parameters).await.map_err(convert_error)?;
            self.record_sqlite_write(&c, executed.write);
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
            self.close_sqlite_database(c)
        }
    }

    impl<U> api::HostConnectionWithStore<U> for SpinSqlite3 {
        async fn open_async(store: &Accessor<U, Self>, label: String) -> Result<Resource<OpenDatabase>, Error> {
            store.with(|mut view| view.get().open_sqlite_database(label).map_err(convert_error))
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
            store.with(|mut view| connection_field(view.get(), &c, |o| o.last_insert_rowid))
        }

        async fn changes_async(store: &Accessor<U, Self>, c: Resource<OpenDatabase>) -> u64 {
            store.with(|mut view| connection_field(view.get(), &c, |o| o.changes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_value_type_round_trips() {
        let dir = std::env::temp_dir().join(format!("shop-sqlite-unit-{}", std::process::id()));
        let db = Database::open(&dir.join("t.db")).unwrap();
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
        let template = Database::open(&dir.join("t.db")).unwrap();
        let (a, b) = (template.session(), template.session());
        a.execute("CREATE TABLE t (v)".into(), vec![]).await.unwrap();
        a.execute("BEGIN".into(), vec![]).await.unwrap();
        a.execute("INSERT INTO t VALUES (1)".into(), vec![]).await.unwrap();
        let count = |db: &Database| {
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
}
