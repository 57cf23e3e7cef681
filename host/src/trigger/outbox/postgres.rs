//! An outbox in a PostgreSQL database, on a connection of the relay's own. Each pass is
//! one transaction holding a transaction-scoped advisory lock on the outbox, so with
//! several host replicas one publishes at a time (in row order, keeping each key's
//! order) and the others find it busy; a replica that dies mid-pass releases the lock
//! with its connection, and its rows are taken by the next pass anywhere.

use async_trait::async_trait;
use tokio_postgres::{Client, Config, NoTls};

use super::relay::{OutboxRow, OutboxStore, StoreError};

pub struct PostgresOutbox {
    config: Config,
    table: String,
    /// The advisory lock's key: the outbox's table name, hashed.
    lock_key: i64,
    client: Option<Client>,
    /// Whether `take` left its transaction open for `finish`.
    in_pass: bool,
}

impl PostgresOutbox {
    pub fn new(config: Config, table: &str) -> Self {
        PostgresOutbox {
            config,
            table: table.to_string(),
            lock_key: lock_key(table),
            client: None,
            in_pass: false,
        }
    }

    /// The connection, opened on first use and again after it failed.
    async fn client(&mut self) -> Result<&Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self.config.connect(NoTls).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "outbox relay connection ended");
                }
            });
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }
}

/// 64-bit FNV-1a of `outbox relay <table>`: one lock per outbox table and database.
fn lock_key(table: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "outbox relay ".bytes().chain(table.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

fn failed(e: tokio_postgres::Error) -> StoreError {
    StoreError(match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    })
}

fn missing_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}

fn row(row: &tokio_postgres::Row) -> Result<OutboxRow, StoreError> {
    let get_text = |i: usize| {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| StoreError(e.to_string()))
    };
    let required = |i: usize, column: &str| get_text(i)?.ok_or_else(|| StoreError(format!("`{column}` is NULL")));
    Ok(OutboxRow {
        seq: row
            .try_get::<_, i64>(0)
            .map_err(|e| StoreError(format!("`seq`: {e}")))?,
        event_id: required(1, "event_id")?,
        topic: required(2, "topic")?,
        key: get_text(3)?,
        event_type: required(4, "event_type")?,
        payload: match row.try_get::<_, Vec<u8>>(5) {
            Ok(bytes) => bytes,
            // A text payload (a writer that chose TEXT) is its UTF-8 bytes.
            Err(_) => required(5, "payload")?.into_bytes(),
        },
        created_at: required(6, "created_at")?,
        headers: get_text(7)?,
    })
}

#[async_trait]
impl OutboxStore for PostgresOutbox {
    async fn take(&mut self, limit: usize) -> Result<Option<Vec<OutboxRow>>, StoreError> {
        let (lock_key, select) = (
            self.lock_key,
            format!(
                "SELECT seq::bigint, event_id::text, topic::text, event_key::text, event_type::text, payload, \
                 created_at::text, headers::text FROM {} ORDER BY seq LIMIT $1",
                self.table
            ),
        );
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(failed)?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&lock_key])
            .await
            .map_err(failed)?
            .get(0);
        if !locked {
            client.batch_execute("ROLLBACK").await.map_err(failed)?;
            return Ok(None);
        }
        match client.query(&select, &[&(limit as i64)]).await {
            Ok(rows) => match rows.iter().map(row).collect::<Result<_, _>>() {
                Ok(rows) => {
                    self.in_pass = true;
                    Ok(Some(rows))
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            },
            Err(e) if missing_table(&e) => {
                client.batch_execute("ROLLBACK").await.map_err(failed)?;
                Ok(Some(Vec::new()))
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(failed(e))
            }
        }
    }

    async fn finish(&mut self, published: &[i64]) -> Result<(), StoreError> {
        let delete = format!("DELETE FROM {} WHERE seq = ANY($1)", self.table);
        if !std::mem::take(&mut self.in_pass) {
            return Ok(());
        }
        let client = self.client().await?;
        if !published.is_empty()
            && let Err(e) = client.execute(&delete, &[&published]).await
        {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(failed(e));
        }
        client.batch_execute("COMMIT").await.map_err(failed)
    }

    async fn count(&mut self) -> Result<i64, StoreError> {
        let count = format!("SELECT COUNT(*) FROM {}", self.table);
        let client = self.client().await?;
        match client.query_one(&count, &[]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) if missing_table(&e) => Ok(0),
            Err(e) => Err(failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_table_has_its_own_lock() {
        assert_ne!(super::lock_key("outbox"), super::lock_key("orders_outbox"));
        assert_eq!(super::lock_key("outbox"), super::lock_key("outbox"));
    }
}
