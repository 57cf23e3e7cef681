//! Exactly-once effects on at-least-once delivery: a handler records each event id it
//! has handled in the same transaction as the state change ([`handle_once`]), and a
//! redelivery (or the outbox relay publishing the same row twice) changes nothing. The
//! events the handling wrote are outbox rows of the same transaction: committed with
//! it, and published by the host however often the message comes back.

use crate::sql::{Sql, SqlError, SqlValue, in_transaction, schema_fingerprint};

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL)";

/// Runs `work` once per `event_id`: in one transaction that ends by recording the id
/// (one statement, which also tells whether the schema is applied). `None`: the id
/// was recorded before, and nothing `work` did stays.
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
        let value = work().map_err(Attempt::Failed)?;
        let recorded = db.execute(
            "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?) \
             ON CONFLICT (event_id) DO NOTHING \
             RETURNING (SELECT COUNT(*) FROM shop_schema WHERE fingerprint = ?)",
            &[event_id.into(), now.into(), schema_fingerprint(schema).into()],
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
}
