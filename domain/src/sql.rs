//! The few SQL operations the services need, so their queries run against Spin's
//! SQLite in the components and against rusqlite in native tests (feature `testing`).

#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

impl SqlValue {
    pub fn text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn integer(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Integer(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlError {
    /// A UNIQUE constraint refused the row.
    Conflict(String),
    Other(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlError::Conflict(m) | SqlError::Other(m) => f.write_str(m),
        }
    }
}

impl SqlError {
    /// Classifies a driver message (SQLite words every UNIQUE violation the same way).
    pub fn from_message(message: String) -> Self {
        if message.contains("UNIQUE constraint failed") {
            SqlError::Conflict(message)
        } else {
            SqlError::Other(message)
        }
    }
}

pub trait Sql {
    /// Runs one statement; the rows it returned.
    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError>;
}

/// Runs `work` in a write transaction, rolling back when it fails.
pub fn in_transaction<T, E: From<SqlError>>(db: &impl Sql, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    db.execute("BEGIN IMMEDIATE", &[])?;
    match work() {
        Ok(value) => {
            db.execute("COMMIT", &[])?;
            Ok(value)
        }
        Err(e) => {
            let _ = db.execute("ROLLBACK", &[]);
            Err(e)
        }
    }
}

/// rusqlite behind [`Sql`], for native tests.
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;

    pub struct MemoryDb(pub rusqlite::Connection);

    impl Default for MemoryDb {
        fn default() -> Self {
            Self(rusqlite::Connection::open_in_memory().unwrap())
        }
    }

    impl Sql for MemoryDb {
        fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
            use rusqlite::types::{Value, ValueRef};
            let mut stmt = self
                .0
                .prepare(statement)
                .map_err(|e| SqlError::from_message(e.to_string()))?;
            let columns = stmt.column_count();
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
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(|e| SqlError::from_message(e.to_string()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| SqlError::from_message(e.to_string()))? {
                out.push(
                    (0..columns)
                        .map(|i| match row.get_ref(i).unwrap() {
                            ValueRef::Null => SqlValue::Null,
                            ValueRef::Integer(i) => SqlValue::Integer(i),
                            ValueRef::Real(r) => SqlValue::Real(r),
                            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
                        })
                        .collect(),
                );
            }
            Ok(out)
        }
    }
}

/// Spin's SQLite behind [`Sql`], for the components.
#[cfg(feature = "spin")]
pub mod spin {
    use spin_sdk::sqlite::{Connection, Value};

    use super::*;

    pub struct SpinSqlite(pub Connection);

    impl SpinSqlite {
        pub fn open(label: &str) -> Result<Self, String> {
            Connection::open(label)
                .map(Self)
                .map_err(|e| format!("database `{label}`: {e:?}"))
        }
    }

    impl Sql for SpinSqlite {
        fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
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
}
