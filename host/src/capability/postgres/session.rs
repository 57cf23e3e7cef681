//! A guest's PostgreSQL connection and the pooled server connection behind it. The
//! guest holds a server connection only while it needs one: for one statement, or
//! from its `BEGIN` to its `COMMIT` or `ROLLBACK`. Between them the server connection
//! goes back to the pool, so a guest that keeps its connection open while it waits
//! (the orders long poll) does not hold a pool slot for the whole wait. A statement
//! that may leave session state keeps the server connection with the guest until the
//! guest drops its connection.

use deadpool_postgres::{Object, Pool};

use super::{Error, checkout, query_error};
use crate::capability::commits::CommitSignals;
use crate::telemetry::TraceCell;

pub(super) struct PgSession {
    pool: Pool,
    /// The server connection while a statement runs or a transaction is open; `None`
    /// between them. Locked for the whole statement, so one guest connection runs its
    /// statements one after another, as on a single server connection.
    held: tokio::sync::Mutex<Held>,
    /// The database name, and the trace of the instance holding it (each statement
    /// is a span).
    pub(super) database: String,
    pub(super) trace: TraceCell,
}

struct Held {
    client: Option<Object>,
    /// Between the guest's BEGIN and its COMMIT or ROLLBACK: its writes are not
    /// visible to others yet, and the server connection stays with the guest.
    in_transaction: bool,
    /// The guest ran something that may leave state on the server connection beyond
    /// a transaction (see [`Effect::Pins`]): it keeps that connection until it drops
    /// its own.
    pinned: bool,
    /// The guest's `BEGIN`, not sent yet: it goes to the server together with the
    /// transaction's first statement (one round trip instead of two, for both this
    /// host and the server), or never, when the transaction ends before one.
    deferred_begin: Option<String>,
}

/// What a statement that succeeded did, as far as holding its server connection and
/// the commit signals go.
#[derive(Debug, PartialEq)]
enum Effect {
    Begins,
    Commits,
    RollsBack,
    /// A write, visible at once outside a transaction.
    Writes,
    /// Leaves nothing on the connection beyond the current transaction.
    Neutral,
    /// May leave session state (`SET`, `PREPARE`, `LISTEN`, a temporary table, a
    /// chained transaction, SQL this host cannot read at a glance): the server
    /// connection stays with the guest connection, as it always does on Spin.
    Pins,
}

impl Effect {
    fn of(statement: &str) -> Self {
        let statement = statement.trim_start();
        if !statement.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Self::Pins; // a leading comment or parenthesis hides the keyword
        }
        let words: Vec<String> = statement
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        let chains = words.windows(2).any(|w| w[0] == "AND" && w[1] == "CHAIN");
        match word(0) {
            "BEGIN" => Self::Begins,
            "START" if word(1) == "TRANSACTION" => Self::Begins,
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" if chains => Self::Pins,
            "ROLLBACK" | "ABORT" if word(1) == "TO" => Self::Neutral,
            "COMMIT" | "END" => Self::Commits,
            "ROLLBACK" | "ABORT" => Self::RollsBack,
            "PREPARE" if word(1) == "TRANSACTION" => Self::RollsBack,
            "CREATE" if [word(1), word(2)].iter().any(|w| matches!(*w, "TEMP" | "TEMPORARY")) => Self::Pins,
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "WITH" | "TRUNCATE" => Self::Writes,
            "SELECT" | "VALUES" | "TABLE" | "SHOW" | "EXPLAIN" | "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT"
            | "REVOKE" | "SAVEPOINT" | "RELEASE" | "LOCK" | "ANALYZE" => Self::Neutral,
            // Sent at its transaction's commit (at once outside one); the connection
            // keeps nothing of it. The outbox notifies its relay this way.
            "NOTIFY" => Self::Neutral,
            _ => Self::Pins,
        }
    }
}

impl PgSession {
    /// A guest connection on `pool`, holding `client` until its first statement ends.
    pub(super) fn new(pool: Pool, client: Object, database: String, trace: TraceCell) -> Self {
        PgSession {
            pool,
            held: tokio::sync::Mutex::new(Held {
                client: Some(client),
                in_transaction: false,
                pinned: false,
                deferred_begin: None,
            }),
            database,
            trace,
        }
    }

