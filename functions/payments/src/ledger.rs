//! One payment per order. Commands are idempotent per order: the ledger row says what
//! happened, and asking again re-announces it instead of charging again. The provider
//! is called outside the transaction (it is remote); its own idempotency key (the
//! order id) makes a retried call after a crash harmless.

use serde::Serialize;
use shop_domain::ShopEvent;
use shop_domain::events::{PaymentCommand, PaymentResult};
use shop_domain::sql::{Sql, SqlError, SqlValue, migrate, with_schema};
use shop_domain::types::Money;
use shop_domain::{inbox, outbox};

/// How long a kept payment token may wait for its order's first payment command.
pub const PAYMENT_METHOD_TTL_SECS: i64 = 3600;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS payments (
        order_id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, user_id TEXT,
        amount INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL,
        provider_reference TEXT, reason TEXT, updated_at TEXT NOT NULL)",
    // The payment token for an order's authorization, handed over by the orders
    // service at placement: it stays here and never travels on a topic. It is deleted
    // once any payment command of its order is answered, when the orders service
    // withdraws it, and at the latest an hour after it was kept (an order cancelled
    // before its authorization never asks for it).
    "CREATE TABLE IF NOT EXISTS payment_methods (
        order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, token TEXT NOT NULL,
        created_at TEXT NOT NULL)",
    inbox::SCHEMA,
    outbox::SCHEMA,
    outbox::MIGRATION[0],
    outbox::MIGRATION[1],
    outbox::MIGRATION[2],
    outbox::MIGRATION[3],
];

/// Why a payment method cannot be kept.
#[derive(Debug, PartialEq)]
pub enum KeepRefused {
    /// Another user's order, or another token for the same order.
    Conflict,
    Sql(SqlError),
}

impl From<SqlError> for KeepRefused {
    fn from(e: SqlError) -> Self {
        Self::Sql(e)
    }
}

/// What the provider said.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Approved { reference: String },
    Declined { reason: String },
}

/// A payment provider. `Err` is a transient failure (the command is retried).
pub trait Provider {
    fn authorize(&self, idempotency_key: &str, token: &str, amount: &Money) -> Result<Answer, String>;
    fn capture(&self, reference: &str) -> Result<Answer, String>;
    fn void(&self, reference: &str) -> Result<Answer, String>;
    fn refund(&self, reference: &str) -> Result<Answer, String>;
    /// The charge made under `idempotency_key`, as (reference, status), if any: for
    /// giving back an authorization whose answer was lost.
    fn find(&self, idempotency_key: &str) -> Result<Option<(String, String)>, String>;
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    #[serde(skip)]
    pub user_id: Option<String>,
    pub amount: Money,
    /// authorized, declined, captured, voided, refunded
    pub status: String,
    pub provider_reference: Option<String>,
    pub reason: Option<String>,
    pub updated_at: String,
}

pub struct Context<'a> {
    /// Unix seconds, and the same instant as RFC 3339 text.
    pub now: i64,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
}

#[derive(Debug, PartialEq)]
pub enum Handled {
    /// Handled; this event announces the outcome.
    Done(Box<ShopEvent>),
    Duplicate,
    Ignored,
}

/// The saga command `event` carries for this service, if it is one (its topic also
/// carries the results the orders service reads).
pub fn command_of(event: &ShopEvent) -> Option<&PaymentCommand> {
    match event {
        ShopEvent::PaymentAuthorizeRequested(c)
        | ShopEvent::PaymentCaptureRequested(c)
        | ShopEvent::PaymentVoidRequested(c)
        | ShopEvent::PaymentRefundRequested(c) => Some(c),
        _ => None,
    }
}

pub struct Ledger<'a, D: Sql> {
    db: &'a D,
    context: &'a Context<'a>,
}

impl<'a, D: Sql> Ledger<'a, D> {
    pub fn new(db: &'a D, context: &'a Context<'a>) -> Self {
        Self { db, context }
    }

    pub fn migrate(&self) -> Result<(), SqlError> {
        migrate(self.db, SCHEMA)
    }

