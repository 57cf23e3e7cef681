//! Stock levels and reservations in SQL. Every saga command is handled in one
//! transaction with its inbox entry (dedupe by event id) and its outcome event in
//! the outbox.

use std::collections::BTreeMap;

use shop_domain::ShopEvent;
use shop_domain::events::{InventoryCommand, InventoryResult};
use shop_domain::sql::{Sql, SqlError, SqlValue, in_transaction, migrate, with_schema};
use shop_domain::types::StockLevel;
use shop_domain::{inbox, outbox};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS stock (
        sku TEXT PRIMARY KEY,
        available INTEGER NOT NULL CHECK (available >= 0),
        reserved INTEGER NOT NULL CHECK (reserved >= 0),
        updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservations (
        order_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
        state TEXT NOT NULL, expires_at INTEGER NOT NULL,
        PRIMARY KEY (order_id, sku))",
    "CREATE INDEX IF NOT EXISTS reservations_due ON reservations (state, expires_at)",
    inbox::SCHEMA,
    outbox::SCHEMA,
    outbox::MIGRATION[0],
    outbox::MIGRATION[1],
    outbox::MIGRATION[2],
    outbox::MIGRATION[3],
];

const RESERVED: &str = "reserved";
const RELEASED: &str = "released";
const COMMITTED: &str = "committed";

/// Most stale orders released per sweep, so one cron tick stays short.
const EXPIRY_BATCH: i64 = 100;

/// What the service needs besides SQL.
pub struct Context<'a> {
    pub now: i64,
    pub now_text: String,
    pub new_id: &'a dyn Fn() -> String,
    /// How long a reservation may wait for its commit.
    pub reservation_ttl_secs: i64,
}

impl<'a> Context<'a> {
    /// The context at `now`, the reservation TTL read with `number` (a component
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
            reservation_ttl_secs: number("reservation_ttl_secs", 15 * 60)?,
        })
    }
}

/// The saga command `event` carries for this service, if it is one (its topic also
/// carries the results the orders service reads).
pub fn command_of(event: &ShopEvent) -> Option<&InventoryCommand> {
    match event {
        ShopEvent::InventoryReserveRequested(c)
        | ShopEvent::InventoryReleaseRequested(c)
        | ShopEvent::InventoryCommitRequested(c) => Some(c),
        _ => None,
    }
}

pub struct Inventory<'a, D: Sql> {
    db: &'a D,
    context: &'a Context<'a>,
}

/// What a delivered event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Handled now; this outcome is in the outbox.
    Done(Box<ShopEvent>),
    /// Its id was handled before: nothing changed.
    Duplicate,
    /// Not a command for this service.
    Ignored,
}

fn quantity(value: Option<&SqlValue>) -> u32 {
    value
        .and_then(SqlValue::integer)
        .and_then(|q| u32::try_from(q).ok())
        .unwrap_or(0)
}

impl<'a, D: Sql> Inventory<'a, D> {
    pub fn new(db: &'a D, context: &'a Context<'a>) -> Self {
        Self { db, context }
    }

    pub fn migrate(&self) -> Result<(), SqlError> {
        migrate(self.db, SCHEMA)
    }

    pub fn level(&self, sku: &str) -> Result<Option<StockLevel>, SqlError> {
        let rows = self.db.execute(
            "SELECT sku, available, reserved FROM stock WHERE sku = ?",
            &[sku.into()],
        )?;
        Ok(rows.first().map(|r| StockLevel {
            sku: sku.to_string(),
            available: quantity(r.get(1)),
            reserved: quantity(r.get(2)),
        }))
    }

