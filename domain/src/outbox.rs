//! The transactional outbox every service writes its events to, in the same
//! transaction as the state change, and the relay that publishes it (run by the
//! outbox-relay component on a cron trigger, and by services right after a commit).

use crate::sql::{Sql, SqlError, SqlValue, in_transaction, migrate};
use crate::written::Place;
use crate::{CONTENT_TYPE, Envelope, ShopEvent};

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
    payload BLOB NOT NULL, created_at TEXT NOT NULL, traceparent TEXT)";

/// The same rows, written by instances that publish their own events right after
/// their commit (`publish_written`). They are apart so that a relay woken by
/// another writer's commit does not send them too while their writer is still
/// publishing; the relay takes them only once they are [`OWN_ROWS_GRACE_SECS`] old
/// (their writer crashed before deleting them).
pub const OWN_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox_own (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
    payload BLOB NOT NULL, created_at TEXT NOT NULL, traceparent TEXT)";

/// The W3C `traceparent` of the transaction that wrote a row, so the event continues
/// its trace however late a relay sends it. Added to outboxes made before it existed
/// (a no-op where the column is there: see [`migrate`]).
pub const TRACE_COLUMNS: [&str; 2] = [
    "ALTER TABLE outbox ADD COLUMN traceparent TEXT",
    "ALTER TABLE outbox_own ADD COLUMN traceparent TEXT",
];

/// How old a self-published row must be before the relay takes it as left behind.
pub const OWN_ROWS_GRACE_SECS: i64 = 10;

/// The PostgreSQL channel told of every commit that adds outbox rows, so a relay can
/// publish at once wherever the service runs (`run_on_notify` in the shop host).
pub const NOTIFY_CHANNEL: &str = "shop_outbox";

/// Appends `event` (run it inside the caller's transaction): to `outbox` where the
/// relay publishes for `db` (on PostgreSQL also notifying [`NOTIFY_CHANNEL`], which is
/// delivered at the commit, and only then); otherwise for its writer to publish after
/// the commit, kept with the inbox row of the message being handled or in
/// `outbox_own` (see [`crate::written`]).
pub fn record(db: &impl Sql, event_id: String, created_at: String, event: &ShopEvent) -> Result<(), SqlError> {
    record_all(db, [(event_id, created_at, event)])
}

/// Appends `events` in order (id, creation time, event), as [`record`] does one, with
/// one statement (and on PostgreSQL one `NOTIFY`) for them all.
pub fn record_all<'e>(
    db: &impl Sql,
    events: impl IntoIterator<Item = (String, String, &'e ShopEvent)>,
) -> Result<(), SqlError> {
    let traceparent = db.traceparent();
    let rows: Vec<OutboxRow> = events
        .into_iter()
        .map(|(event_id, created_at, event)| OutboxRow {
            seq: 0,
            event_id,
            topic: event.topic().to_string(),
            key: event.key().to_string(),
            event_type: event.event_type().to_string(),
            payload: event.to_json(),
            created_at,
            traceparent: traceparent.clone(),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let Some(written) = db.written() else {
        insert(db, "outbox", &rows)?;
        if db.dialect() == crate::sql::Dialect::Postgres {
            db.execute(&format!("NOTIFY {NOTIFY_CHANNEL}"), &[])?;
        }
        return Ok(());
    };
    let place = if written.is_handling() {
        Place::Inbox
    } else {
        insert(db, "outbox_own", &rows)?;
        Place::OwnOutbox
    };
    for row in rows {
        written.push(row, place);
    }
    Ok(())
}

/// Inserts `rows` into `table` (`outbox` or `outbox_own`) in order, in one statement.
fn insert<'r>(db: &impl Sql, table: &str, rows: impl IntoIterator<Item = &'r OutboxRow>) -> Result<(), SqlError> {
    crate::sql::insert_rows(
        db,
        &format!("INSERT INTO {table} (event_id, topic, event_key, event_type, payload, created_at, traceparent)"),
        rows.into_iter().map(|row| {
            [
                row.event_id.clone().into(),
                row.topic.clone().into(),
                row.key.clone().into(),
                row.event_type.clone().into(),
                SqlValue::Blob(row.payload.clone()),
                row.created_at.clone().into(),
                row.traceparent.clone().into(),
            ]
        }),
    )
}

/// Every event in the outbox, decoded (for tests and tools).
pub fn read_all(db: &impl Sql) -> Result<Vec<ShopEvent>, String> {
    let rows = db
        .execute(
            "SELECT event_type, payload FROM (SELECT event_type, payload, created_at, seq, 0 AS t FROM outbox \
             UNION ALL SELECT event_type, payload, created_at, seq, 1 FROM outbox_own) ORDER BY created_at, t, seq",
            &[],
        )
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|r| match (&r[0], &r[1]) {
            (SqlValue::Text(t), SqlValue::Blob(p)) => ShopEvent::decode(t, p).map_err(|e| e.to_string()),
            other => Err(format!("unexpected outbox row {other:?}")),
        })
        .collect()
}

