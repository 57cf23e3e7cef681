//! Exactly-once effects on at-least-once delivery: a handler records each event id it
//! has handled in the same transaction as the state change ([`handle_once`]), and a
//! redelivery (or a relay publishing the same outbox row twice) changes nothing. The
//! events the handling wrote are kept with its row (see [`crate::written`]), so that
//! a redelivery can publish them again.

use serde_json::{Value, json};

use crate::outbox::OutboxRow;
use crate::sql::{Sql, SqlError, SqlValue, in_transaction, schema_fingerprint};

pub const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL, outputs BLOB)";

/// The events a handling wrote, added to inboxes made before they were kept there (a
/// no-op where the column is there: see [`crate::sql::migrate`]).
pub const OUTPUTS_COLUMN: &str = "ALTER TABLE inbox ADD COLUMN outputs BLOB";

/// Runs `work` once per `event_id`: in one transaction that ends by recording the id
/// together with the events `work` wrote (one statement, where claiming the id first
/// and storing the events last took two). `None`: the id was recorded before, and
/// nothing `work` did stays.
///
/// A redelivered event thus runs its handler again before it is found out, against
/// the state its first handling left; whatever that run decides is rolled back, and
/// when it fails, the inbox is asked whether the event was handled before. So `work`
/// must only change the database (a call to the outside world belongs before, behind
/// [`handled_before`]). Two deliveries of one id at once both run; the later insert
/// waits for the earlier one's commit and then finds the id.
///
/// The same statement tells whether `schema` is applied: if not, nothing is committed
/// and the error says so, for [`crate::sql::with_schema`] to apply it and run again.
pub fn handle_once<T, E: From<SqlError>>(
    db: &impl Sql,
    schema: &[&str],
    event_id: &str,
    now: &str,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<Option<T>, E> {
    let attempt = in_transaction(db, || {
        if let Some(written) = db.written() {
            written.handling();
        }
        let value = work().map_err(Attempt::Failed)?;
        let outputs = db
            .written()
            .map(|written| written.for_inbox())
            .filter(|rows| !rows.is_empty())
            .map(|rows| SqlValue::Blob(encode(&rows)));
        let recorded = db.execute(
            "INSERT INTO inbox (event_id, handled_at, outputs) VALUES (?, ?, ?) \
             ON CONFLICT (event_id) DO NOTHING \
             RETURNING (SELECT COUNT(*) FROM shop_schema WHERE fingerprint = ?)",
            &[
                event_id.into(),
                now.into(),
                outputs.unwrap_or(SqlValue::Null),
                schema_fingerprint(schema).into(),
            ],
        )?;
        match recorded.first().and_then(|row| row.first()).map(SqlValue::integer) {
            None => Err(Attempt::HandledBefore),
            Some(Some(1..)) => Ok(value),
            Some(_) => Err(Attempt::Failed(
                SqlError::Other("the service's schema is not applied yet".into()).into(),
            )),
        }
    });
    match attempt {
        Ok(value) => Ok(Some(value)),
        Err(Attempt::HandledBefore) => Ok(None),
        Err(Attempt::Failed(e)) => match handled_before(db, event_id) {
            Ok(true) => Ok(None),
            _ => Err(e),
        },
    }
}

/// Why [`handle_once`]'s transaction was rolled back.
enum Attempt<E> {
    Failed(E),
    HandledBefore,
}

impl<E: From<SqlError>> From<SqlError> for Attempt<E> {
    fn from(e: SqlError) -> Self {
        Attempt::Failed(e.into())
    }
}

/// Whether `event_id` was handled (and committed) before: for a handler that must
/// not repeat a call to the outside world, asked before it makes one.
pub fn handled_before(db: &impl Sql, event_id: &str) -> Result<bool, SqlError> {
    let rows = db.execute("SELECT 1 FROM inbox WHERE event_id = ?", &[event_id.into()])?;
    Ok(!rows.is_empty())
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
    fn an_event_id_changes_the_database_once() {
        let db = MemoryDb::default();
        let schema = [SCHEMA, "CREATE TABLE IF NOT EXISTS counter (n INTEGER)"];
        migrate(&db, &schema).unwrap();
        db.execute("INSERT INTO counter (n) VALUES (0)", &[]).unwrap();
        let count = || db.execute("SELECT n FROM counter", &[]).unwrap()[0][0].integer();
        let bump = |fail: bool| {
            handle_once(&db, &schema, "e-1", "t", || {
                db.execute("UPDATE counter SET n = n + 1", &[])?;
                match fail {
                    true => Err(SqlError::Other("the handler failed".into())),
                    false => count().ok_or(SqlError::Other("no count".into())),
                }
            })
        };
        // A failure before the first handling leaves no trace, the id included.
        assert_eq!(bump(true), Err(SqlError::Other("the handler failed".into())));
        assert_eq!((count(), handled_before(&db, "e-1")), (Some(0), Ok(false)));
        assert_eq!(bump(false), Ok(Some(1)));
        assert_eq!(handled_before(&db, "e-1"), Ok(true));
        // Redelivered: the handler ran again, and what it did is gone; so is a
        // failure it met on the state the first handling left.
        assert_eq!(bump(false), Ok(None));
        assert_eq!(bump(true), Ok(None));
        assert_eq!(count(), Some(1));
        let other = handle_once(&db, &schema, "e-2", "t", || {
            db.execute("UPDATE counter SET n = n + 1", &[])
        });
        assert_eq!(other.map(|done| done.is_some()), Ok(true));
        assert_eq!(count(), Some(2));
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
