//! The catalog's storage: products in SQL, and every change's event written to the
//! `outbox` table in the same transaction (a relay publishes them; nothing is lost
//! between the database and the broker).

use shop_domain::ShopEvent;
use shop_domain::events::{ProductChanged, ProductDeleted};
use shop_domain::types::{Money, Product, ProductInput};

use crate::error::ApiError;
use crate::input::ListQuery;
use crate::sql::{Sql, SqlError, SqlValue, in_transaction, migrate};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS products (
        id TEXT PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        description TEXT NOT NULL, category TEXT NOT NULL,
        price_amount INTEGER NOT NULL, price_currency TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS products_by_category ON products (category, name)",
    shop_domain::outbox::SCHEMA,
    shop_domain::outbox::MIGRATION[0],
    shop_domain::outbox::MIGRATION[1],
    shop_domain::outbox::MIGRATION[2],
    shop_domain::outbox::MIGRATION[3],
];

const COLUMNS: &str = "id, sku, name, description, category, price_amount, price_currency, created_at, updated_at";

/// What the catalog needs from its surroundings besides SQL.
pub trait Context {
    fn now(&self) -> String;
    fn new_id(&self) -> String;
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Page {
    pub items: Vec<Product>,
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
}

fn product_from_row(row: &[SqlValue]) -> Result<Product, ApiError> {
    let text = |i: usize| {
        row.get(i)
            .and_then(SqlValue::text)
            .map(str::to_string)
            .ok_or_else(|| ApiError::unavailable(format!("unexpected value in products column {i}")))
    };
    Ok(Product {
        id: text(0)?,
        sku: text(1)?,
        name: text(2)?,
        description: text(3)?,
        category: text(4)?,
        price: Money {
            amount: row
                .get(5)
                .and_then(SqlValue::integer)
                .ok_or_else(|| ApiError::unavailable("unexpected price in products"))?,
            currency: text(6)?,
        },
        created_at: text(7)?,
        updated_at: text(8)?,
    })
}

/// The columns after `id`, in [`COLUMNS`] order, for inserts and updates.
fn field_params(product: &Product) -> Vec<SqlValue> {
    vec![
        product.sku.clone().into(),
        product.name.clone().into(),
        product.description.clone().into(),
        product.category.clone().into(),
        product.price.amount.into(),
        product.price.currency.clone().into(),
        product.created_at.clone().into(),
        product.updated_at.clone().into(),
    ]
}

pub struct Catalog<'a, D: Sql, C: Context> {
    db: &'a D,
    context: &'a C,
}

impl<'a, D: Sql, C: Context> Catalog<'a, D, C> {
    pub fn new(db: &'a D, context: &'a C) -> Self {
        Self { db, context }
    }

    pub fn migrate(&self) -> Result<(), ApiError> {
        Ok(migrate(self.db, SCHEMA)?)
    }

    pub fn get(&self, id: &str) -> Result<Option<Product>, ApiError> {
        let rows = self
            .db
            .execute(&format!("SELECT {COLUMNS} FROM products WHERE id = ?"), &[id.into()])?;
        rows.first().map(|r| product_from_row(r)).transpose()
    }

