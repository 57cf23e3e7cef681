//! Exactly-once effects on at-least-once delivery: a handler records each event id it
//! has handled in the same transaction as the state change, and skips an id it has
//! seen (a redelivery, or a relay publishing the same outbox row twice). The events
//! the handling wrote are kept with its row (see [`crate::written`]), so that a
//! redelivery can publish them again.

use serde_json::{Value, json};

use crate::outbox::OutboxRow;
use crate::sql::{Sql, SqlError, SqlValue};

pub const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL, outputs BLOB)";

/// The events a handling wrote, added to inboxes made before they were kept there (a
/// no-op where the column is there: see [`crate::sql::migrate`]).
pub const OUTPUTS_COLUMN: &str = "ALTER TABLE inbox ADD COLUMN outputs BLOB";

/// Records `event_id`; false when it was recorded before (run it inside the
/// transaction whose effects it guards).
pub fn first_time(db: &impl Sql, event_id: &str, now: &str) -> Result<bool, SqlError> {
    let inserted = db.execute(
        "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        &[event_id.into(), now.into()],
    )?;
    if !inserted.is_empty()
        && let Some(written) = db.written()
    {
        written.handling(event_id);
    }
    Ok(!inserted.is_empty())
}

/// Stores the events the open transaction wrote while handling its event with that
/// event's inbox row (`in_transaction` calls it before the commit).
pub(crate) fn keep_outputs(db: &impl Sql) -> Result<(), SqlError> {
    let Some(written) = db.written() else {
        return Ok(());
    };
    let (Some(event_id), rows) = (written.handled(), written.for_inbox()) else {
        return Ok(());
    };
    if rows.is_empty() {
        return Ok(());
    }
    db.execute(
        "UPDATE inbox SET outputs = ? WHERE event_id = ?",
        &[SqlValue::Blob(encode(&rows)), event_id.into()],
    )?;
    Ok(())
}

/// The events handling `event_id` wrote, in order (none when it wrote none, or was
/// handled before they were kept here).
pub fn outputs(db: &impl Sql, event_id: &str) -> Result<Vec<OutboxRow>, String> {
    let rows = db
        .execute("SELECT outputs FROM inbox WHERE event_id = ?", &[event_id.into()])
        .map_err(|e| e.to_string())?;
    match rows.first().and_then(|r| r.first()) {
        Some(SqlValue::Blob(stored)) => decode(stored),
        _ => Ok(Vec::new()),
    }
}

fn encode(rows: &[OutboxRow]) -> Vec<u8> {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "event_id": r.event_id,
                "topic": r.topic,
                "key": r.key,
                "event_type": r.event_type,
                // Payloads are the events' JSON, so always UTF-8.
                "payload": String::from_utf8_lossy(&r.payload),
                "created_at": r.created_at,
                "traceparent": r.traceparent,
            })
        })
        .collect();
    Value::Array(rows).to_string().into_bytes()
}

fn decode(stored: &[u8]) -> Result<Vec<OutboxRow>, String> {
    let rows: Vec<Value> = serde_json::from_slice(stored).map_err(|e| format!("inbox outputs: {e}"))?;
    rows.iter()
        .map(|r| {
            let text = |name: &str| {
                r[name]
                    .as_str()
                    .map(str::to_string)
                    .ok_or(format!("inbox outputs: no {name}"))
            };
            Ok(OutboxRow {
                seq: 0,
                event_id: text("event_id")?,
                topic: text("topic")?,
                key: text("key")?,
                event_type: text("event_type")?,
                payload: text("payload")?.into_bytes(),
                created_at: text("created_at")?,
                traceparent: r["traceparent"].as_str().map(str::to_string),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::migrate;
    use crate::sql::testing::MemoryDb;

    #[test]
    fn an_event_id_counts_once() {
        let db = MemoryDb::default();
        migrate(&db, &[SCHEMA]).unwrap();
        assert_eq!(first_time(&db, "e-1", "t"), Ok(true));
        assert_eq!(first_time(&db, "e-1", "t"), Ok(false));
        assert_eq!(first_time(&db, "e-2", "t"), Ok(true));
    }

    #[test]
    fn kept_outputs_read_back_as_written() {
        let rows = vec![OutboxRow {
            seq: 0,
            event_id: "e-9".into(),
            topic: "shop.orders".into(),
            key: "o-1".into(),
            event_type: "shop.order.confirmed".into(),
            payload: br#"{"order_id":"o-1","note":"caf\u00e9 \"x\""}"#.to_vec(),
            created_at: "2026-12-02T00:00:00Z".into(),
            traceparent: None,
        }];
        assert_eq!(decode(&encode(&rows)), Ok(rows));
        assert!(decode(b"not json").is_err());
    }
}
