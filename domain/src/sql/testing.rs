//! rusqlite behind [`Sql`], for native tests.

use super::*;

pub struct MemoryDb(pub rusqlite::Connection, std::cell::RefCell<Vec<String>>);

impl MemoryDb {
    pub fn new(connection: rusqlite::Connection) -> Self {
        Self(connection, Default::default())
    }
}

impl Default for MemoryDb {
    fn default() -> Self {
        Self::new(rusqlite::Connection::open_in_memory().unwrap())
    }
}

impl Sql for MemoryDb {
    fn outbox_written(&self, event_id: &str) {
        self.1.borrow_mut().push(event_id.to_string());
    }

    fn take_outbox_written(&self) -> Vec<String> {
        self.1.take()
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
