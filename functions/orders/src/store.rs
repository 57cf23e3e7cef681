//! The order event store: an append-only history per order (sequence numbers, the
//! (order, seq) key as optimistic concurrency), the `orders` projection for lists and
//! timeouts, idempotency keys, the inbox and the outbox, all in one database and
//! changed together in one transaction.

use shop_domain::ShopEvent;
use shop_domain::events::OrderTimedOut;
use shop_domain::sql::{Sql, SqlError, SqlValue, execute_together, in_transaction, migrate, rows_insert, with_schema};
use shop_domain::types::OrderStatus;
use shop_domain::{inbox, outbox};

use crate::saga::{Order, Recorded, Timeouts, decide, publishes};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS order_events (
        order_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL, payload BLOB NOT NULL, at INTEGER NOT NULL, time TEXT NOT NULL,
        PRIMARY KEY (order_id, seq))",
    "CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL, step TEXT NOT NULL,
        total_amount INTEGER NOT NULL, currency TEXT NOT NULL, reason TEXT, deadline INTEGER,
        version INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at)",
    "CREATE INDEX IF NOT EXISTS orders_by_deadline ON orders (status, deadline)",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (
        user_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, order_id TEXT NOT NULL,
        PRIMARY KEY (user_id, idempotency_key))",
    // A digest of the request that first used the key: the same key with another
    // request is refused rather than answered with the first one's order.
    "ALTER TABLE idempotency_keys ADD COLUMN request_digest TEXT",
    inbox::SCHEMA,
    outbox::SCHEMA,
    outbox::MIGRATION[0],
    outbox::MIGRATION[1],
    outbox::MIGRATION[2],
    outbox::MIGRATION[3],
];

/// How many times a conflicting append is retried on a fresh read.
const APPEND_ATTEMPTS: usize = 5;

pub struct Context<'a> {
    pub now: i64,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
    pub timeouts: Timeouts,
    /// Orders one customer may have PENDING at once (0: no limit).
    pub max_pending_per_customer: i64,
}

impl<'a> Context<'a> {
    /// The context at `now`, the saga's timeouts read with `number` (a component
    /// variable by name, or the default given).
    pub fn configured(
        now: i64,
        new_id: &'a dyn Fn() -> String,
        number: impl Fn(&str, i64) -> Result<i64, String>,
    ) -> Result<Self, String> {
        Ok(Self {
            now,
            now_text: shop_domain::time::rfc3339(now),
            new_id,
            timeouts: Timeouts {
                inventory_secs: number("inventory_timeout_secs", 30)?,
                payment_secs: number("payment_timeout_secs", 30)?,
                completion_secs: number("completion_timeout_secs", 30)?,
            },
            max_pending_per_customer: number("max_pending_orders_per_customer", 5)?,
        })
    }
}

#[derive(Debug, PartialEq)]
pub enum StoreError {
    /// Another writer appended to the same order first.
    Conflict,
    /// The customer has this many orders PENDING already: nothing was placed.
    TooManyPending(i64),
    Failed(String),
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Conflict(_) => StoreError::Conflict,
            SqlError::Other(m) => StoreError::Failed(m),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("concurrent update, retries exhausted"),
            StoreError::TooManyPending(max) => write!(f, "{max} orders of this customer are PENDING"),
            StoreError::Failed(m) => f.write_str(m),
        }
    }
}

/// What handling an event did to its order.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Changed(Order),
    Unchanged(Order),
    /// The event id was handled before.
    Duplicate,
    /// No such order here.
    UnknownOrder,
}

/// A page of one customer's orders, newest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub status: &'static str,
    pub total: shop_domain::types::Money,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub struct Orders<'a, D: Sql> {
    db: &'a D,
    context: &'a Context<'a>,
}

/// The status as the API spells it.
pub fn status_text(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => "PENDING",
        OrderStatus::Confirmed => "CONFIRMED",
        OrderStatus::Cancelled => "CANCELLED",
    }
}

fn status_of(text: &str) -> OrderStatus {
    match text {
        "CONFIRMED" => OrderStatus::Confirmed,
        "CANCELLED" => OrderStatus::Cancelled,
        _ => OrderStatus::Pending,
    }
}

impl<'a, D: Sql> Orders<'a, D> {
    pub fn new(db: &'a D, context: &'a Context<'a>) -> Self {
        Self { db, context }
    }

    pub fn migrate(&self) -> Result<(), SqlError> {
        migrate(self.db, SCHEMA)
    }

