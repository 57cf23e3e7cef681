//! Embedded key-value backend: one SQLite file, one table, rows keyed by
//! (store label, key) so several labels can share a file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::capability::sqlite::Synchronous;
use crate::capability::wal_checkpoint::{self, Checkpointer};

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    label: Arc<str>,
    /// Checkpoints the file's log off the serving threads (see [`Checkpointer`]).
    checkpointer: Arc<Checkpointer>,
}

impl SqliteStore {
    pub fn open(path: &Path, label: &str, synchronous: Synchronous) -> anyhow::Result<Self> {
        let connect = move |path: &Path| -> anyhow::Result<Connection> {
            let conn = crate::capability::sqlite::open_file(path)?;
            conn.pragma_update(None, "synchronous", synchronous.pragma())?;
            Ok(conn)
        };
        let conn = connect(path)?;
        wal_checkpoint::hand_over(&conn)?;
        let checkpointer = Checkpointer::start(path, connect)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (store, key))",
            [],
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            label: label.into(),
            checkpointer: Arc::new(checkpointer),
        })
    }

    /// Runs `f` on this thread: an operation is one indexed statement on a file in WAL
    /// mode without an fsync per commit, microseconds, less than a hand-off to a
    /// blocking thread and back costs. (Only another process writing the same file can
    /// make it wait, in SQLite's busy handler.)
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "key-value connection poisoned".to_string())?;
        let changes_before = conn.total_changes();
        let result = f(&conn, &self.label).map_err(|e| e.to_string());
        if conn.total_changes() != changes_before {
            self.checkpointer.committed();
        }
        result
    }

    async fn with_conn_checked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        self.with_conn(move |c, store| Ok(f(c, store))).await?
    }

    /// Like `with_conn`, inside one write transaction (`BEGIN IMMEDIATE` also locks out
    /// other processes sharing the file), for read-modify-write operations.
    async fn in_write_transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "key-value connection poisoned".to_string())?;
        let tx = rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        let changes_before = tx.total_changes();
        let value = f(&tx, &self.label)?;
        let wrote = tx.total_changes() != changes_before;
        tx.commit().map_err(|e| e.to_string())?;
        if wrote {
            self.checkpointer.committed();
        }
        Ok(value)
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.with_conn_checked(move |c, store| read(c, store, &key)).await
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.with_conn_checked(move |c, store| write(c, store, &key, &value))
            .await
    }

    pub async fn delete(&self, key: String) -> Result<(), String> {
        self.with_conn(move |c, store| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .execute(params![store, key])
                .map(drop)
        })
        .await
    }

    pub async fn exists(&self, key: String) -> Result<bool, String> {
        self.with_conn(move |c, store| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)")?
                .query_row(params![store, key], |row| row.get(0))
        })
        .await
    }

    pub async fn get_keys(&self) -> Result<Vec<String>, String> {
        self.with_conn(|c, store| {
            let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            stmt.query_map(params![store], |row| row.get(0))?.collect()
        })
        .await
    }

    /// Adds `delta` to the integer stored (as decimal text, like Redis) under `key`,
    /// treating a missing key as 0.
    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, String> {
        self.in_write_transaction(move |c, store| {
            let current = read(c, store, &key)?;
            let next = super::parse_counter(current.as_deref())?
                .checked_add(delta)
                .ok_or("increment overflows a 64-bit integer")?;
            write(c, store, &key, next.to_string().as_bytes())?;
            Ok(next)
        })
        .await
    }

    /// Stores `value` only if the key still holds `expected` (`None`: still absent).
    pub async fn compare_and_swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, String> {
        self.in_write_transaction(move |c, store| {
            if read(c, store, &key)? != expected {
                return Ok(false);
            }
            write(c, store, &key, &value)?;
            Ok(true)
        })
        .await
    }
}

fn read(c: &Connection, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
    c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")
        .and_then(|mut statement| statement.query_row(params![store, key], |row| row.get(0)).optional())
        .map_err(|e| e.to_string())
}

fn write(c: &Connection, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
    c.prepare_cached(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut statement| statement.execute(params![store, key, value]))
    .map(drop)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn labels_sharing_a_file_are_separate() {
        let dir = std::env::temp_dir().join(format!("shop-kv-unit-{}", std::process::id()));
        let path = dir.join("kv.db");
        let a = SqliteStore::open(&path, "a", Synchronous::Normal).unwrap();
        let b = SqliteStore::open(&path, "b", Synchronous::Normal).unwrap();
        a.set("k".into(), b"1".to_vec()).await.unwrap();
        a.set("k".into(), b"2".to_vec()).await.unwrap();
        assert_eq!(a.get("k".into()).await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.get("k".into()).await.unwrap(), None);
        assert!(a.exists("k".into()).await.unwrap());
        assert_eq!(a.get_keys().await.unwrap(), vec!["k".to_string()]);
        a.delete("k".into()).await.unwrap();
        a.delete("missing".into()).await.unwrap();
        assert_eq!(a.increment("n".into(), 5).await.unwrap(), 5);
        assert_eq!(a.increment("n".into(), -7).await.unwrap(), -2);
        assert_eq!(a.get("n".into()).await.unwrap(), Some(b"-2".to_vec()));
        a.set("text".into(), b"abc".to_vec()).await.unwrap();
        assert!(a.increment("text".into(), 1).await.is_err());
        assert!(a.compare_and_swap("c".into(), None, b"1".to_vec()).await.unwrap());
        assert!(!a.compare_and_swap("c".into(), None, b"2".to_vec()).await.unwrap());
        assert!(
            a.compare_and_swap("c".into(), Some(b"1".to_vec()), b"2".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(a.get("c".into()).await.unwrap(), Some(b"2".to_vec()));
        assert!(!a.exists("k".into()).await.unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