/// Most events published per tick, so one tick stays short.
pub const BATCH: i64 = 200;

/// An outbox row as services write it (see `SCHEMA`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub topic: String,
    pub key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub created_at: String,
    pub traceparent: Option<String>,
}

/// The columns [`row_from`] reads, in its order (then `FROM <table>`).
const SELECT_ROWS: &str = "SELECT seq, event_id, topic, event_key, event_type, payload, created_at, traceparent";

fn row_from(values: &[SqlValue]) -> Result<OutboxRow, String> {
    let text = |i: usize, column: &str| {
        values
            .get(i)
            .and_then(SqlValue::text)
            .map(str::to_string)
            .ok_or(format!("outbox.{column} is not text"))
    };
    Ok(OutboxRow {
        seq: values
            .first()
            .and_then(SqlValue::integer)
            .ok_or("outbox.seq is not an integer")?,
        event_id: text(1, "event_id")?,
        topic: text(2, "topic")?,
        key: text(3, "event_key")?,
        event_type: text(4, "event_type")?,
        payload: match values.get(5) {
            Some(SqlValue::Blob(b)) => b.clone(),
            _ => return Err("outbox.payload is not a blob".into()),
        },
        created_at: text(6, "created_at")?,
        traceparent: values.get(7).and_then(SqlValue::text).map(str::to_string),
    })
}