    pub fn payment(&self, order_id: &str) -> Result<Option<Payment>, SqlError> {
        let rows = self.db.execute(
            "SELECT payment_id, user_id, amount, currency, status, provider_reference, reason, updated_at \
             FROM payments WHERE order_id = ?",
            &[order_id.into()],
        )?;
        Ok(rows.first().map(|r| {
            let text = |i: usize| r.get(i).and_then(SqlValue::text).map(str::to_string);
            Payment {
                id: text(0).unwrap_or_default(),
                order_id: order_id.to_string(),
                user_id: text(1),
                amount: Money {
                    amount: r.get(2).and_then(SqlValue::integer).unwrap_or(0),
                    currency: text(3).unwrap_or_default(),
                },
                status: text(4).unwrap_or_default(),
                provider_reference: text(5),
                reason: text(6),
                updated_at: text(7).unwrap_or_default(),
            }
        }))
    }

    /// Keeps `token` for the authorization of `order_id`, placed by `user_id`. Handing
    /// over the same token again is a no-op.
    pub fn keep_payment_method(&self, order_id: &str, user_id: &str, token: &str) -> Result<(), KeepRefused> {
        // Tokens nobody asked for within the hour go, here rather than on a timer:
        // every placement passes by.
        self.db.execute(
            "DELETE FROM payment_methods WHERE created_at < ?",
            &[shop_domain::time::rfc3339(self.context.now - PAYMENT_METHOD_TTL_SECS).into()],
        )?;
        // One statement: the row kept, whether this call or an earlier one kept it
        // (the no-op update makes a conflicting insert return the row that is there).
        let rows = self.db.execute(
            "INSERT INTO payment_methods (order_id, user_id, token, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id RETURNING user_id, token",
            &[
                order_id.into(),
                user_id.into(),
                token.into(),
                self.context.now_text.clone().into(),
            ],
        )?;
        let kept = rows.first().map(|r| {
            let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default();
            (text(0) == user_id, text(1) == token)
        });
        match kept {
            Some((true, true)) => Ok(()),
            _ => Err(KeepRefused::Conflict),
        }
    }

    /// Withdraws the token kept for `order_id` by `user_id` (an order that was never
    /// placed after all); another customer's token is left alone.
    pub fn forget_payment_method(&self, order_id: &str, user_id: &str) -> Result<(), SqlError> {
        self.db.execute(
            "DELETE FROM payment_methods WHERE order_id = ? AND user_id = ?",
            &[order_id.into(), user_id.into()],
        )?;
        Ok(())
    }

    fn payment_token(&self, order_id: &str) -> Result<Option<String>, SqlError> {
        let rows = self.db.execute(
            "SELECT token FROM payment_methods WHERE order_id = ?",
            &[order_id.into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::text)
            .map(str::to_string))
    }

    /// Handles one delivered command exactly once. `Err` leaves nothing changed. The
    /// schema is applied first only when it is not (no need to [`Self::migrate`]
    /// before): the provider may then be asked twice, which its idempotency key
    /// answers the same.
    pub fn handle(&self, event_id: &str, event: &ShopEvent, provider: &impl Provider) -> Result<Handled, String> {
        let Some(command) = command_of(event) else {
            return Ok(Handled::Ignored);
        };
        with_schema(self.db, SCHEMA, || {
            self.handle_command(event_id, event, command, provider)
        })
    }

    fn handle_command(
        &self,
        event_id: &str,
        event: &ShopEvent,
        command: &PaymentCommand,
        provider: &impl Provider,
    ) -> Result<Handled, String> {
        let sql = |e: SqlError| e.to_string();
        if inbox::handled_before(self.db, event_id).map_err(sql)? {
            return Ok(Handled::Duplicate);
        }
        let existing = self.payment(&command.order_id).map_err(sql)?;
        // Decide with the provider first; record the result in one transaction.
        let change = match event {
            ShopEvent::PaymentAuthorizeRequested(_) => self.authorize(command, existing, provider)?,
            ShopEvent::PaymentCaptureRequested(_) => self.capture(command, existing, provider)?,
            _ => self.void_or_refund(command, existing, provider)?,
        };
        let handled = inbox::handle_once(self.db, SCHEMA, event_id, &self.context.now_text, || {
            if let Some(payment) = &change.write {
                self.save(payment)?;
            }
            // Answered: the token has served its one purpose, or (a void or refund, an
            // order cancelled before its authorization) never will.
            self.db.execute(
                "DELETE FROM payment_methods WHERE order_id = ?",
                &[command.order_id.clone().into()],
            )?;
            outbox::record(
                self.db,
                (self.context.new_id)(),
                self.context.now_text.clone(),
                &change.announce,
            )?;
            Ok(Handled::Done(Box::new(change.announce.clone())))
        })
        .map_err(sql)?;
        Ok(handled.unwrap_or(Handled::Duplicate))
    }