    pub fn history(&self, order_id: &str) -> Result<Vec<Recorded>, StoreError> {
        let rows = self.db.execute(
            "SELECT seq, event_id, event_type, payload, at, time FROM order_events WHERE order_id = ? ORDER BY seq",
            &[order_id.into()],
        )?;
        rows.iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
                let payload = match r.get(3) {
                    Some(SqlValue::Blob(b)) => b.as_slice(),
                    _ => &[],
                };
                let event = ShopEvent::decode(&text(2), payload)
                    .map_err(|e| StoreError::Failed(format!("order {order_id}: stored event unreadable: {e}")))?;
                Ok(Recorded {
                    seq: r.first().and_then(SqlValue::integer).unwrap_or(0),
                    event_id: text(1),
                    at: r.get(4).and_then(SqlValue::integer).unwrap_or(0),
                    time: text(5),
                    event,
                })
            })
            .collect()
    }

    /// The projected status of `order_id` (`PENDING`, …) if `user_id` owns it, or if
    /// `any_owner`: one indexed read, for waiting on a saga.
    pub fn status_of(&self, order_id: &str, user_id: &str, any_owner: bool) -> Result<Option<String>, StoreError> {
        let rows = if any_owner {
            self.db
                .execute("SELECT status FROM orders WHERE id = ?", &[order_id.into()])?
        } else {
            self.db.execute(
                "SELECT status FROM orders WHERE id = ? AND user_id = ?",
                &[order_id.into(), user_id.into()],
            )?
        };
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::text)
            .map(str::to_string))
    }

    pub fn load(&self, order_id: &str) -> Result<Option<Order>, StoreError> {
        Ok(Order::fold(&self.history(order_id)?))
    }

    /// Appends `events` after `prior` (none for a new order), puts the published ones
    /// in the outbox under the same ids, and updates the projection. Fails with
    /// `Conflict` when someone else appended first. The order it returns is `prior`
    /// with the new events applied, not re-read.
    fn append(&self, order_id: &str, prior: Option<Order>, events: Vec<ShopEvent>) -> Result<Order, StoreError> {
        let ctx = self.context;
        let version = prior.as_ref().map_or(0, |o| o.version);
        let appended: Vec<Recorded> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Recorded {
                seq: version + 1 + i as i64,
                event_id: (ctx.new_id)(),
                at: ctx.now,
                time: ctx.now_text.clone(),
                event,
            })
            .collect();
        let events = rows_insert(
            "INSERT INTO order_events (order_id, seq, event_id, event_type, payload, at, time)",
            appended.iter().map(|recorded| {
                [
                    order_id.into(),
                    recorded.seq.into(),
                    recorded.event_id.clone().into(),
                    recorded.event.event_type().into(),
                    SqlValue::Blob(recorded.event.to_json()),
                    recorded.at.into(),
                    recorded.time.clone().into(),
                ]
            }),
        )
        .ok_or_else(|| StoreError::Failed(format!("order {order_id}: no events to append")))?;
        let order = match prior {
            Some(prior) => Some(prior.then(&appended)),
            None => Order::fold(&appended),
        }
        .ok_or_else(|| StoreError::Failed(format!("order {order_id} has no OrderPlaced")))?;
        // The events and the projection they make in one round trip (on PostgreSQL);
        // a concurrent append of the same `seq` fails both.
        execute_together(self.db, events, self.projection(&order))?;
        // Those events that are published: one statement more.
        outbox::record_all(
            self.db,
            appended
                .iter()
                .filter(|recorded| publishes(&recorded.event))
                .map(|recorded| (recorded.event_id.clone(), ctx.now_text.clone(), &recorded.event)),
        )?;
        Ok(order)
    }

    /// The upsert of `order`'s row in the `orders` projection.
    fn projection(&self, order: &Order) -> (&'static str, Vec<SqlValue>) {
        (
            "INSERT INTO orders (id, user_id, status, step, total_amount, currency, reason, deadline, version, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, step = excluded.step, \
             reason = excluded.reason, deadline = excluded.deadline, version = excluded.version, \
             updated_at = excluded.updated_at",
            vec![
                order.id.clone().into(),
                order.user_id.clone().into(),
                status_text(order.status).into(),
                order.step.name().into(),
                order.total.amount.into(),
                order.total.currency.clone().into(),
                order.reason.clone().into(),
                order.deadline(&self.context.timeouts).into(),
                order.version.into(),
                order.created_at.clone().into(),
                order.updated_at.clone().into(),
            ],
        )
    }

    /// How many orders of `user_id` are PENDING.
    pub fn pending_count(&self, user_id: &str) -> Result<i64, StoreError> {
        let rows = self.db.execute(
            "SELECT COUNT(*) FROM orders WHERE user_id = ? AND status = 'PENDING'",
            &[user_id.into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::integer)
            .unwrap_or(0))
    }

    /// The order a customer already placed with `idempotency_key`, and the digest of
    /// the request that placed it (`None` for keys kept before digests were).
    pub fn by_idempotency_key(
        &self,
        user_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<(Order, Option<String>)>, StoreError> {
        let rows = self.db.execute(
            "SELECT order_id, request_digest FROM idempotency_keys WHERE user_id = ? AND idempotency_key = ?",
            &[user_id.into(), idempotency_key.into()],
        )?;
        let Some(row) = rows.first() else { return Ok(None) };
        let digest = row.get(1).and_then(SqlValue::text).map(str::to_string);
        match row.first().and_then(SqlValue::text) {
            Some(order_id) => Ok(self.load(order_id)?.map(|order| (order, digest))),
            None => Ok(None),
        }
    }

    /// Records a new order (OrderPlaced and its first command). With an idempotency
    /// key (and the digest of its request) the customer used before, nothing is
    /// written and that order is returned with the digest it was placed with.
    pub fn place(
        &self,
        placed: ShopEvent,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(Order, Option<String>), StoreError> {
        let ShopEvent::OrderPlaced(details) = &placed else {
            return Err(StoreError::Failed("place needs an OrderPlaced".into()));
        };
        let reserve = ShopEvent::InventoryReserveRequested(shop_domain::events::InventoryCommand {
            order_id: details.order_id.clone(),
            lines: details.lines.clone(),
        });
        in_transaction(self.db, || {
            if let Some((key, digest)) = idempotency {
                let claimed = self.db.execute(
                    "INSERT INTO idempotency_keys (user_id, idempotency_key, order_id, request_digest) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING order_id",
                    &[
                        details.user_id.clone().into(),
                        key.into(),
                        details.order_id.clone().into(),
                        digest.into(),
                    ],
                )?;
                if claimed.is_empty() {
                    // Another request with this key won the race.
                    return self
                        .by_idempotency_key(&details.user_id, key)?
                        .ok_or_else(|| StoreError::Failed(format!("idempotency key {key} names no order")));
                }
            }
            // Counted inside the placement's transaction, so parallel placements of one
            // customer take turns: SQLite's writers are serialized already, and on
            // PostgreSQL a transaction lock on the customer does it.
            let max_pending = self.context.max_pending_per_customer;
            if max_pending > 0 {
                if self.db.dialect() == shop_domain::sql::Dialect::Postgres {
                    // (Wrapped: the lock function returns `void`, a type no client maps.)
                    self.db.execute(
                        "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext(?))) AS locked",
                        &[format!("orders-pending:{}", details.user_id).into()],
                    )?;
                }
                if self.pending_count(&details.user_id)? >= max_pending {
                    return Err(StoreError::TooManyPending(max_pending));
                }
            }
            let order = self.append(&details.order_id, None, vec![placed.clone(), reserve.clone()])?;
            Ok((order, idempotency.map(|(_, digest)| digest.to_string())))
        })
    }

    /// Lets `incoming` act on its order: loads it, decides, appends, in one
    /// transaction with the inbox entry for `event_id` (when it came from the broker).
    /// The schema is applied first only when it is not (no need to [`Self::migrate`]
    /// before).
    pub fn apply(&self, event_id: Option<&str>, order_id: &str, incoming: &ShopEvent) -> Result<Outcome, StoreError> {
        with_schema(self.db, SCHEMA, || self.apply_retrying(event_id, order_id, incoming))
    }

    /// [`Self::apply`], again while it loses a race to append.
    fn apply_retrying(
        &self,
        event_id: Option<&str>,
        order_id: &str,
        incoming: &ShopEvent,
    ) -> Result<Outcome, StoreError> {
        let mut attempts = 0;
        loop {
            let act = || {
                let Some(order) = self.load(order_id)? else {
                    return Ok(Outcome::UnknownOrder);
                };
                let events = decide(&order, incoming);
                if events.is_empty() {
                    return Ok(Outcome::Unchanged(order));
                }
                self.append(order_id, Some(order), events).map(Outcome::Changed)
            };
            let result = match event_id {
                Some(id) => inbox::handle_once(self.db, SCHEMA, id, &self.context.now_text, act)
                    .map(|done| done.unwrap_or(Outcome::Duplicate)),
                None => in_transaction(self.db, act),
            };
            attempts += 1;
            match result {
                Err(StoreError::Conflict) if attempts < APPEND_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    /// Pending orders whose current step has waited past its timeout, as the
    /// timeout event to apply to each.
    pub fn overdue(&self, limit: i64) -> Result<Vec<(String, ShopEvent)>, StoreError> {
        let rows = self.db.execute(
            "SELECT id, step FROM orders WHERE status = 'PENDING' AND deadline <= ? ORDER BY deadline LIMIT ?",
            &[self.context.now.into(), limit.into()],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id = r.first().and_then(SqlValue::text)?.to_string();
                let step = r.get(1).and_then(SqlValue::text)?.to_string();
                let event = ShopEvent::OrderTimedOut(OrderTimedOut {
                    order_id: id.clone(),
                    step,
                });
                Some((id, event))
            })
            .collect())
    }

    pub fn list(&self, user_id: &str, page: u32, per_page: u32) -> Result<(Vec<Summary>, i64), StoreError> {
        let total = self
            .db
            .execute("SELECT COUNT(*) FROM orders WHERE user_id = ?", &[user_id.into()])?
            .first()
            .and_then(|r| r.first().and_then(SqlValue::integer))
            .unwrap_or(0);
        let rows = self.db.execute(
            "SELECT id, status, total_amount, currency, reason, created_at, updated_at FROM orders \
             WHERE user_id = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            &[
                user_id.into(),
                i64::from(per_page).into(),
                (i64::from(page - 1) * i64::from(per_page)).into(),
            ],
        )?;
        let summaries = rows
            .iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
                Summary {
                    id: text(0),
                    status: status_text(status_of(&text(1))),
                    total: shop_domain::types::Money {
                        amount: r.get(2).and_then(SqlValue::integer).unwrap_or(0),
                        currency: text(3),
                    },
                    reason: r.get(4).and_then(SqlValue::text).map(str::to_string),
                    created_at: text(5),
                    updated_at: text(6),
                }
            })
            .collect();
        Ok((summaries, total))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use shop_domain::events::{InventoryResult, OrderPlaced};
    use shop_domain::sql::testing::MemoryDb;
    use shop_domain::types::{Money, OrderLine};

    use super::*;

    thread_local!(static IDS: Cell<u32> = const { Cell::new(0) });

    fn new_id() -> String {
        IDS.with(|ids| {
            ids.set(ids.get() + 1);
            format!("id-{}", ids.get())
        })
    }

    fn context(now: i64) -> Context<'static> {
        Context {
            now,
            now_text: format!("t{now}"),
            new_id: &new_id,
            timeouts: Timeouts {
                inventory_secs: 10,
                payment_secs: 10,
                completion_secs: 10,
            },
            max_pending_per_customer: 5,
        }
    }

    fn placed(order_id: &str, user_id: &str) -> ShopEvent {
        let price = Money {
            amount: 300,
            currency: "EUR".into(),
        };
        ShopEvent::OrderPlaced(OrderPlaced {
            order_id: order_id.into(),
            user_id: user_id.into(),
            lines: vec![OrderLine {
                product_id: "p-1".into(),
                sku: "MUG".into(),
                quantity: 1,
                unit_price: price.clone(),
            }],
            total: price,
        })
    }

    fn reserved(order_id: &str) -> ShopEvent {
        ShopEvent::InventoryReserved(InventoryResult {
            order_id: order_id.into(),
            reason: None,
            shortages: vec![],
        })
    }

    /// The pending limit is checked inside the placement's transaction: a sixth
    /// order of a customer with five PENDING is not placed, nor its key claimed.
    #[test]
    fn a_customer_with_the_most_orders_pending_places_no_more() {
        let db = MemoryDb::default();
        let ctx = context(100);
        let orders = Orders::new(&db, &ctx);
        orders.migrate().unwrap();
        for i in 0..5 {
            orders.place(placed(&format!("o-{i}"), "u-1"), None).unwrap();
        }
        assert_eq!(
            orders.place(placed("o-6", "u-1"), Some(("key-6", "d"))),
            Err(StoreError::TooManyPending(5))
        );
        assert_eq!(orders.by_idempotency_key("u-1", "key-6").unwrap(), None);
        assert_eq!(orders.pending_count("u-1").unwrap(), 5);
        orders
            .place(placed("o-7", "u-2"), None)
            .expect("another customer places");
    }

    #[test]
    fn placing_records_the_order_its_first_command_and_the_projection() {
        let db = MemoryDb::default();
        let ctx = context(100);
        let orders = Orders::new(&db, &ctx);
        orders.migrate().unwrap();
        let (order, _) = orders.place(placed("o-1", "u-1"), Some(("key-1", "d-1"))).unwrap();
        assert_eq!((order.version, order.status), (2, OrderStatus::Pending));
        let types: Vec<&str> = orders
            .history("o-1")
            .unwrap()
            .iter()
            .map(|r| r.event.event_type())
            .collect();
        assert_eq!(types, ["shop.order.placed", "shop.inventory.reserve_requested"]);
        let published: Vec<&str> = outbox::read_all(&db)
            .unwrap()
            .iter()
            .map(ShopEvent::event_type)
            .collect();
        assert_eq!(published, types, "both leave through the outbox");

        let (again, digest) = orders.place(placed("o-2", "u-1"), Some(("key-1", "d-2"))).unwrap();
        assert_eq!(
            (again.id.as_str(), digest.as_deref()),
            ("o-1", Some("d-1")),
            "the same key: the first order, with its request's digest"
        );
        let (other_user, _) = orders.place(placed("o-3", "u-2"), Some(("key-1", "d-1"))).unwrap();
        assert_eq!(other_user.id, "o-3", "keys are per customer");
        let (mine, total) = orders.list("u-1", 1, 10).unwrap();
        assert_eq!((mine.len(), total), (1, 1));
        assert_eq!(mine[0].status, "PENDING");
    }

    #[test]
    fn events_apply_once_and_a_stale_append_conflicts() {
        let db = MemoryDb::default();
        let ctx = context(100);
        let orders = Orders::new(&db, &ctx);
        orders.migrate().unwrap();
        orders.place(placed("o-1", "u-1"), None).unwrap();
        let outcome = orders.apply(Some("e-1"), "o-1", &reserved("o-1")).unwrap();
        let Outcome::Changed(order) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(order.version, 4, "reserved + authorize_requested");
        assert_eq!(
            orders.load("o-1").unwrap().as_ref(),
            Some(&order),
            "the order applied in memory is the order its history folds to"
        );
        assert_eq!(
            orders.apply(Some("e-1"), "o-1", &reserved("o-1")).unwrap(),
            Outcome::Duplicate
        );
        assert!(matches!(
            orders.apply(Some("e-2"), "o-1", &reserved("o-1")).unwrap(),
            Outcome::Unchanged(_)
        ));
        assert_eq!(
            orders.apply(Some("e-3"), "nope", &reserved("nope")).unwrap(),
            Outcome::UnknownOrder
        );

        // A writer that read version 2 loses against the one that appended 3 and 4.
        let history = orders.history("o-1").unwrap();
        let read_at_2 = Order::fold(&history[..2]).unwrap();
        assert_eq!(read_at_2.version, 2);
        let stale = orders.append("o-1", Some(read_at_2), vec![reserved("o-1")]);
        assert_eq!(stale, Err(StoreError::Conflict));
    }

    #[test]
    fn overdue_steps_time_out_into_compensation() {
        let db = MemoryDb::default();
        let ctx = context(100);
        let orders = Orders::new(&db, &ctx);
        orders.migrate().unwrap();
        orders.place(placed("o-1", "u-1"), None).unwrap();
        orders.apply(Some("e-1"), "o-1", &reserved("o-1")).unwrap();
        assert!(orders.overdue(10).unwrap().is_empty(), "not yet");

        let later = context(111);
        let orders = Orders::new(&db, &later);
        let due = orders.overdue(10).unwrap();
        assert_eq!(due.len(), 1);
        let (id, timeout) = &due[0];
        let Outcome::Changed(order) = orders.apply(None, id, timeout).unwrap() else {
            panic!("the timeout acts")
        };
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(order.reason.as_deref(), Some("timed out waiting for payment"));
        assert!(
            orders.overdue(10).unwrap().is_empty(),
            "concluded orders have no deadline"
        );
        let published: Vec<&str> = outbox::read_all(&db)
            .unwrap()
            .iter()
            .map(ShopEvent::event_type)
            .collect();
        assert!(
            published.ends_with(&[
                "shop.inventory.release_requested",
                "shop.payment.void_requested",
                "shop.order.cancelled"
            ]),
            "{published:?}"
        );
    }
}
