//! The few SQL operations the services need, so their queries run against Spin's
//! SQLite or PostgreSQL in the components (feature `spin`) and against rusqlite in
//! native tests (feature `testing`).
//!
//! Services write one portable SQL: `?`/`?N` placeholders, SQLite's type names in
//! their schemas, `CAST(? AS TEXT)` where a parameter's type is not evident. The
//! [`Dialect`] turns that into what PostgreSQL expects.

mod dialect;
#[cfg(feature = "spin")]
pub mod spin;
#[cfg(feature = "testing")]
pub mod testing;

pub use dialect::Dialect;

#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

impl SqlValue {
    pub fn text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn integer(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Integer(v)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlError {
    /// A UNIQUE constraint refused the row.
    Conflict(String),
    Other(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlError::Conflict(m) | SqlError::Other(m) => f.write_str(m),
        }
    }
}

impl SqlError {
    /// Classifies a driver message (SQLite words every UNIQUE violation the same way;
    /// PostgreSQL's SQLSTATE 23505 is mapped by its adapter).
    pub fn from_message(message: String) -> Self {
        if message.contains("UNIQUE constraint failed") {
            SqlError::Conflict(message)
        } else {
            SqlError::Other(message)
        }
    }

    /// Classifies a PostgreSQL error that reached the guest as text only. Spin 3 hands
    /// an error raised while a query's rows are read (an `INSERT … RETURNING`'s unique
    /// violation among them) to the guest as its driver's debug text, without the
    /// SQLSTATE: a unique violation (23505) or a duplicate table or object from two
    /// sessions creating the same schema (42P07, 42710) is then known by its words
    /// (PostgreSQL's English messages, its default).
    pub fn from_postgres_text(text: String) -> Self {
        const SIGNS: [&str; 5] = [
            "duplicate key value violates unique constraint",
            "already exists",
            // The driver's debug form of the codes, where the text has it.
            "SqlState(E23505)",
            "SqlState(E42P07)",
            "SqlState(E42710)",
        ];
        if SIGNS.iter().any(|sign| text.contains(sign)) {
            SqlError::Conflict(text)
        } else {
            SqlError::Other(text)
        }
    }
}

/// Whether a PostgreSQL `statement` may hand back rows. Only a change that starts
/// with its verb and has no `RETURNING` is known to return none; anything else
/// (queries, `WITH`, a leading comment) counts as returning rows.
#[cfg_attr(not(feature = "spin"), allow(dead_code))]
pub(crate) fn returns_rows(statement: &str) -> bool {
    const CHANGES: [&str; 13] = [
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "LOCK",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
    ];
    let upper = statement.trim_start().to_ascii_uppercase();
    let first = upper.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    !CHANGES.contains(&first)
        || upper
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word == "RETURNING")
}

pub trait Sql {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Runs one statement; the rows it returned.
    fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError>;

    /// The W3C `traceparent` of the work this connection does, which
    /// [`crate::outbox::record`] keeps with each event.
    fn traceparent(&self) -> Option<String> {
        None
    }

    /// Where this connection remembers the schemas it found applied, so that an
    /// instance migrating several schemas (a service's, the outbox's…) or the same
    /// one twice reads `shop_schema` once. `None`: every [`migrate`] reads it.
    fn schema_memo(&self) -> Option<&SchemaMemo> {
        None
    }
}

/// The fingerprints of the schemas applied to one connection's database, read once.
#[derive(Default, Debug)]
pub struct SchemaMemo(std::cell::RefCell<Option<std::collections::BTreeSet<String>>>);

