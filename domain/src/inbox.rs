//! Exactly-once effects on at-least-once delivery: a handler records each event id it
//! has handled in the same transaction as the state change, and skips an id it has
//! seen (a redelivery, or a relay publishing the same outbox row twice).

use crate::sql::{Sql, SqlError};

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inbox (event_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL)";

/// Records `event_id`; false when it was recorded before (run it inside the
/// transaction whose effects it guards).
pub fn first_time(db: &impl Sql, event_id: &str, now: &str) -> Result<bool, SqlError> {
    let inserted = db.execute(
        "INSERT INTO inbox (event_id, handled_at) VALUES (?, ?) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        &[event_id.into(), now.into()],
    )?;
    Ok(!inserted.is_empty())
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
}
