//! The shop's domain types, generated from `wit/shop-domain` (never hand-copied), with
//! serde derives so services exchange them as JSON; and the events those services
//! publish, each bound to its CloudEvents `type`.
//!
//! This crate is plain Rust: it builds natively (domain logic and contract tests) and
//! for `wasm32-wasip2` (inside the function components).

pub mod api;
mod envelope;
mod event;
pub mod ids;
pub mod inbox;
pub mod outbox;
pub mod sql;
pub mod time;

pub use envelope::{CONTENT_TYPE, Envelope, EnvelopeError};
pub use event::{EventError, ShopEvent};

wit_bindgen::generate!({
    path: "../wit/shop-domain",
    world: "domain",
    additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq],
    // No function uses these types; they are the point of the package.
    generate_unused_types: true,
    generate_all,
});

pub use shop::domain::events;
pub use shop::domain::types;

/// Topics of SPEC §3.9.
pub mod topics {
    pub const USERS: &str = "shop.users";
    pub const PRODUCTS: &str = "shop.products";
    pub const ORDERS: &str = "shop.orders";
    pub const INVENTORY: &str = "shop.inventory";
    pub const PAYMENTS: &str = "shop.payments";
    pub const NOTIFICATIONS: &str = "shop.notifications";
}

impl types::Money {
    pub fn new(amount: i64, currency: &str) -> Self {
        Self {
            amount,
            currency: currency.to_string(),
        }
    }

    /// `self × quantity`, or `None` on overflow.
    pub fn times(&self, quantity: u32) -> Option<Self> {
        Some(Self {
            amount: self.amount.checked_mul(i64::from(quantity))?,
            currency: self.currency.clone(),
        })
    }

    /// The sum of `amounts`, all in `currency`; `None` on a currency mismatch or overflow.
    pub fn sum<'a>(currency: &str, amounts: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        let mut total: i64 = 0;
        for m in amounts {
            if m.currency != currency {
                return None;
            }
            total = total.checked_add(m.amount)?;
        }
        Some(Self::new(total, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::types::*;

    #[test]
    fn money_arithmetic_refuses_mixed_currencies_and_overflow() {
        let a = Money::new(250, "EUR");
        assert_eq!(a.times(3), Some(Money::new(750, "EUR")));
        assert_eq!(Money::new(i64::MAX, "EUR").times(2), None);
        let total = Money::sum("EUR", [&a, &Money::new(50, "EUR")]);
        assert_eq!(total, Some(Money::new(300, "EUR")));
        assert_eq!(Money::sum("EUR", [&a, &Money::new(1, "USD")]), None);
    }

    #[test]
    fn records_serialize_with_the_contract_field_names() {
        let product = ProductInput {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            description: "A mug".into(),
            category: "kitchen".into(),
            price: Money::new(1299, "EUR"),
        };
        let json = serde_json::to_value(&product).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sku": "SKU-1", "name": "Mug", "description": "A mug", "category": "kitchen",
                "price": { "amount": 1299, "currency": "EUR" }
            })
        );
        let back: ProductInput = serde_json::from_value(json).unwrap();
        assert_eq!(back, product);
    }
}