/// What the relay should send, oldest first: rows of `outbox`, and rows of
/// `outbox_own` created at or before the cutoff (their writer crashed).
#[derive(Debug, Default)]
pub struct Pending {
    pub relayed: Vec<OutboxRow>,
    pub left_behind: Vec<OutboxRow>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.relayed.len() + self.left_behind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to `limit` pending rows, those of `outbox` first; `left_before` (RFC 3339) is
/// the cutoff for `outbox_own`. Published rows are deleted rather than passed by a
/// bookmark: on PostgreSQL a row with a smaller `seq` can commit after a larger one,
/// and a bookmark would skip it.
pub fn pending(db: &impl Sql, limit: i64, left_before: &str) -> Result<Pending, String> {
    // The service creates its outbox with its own tables on first use.
    migrate(db, &[SCHEMA, OWN_SCHEMA, TRACE_COLUMNS[0], TRACE_COLUMNS[1]]).map_err(|e| e.to_string())?;
    let rows = |statement: String, params: &[SqlValue]| -> Result<Vec<OutboxRow>, String> {
        let found = db.execute(&statement, params).map_err(|e| e.to_string())?;
        found.iter().map(|r| row_from(r)).collect()
    };
    let relayed = rows(
        format!("{SELECT_ROWS} FROM outbox ORDER BY seq LIMIT ?"),
        &[limit.into()],
    )?;
    let room = limit - relayed.len() as i64;
    let left_behind = match room > 0 {
        true => rows(
            format!("{SELECT_ROWS} FROM outbox_own WHERE created_at <= ? ORDER BY seq LIMIT ?"),
            &[left_before.into(), room.into()],
        )?,
        false => Vec::new(),
    };
    Ok(Pending { relayed, left_behind })
}

pub trait Publisher {
    fn publish(&self, topic: &str, key: &str, payload: &[u8], headers: Vec<(String, String)>) -> Result<(), String>;
}

/// The headers of a row: its CloudEvents envelope, content type and trace context.
pub fn headers(row: &OutboxRow, source: &str) -> Vec<(String, String)> {
    let envelope = Envelope {
        id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        source: source.to_string(),
        time: row.created_at.clone(),
        subject: Some(row.key.clone()),
    };
    let mut headers = envelope.to_headers();
    headers.push(("content-type".into(), CONTENT_TYPE.into()));
    if let Some(traceparent) = &row.traceparent {
        headers.push(("traceparent".into(), traceparent.clone()));
    }
    headers
}

/// Publishes up to [`BATCH`] pending rows in order (see [`pending`]; `now` in Unix
/// seconds), then deletes the ones the broker took; stops at the first failure (the
/// rest waits for the next tick). A crash between publishing and deleting publishes
/// those events again: consumers dedupe by id. Returns how many were published.
pub fn relay(db: &impl Sql, publisher: &impl Publisher, source: &str, now: i64) -> Result<usize, String> {
    let left_before = crate::time::rfc3339(now - OWN_ROWS_GRACE_SECS);
    let Pending { relayed, left_behind } = pending(db, BATCH, &left_before)?;
    let published = publish_rows(db, publisher, source, "outbox", &relayed)?;
    Ok(published + publish_rows(db, publisher, source, "outbox_own", &left_behind)?)
}

/// Why some events [`publish_written`] had were not published.
#[derive(Debug, PartialEq, Eq)]
pub enum Unpublished {
    /// They are in `outbox_own` now: the relay sends them once they are
    /// [`OWN_ROWS_GRACE_SECS`] old.
    LeftToRelay(String),
    /// They are only with the inbox row of the message they answer: the caller must
    /// fail, so that the message is delivered again and [`republish`] sends them.
    Redeliver(String),
}

/// Publishes the events written through `db` since the last call (its commit just
/// ended), in order, then forgets them: those in `outbox_own` are deleted, as
/// [`relay`] does. Only its own: instances of a service run side by side, and each
/// publishing every pending row would send each event once per instance that
/// committed meanwhile. What a crash leaves is the relay's, or the redelivery's.
/// Returns how many were published.
pub fn publish_written(db: &impl Sql, publisher: &impl Publisher, source: &str) -> Result<usize, Unpublished> {
    let rows = db.written().map(|w| w.take()).unwrap_or_default();
    let (sent, refused) = send_in_order(publisher, source, rows.iter().map(|(row, _)| row));
    let deleted = delete_published(db, "outbox_own", placed(&rows[..sent], Place::OwnOutbox));
    let Some(refused) = refused else {
        deleted.map_err(Unpublished::LeftToRelay)?;
        return Ok(sent);
    };
    let failure = format!("publishing {}: {refused}", rows[sent].0.event_id);
    // The rest, from the refused one on: what is only with the inbox goes to the relay.
    let left: Vec<&OutboxRow> = placed(&rows[sent..], Place::Inbox).collect();
    if left.is_empty() {
        return Err(Unpublished::LeftToRelay(failure)); // already in `outbox_own`
    }
    let handed = in_transaction(db, || insert(db, "outbox_own", left.iter().copied()));
    match handed {
        Ok(()) => Err(Unpublished::LeftToRelay(failure)),
        Err(e) => Err(Unpublished::Redeliver(format!(
            "{failure}; keeping them for the relay: {e}"
        ))),
    }
}

/// The rows of `rows` waiting at `place`.
fn placed(rows: &[(OutboxRow, Place)], place: Place) -> impl Iterator<Item = &OutboxRow> {
    rows.iter().filter(move |(_, p)| *p == place).map(|(row, _)| row)
}

/// Publishes again, in order, the events handling `event_id` wrote (kept with its
/// inbox row): the message is a redelivery, perhaps because its handler crashed
/// between its commit and its publish. Consumers dedupe by event id.
pub fn republish(db: &impl Sql, publisher: &impl Publisher, source: &str, event_id: &str) -> Result<usize, String> {
    let rows = crate::inbox::outputs(db, event_id)?;
    match send_in_order(publisher, source, &rows) {
        (sent, None) => Ok(sent),
        (sent, Some(e)) => Err(format!("publishing {} again: {e}", rows[sent].event_id)),
    }
}

/// Sends `rows` in order, stopping at the first one the broker refuses: how many
/// went, and why the next one did not.
fn send_in_order<'a>(
    publisher: &impl Publisher,
    source: &str,
    rows: impl IntoIterator<Item = &'a OutboxRow>,
) -> (usize, Option<String>) {
    let mut sent = 0;
    for row in rows {
        if let Err(e) = publisher.publish(&row.topic, &row.key, &row.payload, headers(row, source)) {
            return (sent, Some(e));
        }
        sent += 1;
    }
    (sent, None)
}