    pub fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        // Both sides lower-cased so the search ignores case on SQLite and PostgreSQL
        // alike; `\` escapes the user's own % and _. The casts give PostgreSQL the
        // parameters' types, which a bare `? IS NULL` does not.
        let pattern = query.text.as_ref().map(|t| {
            let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        });
        let filter = "(CAST(?1 AS TEXT) IS NULL OR category = CAST(?1 AS TEXT)) AND \
                      (CAST(?2 AS TEXT) IS NULL OR LOWER(name) LIKE LOWER(CAST(?2 AS TEXT)) ESCAPE '\\' \
                       OR LOWER(description) LIKE LOWER(CAST(?2 AS TEXT)) ESCAPE '\\' \
                       OR LOWER(sku) LIKE LOWER(CAST(?2 AS TEXT)) ESCAPE '\\')";
        let params = [SqlValue::from(query.category.clone()), SqlValue::from(pattern)];
        let total = self
            .db
            .execute(&format!("SELECT COUNT(*) FROM products WHERE {filter}"), &params)?
            .first()
            .and_then(|r| r.first().and_then(SqlValue::integer))
            .unwrap_or(0);
        let offset = i64::from(query.page - 1) * i64::from(query.per_page);
        let mut page_params = params.to_vec();
        page_params.extend([i64::from(query.per_page).into(), offset.into()]);
        let rows = self.db.execute(
            &format!("SELECT {COLUMNS} FROM products WHERE {filter} ORDER BY name, id LIMIT ?3 OFFSET ?4"),
            &page_params,
        )?;
        Ok(Page {
            items: rows.iter().map(|r| product_from_row(r)).collect::<Result<_, _>>()?,
            page: query.page,
            per_page: query.per_page,
            total,
        })
    }

    /// Writes the event for a change into the outbox (inside the caller's transaction).
    fn record(&self, event: ShopEvent) -> Result<(), SqlError> {
        shop_domain::outbox::record(self.db, self.context.new_id(), self.context.now(), &event)
    }

    fn conflict(e: SqlError, sku: &str) -> ApiError {
        match e {
            SqlError::Conflict(_) => {
                ApiError::new(409, "conflict", format!("a product with sku `{sku}` already exists"))
            }
            other => other.into(),
        }
    }

    pub fn create(&self, input: ProductInput) -> Result<Product, ApiError> {
        let now = self.context.now();
        let product = Product {
            id: self.context.new_id(),
            sku: input.sku,
            name: input.name,
            description: input.description,
            category: input.category,
            price: input.price,
            created_at: now.clone(),
            updated_at: now,
        };
        in_transaction(self.db, || {
            let mut params = vec![product.id.clone().into()];
            params.extend(field_params(&product));
            self.db
                .execute(
                    &format!("INSERT INTO products ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    &params,
                )
                .map_err(|e| Self::conflict(e, &product.sku))?;
            self.record(ShopEvent::ProductCreated(ProductChanged {
                product: product.clone(),
            }))?;
            Ok(product.clone())
        })
    }

    /// Replaces a product's fields; `None` when it does not exist.
    pub fn replace(&self, id: &str, input: ProductInput) -> Result<Option<Product>, ApiError> {
        in_transaction(self.db, || {
            let Some(existing) = self.get(id)? else {
                return Ok(None);
            };
            let product = Product {
                id: existing.id,
                sku: input.sku.clone(),
                name: input.name.clone(),
                description: input.description.clone(),
                category: input.category.clone(),
                price: input.price.clone(),
                created_at: existing.created_at,
                updated_at: self.context.now(),
            };
            let mut params = field_params(&product);
            params.push(id.into());
            self.db
                .execute(
                    "UPDATE products SET sku = ?, name = ?, description = ?, category = ?, \
                     price_amount = ?, price_currency = ?, created_at = ?, updated_at = ? WHERE id = ?",
                    &params,
                )
                .map_err(|e| Self::conflict(e, &product.sku))?;
            self.record(ShopEvent::ProductUpdated(ProductChanged {
                product: product.clone(),
            }))?;
            Ok(Some(product))
        })
    }

    /// Deletes a product; false when it did not exist.
    pub fn delete(&self, id: &str) -> Result<bool, ApiError> {
        in_transaction(self.db, || {
            let deleted = self
                .db
                .execute("DELETE FROM products WHERE id = ? RETURNING id", &[id.into()])?;
            if deleted.is_empty() {
                return Ok(false);
            }
            self.record(ShopEvent::ProductDeleted(ProductDeleted { product_id: id.into() }))?;
            Ok(true)
        })
    }
}

