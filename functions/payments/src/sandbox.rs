//! The sandbox payment provider for local runs and tests, kept in the payments
//! database: `tok_ok` and `tok_slow` (answered after a delay by the HTTP layer) are
//! authorized, `tok_declined` and unknown tokens declined. Authorizations are
//! idempotent by key; capture, void and refund move a charge once and answer the same
//! when asked again.

use serde::Serialize;
use shop_domain::sql::{Sql, SqlError, SqlValue};
use shop_domain::types::Money;

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sandbox_charges (
    id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE, token TEXT NOT NULL,
    amount INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL,
    captures INTEGER NOT NULL, created_at TEXT NOT NULL)";

pub const SLOW_TOKEN: &str = "tok_slow";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    pub id: String,
    pub status: String,
    pub amount: Money,
    /// How many times money was actually taken (never more than once).
    pub captures: i64,
    pub decline_reason: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Ok(Charge),
    NotFound,
    /// The charge is in a state that does not allow this.
    Refused(String),
}

pub struct Sandbox<'a, D: Sql> {
    pub db: &'a D,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
}

const COLUMNS: &str = "id, status, amount, currency, captures, token";

fn charge(row: &[SqlValue]) -> Charge {
    let text = |i: usize| row.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
    let status = text(1);
    Charge {
        id: text(0),
        decline_reason: (status == "declined").then(|| decline_reason(&text(5))),
        status,
        amount: Money {
            amount: row.get(2).and_then(SqlValue::integer).unwrap_or(0),
            currency: text(3),
        },
        captures: row.get(4).and_then(SqlValue::integer).unwrap_or(0),
    }
}

fn decline_reason(token: &str) -> String {
    match token {
        "tok_declined" => "card declined".into(),
        _ => format!("unknown payment token `{token}`"),
    }
}

impl<D: Sql> Sandbox<'_, D> {
    /// The charge made under `idempotency_key`.
    pub fn by_key(&self, idempotency_key: &str) -> Result<Option<Charge>, SqlError> {
        self.by("idempotency_key", idempotency_key)
    }

    fn by(&self, column: &str, value: &str) -> Result<Option<Charge>, SqlError> {
        let rows = self.db.execute(
            &format!("SELECT {COLUMNS} FROM sandbox_charges WHERE {column} = ?"),
            &[value.into()],
        )?;
        Ok(rows.first().map(|r| charge(r)))
    }

    pub fn authorize(&self, idempotency_key: &str, token: &str, amount: &Money) -> Result<Charge, SqlError> {
        if let Some(existing) = self.by("idempotency_key", idempotency_key)? {
            return Ok(existing);
        }
        let status = match token {
            "tok_ok" | SLOW_TOKEN => "authorized",
            _ => "declined",
        };
        self.db.execute(
            "INSERT INTO sandbox_charges (id, idempotency_key, token, amount, currency, status, captures, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            &[
                (self.new_id)().into(),
                idempotency_key.into(),
                token.into(),
                amount.amount.into(),
                amount.currency.clone().into(),
                status.into(),
                self.now_text.clone().into(),
            ],
        )?;
        Ok(self
            .by("idempotency_key", idempotency_key)?
            .expect("the charge just written"))
    }

    /// Moves charge `id` from `from` to `to` (`action` names it in refusals); a
    /// charge already in `to` is answered as it is.
    pub fn transition(&self, id: &str, action: &str) -> Result<Reply, SqlError> {
        let (from, to) = match action {
            "capture" => ("authorized", "captured"),
            "void" => ("authorized", "voided"),
            "refund" => ("captured", "refunded"),
            _ => return Ok(Reply::NotFound),
        };
        let counted = if action == "capture" {
            ", captures = captures + 1"
        } else {
            ""
        };
        self.db.execute(
            &format!("UPDATE sandbox_charges SET status = ?{counted} WHERE id = ? AND status = ?"),
            &[to.into(), id.into(), from.into()],
        )?;
        Ok(match self.by("id", id)? {
            None => Reply::NotFound,
            Some(charge) if charge.status == to => Reply::Ok(charge),
            Some(charge) => Reply::Refused(format!("cannot {action} a {} charge", charge.status)),
        })
    }
}

#[cfg(test)]
mod tests {
    use shop_domain::sql::testing::{MemoryDb, sequential_ids};

    use super::*;

    #[test]
    fn tokens_decide_and_every_move_happens_once() {
        let db = MemoryDb::default();
        shop_domain::sql::migrate(&db, &[SCHEMA]).unwrap();
        let new_id = sequential_ids();
        let sandbox = Sandbox {
            db: &db,
            now_text: "t".into(),
            new_id: &new_id,
        };
        let eur = Money {
            amount: 500,
            currency: "EUR".into(),
        };
        let ok = sandbox.authorize("o-1", "tok_ok", &eur).unwrap();
        assert_eq!(ok.status, "authorized");
        assert_eq!(
            sandbox.authorize("o-1", "tok_ok", &eur).unwrap().id,
            ok.id,
            "idempotent by key"
        );
        let declined = sandbox.authorize("o-2", "tok_declined", &eur).unwrap();
        assert_eq!(
            (declined.status.as_str(), declined.decline_reason.as_deref()),
            ("declined", Some("card declined"))
        );
        assert_eq!(sandbox.authorize("o-3", "tok_nope", &eur).unwrap().status, "declined");

        let Reply::Ok(captured) = sandbox.transition(&ok.id, "capture").unwrap() else {
            panic!()
        };
        assert_eq!((captured.status.as_str(), captured.captures), ("captured", 1));
        let Reply::Ok(again) = sandbox.transition(&ok.id, "capture").unwrap() else {
            panic!()
        };
        assert_eq!(again.captures, 1, "a second capture takes nothing");
        assert!(matches!(sandbox.transition(&ok.id, "void").unwrap(), Reply::Refused(_)));
        assert!(matches!(sandbox.transition(&ok.id, "refund").unwrap(), Reply::Ok(c) if c.status == "refunded"));
        assert!(matches!(
            sandbox.transition(&declined.id, "capture").unwrap(),
            Reply::Refused(_)
        ));
        assert_eq!(sandbox.transition("nope", "capture").unwrap(), Reply::NotFound);
    }
}
