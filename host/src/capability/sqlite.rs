//! Spin SQLite (`fermyon:spin/sqlite@2.0.0`): embedded database files opened by label.
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

/// One database file, shared by every instance that opens its label.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
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
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            conn: Arc::new(Mutex::new(open_file(path)?)),
        })
    }

    /// Runs one statement on a blocking thread.
    pub async fn execute(&self, statement: String, parameters: Vec<Value>) -> Result<QueryResult, Error> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Error::Io("database connection poisoned".into()))?;
            run_statement(&conn, &statement, parameters).map_err(to_error)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
    }
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

fn run_statement(conn: &Connection, statement: &str, parameters: Vec<Value>) -> rusqlite::Result<QueryResult> {
    let mut stmt = conn.prepare(statement)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let mut rows_out = Vec::new();
    let mut rows = stmt.query(rusqlite::params_from_iter(parameters.iter()))?;
    while let Some(row) = rows.next()? {
        let values = (0..columns.len())
            .map(|i| row.get_ref(i).map(from_sql))
            .collect::<rusqlite::Result<_>>()?;
        rows_out.push(RowResult { values });
    }
    Ok(QueryResult {
        columns,
        rows: rows_out,
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
}

/// Per-instance SQLite state: which labels this component may open.
pub struct SqliteAccess {
    pub allowed: Arc<BTreeSet<String>>,
    pub backends: Arc<Backends>,
    pub open_count: usize,
}

impl sqlite::Host for HostState {}

impl sqlite::HostConnection for HostState {
    async fn open(&mut self, label: String) -> Result<Resource<OpenDatabase>, Error> {
        let access = &self.sqlite;
        if !access.allowed.contains(&label) {
            return Err(Error::AccessDenied);
        }
        let Some(database) = access.backends.sqlite.databases.get(&label).cloned() else {
            return Err(Error::NoSuchDatabase);
        };
        if access.open_count >= MAX_OPEN_CONNECTIONS {
            return Err(Error::Io(format!(
                "too many open connections (at most {MAX_OPEN_CONNECTIONS})"
            )));
        }
        let resource = self
            .table
            .push(OpenDatabase { database })
            .map_err(|e| Error::Io(e.to_string()))?;
        self.sqlite.open_count += 1;
        Ok(resource)
    }

    async fn execute(
        &mut self,
        connection: Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let database = self
            .table
            .get(&connection)
            .map_err(|_| Error::InvalidConnection)?
            .database
            .clone();
        database.execute(statement, parameters).await
    }

    async fn drop(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        self.sqlite.open_count = self.sqlite.open_count.saturating_sub(1);
        Ok(())
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
        assert!(inserted.columns.is_empty() && inserted.rows.is_empty());
        let result = db.execute("SELECT i, r, s, b, n FROM t".into(), vec![]).await.unwrap();
        assert_eq!(result.columns, ["i", "r", "s", "b", "n"]);
        assert_eq!(format!("{:?}", result.rows[0].values), format!("{values:?}"));
        let err = db.execute("SELEKT".into(), vec![]).await.unwrap_err();
        assert!(matches!(err, Error::Io(m) if m.contains("syntax error")));
        let _ = std::fs::remove_dir_all(dir);
    }
}
