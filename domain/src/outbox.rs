//! The transactional outbox every service writes its events to, in the same
//! transaction as the state change; the outbox relay publishes it.

use crate::ShopEvent;
use crate::sql::{Sql, SqlError, SqlValue};

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
    payload BLOB NOT NULL, created_at TEXT NOT NULL)";

/// Appends `event` (run it inside the caller's transaction).
pub fn record(db: &impl Sql, event_id: String, created_at: String, event: &ShopEvent) -> Result<(), SqlError> {
    db.execute(
        "INSERT INTO outbox (event_id, topic, event_key, event_type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            event_id.into(),
            event.topic().into(),
            event.key().into(),
            event.event_type().into(),
            SqlValue::Blob(event.to_json()),
            created_at.into(),
        ],
    )?;
    Ok(())
}

/// Every event in the outbox, decoded (for tests and tools).
pub fn read_all(db: &impl Sql) -> Result<Vec<ShopEvent>, String> {
    let rows = db
        .execute("SELECT event_type, payload FROM outbox ORDER BY seq", &[])
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|r| match (&r[0], &r[1]) {
            (SqlValue::Text(t), SqlValue::Blob(p)) => ShopEvent::decode(t, p).map_err(|e| e.to_string()),
            other => Err(format!("unexpected outbox row {other:?}")),
        })
        .collect()
}
