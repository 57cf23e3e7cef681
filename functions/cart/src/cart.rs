//! A cart: what is stored (product ids and quantities), how requests change it, and
//! how it is priced for display from current product data.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_domain::types::{Cart, CartLine, Money, Product};

/// A cart untouched this long is gone (SPEC: expires after inactivity).
pub const IDLE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
pub const MAX_QUANTITY: u32 = 99;
pub const MAX_LINES: usize = 50;

/// An API refusal: status, code, message.
pub type Refusal = (u16, &'static str, String);

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    (status, code, message.into())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredLine {
    pub product_id: String,
    pub quantity: u32,
}

/// What key-value holds for one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredCart {
    pub lines: Vec<StoredLine>,
    pub updated_ms: i64,
}

impl StoredCart {
    /// The stored cart, or an empty one when missing, unreadable or idle too long.
    pub fn load(bytes: Option<&[u8]>, now_ms: i64) -> Self {
        bytes
            .and_then(|b| serde_json::from_slice::<StoredCart>(b).ok())
            .filter(|c| now_ms - c.updated_ms < IDLE_TTL_MS)
            .unwrap_or_default()
    }
}

/// A change a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add { product_id: String, quantity: u32 },
    SetQuantity { product_id: String, quantity: u32 },
    Remove { product_id: String },
    Clear,
}

fn quantity_of(value: &Value) -> Result<u32, Refusal> {
    value
        .as_u64()
        .filter(|q| (1..=u64::from(MAX_QUANTITY)).contains(q))
        .map(|q| q as u32)
        .ok_or_else(|| {
            refuse(
                400,
                "validation_failed",
                format!("`quantity` must be 1 to {MAX_QUANTITY}"),
            )
        })
}

fn object(body: &[u8], fields: &[&str]) -> Result<serde_json::Map<String, Value>, Refusal> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| refuse(400, "invalid_json", format!("invalid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(refuse(400, "validation_failed", "expected a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(refuse(400, "validation_failed", format!("unknown field `{unknown}`")));
    }
    Ok(map)
}

/// `id` if it can name a product: it goes into the catalog's URL as a path segment.
fn record_id(id: &str) -> Result<&str, Refusal> {
    if shop_domain::ids::is_record_id(id) {
        Ok(id)
    } else {
        Err(refuse(
            400,
            "validation_failed",
            "`product_id` must be 1 to 64 letters, digits or dashes",
        ))
    }
}

/// Reads the change a request asks for from its method, path and body.
pub fn change(method: &str, path: &str, body: &[u8]) -> Result<Option<Change>, Refusal> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        ("GET", ["cart"]) => Ok(None),
        ("DELETE", ["cart"]) => Ok(Some(Change::Clear)),
        ("POST", ["cart", "items"]) => {
            let map = object(body, &["product_id", "quantity"])?;
            let product_id = map
                .get("product_id")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(400, "validation_failed", "`product_id` is required"))?;
            let product_id = record_id(product_id)?;
            let quantity = quantity_of(map.get("quantity").unwrap_or(&json!(null)))?;
            Ok(Some(Change::Add {
                product_id: product_id.to_string(),
                quantity,
            }))
        }
        ("PATCH", ["cart", "items", id]) => {
            let product_id = record_id(id)?;
            let map = object(body, &["quantity"])?;
            let quantity = quantity_of(map.get("quantity").unwrap_or(&json!(null)))?;
            Ok(Some(Change::SetQuantity {
                product_id: product_id.to_string(),
                quantity,
            }))
        }
        ("DELETE", ["cart", "items", id]) => Ok(Some(Change::Remove {
            product_id: record_id(id)?.to_string(),
        })),
        (_, ["cart"]) => Err(refuse(405, "method_not_allowed", "allowed: GET, DELETE")),
        (_, ["cart", "items"]) => Err(refuse(405, "method_not_allowed", "allowed: POST")),
        (_, ["cart", "items", _]) => Err(refuse(405, "method_not_allowed", "allowed: PATCH, DELETE")),
        _ => Err(refuse(404, "not_found", format!("no route for {path}"))),
    }
}