#[cfg(test)]
pub mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::sql::testing::MemoryDb;

    pub struct FixedContext(pub Cell<u32>);

    impl Context for FixedContext {
        fn now(&self) -> String {
            "2026-11-22T00:00:00Z".into()
        }
        fn new_id(&self) -> String {
            self.0.set(self.0.get() + 1);
            format!("id-{}", self.0.get())
        }
    }

    pub fn input(sku: &str, name: &str, category: &str, amount: i64) -> ProductInput {
        ProductInput {
            sku: sku.into(),
            name: name.into(),
            description: format!("{name} description"),
            category: category.into(),
            price: Money::new(amount, "EUR"),
        }
    }

    fn outbox(db: &MemoryDb) -> Vec<ShopEvent> {
        shop_domain::outbox::read_all(db).unwrap()
    }

    #[test]
    fn changes_are_stored_with_their_events_in_the_outbox() {
        let (db, context) = (MemoryDb::default(), FixedContext(Cell::new(0)));
        let catalog = Catalog::new(&db, &context);
        catalog.migrate().unwrap();
        let mug = catalog.create(input("MUG-1", "Mug", "kitchen", 1299)).unwrap();
        assert_eq!(catalog.get(&mug.id).unwrap(), Some(mug.clone()));
        let err = catalog.create(input("MUG-1", "Other", "kitchen", 1)).unwrap_err();
        assert_eq!((err.status, err.code), (409, "conflict"));

        let renamed = catalog
            .replace(&mug.id, input("MUG-1", "Big mug", "kitchen", 1499))
            .unwrap()
            .unwrap();
        assert_eq!((renamed.name.as_str(), renamed.price.amount), ("Big mug", 1499));
        assert_eq!(catalog.replace("missing", input("X", "X", "x", 1)).unwrap(), None);
        assert!(catalog.delete(&mug.id).unwrap());
        assert!(!catalog.delete(&mug.id).unwrap());
        assert_eq!(catalog.get(&mug.id).unwrap(), None);

        // The failed create left nothing behind: three changes, three events, parseable
        // as the types the consumers use.
        let events = outbox(&db);
        let types: Vec<&str> = events.iter().map(ShopEvent::event_type).collect();
        assert_eq!(
            types,
            ["shop.product.created", "shop.product.updated", "shop.product.deleted"]
        );
        assert!(matches!(&events[1], ShopEvent::ProductUpdated(c) if c.product == renamed));
        assert!(events.iter().all(|e| e.key() == mug.id));
    }

    #[test]
    fn listing_pages_filters_and_searches() {
        let (db, context) = (MemoryDb::default(), FixedContext(Cell::new(0)));
        let catalog = Catalog::new(&db, &context);
        catalog.migrate().unwrap();
        for (sku, name, category) in [
            ("A-1", "Blue mug", "kitchen"),
            ("A-2", "Red mug", "kitchen"),
            ("A-3", "Teapot", "kitchen"),
            ("B-1", "Blue shirt", "clothes"),
            ("B-2", "100% wool", "clothes"),
        ] {
            catalog.create(input(sku, name, category, 100)).unwrap();
        }
        let list = |q: &str| catalog.list(&ListQuery::parse(q).unwrap()).unwrap();
        let names = |p: Page| p.items.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(list("").total, 5);
        let first = list("per_page=2");
        assert_eq!((first.total, first.items.len()), (5, 2));
        assert_eq!(names(list("per_page=2&page=3")), ["Teapot"]);
        assert_eq!(names(list("category=clothes")), ["100% wool", "Blue shirt"]);
        assert_eq!(names(list("q=BLUE")), ["Blue mug", "Blue shirt"]);
        assert_eq!(names(list("q=blue&category=kitchen")), ["Blue mug"]);
        assert_eq!(names(list("q=%25")), ["100% wool"], "% is matched literally");
        assert_eq!(list("page=9").items.len(), 0);
    }
}
