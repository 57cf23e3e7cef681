//! An outbox in a SQLite database of this host, read and emptied through a session of
//! the host's own (its commits wake no relay). One relay per file in this process
//! publishes; a second process sharing the file could publish a row twice, which
//! consumers dedupe.

use async_trait::async_trait;

use super::relay::{OutboxRow, OutboxStore, StoreError};
use crate::capability::sqlite::Session;
use crate::capability::sqlite::bindings::fermyon::spin::sqlite::Value;

pub struct SqliteOutbox {
    session: Session,
    table: String,
}

impl SqliteOutbox {
    pub fn new(session: Session, table: &str) -> Self {
        SqliteOutbox {
            session,
            table: table.to_string(),
        }
    }

    async fn run(&self, statement: String, parameters: Vec<Value>) -> Result<Vec<Vec<Value>>, StoreError> {
        match self.session.execute(statement, parameters).await {
            Ok(executed) => Ok(executed.result.rows.into_iter().map(|row| row.values).collect()),
            Err(e) => Err(StoreError(format!("{e:?}"))),
        }
    }
}

/// A table its writers have not created yet holds nothing to publish.
fn missing_table(error: &StoreError) -> bool {
    error.0.contains("no such table")
}

fn row(values: Vec<Value>) -> Result<OutboxRow, StoreError> {
    let mut values = values.into_iter();
    let mut next = |column: &str| values.next().ok_or_else(|| StoreError(format!("no `{column}` column")));
    let text = |value: Value, column: &str| match value {
        Value::Text(text) => Ok(Some(text)),
        Value::Null => Ok(None),
        other => Err(StoreError(format!("`{column}` is not text: {other:?}"))),
    };
    let required =
        |value: Value, column: &str| text(value, column)?.ok_or_else(|| StoreError(format!("`{column}` is NULL")));
    Ok(OutboxRow {
        seq: match next("seq")? {
            Value::Integer(seq) => seq,
            other => return Err(StoreError(format!("`seq` is not an integer: {other:?}"))),
        },
        event_id: required(next("event_id")?, "event_id")?,
        topic: required(next("topic")?, "topic")?,
        key: text(next("event_key")?, "event_key")?,
        event_type: required(next("event_type")?, "event_type")?,
        payload: match next("payload")? {
            Value::Blob(bytes) => bytes,
            Value::Text(text) => text.into_bytes(),
            other => return Err(StoreError(format!("`payload` is not a blob: {other:?}"))),
        },
        created_at: required(next("created_at")?, "created_at")?,
        headers: text(next("headers")?, "headers")?,
    })
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn take(&mut self, limit: usize) -> Result<Option<Vec<OutboxRow>>, StoreError> {
        let statement = format!(
            "SELECT seq, event_id, topic, event_key, event_type, payload, created_at, headers FROM {} ORDER BY seq LIMIT ?",
            self.table
        );
        match self.run(statement, vec![Value::Integer(limit as i64)]).await {
            Ok(rows) => rows.into_iter().map(row).collect::<Result<_, _>>().map(Some),
            Err(e) if missing_table(&e) => Ok(Some(Vec::new())),
            Err(e) => Err(e),
        }
    }

    async fn finish(&mut self, published: &[i64]) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let placeholders = vec!["?"; published.len()].join(", ");
        let statement = format!("DELETE FROM {} WHERE seq IN ({placeholders})", self.table);
        self.run(statement, published.iter().map(|seq| Value::Integer(*seq)).collect())
            .await
            .map(drop)
    }

    async fn count(&mut self) -> Result<i64, StoreError> {
        match self
            .run(format!("SELECT COUNT(*) FROM {}", self.table), Vec::new())
            .await
        {
            Ok(rows) => match rows.first().and_then(|r| r.first()) {
                Some(Value::Integer(n)) => Ok(*n),
                _ => Err(StoreError("COUNT(*) returned no integer".into())),
            },
            Err(e) if missing_table(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }
}