    fn save(&self, p: &Payment) -> Result<(), SqlError> {
        self.db.execute(
            "INSERT INTO payments (order_id, payment_id, user_id, amount, currency, status, provider_reference, \
             reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET \
             status = excluded.status, provider_reference = excluded.provider_reference, \
             reason = excluded.reason, updated_at = excluded.updated_at",
            &[
                p.order_id.clone().into(),
                p.id.clone().into(),
                p.user_id.clone().into(),
                p.amount.amount.into(),
                p.amount.currency.clone().into(),
                p.status.clone().into(),
                p.provider_reference.clone().into(),
                p.reason.clone().into(),
                self.context.now_text.clone().into(),
            ],
        )?;
        Ok(())
    }

    fn authorize(
        &self,
        command: &PaymentCommand,
        existing: Option<Payment>,
        provider: &impl Provider,
    ) -> Result<Change, String> {
        if let Some(payment) = existing {
            // Asked again: the first answer stands.
            return Ok(Change::announce(&payment));
        }
        let token = self.payment_token(&command.order_id).map_err(|e| e.to_string())?;
        let mut payment = Payment {
            id: (self.context.new_id)(),
            order_id: command.order_id.clone(),
            user_id: command.user_id.clone(),
            amount: command.amount.clone(),
            status: String::new(),
            provider_reference: None,
            reason: None,
            updated_at: self.context.now_text.clone(),
        };
        let Some(token) = token else {
            payment.status = "declined".into();
            payment.reason = Some("no payment method was handed over for this order".into());
            return Ok(Change::write(payment));
        };
        match provider.authorize(&command.order_id, &token, &command.amount)? {
            Answer::Approved { reference } => {
                payment.status = "authorized".into();
                payment.provider_reference = Some(reference);
            }
            Answer::Declined { reason } => {
                payment.status = "declined".into();
                payment.reason = Some(reason);
            }
        }
        Ok(Change::write(payment))
    }

    fn capture(
        &self,
        command: &PaymentCommand,
        existing: Option<Payment>,
        provider: &impl Provider,
    ) -> Result<Change, String> {
        let Some(mut payment) = existing else {
            return Err(format!("capture for order {}: nothing authorized", command.order_id));
        };
        if payment.status != "authorized" {
            return Ok(Change::announce(&payment));
        }
        match provider.capture(payment.provider_reference.as_deref().unwrap_or_default())? {
            Answer::Approved { .. } => {
                payment.status = "captured".into();
                Ok(Change::write(payment))
            }
            // The authorization stands (a void can still release it); the saga
            // hears the capture was refused and cancels.
            Answer::Declined { reason } => Ok(Change {
                write: None,
                announce: ShopEvent::PaymentDeclined(PaymentResult {
                    order_id: payment.order_id.clone(),
                    payment_id: Some(payment.id.clone()),
                    amount: payment.amount.clone(),
                    reason: Some(format!("capture refused: {reason}")),
                }),
            }),
        }
    }

    /// Gives the money back: voids an authorization, refunds a capture.
    fn void_or_refund(
        &self,
        command: &PaymentCommand,
        existing: Option<Payment>,
        provider: &impl Provider,
    ) -> Result<Change, String> {
        let mut payment = match existing {
            Some(payment) => payment,
            None => {
                // No answer was recorded: the authorization failed here before its
                // commit, or never ran. Ask the provider what it holds under the
                // order's key; with nothing there, a "voided" row makes a late
                // (replayed) authorization answer "voided" instead of charging.
                let mut payment = Payment {
                    id: (self.context.new_id)(),
                    order_id: command.order_id.clone(),
                    user_id: command.user_id.clone(),
                    amount: command.amount.clone(),
                    status: "voided".into(),
                    provider_reference: None,
                    reason: Some("nothing was authorized".into()),
                    updated_at: self.context.now_text.clone(),
                };
                match provider.find(&command.order_id)? {
                    Some((reference, status)) if status == "authorized" || status == "captured" => {
                        payment.provider_reference = Some(reference);
                        payment.status = status;
                        payment.reason = None;
                        payment
                    }
                    _ => return Ok(Change::write(payment)),
                }
            }
        };
        let reference = payment.provider_reference.clone().unwrap_or_default();
        let (answer, status) = match payment.status.as_str() {
            "authorized" => (provider.void(&reference)?, "voided"),
            "captured" => (provider.refund(&reference)?, "refunded"),
            _ => return Ok(Change::announce(&payment)),
        };
        match answer {
            Answer::Approved { .. } => payment.status = status.into(),
            Answer::Declined { reason } => return Err(format!("{status} refused by the provider: {reason}")),
        }
        Ok(Change::write(payment))
    }
}