/// Applies `change`; `exists` says whether a product is in the catalog.
pub fn apply(cart: &mut StoredCart, change: Change, exists: bool, now_ms: i64) -> Result<(), Refusal> {
    let position = |cart: &StoredCart, id: &str| cart.lines.iter().position(|l| l.product_id == id);
    match change {
        Change::Add { product_id, quantity } => {
            if !exists {
                return Err(refuse(404, "not_found", format!("no product with id `{product_id}`")));
            }
            match position(cart, &product_id) {
                Some(i) => {
                    let total = cart.lines[i].quantity + quantity;
                    if total > MAX_QUANTITY {
                        return Err(refuse(
                            400,
                            "validation_failed",
                            format!("at most {MAX_QUANTITY} of one product"),
                        ));
                    }
                    cart.lines[i].quantity = total;
                }
                None if cart.lines.len() >= MAX_LINES => {
                    return Err(refuse(
                        400,
                        "validation_failed",
                        format!("a cart holds at most {MAX_LINES} products"),
                    ));
                }
                None => cart.lines.push(StoredLine { product_id, quantity }),
            }
        }
        Change::SetQuantity { product_id, quantity } => {
            let i = position(cart, &product_id)
                .ok_or_else(|| refuse(404, "not_found", "that product is not in the cart"))?;
            cart.lines[i].quantity = quantity;
        }
        Change::Remove { product_id } => {
            let i = position(cart, &product_id)
                .ok_or_else(|| refuse(404, "not_found", "that product is not in the cart"))?;
            cart.lines.remove(i);
        }
        Change::Clear => cart.lines.clear(),
    }
    cart.updated_ms = now_ms;
    Ok(())
}

