//! An outbox in a SQLite database of this host, read and emptied through a session of
//! the host's own (its commits wake no relay). One relay per file in this process
//! publishes; a second process sharing the file could publish a row twice, which
//! consumers dedupe.
//!
//! SQLite has one writer at a time, so rows commit in `seq` order and a cursor can
//! stand for "published": a pass reads past it, and published rows are deleted in
//! bulk at most every [`DELETE_INTERVAL`] (and when the outbox runs dry) rather than
//! by every pass, sparing the writers a commit per pass. A crash republishes at most
//! the rows published since the last delete; consumers dedupe.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::relay::{OutboxRow, OutboxStore, StoreError};
use crate::capability::sqlite::Session;
use crate::capability::sqlite::bindings::fermyon::spin::sqlite::Value;

/// Longest a published row waits for its bulk delete while rows keep coming.
const DELETE_INTERVAL: Duration = Duration::from_millis(200);

pub struct SqliteOutbox {
    session: Session,
    table: String,
    /// Every row up to this `seq` is published (and maybe not deleted yet).
    published_up_to: Option<i64>,
    /// The `seq`s the last `take` returned, in order.
    taken: Vec<i64>,
    last_delete: Instant,
}

impl SqliteOutbox {
    pub fn new(session: Session, table: &str) -> Self {
        SqliteOutbox {
            session,
            table: table.to_string(),
            published_up_to: None,
            taken: Vec::new(),
            last_delete: Instant::now(),
        }
    }

    /// Deletes the rows up to the cursor, which then starts over (so a table whose
    /// `seq` is a plain rowid, reused once the table is empty, is read whole again).
    async fn delete_published(&mut self) -> Result<(), StoreError> {
        let Some(up_to) = self.published_up_to else {
            return Ok(());
        };
        let statement = format!("DELETE FROM {} WHERE seq <= ?", self.table);
        self.run(statement, vec![Value::Integer(up_to)]).await?;
        self.published_up_to = None;
        self.last_delete = Instant::now();
        Ok(())
    }

    /// `seq > ?`'s parameter: past the cursor.
    fn after(&self) -> Value {
        Value::Integer(self.published_up_to.unwrap_or(i64::MIN))
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
            "SELECT seq, event_id, topic, event_key, event_type, payload, created_at, headers FROM {} \
             WHERE seq > ? ORDER BY seq LIMIT ?",
            self.table
        );
        let rows: Vec<OutboxRow> = match self
            .run(statement, vec![self.after(), Value::Integer(limit as i64)])
            .await
        {
            Ok(rows) => rows.into_iter().map(row).collect::<Result<_, _>>()?,
            Err(e) if missing_table(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        if rows.is_empty() {
            // Dry: nothing published stays behind.
            self.delete_published().await?;
        }
        self.taken = rows.iter().map(|r| r.seq).collect();
        Ok(Some(rows))
    }

    async fn finish(&mut self, published: &[i64]) -> Result<(), StoreError> {
        // The cursor moves over the taken rows published without a gap; rows published
        // after one the broker refused are deleted now, or the cursor would pass the
        // refused one.
        let taken = std::mem::take(&mut self.taken);
        let prefix = taken.iter().take_while(|seq| published.contains(seq)).count();
        if let Some(last) = prefix.checked_sub(1).map(|i| taken[i]) {
            self.published_up_to = Some(last);
        }
        let stragglers: Vec<Value> = taken[prefix..]
            .iter()
            .filter(|seq| published.contains(seq))
            .map(|seq| Value::Integer(*seq))
            .collect();
        if !stragglers.is_empty() {
            let placeholders = vec!["?"; stragglers.len()].join(", ");
            let statement = format!("DELETE FROM {} WHERE seq IN ({placeholders})", self.table);
            self.run(statement, stragglers).await?;
        }
        if self.last_delete.elapsed() >= DELETE_INTERVAL {
            self.delete_published().await?;
        }
        Ok(())
    }

    async fn count(&mut self) -> Result<i64, StoreError> {
        let statement = format!("SELECT COUNT(*) FROM {} WHERE seq > ?", self.table);
        match self.run(statement, vec![self.after()]).await {
            Ok(rows) => match rows.first().and_then(|r| r.first()) {
                Some(Value::Integer(n)) => Ok(*n),
                _ => Err(StoreError("COUNT(*) returned no integer".into())),
            },
            Err(e) if missing_table(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capability::commits::CommitSignals;
    use crate::capability::sqlite::{Database, Synchronous};

    const TABLE: &str = "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL, event_key TEXT, event_type TEXT NOT NULL, payload BLOB NOT NULL,
        created_at TEXT NOT NULL, headers TEXT)";

    async fn insert(session: &Session, n: usize) {
        for _ in 0..n {
            let statement = "INSERT INTO outbox (event_id, topic, event_type, payload, created_at) \
                             VALUES (hex(randomblob(8)), 't', 'e', x'7b7d', 'now')";
            session.execute(statement.into(), Vec::new()).await.unwrap();
        }
    }

    async fn seqs(outbox: &mut SqliteOutbox) -> Vec<i64> {
        outbox.take(10).await.unwrap().unwrap().iter().map(|r| r.seq).collect()
    }

    /// Published rows are passed by the cursor at once and deleted later in bulk; a row
    /// the broker refused is taken again, and the rows published after it are not.
    #[tokio::test]
    async fn the_cursor_passes_published_rows_and_never_a_refused_one() {
        let dir = std::env::temp_dir().join(format!("shop-outbox-cursor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let database = Database::open(
            &dir.join("o.db"),
            Synchronous::Normal,
            Arc::new(CommitSignals::default()),
        )
        .unwrap();
        let writer = database.session("writer".into());
        let mut outbox = SqliteOutbox::new(database.quiet_session("relay".into()), "outbox");
        assert_eq!(
            seqs(&mut outbox).await,
            Vec::<i64>::new(),
            "no table yet: nothing to publish"
        );
        writer.execute(TABLE.into(), Vec::new()).await.unwrap();
        insert(&writer, 3).await;

        assert_eq!(seqs(&mut outbox).await, [1, 2, 3]);
        outbox.finish(&[1, 3]).await.unwrap();
        assert_eq!(outbox.count().await.unwrap(), 1, "row 2 waits");
        assert_eq!(seqs(&mut outbox).await, [2], "row 3 went, row 2 comes again");
        outbox.finish(&[2]).await.unwrap();
        insert(&writer, 1).await;
        assert_eq!(seqs(&mut outbox).await, [4]);
        outbox.finish(&[4]).await.unwrap();

        // Dry: what was published is deleted.
        assert_eq!(seqs(&mut outbox).await, Vec::<i64>::new());
        let left = writer
            .execute("SELECT COUNT(*) FROM outbox".into(), Vec::new())
            .await
            .unwrap();
        assert!(matches!(left.result.rows[0].values[0], Value::Integer(0)), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
