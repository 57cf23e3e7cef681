//! rusqlite behind [`Sql`], for native tests.

use super::*;

pub struct MemoryDb(
    pub rusqlite::Connection,
    /// The trace its work belongs to (see [`Sql::traceparent`]).
    Option<String>,
);

impl MemoryDb {
    pub fn new(connection: rusqlite::Connection) -> Self {
        Self(connection, None)
    }

    /// As a connection doing the work of the trace `traceparent`.
    pub fn traced(mut self, traceparent: &str) -> Self {
        self.1 = Some(traceparent.to_string());
        self
    }

    /// Every row of every table as text, for tests that look for what must not be
    /// stored (a token, a code).
    pub fn dump(&self) -> String {
        let tables: Vec<String> = self
            .0
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap();
        let mut out = String::new();
        for table in tables {
            let mut stmt = self.0.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                out.push_str(&table);
                for i in 0..columns {
                    match row.get::<_, rusqlite::types::Value>(i).unwrap() {
                        // Payloads are JSON in blobs: shown as the text they hold.
                        rusqlite::types::Value::Blob(b) => out.push_str(&format!(" {}", String::from_utf8_lossy(&b))),
                        value => out.push_str(&format!(" {value:?}")),
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

impl Default for MemoryDb {
    fn default() -> Self {
        Self::new(rusqlite::Connection::open_in_memory().unwrap())
    }
}

impl Sql for MemoryDb {
    fn traceparent(&self) -> Option<String> {
        self.1.clone()
    }

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

/// Ids `id-1`, `id-2`, … for tests that need predictable, distinct ids.
pub fn sequential_ids() -> impl Fn() -> String {
    let issued = std::cell::Cell::new(0);
    move || {
        issued.set(issued.get() + 1);
        format!("id-{}", issued.get())
    }
}