    /// Runs `statement` through `run` on the guest's server connection (checked out
    /// for it if none is held), follows the guest's transaction through it, reports
    /// to the commit signals when a write of `component` became visible, and gives the
    /// server connection back unless a transaction is open. A `BEGIN` is held back
    /// until the transaction's first statement; what the guest sees for a statement
    /// that was never sent is `unsent()`.
    pub(super) async fn run<T>(
        &self,
        statement: &str,
        component: &str,
        commits: &CommitSignals,
        run: impl AsyncFnOnce(&Object) -> Result<T, Error>,
        unsent: impl FnOnce() -> T,
    ) -> Result<T, Error> {
        let effect = Effect::of(statement);
        let mut held = self.held.lock().await;
        if held.client.is_none() {
            // Checked out now, even for a held-back BEGIN, so that a full pool or an
            // unreachable server fails the BEGIN as it would on Spin.
            held.client = Some(checkout(self.pool.clone()).await?);
        }
        // Only a lone BEGIN: sent later on its own, a `BEGIN; …` would run the rest too.
        let lone = !statement.trim().trim_end_matches(';').contains(';');
        if effect == Effect::Begins && lone && !held.in_transaction {
            held.deferred_begin = Some(statement.to_string());
            held.in_transaction = true;
            return Ok(unsent());
        }
        let deferred_begin = held.deferred_begin.take();
        // The client stays in `held` while the statement runs: if the guest's call is
        // dropped halfway (trap, deadline), `Drop` finds it there and rolls it back.
        let client = held.client.as_ref().expect("checked out above");
        let result = match (deferred_begin, &effect) {
            // The transaction ends before anything was sent in it: nothing to send.
            (Some(_), Effect::Commits | Effect::RollsBack) => {
                held.in_transaction = false;
                if !held.pinned {
                    held.client = None;
                }
                return Ok(unsent());
            }
            (Some(begin), _) => match with_begin(client, &begin, run).await {
                Ok(result) => result,
                Err(begin_failed) => {
                    // No transaction is open on the server.
                    held.in_transaction = false;
                    Err(begin_failed)
                }
            },
            (None, _) => run(client).await,
        };
        if result.is_ok() {
            match effect {
                Effect::Begins => held.in_transaction = true,
                Effect::RollsBack => held.in_transaction = false,
                Effect::Commits => {
                    held.in_transaction = false;
                    commits.committed(component);
                }
                Effect::Writes if !held.in_transaction => commits.committed(component),
                Effect::Pins => held.pinned = true,
                Effect::Writes | Effect::Neutral => {}
            }
        }
        if !held.in_transaction && !held.pinned {
            // Outside a transaction the connection carries nothing of the guest's.
            held.client = None;
        }
        result
    }
}

/// Sends `begin`, then the statement of `run` without waiting for the BEGIN's answer:
/// the connection keeps their order, so the statement runs inside the transaction.
/// `Err`: the BEGIN failed (the statement's own outcome is moot then).
async fn with_begin<T>(
    client: &Object,
    begin: &str,
    run: impl AsyncFnOnce(&Object) -> Result<T, Error>,
) -> Result<Result<T, Error>, Error> {
    let mut begun = std::pin::pin!(client.batch_execute(begin));
    // tokio-postgres queues a request on its first poll, so this puts the BEGIN on
    // the connection ahead of anything `run` sends.
    let first_poll = futures::poll!(begun.as_mut());
    let result = run(client).await;
    let begun = match first_poll {
        std::task::Poll::Ready(begun) => begun,
        std::task::Poll::Pending => begun.await,
    };
    begun.map_err(query_error)?;
    Ok(result)
}

impl Drop for PgSession {
    fn drop(&mut self) {
        // A guest that trapped, timed out or simply never committed leaves its
        // transaction open; it must not leak into the next guest's work (Spin ends a
        // guest's connection, and with it any open transaction). A pinned connection
        // may carry session state too: it is closed instead of pooled.
        let held = self.held.get_mut();
        let Some(client) = held.client.take() else {
            return;
        };
        if held.deferred_begin.is_some() && !held.pinned {
            return; // nothing of the transaction reached the server: pool it as it is
        }
        if held.pinned {
            drop(Object::take(client));
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        // Unusable for the next guest: close it rather than pool it.
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_may_leave_session_state_pin_the_connection() {
        for (statement, effect) in [
            ("begin", Effect::Begins),
            ("  START TRANSACTION ISOLATION LEVEL SERIALIZABLE", Effect::Begins),
            ("commit;", Effect::Commits),
            ("END", Effect::Commits),
            ("ROLLBACK", Effect::RollsBack),
            ("ROLLBACK TO SAVEPOINT a", Effect::Neutral),
            ("rollback to a", Effect::Neutral),
            ("PREPARE TRANSACTION 'x'", Effect::RollsBack),
            ("COMMIT AND CHAIN", Effect::Pins),
            ("commit and no chain", Effect::Commits),
            ("INSERT INTO t VALUES ($1)", Effect::Writes),
            ("WITH x AS (SELECT 1) UPDATE t SET a = 1", Effect::Writes),
            ("SELECT * FROM t", Effect::Neutral),
            ("CREATE TABLE IF NOT EXISTS t (x int)", Effect::Neutral),
            ("CREATE TEMP TABLE t (x int)", Effect::Pins),
            ("create local temporary table t (x int)", Effect::Pins),
            ("SET search_path TO shop", Effect::Pins),
            ("LISTEN orders", Effect::Pins),
            ("NOTIFY outbox", Effect::Neutral),
            ("PREPARE q AS SELECT 1", Effect::Pins),
            ("-- a comment\nBEGIN", Effect::Pins),
            ("/* hint */ SELECT 1", Effect::Pins),
            ("", Effect::Pins),
        ] {
            assert_eq!(Effect::of(statement), effect, "{statement}");
        }
    }
}