fn publish_rows(
    db: &impl Sql,
    publisher: &impl Publisher,
    source: &str,
    table: &str,
    rows: &[OutboxRow],
) -> Result<usize, String> {
    let (sent, refused) = send_in_order(publisher, source, rows);
    delete_published(db, table, &rows[..sent])?;
    match refused {
        Some(e) if sent == 0 => Err(format!("publishing {table} seq {}: {e}", rows[0].seq)),
        _ => Ok(sent),
    }
}

/// Deletes the published `rows` from `table`, in one statement: each DELETE on its own
/// would be a commit.
fn delete_published<'a>(
    db: &impl Sql,
    table: &str,
    rows: impl IntoIterator<Item = &'a OutboxRow>,
) -> Result<(), String> {
    let ids: Vec<SqlValue> = rows.into_iter().map(|row| row.event_id.clone().into()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders = vec!["?"; ids.len()].join(", ");
    db.execute(&format!("DELETE FROM {table} WHERE event_id IN ({placeholders})"), &ids)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use crate::events::ProductDeleted;
    use crate::sql::testing::MemoryDb;

    use super::*;

    type Headers = Vec<(String, String)>;

    /// 2026-11-22T00:00:00Z, when the test rows are written.
    const WRITTEN: i64 = 1_795_305_600;

    /// Accepts `accept` publishes, then fails.
    struct Flaky {
        accept: usize,
        sent: RefCell<Vec<(String, String, Headers)>>,
    }

    impl Flaky {
        fn accepting(accept: usize) -> Self {
            Flaky {
                accept,
                sent: RefCell::default(),
            }
        }

        fn keys(&self) -> Vec<String> {
            self.sent.borrow().iter().map(|(_, k, _)| k.clone()).collect()
        }
    }

    impl Publisher for Flaky {
        fn publish(&self, topic: &str, key: &str, _: &[u8], headers: Vec<(String, String)>) -> Result<(), String> {
            if self.sent.borrow().len() >= self.accept {
                return Err("broker unavailable".into());
            }
            self.sent.borrow_mut().push((topic.into(), key.into(), headers));
            Ok(())
        }
    }

    /// An outbox holding products p1..=p`n`'s creation events.
    fn outbox(n: usize) -> MemoryDb {
        let db = MemoryDb::default();
        migrate(&db, &[SCHEMA, OWN_SCHEMA]).unwrap();
        for i in 1..=n {
            let event = ShopEvent::ProductDeleted(ProductDeleted {
                product_id: format!("p{i}"),
            });
            record(&db, format!("e{i}"), "2026-11-22T00:00:00Z".into(), &event).unwrap();
        }
        db
    }

    /// An outbox made before rows kept their trace gets the column, and each event
    /// goes out with the trace of the transaction that wrote it.
    #[test]
    fn events_keep_the_trace_of_their_writer_in_old_and_new_outboxes() {
        let old = "CREATE TABLE IF NOT EXISTS outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL, event_key TEXT NOT NULL, event_type TEXT NOT NULL,
            payload BLOB NOT NULL, created_at TEXT NOT NULL)";
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let db = MemoryDb::default().traced(traceparent);
        migrate(&db, &[old]).unwrap();
        let schema = [SCHEMA, OWN_SCHEMA, TRACE_COLUMNS[0], TRACE_COLUMNS[1]];
        migrate(&db, &schema).unwrap();
        let event = ShopEvent::ProductDeleted(ProductDeleted {
            product_id: "p1".into(),
        });
        record(&db, "e1".into(), "2026-11-22T00:00:00Z".into(), &event).unwrap();
        let sent = Flaky::accepting(10);
        assert_eq!(relay(&db, &sent, "/products", WRITTEN), Ok(1));
        let headers = &sent.sent.borrow()[0].2;
        assert!(
            headers.contains(&("traceparent".into(), traceparent.into())),
            "{headers:?}"
        );

        // A fresh outbox already has the column: adding it again is a no-op.
        let fresh = MemoryDb::default();
        migrate(&fresh, &schema).unwrap();
        record(&fresh, "e2".into(), "2026-11-22T00:00:00Z".into(), &event).unwrap();
        let untraced = Flaky::accepting(10);
        assert_eq!(relay(&fresh, &untraced, "/products", WRITTEN), Ok(1));
        assert!(
            !untraced.sent.borrow()[0]
                .2
                .iter()
                .any(|(name, _)| name == "traceparent")
        );
    }

    #[test]
    fn rows_are_published_in_order_and_a_failure_resumes_where_it_stopped() {
        let outbox = outbox(5);
        let flaky = Flaky::accepting(3);
        assert_eq!(relay(&outbox, &flaky, "/products", WRITTEN), Ok(3));
        assert_eq!(
            pending(&outbox, 10, "").unwrap().len(),
            2,
            "published rows leave the outbox"
        );
        let err = relay(&outbox, &flaky, "/products", WRITTEN).unwrap_err();
        assert!(err.contains("seq 4") && err.contains("unavailable"), "{err}");
        let healthy = Flaky::accepting(10);
        assert_eq!(relay(&outbox, &healthy, "/products", WRITTEN), Ok(2));
        assert_eq!(healthy.keys(), ["p4", "p5"], "exactly the rest, in order");
        assert_eq!(relay(&outbox, &healthy, "/products", WRITTEN), Ok(0));

        let headers = &healthy.sent.borrow()[0].2;
        let envelope = Envelope::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!((envelope.id.as_str(), envelope.source.as_str()), ("e4", "/products"));
        assert_eq!(envelope.subject.as_deref(), Some("p4"));
        assert!(headers.contains(&("content-type".into(), "application/json".into())));
    }

    /// Several events recorded in one statement keep their order, in the outbox and
    /// in `outbox_own`, and one that is already there fails them all.
    #[test]
    fn events_recorded_together_are_published_in_order() {
        let deleted = |id: &str| ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() });
        let events = [deleted("p1"), deleted("p2"), deleted("p3")];
        let together = |ids: [&'static str; 3]| {
            ids.into_iter()
                .zip(&events)
                .map(|(id, e)| (id.to_string(), "t".to_string(), e))
        };
        let relayed = MemoryDb::default();
        migrate(&relayed, &[SCHEMA, OWN_SCHEMA]).unwrap();
        record_all(&relayed, together(["e1", "e2", "e3"])).unwrap();
        assert!(record_all(&relayed, together(["e4", "e2", "e5"])).is_err(), "e2 twice");
        let sent = Flaky::accepting(10);
        assert_eq!(relay(&relayed, &sent, "/products", WRITTEN), Ok(3));
        assert_eq!(sent.keys(), ["p1", "p2", "p3"]);

        let own = MemoryDb::default().publishing_its_own_outbox();
        migrate(&own, &[SCHEMA, OWN_SCHEMA]).unwrap();
        record_all(&own, together(["e1", "e2", "e3"])).unwrap();
        let sent = Flaky::accepting(10);
        assert_eq!(publish_written(&own, &sent, "/products"), Ok(3));
        assert_eq!(sent.keys(), ["p1", "p2", "p3"]);
        assert_eq!(
            pending(&own, 10, "9999").unwrap().len(),
            0,
            "published rows are deleted"
        );
    }

    #[test]
    fn an_instance_publishes_only_the_events_it_wrote_and_leaves_the_rest_to_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let connect = || MemoryDb::new(rusqlite::Connection::open(&path).unwrap()).publishing_its_own_outbox();
        let (first, second) = (connect(), connect());
        migrate(&first, &[SCHEMA, OWN_SCHEMA]).unwrap();
        let deleted = |id: &str| ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() });
        let at = || crate::time::rfc3339(WRITTEN);
        record(&first, "e1".into(), at(), &deleted("p1")).unwrap();
        record(&second, "e2".into(), at(), &deleted("p2")).unwrap();
        record(&first, "e3".into(), at(), &deleted("p3")).unwrap();

        let sent = Flaky::accepting(10);
        assert_eq!(publish_written(&first, &sent, "/products"), Ok(2));
        assert_eq!(sent.keys(), ["p1", "p3"], "its own, in order");
        assert_eq!(publish_written(&first, &sent, "/products"), Ok(0), "nothing twice");

        // The second instance's publish fails: its row stays for the relay.
        let down = Flaky::accepting(0);
        assert!(matches!(
            publish_written(&second, &down, "/products"),
            Err(Unpublished::LeftToRelay(_))
        ));
        let cutoff = crate::time::rfc3339(WRITTEN);
        let left: Vec<String> = pending(&first, 10, &cutoff)
            .unwrap()
            .left_behind
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(left, ["p2"]);
        assert_eq!(relay(&first, &sent, "/products", WRITTEN + OWN_ROWS_GRACE_SECS), Ok(1));
    }

    /// A handler of a delivered message: what it writes is kept with the message's
    /// inbox row, not in an outbox; it is published after the commit from memory, and
    /// again from the inbox row when the message comes back.
    #[test]
    fn a_handlers_events_are_kept_with_its_inbox_row_and_published_again_on_redelivery() {
        let db = MemoryDb::default().publishing_its_own_outbox();
        let schema = [SCHEMA, OWN_SCHEMA, crate::inbox::SCHEMA];
        migrate(&db, &schema).unwrap();
        let deleted = |id: &str| ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() });
        let at = || crate::time::rfc3339(WRITTEN);
        let handle = |message: &str, fail: bool| {
            crate::inbox::handle_once(&db, &schema, message, &at(), || {
                record(&db, format!("{message}-a"), at(), &deleted("p1"))?;
                record(&db, format!("{message}-b"), at(), &deleted("p2"))?;
                match fail {
                    true => Err(SqlError::Other("the handler failed".into())),
                    false => Ok(()),
                }
            })
            .map(|done| done.is_some())
        };
        // A failed attempt leaves nothing to publish, anywhere.
        assert!(handle("m1", true).is_err());
        let sent = Flaky::accepting(10);
        assert_eq!(publish_written(&db, &sent, "/products"), Ok(0));

        assert_eq!(handle("m1", false), Ok(true));
        assert_eq!(read_all(&db).unwrap(), Vec::<ShopEvent>::new(), "no outbox rows");
        assert_eq!(publish_written(&db, &sent, "/products"), Ok(2));
        assert_eq!(sent.keys(), ["p1", "p2"]);

        // Redelivered (say the host died before the publish): seen, and sent again.
        assert_eq!(handle("m1", false), Ok(false));
        assert_eq!(republish(&db, &sent, "/products", "m1"), Ok(2));
        let ids: Vec<String> = sent
            .sent
            .borrow()
            .iter()
            .map(|(_, _, headers)| {
                Envelope::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(ids, ["m1-a", "m1-b", "m1-a", "m1-b"], "the same events, same ids");
        assert_eq!(republish(&db, &sent, "/products", "unknown"), Ok(0));
    }

    /// The broker refuses part way: what was not sent goes to `outbox_own` for the
    /// relay, so the handler may still succeed.
    #[test]
    fn a_handlers_unpublished_events_are_left_to_the_relay() {
        let db = MemoryDb::default().publishing_its_own_outbox();
        let schema = [SCHEMA, OWN_SCHEMA, crate::inbox::SCHEMA];
        migrate(&db, &schema).unwrap();
        let deleted = |id: &str| ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() });
        let at = || crate::time::rfc3339(WRITTEN);
        let handled = crate::inbox::handle_once(&db, &schema, "m1", &at(), || {
            for p in ["p1", "p2", "p3"] {
                record(&db, format!("e-{p}"), at(), &deleted(p))?;
            }
            Ok::<_, SqlError>(())
        });
        assert_eq!(handled, Ok(Some(())));
        let flaky = Flaky::accepting(1);
        assert!(matches!(
            publish_written(&db, &flaky, "/products"),
            Err(Unpublished::LeftToRelay(e)) if e.contains("e-p2")
        ));
        assert_eq!(read_all(&db).unwrap(), vec![deleted("p2"), deleted("p3")]);
        let healthy = Flaky::accepting(10);
        assert_eq!(relay(&db, &healthy, "/products", WRITTEN + OWN_ROWS_GRACE_SECS), Ok(2));
        assert_eq!(healthy.keys(), ["p2", "p3"]);
    }

    #[test]
    fn the_relay_leaves_self_published_rows_to_their_writer_until_they_are_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let http = MemoryDb::new(rusqlite::Connection::open(&path).unwrap());
        let events = MemoryDb::new(rusqlite::Connection::open(&path).unwrap()).publishing_its_own_outbox();
        migrate(&http, &[SCHEMA, OWN_SCHEMA]).unwrap();
        let deleted = |id: &str| ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() });
        let at = || crate::time::rfc3339(WRITTEN);
        record(&http, "e1".into(), at(), &deleted("p1")).unwrap();
        record(&events, "e2".into(), at(), &deleted("p2")).unwrap();

        // Woken by the HTTP writer's commit while the events writer is publishing.
        let relayed = Flaky::accepting(10);
        assert_eq!(relay(&http, &relayed, "/products", WRITTEN + 1), Ok(1));
        assert_eq!(relayed.keys(), ["p1"], "not the row its writer is publishing");
        let own = Flaky::accepting(10);
        assert_eq!(publish_written(&events, &own, "/products"), Ok(1));
        assert_eq!(own.keys(), ["p2"]);
        assert_eq!(
            read_all(&http).unwrap(),
            Vec::<ShopEvent>::new(),
            "both published rows deleted"
        );

        // A writer that crashed before deleting: the relay sends its row once it is old.
        record(&events, "e3".into(), at(), &deleted("p3")).unwrap();
        assert_eq!(read_all(&http).unwrap(), vec![deleted("p3")]);
        assert_eq!(
            relay(&http, &relayed, "/products", WRITTEN + OWN_ROWS_GRACE_SECS - 1),
            Ok(0)
        );
        assert_eq!(
            relay(&http, &relayed, "/products", WRITTEN + OWN_ROWS_GRACE_SECS),
            Ok(1)
        );
        assert_eq!(relayed.keys(), ["p1", "p3"]);
    }
}