/// A handled command's effect: the row to write, and the event announcing it.
struct Change {
    write: Option<Payment>,
    announce: ShopEvent,
}

impl Change {
    fn write(payment: Payment) -> Self {
        Self {
            announce: announcement(&payment),
            write: Some(payment),
        }
    }

    fn announce(payment: &Payment) -> Self {
        Self {
            write: None,
            announce: announcement(payment),
        }
    }
}

/// The event that says what state `payment` is in.
fn announcement(payment: &Payment) -> ShopEvent {
    let result = PaymentResult {
        order_id: payment.order_id.clone(),
        payment_id: Some(payment.id.clone()),
        amount: payment.amount.clone(),
        reason: payment.reason.clone(),
    };
    match payment.status.as_str() {
        "declined" => ShopEvent::PaymentDeclined(result),
        "captured" => ShopEvent::PaymentCaptured(result),
        "voided" => ShopEvent::PaymentVoided(result),
        "refunded" => ShopEvent::PaymentRefunded(result),
        _ => ShopEvent::PaymentAuthorized(result),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use shop_domain::sql::testing::{MemoryDb, sequential_ids};

    use super::*;

    /// A provider that approves everything but `tok_declined`, can be down, and
    /// counts calls.
    #[derive(Default)]
    struct FakeProvider {
        calls: RefCell<Vec<String>>,
        down: bool,
        refuse_capture: bool,
        /// The status of a charge under any key, as `find` reports it.
        holds: RefCell<Option<String>>,
    }

    impl FakeProvider {
        fn answer(&self, call: String, approved: bool) -> Result<Answer, String> {
            if self.down {
                return Err("provider unreachable".into());
            }
            self.calls.borrow_mut().push(call);
            Ok(match approved {
                true => Answer::Approved {
                    reference: "ch-1".into(),
                },
                false => Answer::Declined {
                    reason: "card declined".into(),
                },
            })
        }
    }

    impl Provider for FakeProvider {
        fn authorize(&self, key: &str, token: &str, _: &Money) -> Result<Answer, String> {
            self.answer(format!("authorize {key}"), token != "tok_declined")
        }
        fn capture(&self, reference: &str) -> Result<Answer, String> {
            self.answer(format!("capture {reference}"), !self.refuse_capture)
        }
        fn void(&self, reference: &str) -> Result<Answer, String> {
            self.answer(format!("void {reference}"), true)
        }
        fn refund(&self, reference: &str) -> Result<Answer, String> {
            self.answer(format!("refund {reference}"), true)
        }
        fn find(&self, key: &str) -> Result<Option<(String, String)>, String> {
            self.calls.borrow_mut().push(format!("find {key}"));
            Ok(self
                .holds
                .borrow()
                .clone()
                .map(|status| ("ch-lost".to_string(), status)))
        }
    }

    fn command(order: &str) -> PaymentCommand {
        PaymentCommand {
            order_id: order.into(),
            amount: Money {
                amount: 900,
                currency: "EUR".into(),
            },
            user_id: Some("u-1".into()),
        }
    }

    /// A fresh ledger for one test.
    fn with_ledger(test: impl FnOnce(&Ledger<'_, MemoryDb>)) {
        let db = MemoryDb::default();
        let new_id = sequential_ids();
        let context = Context {
            now: 0,
            now_text: "t".into(),
            new_id: &new_id,
        };
        let ledger = Ledger::new(&db, &context);
        ledger.migrate().unwrap();
        test(&ledger);
    }

    /// The orders service hands `token` over, then the saga asks for the authorization.
    fn authorize_request(ledger: &Ledger<'_, MemoryDb>, order: &str, token: &str) -> ShopEvent {
        ledger.keep_payment_method(order, "u-1", token).unwrap();
        ShopEvent::PaymentAuthorizeRequested(command(order))
    }

    fn outcome(handled: Result<Handled, String>) -> &'static str {
        match handled.unwrap() {
            Handled::Done(event) => event.event_type(),
            other => panic!("{other:?}"),
        }
    }

    /// No token stays for good: an answered command drops it (a void for an order
    /// never authorized too), its owner may withdraw it, and an hour after it was
    /// kept the next placement sweeps it.
    #[test]
    fn payment_tokens_go_when_answered_withdrawn_or_left_for_an_hour() {
        let db = MemoryDb::default();
        let new_id = sequential_ids();
        let at = |now: i64| Context {
            now,
            now_text: shop_domain::time::rfc3339(now),
            new_id: &new_id,
        };
        let (placed, later) = (at(1_800_000_000), at(1_800_000_000 + PAYMENT_METHOD_TTL_SECS + 1));
        let ledger = Ledger::new(&db, &placed);
        ledger.migrate().unwrap();
        for order in ["o-left", "o-void", "o-gone"] {
            ledger.keep_payment_method(order, "u-1", "tok_ok").unwrap();
        }
        let void = ShopEvent::PaymentVoidRequested(command("o-void"));
        ledger.handle("e-1", &void, &FakeProvider::default()).unwrap();
        assert_eq!(ledger.payment_token("o-void").unwrap(), None, "answered");

        ledger.forget_payment_method("o-gone", "u-2").unwrap();
        assert!(
            ledger.payment_token("o-gone").unwrap().is_some(),
            "not another's to withdraw"
        );
        ledger.forget_payment_method("o-gone", "u-1").unwrap();
        assert_eq!(ledger.payment_token("o-gone").unwrap(), None, "withdrawn");

        assert!(ledger.payment_token("o-left").unwrap().is_some());
        Ledger::new(&db, &later)
            .keep_payment_method("o-next", "u-1", "tok_ok")
            .unwrap();
        assert_eq!(ledger.payment_token("o-left").unwrap(), None, "swept after an hour");
        assert!(ledger.payment_token("o-next").unwrap().is_some());
    }

    #[test]
    fn each_command_is_idempotent_per_order() {
        with_ledger(|ledger| {
            let provider = FakeProvider::default();
            let authorize = authorize_request(ledger, "o-1", "tok_ok");

            let down = FakeProvider {
                down: true,
                ..FakeProvider::default()
            };
            assert!(ledger.handle("e-1", &authorize, &down).is_err());
            assert_eq!(
                ledger.payment("o-1").unwrap(),
                None,
                "nothing recorded: the retry starts afresh"
            );

            assert_eq!(
                outcome(ledger.handle("e-1", &authorize, &provider)),
                "shop.payment.authorized"
            );
            assert_eq!(ledger.handle("e-1", &authorize, &provider), Ok(Handled::Duplicate));
            assert_eq!(
                outcome(ledger.handle("e-2", &authorize, &provider)),
                "shop.payment.authorized",
                "asked again: the answer is repeated"
            );
            let capture = ShopEvent::PaymentCaptureRequested(command("o-1"));
            assert_eq!(
                outcome(ledger.handle("e-3", &capture, &provider)),
                "shop.payment.captured"
            );
            assert_eq!(
                outcome(ledger.handle("e-4", &capture, &provider)),
                "shop.payment.captured"
            );
            let void = ShopEvent::PaymentVoidRequested(command("o-1"));
            assert_eq!(
                outcome(ledger.handle("e-5", &void, &provider)),
                "shop.payment.refunded",
                "giving back a capture is a refund"
            );
            assert_eq!(outcome(ledger.handle("e-6", &void, &provider)), "shop.payment.refunded");
            assert_eq!(
                *provider.calls.borrow(),
                ["authorize o-1", "capture ch-1", "refund ch-1"],
                "the provider saw each move once"
            );
            assert_eq!(ledger.payment("o-1").unwrap().unwrap().status, "refunded");

            let declined = authorize_request(ledger, "o-2", "tok_declined");
            assert_eq!(
                outcome(ledger.handle("e-7", &declined, &provider)),
                "shop.payment.declined"
            );
            let void = ShopEvent::PaymentVoidRequested(command("o-2"));
            assert_eq!(outcome(ledger.handle("e-8", &void, &provider)), "shop.payment.declined");
            let never = ShopEvent::PaymentVoidRequested(command("o-3"));
            assert_eq!(outcome(ledger.handle("e-9", &never, &provider)), "shop.payment.voided");
            let replayed = authorize_request(ledger, "o-3", "tok_ok");
            assert_eq!(
                outcome(ledger.handle("e-9b", &replayed, &provider)),
                "shop.payment.voided",
                "an authorization arriving after its void is not charged"
            );
            assert!(!provider.calls.borrow().contains(&"authorize o-3".to_string()));

            // The provider authorized, but the answer was lost before the ledger recorded
            // it: the void finds the charge by the order's key and releases it.
            *provider.holds.borrow_mut() = Some("authorized".into());
            let lost = ShopEvent::PaymentVoidRequested(command("o-5"));
            assert_eq!(outcome(ledger.handle("e-11", &lost, &provider)), "shop.payment.voided");
            assert!(
                provider
                    .calls
                    .borrow()
                    .ends_with(&["find o-5".to_string(), "void ch-lost".to_string()])
            );
            let capture_nothing = ShopEvent::PaymentCaptureRequested(command("o-4"));
            assert!(ledger.handle("e-10", &capture_nothing, &provider).is_err());
        });
    }

    #[test]
    fn a_refused_capture_is_announced_and_the_authorization_can_still_be_voided() {
        with_ledger(|ledger| {
            let provider = FakeProvider {
                refuse_capture: true,
                ..FakeProvider::default()
            };
            let authorize = authorize_request(ledger, "o-1", "tok_ok");
            assert_eq!(
                outcome(ledger.handle("e-1", &authorize, &provider)),
                "shop.payment.authorized"
            );
            let capture = ShopEvent::PaymentCaptureRequested(command("o-1"));
            assert_eq!(
                outcome(ledger.handle("e-2", &capture, &provider)),
                "shop.payment.declined"
            );
            assert_eq!(ledger.payment("o-1").unwrap().unwrap().status, "authorized");
            let void = ShopEvent::PaymentVoidRequested(command("o-1"));
            assert_eq!(outcome(ledger.handle("e-3", &void, &provider)), "shop.payment.voided");
        });
    }

    #[test]
    fn the_token_stays_here_until_its_authorization_is_answered() {
        with_ledger(|ledger| {
            ledger.keep_payment_method("o-1", "u-1", "tok_ok").unwrap();
            assert_eq!(
                ledger.keep_payment_method("o-1", "u-1", "tok_ok"),
                Ok(()),
                "handing the same token over again is a no-op"
            );
            assert_eq!(
                ledger.keep_payment_method("o-1", "u-1", "tok_other"),
                Err(KeepRefused::Conflict)
            );
            assert_eq!(
                ledger.keep_payment_method("o-1", "u-2", "tok_ok"),
                Err(KeepRefused::Conflict),
                "another user cannot attach a method to this order"
            );
            let authorize = ShopEvent::PaymentAuthorizeRequested(command("o-1"));
            let down = FakeProvider {
                down: true,
                ..FakeProvider::default()
            };
            assert!(ledger.handle("e-1", &authorize, &down).is_err());
            assert_eq!(
                ledger.payment_token("o-1").unwrap().as_deref(),
                Some("tok_ok"),
                "kept for the retry"
            );
            let provider = FakeProvider::default();
            assert_eq!(
                outcome(ledger.handle("e-1", &authorize, &provider)),
                "shop.payment.authorized"
            );
            assert_eq!(ledger.payment_token("o-1").unwrap(), None, "deleted once answered");

            let unknown = ShopEvent::PaymentAuthorizeRequested(command("o-2"));
            assert_eq!(
                outcome(ledger.handle("e-2", &unknown, &provider)),
                "shop.payment.declined",
                "no token handed over: declined, not retried forever"
            );
            assert!(!provider.calls.borrow().contains(&"authorize o-2".to_string()));
        });
    }
}