    /// Sets how many units of `sku` are free to reserve (reservations held stay).
    pub fn set_available(&self, sku: &str, available: u32) -> Result<StockLevel, SqlError> {
        self.db.execute(
            "INSERT INTO stock (sku, available, reserved, updated_at) VALUES (?, ?, 0, ?) \
             ON CONFLICT (sku) DO UPDATE SET available = excluded.available, updated_at = excluded.updated_at",
            &[
                sku.into(),
                i64::from(available).into(),
                self.context.now_text.clone().into(),
            ],
        )?;
        Ok(self.level(sku)?.expect("the row just written"))
    }

    /// Handles one delivered event exactly once, applying the schema first only when
    /// it is not (no need to [`Self::migrate`] before).
    pub fn handle(&self, event_id: &str, event: &ShopEvent) -> Result<Handled, SqlError> {
        let Some(command) = command_of(event) else {
            return Ok(Handled::Ignored);
        };
        with_schema(self.db, SCHEMA, || {
            let handled = inbox::handle_once(self.db, SCHEMA, event_id, &self.context.now_text, || {
                let outcome = match event {
                    ShopEvent::InventoryReserveRequested(_) => self.reserve(command)?,
                    ShopEvent::InventoryReleaseRequested(_) => self.release(command, None)?,
                    _ => self.commit(command)?,
                };
                self.record(&outcome)?;
                Ok(Handled::Done(Box::new(outcome)))
            })?;
            Ok(handled.unwrap_or(Handled::Duplicate))
        })
    }

    fn record(&self, event: &ShopEvent) -> Result<(), SqlError> {
        outbox::record(self.db, (self.context.new_id)(), self.context.now_text.clone(), event)
    }

