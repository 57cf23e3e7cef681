//! Spin's SQLite behind [`Sql`], for the components.

use spin_sdk::sqlite::{Connection, Value};

use super::*;

pub struct SpinSqlite(pub Connection);

impl SpinSqlite {
    pub fn open(label: &str) -> Result<Self, String> {
        Connection::open(label)
            .map(Self)
            .map_err(|e| format!("database `{label}`: {e:?}"))
    }

    pub fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
        let params: Vec<Value> = params
            .iter()
            .map(|p| match p {
                SqlValue::Integer(i) => Value::Integer(*i),
                SqlValue::Real(r) => Value::Real(*r),
                SqlValue::Text(t) => Value::Text(t.clone()),
                SqlValue::Blob(b) => Value::Blob(b.clone()),
                SqlValue::Null => Value::Null,
            })
            .collect();
        let result = self
            .0
            .execute(statement, &params)
            .map_err(|e| SqlError::from_message(format!("{e:?}")))?;
        Ok(result
            .rows
            .into_iter()
            .map(|row| {
                row.values
                    .into_iter()
                    .map(|v| match v {
                        Value::Integer(i) => SqlValue::Integer(i),
                        Value::Real(r) => SqlValue::Real(r),
                        Value::Text(t) => SqlValue::Text(t),
                        Value::Blob(b) => SqlValue::Blob(b),
                        Value::Null => SqlValue::Null,
                    })
                    .collect()
            })
            .collect())
    }
}

/// Spin's PostgreSQL (`spin:postgres@4`) behind [`Sql`].
pub struct SpinPostgres(pub spin_sdk::pg4::Connection);

impl SpinPostgres {
    pub fn open(address: &str) -> Result<Self, String> {
        spin_sdk::pg4::Connection::open(address)
            .map(Self)
            .map_err(|e| format!("database {}: {e:?}", redact(address)))
    }
}

/// `address` without its password, for error messages.
fn redact(address: &str) -> String {
    match (address.find("://"), address.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match address[scheme + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &address[..scheme + 3 + colon], &address[at..]),
            None => address.to_string(),
        },
        _ => address.to_string(),
    }
}

impl SpinPostgres {
    pub fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
        use spin_sdk::pg4::{DbValue, ParameterValue, PgError, QueryError};
        let params: Vec<ParameterValue> = params
            .iter()
            .map(|p| match p {
                SqlValue::Integer(i) => ParameterValue::Int64(*i),
                SqlValue::Real(r) => ParameterValue::Floating64(*r),
                SqlValue::Text(t) => ParameterValue::Str(t.clone()),
                SqlValue::Blob(b) => ParameterValue::Binary(b.clone()),
                SqlValue::Null => ParameterValue::DbNull,
            })
            .collect();
        let failed = |e: PgError| match e {
            // A unique violation; and, from two sessions running the same
            // `CREATE … IF NOT EXISTS` at once, the loser's duplicate table (42P07)
            // or object (42710): someone else got there first.
            PgError::QueryFailed(QueryError::DbError(db))
                if matches!(db.code.as_str(), "23505" | "42P07" | "42710") =>
            {
                SqlError::Conflict(db.message)
            }
            // Spin reports an error met while reading rows as text alone.
            PgError::QueryFailed(QueryError::Text(text)) => SqlError::from_postgres_text(text),
            other => SqlError::Other(format!("{other:?}")),
        };
        let statement = Dialect::Postgres.placeholders(statement);
        // A statement that returns no rows goes through `execute`, whose errors keep
        // their SQLSTATE on every Spin.
        if !super::returns_rows(&statement) {
            self.0.execute(&statement, &params).map_err(failed)?;
            return Ok(Vec::new());
        }
        let rows = self.0.query(&statement, &params).map_err(failed)?.rows;
        rows.into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| match v {
                        DbValue::Boolean(b) => Ok(SqlValue::Integer(b.into())),
                        DbValue::Int8(i) => Ok(SqlValue::Integer(i.into())),
                        DbValue::Int16(i) => Ok(SqlValue::Integer(i.into())),
                        DbValue::Int32(i) => Ok(SqlValue::Integer(i.into())),
                        DbValue::Int64(i) => Ok(SqlValue::Integer(i)),
                        DbValue::Floating32(r) => Ok(SqlValue::Real(r.into())),
                        DbValue::Floating64(r) => Ok(SqlValue::Real(r)),
                        DbValue::Str(t) => Ok(SqlValue::Text(t)),
                        DbValue::Binary(b) => Ok(SqlValue::Blob(b)),
                        DbValue::DbNull => Ok(SqlValue::Null),
                        other => Err(SqlError::Other(format!("unexpected column value {other:?}"))),
                    })
                    .collect()
            })
            .collect()
    }
}

/// A service's database as configured: PostgreSQL when the component's
/// `database_url` variable is set, otherwise the Spin SQLite database `label`.
pub enum Backend {
    Sqlite(SpinSqlite),
    Postgres(SpinPostgres),
}

/// The service's database as configured.
pub struct SpinDatabase {
    backend: Backend,
    /// The trace of the work this connection does, kept with the events it writes.
    traceparent: Option<String>,
    schemas: super::SchemaMemo,
}

impl SpinDatabase {
    pub fn open_configured(label: &str) -> Result<Self, String> {
        // A component without the variable simply uses SQLite.
        let url = spin_sdk::variables::get("database_url").unwrap_or_default();
        let backend = if url.trim().is_empty() {
            SpinSqlite::open(label).map(Backend::Sqlite)?
        } else {
            SpinPostgres::open(url.trim()).map(Backend::Postgres)?
        };
        Ok(Self {
            backend,
            traceparent: None,
            schemas: Default::default(),
        })
    }

    /// The trace this connection's work belongs to (the `traceparent` the host gave
    /// the request or message); the events it writes keep it. Empty: none.
    pub fn traced(mut self, traceparent: &str) -> Self {
        self.traceparent = Some(traceparent.trim().to_string()).filter(|t| !t.is_empty());
        self
    }
}

impl Sql for SpinDatabase {
    fn traceparent(&self) -> Option<String> {
        self.traceparent.clone()
    }

    fn dialect(&self) -> Dialect {
        match &self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
        match &self.backend {
            Backend::Sqlite(db) => db.execute(statement, params),
            Backend::Postgres(db) => db.execute(statement, params),
        }
    }

    fn schema_memo(&self) -> Option<&super::SchemaMemo> {
        Some(&self.schemas)
    }
}