impl SchemaMemo {
    /// Whether `fingerprint` is applied, reading every recorded one on first use.
    fn knows(&self, db: &(impl Sql + ?Sized), fingerprint: &str) -> bool {
        let mut known = self.0.borrow_mut();
        let known = known.get_or_insert_with(|| {
            // An error here is a database without the table yet: nothing applied.
            db.execute("SELECT fingerprint FROM shop_schema", &[])
                .map(|rows| {
                    rows.iter()
                        .filter_map(|row| row.first().and_then(SqlValue::text).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        });
        known.contains(fingerprint)
    }

    fn applied(&self, fingerprint: String) {
        if let Some(known) = self.0.borrow_mut().as_mut() {
            known.insert(fingerprint);
        }
    }
}

/// Creates what `schema` describes (each statement idempotent, SQLite type names).
///
/// Every instance of a service calls this on each request (a message handler only
/// when its work failed: [`with_schema`]), so the usual case is one indexed read: a
/// schema already applied is recorded by its fingerprint in `shop_schema`, and only a
/// new or changed schema runs its statements. With a [`SchemaMemo`] the read is of
/// every fingerprint, once per connection.
pub fn migrate(db: &impl Sql, schema: &[&str]) -> Result<(), SqlError> {
    apply_schema(db, schema).map(drop)
}

/// Runs `work` without looking at `schema` first, for a handler whose transaction
/// finds out at its end whether `schema` is applied ([`crate::inbox::handle_once`]
/// fails it otherwise): a message then costs no read of `shop_schema`. When `work`
/// fails, `schema` is applied if it was not, and `work` runs again.
pub fn with_schema<T, E>(db: &impl Sql, schema: &[&str], mut work: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    match work() {
        Err(e) => match apply_schema(db, schema) {
            Ok(true) => work(),
            // Applied already (or the database is out of reach): `work` failed for
            // another reason, which is the one to tell.
            _ => Err(e),
        },
        done => done,
    }
}

/// [`migrate`], telling whether it ran the schema's statements (false: applied before).
fn apply_schema(db: &impl Sql, schema: &[&str]) -> Result<bool, SqlError> {
    let fingerprint = schema_fingerprint(schema);
    let applied = match db.schema_memo() {
        Some(memo) => memo.knows(db, &fingerprint),
        // An error here is a database without the table yet.
        None => db
            .execute(
                "SELECT 1 FROM shop_schema WHERE fingerprint = ?",
                &[fingerprint.as_str().into()],
            )
            .is_ok_and(|rows| !rows.is_empty()),
    };
    if applied {
        return Ok(false);
    }
    let record = ["CREATE TABLE IF NOT EXISTS shop_schema (fingerprint TEXT PRIMARY KEY)"];
    for statement in schema.iter().chain(&record) {
        match db.execute(&db.dialect().ddl(statement), &[]) {
            // Two PostgreSQL sessions creating the same table race on its catalog
            // row even with IF NOT EXISTS; the loser finds the table there.
            Err(SqlError::Conflict(_)) if db.dialect() == Dialect::Postgres => {}
            // SQLite has no `ADD COLUMN IF NOT EXISTS`: a column already there (the
            // table was created with it) is what the statement wanted.
            Err(e) if is_add_column(statement) && e.to_string().contains("duplicate column") => {}
            other => drop(other?),
        }
    }
    db.execute(
        "INSERT INTO shop_schema (fingerprint) VALUES (?) ON CONFLICT DO NOTHING",
        &[fingerprint.as_str().into()],
    )?;
    if let Some(memo) = db.schema_memo() {
        memo.applied(fingerprint);
    }
    Ok(true)
}

/// Inserts `rows` with one statement, `insert` being the statement up to its
/// `VALUES` (`INSERT INTO t (a, b)`), so that several rows cost one round trip.
/// Nothing is run for no rows.
pub fn insert_rows<const COLUMNS: usize>(
    db: &impl Sql,
    insert: &str,
    rows: impl IntoIterator<Item = [SqlValue; COLUMNS]>,
) -> Result<(), SqlError> {
    if let Some((statement, params)) = rows_insert(insert, rows) {
        db.execute(&statement, &params)?;
    }
    Ok(())
}

/// The statement [`insert_rows`] runs and its parameters (`None` for no rows), to run
/// with another one ([`execute_together`]).
pub fn rows_insert<const COLUMNS: usize>(
    insert: &str,
    rows: impl IntoIterator<Item = [SqlValue; COLUMNS]>,
) -> Option<(String, Vec<SqlValue>)> {
    let params: Vec<SqlValue> = rows.into_iter().flatten().collect();
    if params.is_empty() {
        return None;
    }
    let tuple = format!("({})", vec!["?"; COLUMNS].join(", "));
    let values = vec![tuple; params.len() / COLUMNS].join(", ");
    Some((format!("{insert} VALUES {values}"), params))
}

/// Runs the write `first`, then `then` (each a statement and its parameters; `then`
/// must not read what `first` writes), in one round trip where the dialect allows:
/// on PostgreSQL `first` becomes a data-modifying `WITH` of `then`, and fails the
/// whole statement as it would have failed alone. Returns `then`'s rows.
pub fn execute_together(
    db: &impl Sql,
    first: (String, Vec<SqlValue>),
    then: (&str, Vec<SqlValue>),
) -> Result<Vec<Vec<SqlValue>>, SqlError> {
    match db.dialect() {
        Dialect::Postgres => {
            let statement = format!("WITH written_first AS ({}) {}", first.0, then.0);
            db.execute(&statement, &[first.1, then.1].concat())
        }
        Dialect::Sqlite => {
            db.execute(&first.0, &first.1)?;
            db.execute(then.0, &then.1)
        }
    }
}

fn is_add_column(statement: &str) -> bool {
    statement.starts_with("ALTER TABLE") && statement.contains(" ADD COLUMN ")
}

/// A stable digest of a schema's statements (64-bit FNV-1a, hex), under which
/// `shop_schema` records it applied.
pub(crate) fn schema_fingerprint(schema: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for statement in schema {
        for byte in statement.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Runs `work` in a write transaction, rolling back when it fails.
pub fn in_transaction<T, E: From<SqlError>>(db: &impl Sql, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    db.execute(db.dialect().begin(), &[])?;
    let rollback = || {
        let _ = db.execute("ROLLBACK", &[]);
    };
    match work() {
        Ok(value) => match db.execute("COMMIT", &[]) {
            Ok(_) => Ok(value),
            // SQLite leaves the transaction open when COMMIT fails (e.g. busy); end it
            // so the connection's next BEGIN works.
            Err(e) => {
                rollback();
                Err(e.into())
            }
        },
        Err(e) => {
            rollback();
            Err(e)
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::SqlError;

    #[test]
    fn postgres_conflicts_are_known_from_their_text_alone() {
        // What Spin 3.6 hands a guest for an error while reading rows: the driver's
        // debug text, with no SQLSTATE field.
        let unique = "db error: ERROR: duplicate key value violates unique constraint \"users_email_key\"\nDETAIL: Key (email)=(ada@example.com) already exists.";
        assert!(matches!(
            SqlError::from_postgres_text(unique.into()),
            SqlError::Conflict(_)
        ));
        let table = "Error { kind: Db, cause: Some(DbError { severity: \"ERROR\", code: SqlState(E42P07), message: \"relation \\\"users\\\" already exists\" }) }";
        assert!(matches!(
            SqlError::from_postgres_text(table.into()),
            SqlError::Conflict(_)
        ));
        let other = "db error: ERROR: column \"emial\" does not exist";
        assert!(matches!(SqlError::from_postgres_text(other.into()), SqlError::Other(_)));
        let closed = "connection closed";
        assert!(matches!(
            SqlError::from_postgres_text(closed.into()),
            SqlError::Other(_)
        ));
    }

    #[test]
    fn only_a_plain_change_is_known_to_return_no_rows() {
        use super::returns_rows;
        assert!(!returns_rows("INSERT INTO users (id) VALUES ($1)"));
        assert!(!returns_rows("  update stock SET n = n - 1 WHERE sku = $1"));
        assert!(!returns_rows("CREATE TABLE IF NOT EXISTS t (id TEXT)"));
        assert!(returns_rows("INSERT INTO users (id) VALUES ($1) RETURNING id"));
        assert!(returns_rows("UPDATE t SET n = 1\nRETURNING n, id"));
        assert!(returns_rows("SELECT 1"));
        assert!(returns_rows(
            "WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved"
        ));
        assert!(returns_rows("-- a comment first\nINSERT INTO t VALUES (1)"));
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::testing::MemoryDb;
    use super::*;

    #[test]
    fn rows_inserted_together_arrive_in_order() {
        let db = MemoryDb::default();
        db.execute("CREATE TABLE t (n INTEGER, s TEXT)", &[]).unwrap();
        let rows = |ns: &[i64]| {
            ns.iter()
                .map(|n| [SqlValue::Integer(*n), n.to_string().into()])
                .collect::<Vec<_>>()
        };
        insert_rows(&db, "INSERT INTO t (n, s)", rows(&[])).unwrap();
        insert_rows(&db, "INSERT INTO t (n, s)", rows(&[3, 1, 2])).unwrap();
        let stored = db.execute("SELECT n, s FROM t ORDER BY rowid", &[]).unwrap();
        assert_eq!(stored, rows(&[3, 1, 2]).into_iter().map(Vec::from).collect::<Vec<_>>());
    }

    #[test]
    fn a_schema_is_applied_once_and_again_when_it_changes() {
        let db = MemoryDb::default();
        let v1 = ["CREATE TABLE IF NOT EXISTS a (x INTEGER)"];
        migrate(&db, &v1).unwrap();
        // Applied schemas are not run again: a dropped table stays dropped.
        db.execute("DROP TABLE a", &[]).unwrap();
        migrate(&db, &v1).unwrap();
        assert!(db.execute("SELECT x FROM a", &[]).is_err());
        // A changed schema runs (all its statements are idempotent).
        let v2 = [
            "CREATE TABLE IF NOT EXISTS a (x INTEGER)",
            "CREATE TABLE IF NOT EXISTS b (y TEXT)",
        ];
        migrate(&db, &v2).unwrap();
        db.execute("SELECT x FROM a", &[]).unwrap();
        db.execute("SELECT y FROM b", &[]).unwrap();
        let recorded = db.execute("SELECT COUNT(*) FROM shop_schema", &[]).unwrap();
        assert_eq!(recorded, vec![vec![SqlValue::Integer(2)]]);
    }

    /// A connection that remembers applied schemas, counting the statements it runs.
    #[derive(Default)]
    struct Remembering {
        db: MemoryDb,
        memo: SchemaMemo,
        statements: std::cell::RefCell<Vec<String>>,
    }

    impl Sql for Remembering {
        fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
            self.statements.borrow_mut().push(statement.to_string());
            self.db.execute(statement, params)
        }
        fn schema_memo(&self) -> Option<&SchemaMemo> {
            Some(&self.memo)
        }
    }

    #[test]
    fn a_remembering_connection_reads_the_applied_schemas_once() {
        let (a, b) = (
            ["CREATE TABLE IF NOT EXISTS a (x INTEGER)"],
            ["CREATE TABLE IF NOT EXISTS b (y TEXT)"],
        );
        let path = std::env::temp_dir().join(format!("shop-schema-memo-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let open = || Remembering {
            db: MemoryDb::new(rusqlite::Connection::open(&path).unwrap()),
            ..Default::default()
        };
        let first = open();
        migrate(&first, &a).unwrap();
        migrate(&first, &b).unwrap();
        migrate(&first, &a).unwrap();
        let applying = first.statements.take();
        assert_eq!(
            applying.iter().filter(|s| s.contains("FROM shop_schema")).count(),
            1,
            "{applying:?}"
        );
        assert_eq!(
            applying
                .iter()
                .filter(|s| s.starts_with("CREATE TABLE IF NOT EXISTS a"))
                .count(),
            1
        );

        // The next instance on the same database: one read, nothing applied again.
        let next = open();
        for schema in [&a, &b, &a] {
            migrate(&next, schema).unwrap();
        }
        assert_eq!(next.statements.take(), ["SELECT fingerprint FROM shop_schema"]);
        // A changed schema still runs.
        let changed = [
            "CREATE TABLE IF NOT EXISTS a (x INTEGER)",
            "CREATE TABLE IF NOT EXISTS c (z BLOB)",
        ];
        migrate(&next, &changed).unwrap();
        next.execute("SELECT z FROM c", &[]).unwrap();
        let _ = std::fs::remove_file(&path);
    }

    /// A message handler reads no `shop_schema` of its own: its transaction's last
    /// statement says whether the schema is applied, and a missing or changed one is
    /// applied before anything commits.
    #[test]
    fn a_handler_applies_its_schema_only_when_it_is_missing_or_changed() {
        let path = std::env::temp_dir().join(format!("shop-schema-handler-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let open = || Remembering {
            db: MemoryDb::new(rusqlite::Connection::open(&path).unwrap()),
            ..Default::default()
        };
        let v1 = [crate::inbox::SCHEMA, "CREATE TABLE IF NOT EXISTS counted (n INTEGER)"];
        let v2 = [
            crate::inbox::SCHEMA,
            "CREATE TABLE IF NOT EXISTS counted (n INTEGER)",
            "CREATE UNIQUE INDEX IF NOT EXISTS counted_once ON counted (n)",
        ];
        let handle = |db: &Remembering, schema: &[&str], event_id: &str, n: i64| {
            with_schema(db, schema, || {
                crate::inbox::handle_once(db, schema, event_id, "t", || {
                    db.execute("INSERT INTO counted (n) VALUES (?)", &[n.into()])
                })
            })
            .map(|done| done.is_some())
        };
        // A new database: the handler fails, the schema is applied, it runs again.
        assert_eq!(handle(&open(), &v1, "e-1", 1), Ok(true));

        // Applied: a handler's statements are its own and the inbox row's.
        let next = open();
        assert_eq!(handle(&next, &v1, "e-2", 2), Ok(true));
        let statements = next.statements.take();
        assert!(
            statements
                .iter()
                .all(|s| !s.contains("shop_schema") || s.starts_with("INSERT INTO inbox"))
        );
        assert_eq!(
            statements.len(),
            4,
            "BEGIN, the insert, the inbox row, COMMIT: {statements:?}"
        );

        // Changed (a unique index the handler's insert now breaks): found out at the
        // end, applied, and the handler's second run is refused by it.
        let changed = open();
        assert!(matches!(handle(&changed, &v2, "e-3", 2), Err(SqlError::Conflict(_))));
        let rows = changed.execute("SELECT COUNT(*) FROM counted", &[]).unwrap();
        assert_eq!(rows, vec![vec![SqlValue::Integer(2)]], "nothing of e-3 committed");
        assert_eq!(crate::inbox::handled_before(&changed, "e-3"), Ok(false));
        let _ = std::fs::remove_file(&path);
    }

    /// Two writes in one round trip on PostgreSQL, one after the other on SQLite, with
    /// the parameters in the order of their placeholders.
    #[test]
    fn writes_run_together_where_the_dialect_allows() {
        struct Recording(Dialect, std::cell::RefCell<Vec<(String, Vec<SqlValue>)>>);
        impl Sql for Recording {
            fn dialect(&self) -> Dialect {
                self.0
            }
            fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, SqlError> {
                self.1.borrow_mut().push((statement.to_string(), params.to_vec()));
                Ok(vec![])
            }
        }
        let rows = rows_insert("INSERT INTO e (n)", [[SqlValue::Integer(1)], [SqlValue::Integer(2)]]).unwrap();
        let then = ("UPDATE p SET n = ?", vec![SqlValue::Integer(3)]);
        let postgres = Recording(Dialect::Postgres, Default::default());
        execute_together(&postgres, rows.clone(), then.clone()).unwrap();
        assert_eq!(
            postgres.1.take(),
            [(
                "WITH written_first AS (INSERT INTO e (n) VALUES (?), (?)) UPDATE p SET n = ?".to_string(),
                vec![SqlValue::Integer(1), SqlValue::Integer(2), SqlValue::Integer(3)]
            )]
        );
        let sqlite = Recording(Dialect::Sqlite, Default::default());
        execute_together(&sqlite, rows.clone(), then.clone()).unwrap();
        assert_eq!(
            sqlite.1.take(),
            [rows, (then.0.to_string(), then.1)],
            "one after the other"
        );
        assert_eq!(rows_insert::<1>("INSERT INTO e (n)", []), None);
    }

    #[test]
    fn fingerprints_tell_schemas_apart() {
        assert_eq!(schema_fingerprint(&["a", "b"]), schema_fingerprint(&["a", "b"]));
        assert_ne!(schema_fingerprint(&["ab"]), schema_fingerprint(&["a", "b"]));
        assert_ne!(schema_fingerprint(&["a"]), schema_fingerprint(&["b"]));
    }
}
