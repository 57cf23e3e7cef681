//! The shop's events leave through the platform's outbox (`[[trigger.outbox]]` in
//! spin.toml; docs/outbox.md): a service adds each event to its `outbox` table in the
//! same transaction as the state change, and the host publishes the committed rows.
//! Plain SQL, so HTTP components write the same rows when Spin runs them.

use crate::ShopEvent;
use crate::sql::{Dialect, Sql, SqlError, SqlValue};

/// The platform's outbox table, as docs/outbox.md documents it.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, event_key TEXT, event_type TEXT NOT NULL,
    payload BLOB NOT NULL, created_at TEXT NOT NULL, headers TEXT)";

/// From the shop's own relay to the platform's: outboxes made before get `headers`,
/// and what the writers that published their own events left in `outbox_own` moves
/// into `outbox` for the host (nothing, on a new database). Instances migrate side by
/// side: a row two of them copy is copied once, and only copied rows are deleted.
pub const MIGRATION: [&str; 4] = [
    "ALTER TABLE outbox ADD COLUMN headers TEXT",
    "CREATE TABLE IF NOT EXISTS outbox_own (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
    payload BLOB NOT NULL, created_at TEXT NOT NULL)",
    // `WHERE true`: SQLite's parser needs it before an upsert clause.
    "INSERT INTO outbox (event_id, topic, event_key, event_type, payload, created_at) \
     SELECT event_id, topic, event_key, event_type, payload, created_at FROM outbox_own WHERE true ORDER BY seq \
     ON CONFLICT (event_id) DO NOTHING",
    "DELETE FROM outbox_own WHERE event_id IN (SELECT event_id FROM outbox)",
];

/// The PostgreSQL channel the outbox's relay listens on (its `notify_channel`, by
/// default the table's name): told of every commit that adds rows, wherever the writer
/// runs. Delivered at the commit, and only then.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// Appends `event` (run it inside the caller's transaction).
pub fn record(db: &impl Sql, event_id: String, created_at: String, event: &ShopEvent) -> Result<(), SqlError> {
    record_all(db, [(event_id, created_at, event)])
}

/// Appends `events` in order (id, creation time, event), with one statement (and on
/// PostgreSQL one `NOTIFY`) for them all. Each keeps the `traceparent` of the work
/// that wrote it, so the event continues its trace however late it is published.
pub fn record_all<'e>(
    db: &impl Sql,
    events: impl IntoIterator<Item = (String, String, &'e ShopEvent)>,
) -> Result<(), SqlError> {
    let headers: SqlValue = match db.traceparent() {
        Some(traceparent) => serde_json::json!({ "traceparent": traceparent }).to_string().into(),
        None => SqlValue::Null,
    };
    let rows: Vec<[SqlValue; 7]> = events
        .into_iter()
        .map(|(event_id, created_at, event)| {
            [
                event_id.into(),
                event.topic().to_string().into(),
                event.key().to_string().into(),
                event.event_type().to_string().into(),
                SqlValue::Blob(event.to_json()),
                created_at.into(),
                headers.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    crate::sql::insert_rows(
        db,
        "INSERT INTO outbox (event_id, topic, event_key, event_type, payload, created_at, headers)",
        rows,
    )?;
    if db.dialect() == Dialect::Postgres {
        db.execute(&format!("NOTIFY {NOTIFY_CHANNEL}"), &[])?;
    }
    Ok(())
}

/// Every event waiting in the outbox, decoded, oldest first (for tests and tools).
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

#[cfg(test)]
mod tests {
    use crate::events::ProductDeleted;
    use crate::sql::migrate;
    use crate::sql::testing::MemoryDb;

    use super::*;

    fn deleted(id: &str) -> ShopEvent {
        ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() })
    }

    /// Rows as the host reads them: the documented columns, in order.
    fn rows(db: &MemoryDb) -> Vec<(String, String, String, String, Option<String>)> {
        db.execute(
            "SELECT event_id, topic, event_key, event_type, headers FROM outbox ORDER BY seq",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| {
            let text = |i: usize| r[i].text().map(str::to_string);
            (
                text(0).unwrap(),
                text(1).unwrap(),
                text(2).unwrap(),
                text(3).unwrap(),
                text(4),
            )
        })
        .collect()
    }

    #[test]
    fn events_recorded_together_keep_their_order_and_their_writers_trace() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let db = MemoryDb::default().traced(traceparent);
        migrate(&db, &[SCHEMA]).unwrap();
        let events = [deleted("p1"), deleted("p2"), deleted("p3")];
        let at = || "2026-12-08T00:00:00Z".to_string();
        record_all(
            &db,
            ["e1", "e2", "e3"]
                .into_iter()
                .zip(&events)
                .map(|(id, e)| (id.into(), at(), e)),
        )
        .unwrap();
        let again = ["e4", "e2"]
            .into_iter()
            .zip(&events)
            .map(|(id, e)| (id.into(), at(), e));
        assert!(record_all(&db, again).is_err(), "an event id is recorded once");
        let found = rows(&db);
        let keys: Vec<&str> = found.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(keys, ["p1", "p2", "p3"]);
        let (_, topic, _, event_type, headers) = &found[0];
        assert_eq!(
            (topic.as_str(), event_type.as_str()),
            ("shop.products", "shop.product.deleted")
        );
        let headers: serde_json::Value = serde_json::from_str(headers.as_deref().unwrap()).unwrap();
        assert_eq!(headers["traceparent"], traceparent);
        assert_eq!(read_all(&db).unwrap(), events);

        let untraced = MemoryDb::default();
        migrate(&untraced, &[SCHEMA]).unwrap();
        record(&untraced, "e1".into(), at(), &events[0]).unwrap();
        assert_eq!(rows(&untraced)[0].4, None, "no headers without a trace");
    }

    /// A database of the shop's own relay: its outbox gets `headers`, and what was
    /// left in `outbox_own` moves to the outbox, before the new rows; migrating again
    /// (another instance) moves nothing twice.
    #[test]
    fn the_old_relays_tables_move_to_the_platforms_outbox() {
        let db = MemoryDb::default();
        let old = [
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
             topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
             payload BLOB NOT NULL, created_at TEXT NOT NULL, traceparent TEXT)",
            "CREATE TABLE outbox_own (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
             topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
             payload BLOB NOT NULL, created_at TEXT NOT NULL, traceparent TEXT)",
            "INSERT INTO outbox_own (event_id, topic, event_key, event_type, payload, created_at)
             VALUES ('left', 'shop.products', 'p0', 'shop.product.deleted', x'7b2270726f647563745f6964223a227030227d', 't')",
        ];
        for statement in old {
            db.execute(statement, &[]).unwrap();
        }
        let schema = [SCHEMA, MIGRATION[0], MIGRATION[1], MIGRATION[2], MIGRATION[3]];
        migrate(&db, &schema).unwrap();
        for statement in &schema[2..] {
            db.execute(statement, &[]).unwrap();
        }
        record(&db, "new".into(), "t".into(), &deleted("p1")).unwrap();
        assert_eq!(read_all(&db).unwrap(), [deleted("p0"), deleted("p1")]);
        assert!(
            db.execute("SELECT 1 FROM outbox_own", &[]).unwrap().is_empty(),
            "outbox_own is empty"
        );

        // On a new database the same schema makes the outbox alone.
        let fresh = MemoryDb::default();
        migrate(&fresh, &schema).unwrap();
        assert_eq!(read_all(&fresh).unwrap(), []);
    }
}