/// The cart with current prices. Products no longer in the catalog are left out (and
/// dropped from the stored cart on its next change).
pub fn priced(
    user_id: &str,
    cart: &StoredCart,
    products: &HashMap<String, Product>,
    default_currency: &str,
) -> Result<Cart, Refusal> {
    let mut lines = Vec::new();
    for line in &cart.lines {
        let Some(product) = products.get(&line.product_id) else {
            continue;
        };
        let line_total = product
            .price
            .times(line.quantity)
            .ok_or_else(|| refuse(409, "conflict", "line total overflows"))?;
        lines.push(CartLine {
            product_id: product.id.clone(),
            sku: product.sku.clone(),
            name: product.name.clone(),
            quantity: line.quantity,
            unit_price: product.price.clone(),
            line_total,
        });
    }
    let currency = lines
        .first()
        .map(|l| l.unit_price.currency.clone())
        .unwrap_or_else(|| default_currency.to_string());
    let total = Money::sum(&currency, lines.iter().map(|l| &l.line_total))
        .ok_or_else(|| refuse(409, "conflict", "the cart mixes currencies"))?;
    Ok(Cart {
        user_id: user_id.to_string(),
        lines,
        total,
        updated_at: shop_domain::time::rfc3339(cart.updated_ms / 1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, amount: i64, currency: &str) -> Product {
        Product {
            id: id.into(),
            sku: format!("SKU-{id}"),
            name: format!("Product {id}"),
            description: String::new(),
            category: "c".into(),
            price: Money::new(amount, currency),
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    #[test]
    fn requests_become_changes_and_mistakes_are_refused() {
        assert_eq!(change("GET", "/cart", b""), Ok(None));
        assert_eq!(
            change("POST", "/cart/items", br#"{"product_id":"p1","quantity":2}"#),
            Ok(Some(Change::Add {
                product_id: "p1".into(),
                quantity: 2
            }))
        );
        assert_eq!(
            change("PATCH", "/cart/items/p1", br#"{"quantity":5}"#),
            Ok(Some(Change::SetQuantity {
                product_id: "p1".into(),
                quantity: 5
            }))
        );
        for (method, path, body, status) in [
            ("POST", "/cart/items", &br#"{"product_id":"p1","quantity":0}"#[..], 400),
            ("POST", "/cart/items", br#"{"product_id":"p1","quantity":"2"}"#, 400),
            (
                "POST",
                "/cart/items",
                br#"{"product_id":"p1","quantity":1,"price":1}"#,
                400,
            ),
            ("POST", "/cart/items", b"{", 400),
            // Ids that would change the catalog URL they are put into.
            ("POST", "/cart/items", br#"{"product_id":"?q=mug","quantity":1}"#, 400),
            ("POST", "/cart/items", br#"{"product_id":"p1?x=1","quantity":1}"#, 400),
            ("POST", "/cart/items", br#"{"product_id":"p1#top","quantity":1}"#, 400),
            ("POST", "/cart/items", br#"{"product_id":"a b","quantity":1}"#, 400),
            ("POST", "/cart/items", br#"{"product_id":"<p>","quantity":1}"#, 400),
            ("POST", "/cart/items", br#"{"product_id":"p\u0007","quantity":1}"#, 400),
            ("PATCH", "/cart/items/p1%3Fx=1", br#"{"quantity":1}"#, 400),
            ("DELETE", "/cart/items/%3Cp%3E", b"", 400),
            ("PUT", "/cart", b"", 405),
            ("GET", "/carts", b"", 404),
        ] {
            assert_eq!(change(method, path, body).unwrap_err().0, status, "{method} {path}");
        }
    }

    #[test]
    fn changes_merge_limit_and_price_with_current_data() {
        let mut cart = StoredCart::default();
        let add = |id: &str, q| Change::Add {
            product_id: id.into(),
            quantity: q,
        };
        apply(&mut cart, add("p1", 2), true, 1_000).unwrap();
        apply(&mut cart, add("p1", 3), true, 1_000).unwrap();
        apply(&mut cart, add("p2", 1), true, 1_000).unwrap();
        assert_eq!(apply(&mut cart, add("ghost", 1), false, 0).unwrap_err().0, 404);
        assert_eq!(apply(&mut cart, add("p1", 95), true, 0).unwrap_err().0, 400);
        let mut products = HashMap::from([
            ("p1".to_string(), product("p1", 250, "EUR")),
            ("p2".to_string(), product("p2", 1000, "EUR")),
        ]);
        let view = priced("u", &cart, &products, "EUR").unwrap();
        assert_eq!(view.lines[0].quantity, 5);
        assert_eq!(view.total, Money::new(5 * 250 + 1000, "EUR"));

        // A price change shows on the next read; a deleted product drops out.
        products.insert("p1".into(), product("p1", 300, "EUR"));
        products.remove("p2");
        let view = priced("u", &cart, &products, "EUR").unwrap();
        assert_eq!((view.lines.len(), view.total.amount), (1, 1500));

        products.insert("p2".into(), product("p2", 100, "USD"));
        assert_eq!(priced("u", &cart, &products, "EUR").unwrap_err().0, 409);

        apply(
            &mut cart,
            Change::Remove {
                product_id: "p2".into(),
            },
            true,
            2_000,
        )
        .unwrap();
        assert_eq!(
            apply(
                &mut cart,
                Change::Remove {
                    product_id: "p2".into()
                },
                true,
                0
            )
            .unwrap_err()
            .0,
            404
        );
        apply(&mut cart, Change::Clear, true, 3_000).unwrap();
        assert!(cart.lines.is_empty());
    }

    #[test]
    fn idle_carts_expire() {
        let cart = StoredCart {
            lines: vec![StoredLine {
                product_id: "p".into(),
                quantity: 1,
            }],
            updated_ms: 0,
        };
        let bytes = serde_json::to_vec(&cart).unwrap();
        assert_eq!(StoredCart::load(Some(&bytes), IDLE_TTL_MS - 1), cart);
        assert_eq!(StoredCart::load(Some(&bytes), IDLE_TTL_MS), StoredCart::default());
        assert_eq!(StoredCart::load(Some(b"garbage"), 0), StoredCart::default());
    }
}