    /// The order's reservation rows: (sku, quantity, state).
    fn reservations(&self, order_id: &str) -> Result<Vec<(String, u32, String)>, SqlError> {
        let rows = self.db.execute(
            "SELECT sku, quantity, state FROM reservations WHERE order_id = ? ORDER BY sku",
            &[order_id.into()],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default().to_string();
                (text(0), quantity(r.get(1)), text(2))
            })
            .collect())
    }

    fn result(order_id: &str, reason: Option<&str>, shortages: Vec<String>) -> InventoryResult {
        InventoryResult {
            order_id: order_id.to_string(),
            reason: reason.map(str::to_string),
            shortages,
        }
    }

    /// Reserves every line or none.
    fn reserve(&self, command: &InventoryCommand) -> Result<ShopEvent, SqlError> {
        let order = command.order_id.as_str();
        let existing = self.reservations(order)?;
        if existing
            .iter()
            .any(|(_, _, state)| state == RESERVED || state == COMMITTED)
        {
            // Asked again (a saga retry): the answer stands.
            return Ok(ShopEvent::InventoryReserved(Self::result(order, None, vec![])));
        }
        if !existing.is_empty() {
            return Ok(ShopEvent::InventoryRejected(Self::result(
                order,
                Some("the reservation was already released"),
                vec![],
            )));
        }
        let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
        for line in &command.lines {
            *wanted.entry(line.sku.as_str()).or_default() += line.quantity;
        }
        if wanted.is_empty() || wanted.values().any(|q| *q == 0) {
            return Ok(ShopEvent::InventoryRejected(Self::result(
                order,
                Some("nothing to reserve"),
                vec![],
            )));
        }
        // Take each line with a conditional UPDATE; if any falls short, undo them all.
        // A single line that falls short took nothing: no savepoint to go back to.
        let undoable = wanted.len() > 1;
        if undoable {
            self.db.execute("SAVEPOINT reserve", &[])?;
        }
        let mut shortages = Vec::new();
        for (sku, quantity) in &wanted {
            let taken = self.db.execute(
                "UPDATE stock SET available = available - ?1, reserved = reserved + ?1, updated_at = ?2 \
                 WHERE sku = ?3 AND available >= ?1 RETURNING sku",
                &[
                    i64::from(*quantity).into(),
                    self.context.now_text.clone().into(),
                    (*sku).into(),
                ],
            )?;
            if taken.is_empty() {
                shortages.push(sku.to_string());
            }
        }
        if !shortages.is_empty() {
            if undoable {
                self.db.execute("ROLLBACK TO SAVEPOINT reserve", &[])?;
                self.db.execute("RELEASE SAVEPOINT reserve", &[])?;
            }
            return Ok(ShopEvent::InventoryRejected(Self::result(
                order,
                Some("out of stock"),
                shortages,
            )));
        }
        let expires_at = self.context.now + self.context.reservation_ttl_secs;
        for (sku, quantity) in &wanted {
            self.db.execute(
                "INSERT INTO reservations (order_id, sku, quantity, state, expires_at) VALUES (?, ?, ?, ?, ?)",
                &[
                    order.into(),
                    (*sku).into(),
                    i64::from(*quantity).into(),
                    RESERVED.into(),
                    expires_at.into(),
                ],
            )?;
        }
        if undoable {
            self.db.execute("RELEASE SAVEPOINT reserve", &[])?;
        }
        Ok(ShopEvent::InventoryReserved(Self::result(order, None, vec![])))
    }

    /// Moves the order's reservation rows from `from` to `to`; the (sku, quantity) of
    /// the rows it moved. Claiming rows before touching stock makes two racing
    /// handlers (a release and the expiry, say) act once: PostgreSQL re-checks the
    /// state after waiting for the row lock, and the loser moves nothing.
    fn claim(&self, order: &str, from: &str, to: &str) -> Result<Vec<(String, u32)>, SqlError> {
        let rows = self.db.execute(
            "UPDATE reservations SET state = ? WHERE order_id = ? AND state = ? RETURNING sku, quantity",
            &[to.into(), order.into(), from.into()],
        )?;
        let mut claimed: Vec<(String, u32)> = rows
            .iter()
            .map(|r| {
                (
                    r.first().and_then(SqlValue::text).unwrap_or_default().to_string(),
                    quantity(r.get(1)),
                )
            })
            .collect();
        // One lock order (by SKU) for every writer of `stock`.
        claimed.sort();
        Ok(claimed)
    }

    fn adjust_stock(&self, sku: &str, quantity: u32, change: &str) -> Result<(), SqlError> {
        self.db.execute(
            &format!("UPDATE stock SET {change}, updated_at = ?2 WHERE sku = ?3"),
            &[
                i64::from(quantity).into(),
                self.context.now_text.clone().into(),
                sku.into(),
            ],
        )?;
        Ok(())
    }

    /// Puts an order's units back: held ones, and, when the saga cancels an order
    /// whose stock was already committed (its capture failed), the sold ones too.
    /// `reason` says why when it is not the saga asking (expiry, which only frees
    /// held units).
    fn release(&self, command: &InventoryCommand, reason: Option<&str>) -> Result<ShopEvent, SqlError> {
        let order = command.order_id.as_str();
        let held = self.claim(order, RESERVED, RELEASED)?;
        for (sku, quantity) in &held {
            self.adjust_stock(sku, *quantity, "available = available + ?1, reserved = reserved - ?1")?;
        }
        let sold = match reason {
            None => self.claim(order, COMMITTED, RELEASED)?,
            Some(_) => vec![],
        };
        for (sku, quantity) in &sold {
            self.adjust_stock(sku, *quantity, "available = available + ?1")?;
        }
        let reason = reason.or((held.is_empty() && sold.is_empty()).then_some("nothing was held"));
        Ok(ShopEvent::InventoryReleased(Self::result(order, reason, vec![])))
    }

    /// Turns an order's held units into sold ones.
    fn commit(&self, command: &InventoryCommand) -> Result<ShopEvent, SqlError> {
        let order = command.order_id.as_str();
        let claimed = self.claim(order, RESERVED, COMMITTED)?;
        for (sku, quantity) in &claimed {
            self.adjust_stock(sku, *quantity, "reserved = reserved - ?1")?;
        }
        let rows = self.reservations(order)?;
        if !rows.is_empty() && rows.iter().all(|(_, _, state)| state == COMMITTED) {
            return Ok(ShopEvent::InventoryCommitted(Self::result(order, None, vec![])));
        }
        Ok(ShopEvent::InventoryRejected(Self::result(
            order,
            Some("no reservation to commit: it expired or was released"),
            vec![],
        )))
    }

    /// Releases reservations held past their expiry; how many orders it released.
    pub fn expire(&self) -> Result<usize, SqlError> {
        let due = self.db.execute(
            "SELECT DISTINCT order_id FROM reservations WHERE state = ? AND expires_at <= ? LIMIT ?",
            &[RESERVED.into(), self.context.now.into(), EXPIRY_BATCH.into()],
        )?;
        let mut released = 0;
        for row in &due {
            let Some(order_id) = row.first().and_then(SqlValue::text) else {
                continue;
            };
            let command = InventoryCommand {
                order_id: order_id.to_string(),
                lines: vec![],
            };
            in_transaction(self.db, || {
                let outcome = self.release(&command, Some("reservation expired"))?;
                self.record(&outcome)
            })?;
            released += 1;
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

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
            reservation_ttl_secs: 900,
        }
    }

    fn line(sku: &str, quantity: u32) -> OrderLine {
        OrderLine {
            product_id: format!("p-{sku}"),
            sku: sku.into(),
            quantity,
            unit_price: Money {
                amount: 100,
                currency: "EUR".into(),
            },
        }
    }

    fn command(order: &str, lines: Vec<OrderLine>) -> InventoryCommand {
        InventoryCommand {
            order_id: order.into(),
            lines,
        }
    }

    /// The outcome of a handled event.
    fn done(handled: Result<Handled, SqlError>) -> ShopEvent {
        match handled.unwrap() {
            Handled::Done(event) => *event,
            other => panic!("not handled: {other:?}"),
        }
    }

    fn levels(inventory: &Inventory<'_, MemoryDb>, sku: &str) -> (u32, u32) {
        let level = inventory.level(sku).unwrap().unwrap();
        (level.available, level.reserved)
    }

    #[test]
    fn reserve_all_or_nothing_then_commit() {
        let db = MemoryDb::default();
        let ctx = context(1000);
        let inventory = Inventory::new(&db, &ctx);
        inventory.migrate().unwrap();
        inventory.set_available("MUG", 5).unwrap();
        inventory.set_available("CUP", 1).unwrap();

        // One line reserves without a savepoint: falling short takes nothing.
        let one_short = command("o-0", vec![line("CUP", 2)]);
        let outcome = done(inventory.handle("e-0", &ShopEvent::InventoryReserveRequested(one_short)));
        let ShopEvent::InventoryRejected(rejected) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(rejected.shortages, ["CUP"]);
        assert_eq!(levels(&inventory, "CUP"), (1, 0));

        let too_many = command("o-1", vec![line("MUG", 2), line("CUP", 2), line("NOPE", 1)]);
        let outcome = done(inventory.handle("e-1", &ShopEvent::InventoryReserveRequested(too_many)));
        let ShopEvent::InventoryRejected(rejected) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(rejected.shortages, ["CUP", "NOPE"]);
        assert_eq!(levels(&inventory, "MUG"), (5, 0), "the line that fitted was undone");

        let fits = command("o-2", vec![line("MUG", 2), line("MUG", 1), line("CUP", 1)]);
        let reserve = ShopEvent::InventoryReserveRequested(fits.clone());
        assert!(matches!(
            done(inventory.handle("e-2", &reserve)),
            ShopEvent::InventoryReserved(_)
        ));
        assert_eq!(levels(&inventory, "MUG"), (2, 3));
        assert_eq!(inventory.handle("e-2", &reserve).unwrap(), Handled::Duplicate);
        assert!(
            matches!(
                done(inventory.handle("e-2b", &reserve)),
                ShopEvent::InventoryReserved(_)
            ),
            "asked again under a new id: the same answer, nothing taken twice"
        );
        assert_eq!(levels(&inventory, "MUG"), (2, 3));

        let commit = ShopEvent::InventoryCommitRequested(fits.clone());
        assert!(matches!(
            done(inventory.handle("e-3", &commit)),
            ShopEvent::InventoryCommitted(_)
        ));
        assert_eq!(levels(&inventory, "MUG"), (2, 0));
        assert_eq!(levels(&inventory, "CUP"), (0, 0));
        let release = ShopEvent::InventoryReleaseRequested(fits);
        inventory.handle("e-4", &release).unwrap();
        assert_eq!(
            levels(&inventory, "MUG"),
            (5, 0),
            "the saga cancelling after the commit (a failed capture) restocks the sold units"
        );
        inventory.handle("e-5", &release).unwrap();
        assert_eq!(levels(&inventory, "MUG"), (5, 0), "once");

        let published: Vec<&str> = outbox::read_all(&db)
            .unwrap()
            .iter()
            .map(|e| e.event_type().rsplit('.').next().unwrap())
            .collect();
        assert_eq!(
            published,
            [
                "rejected",
                "rejected",
                "reserved",
                "reserved",
                "committed",
                "released",
                "released"
            ]
        );
    }

    #[test]
    fn release_returns_units_once_and_expiry_releases_stale_reservations() {
        let db = MemoryDb::default();
        let ctx = context(1000);
        let inventory = Inventory::new(&db, &ctx);
        inventory.migrate().unwrap();
        inventory.set_available("MUG", 3).unwrap();
        let order = command("o-1", vec![line("MUG", 3)]);
        inventory
            .handle("e-1", &ShopEvent::InventoryReserveRequested(order.clone()))
            .unwrap();
        assert_eq!(levels(&inventory, "MUG"), (0, 3));
        let release = ShopEvent::InventoryReleaseRequested(order.clone());
        inventory.handle("e-2", &release).unwrap();
        inventory.handle("e-3", &release).unwrap();
        assert_eq!(levels(&inventory, "MUG"), (3, 0), "released once");
        let ShopEvent::InventoryRejected(late) =
            done(inventory.handle("e-4", &ShopEvent::InventoryCommitRequested(order)))
        else {
            panic!("a released reservation cannot be committed")
        };
        assert!(late.reason.unwrap().contains("expired or was released"));

        let stale = command("o-2", vec![line("MUG", 2)]);
        inventory
            .handle("e-5", &ShopEvent::InventoryReserveRequested(stale))
            .unwrap();
        assert_eq!(inventory.expire().unwrap(), 0, "not due yet");
        let later = context(1000 + 900);
        let inventory = Inventory::new(&db, &later);
        assert_eq!(inventory.expire().unwrap(), 1);
        assert_eq!(levels(&inventory, "MUG"), (3, 0));
        assert_eq!(inventory.expire().unwrap(), 0);
    }

    #[test]
    fn stock_never_goes_negative() {
        let db = MemoryDb::default();
        let ctx = context(1000);
        let inventory = Inventory::new(&db, &ctx);
        inventory.migrate().unwrap();
        inventory.set_available("MUG", 5).unwrap();
        let mut reserved = 0;
        for i in 0..20 {
            let order = command(&format!("o-{i}"), vec![line("MUG", 1)]);
            if let ShopEvent::InventoryReserved(_) =
                done(inventory.handle(&format!("e-{i}"), &ShopEvent::InventoryReserveRequested(order)))
            {
                reserved += 1;
            }
        }
        assert_eq!(reserved, 5);
        assert_eq!(levels(&inventory, "MUG"), (0, 5));
        let negative = db.execute("UPDATE stock SET available = -1 WHERE sku = 'MUG'", &[]);
        assert!(negative.is_err(), "the database refuses negative stock too");
    }
}
