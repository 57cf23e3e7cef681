//! The hot cache of single products: JSON in key-value under `product:<id>`, with its
//! own expiry (key-value has no TTL), dropped whenever the product changes.

use serde::{Deserialize, Serialize};
use shop_domain::types::Product;

/// Five minutes (SPEC §3.3).
pub const TTL_MS: i64 = 5 * 60 * 1000;

pub trait KeyValue {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: &[u8]);
    fn delete(&self, key: &str);
}

#[derive(Serialize, Deserialize)]
struct Entry {
    expires_at_ms: i64,
    product: Product,
}

pub fn key(id: &str) -> String {
    format!("product:{id}")
}

/// The cached product if present and fresh. A cache that is down or holds garbage is a
/// miss, never an error: the database is the truth.
pub fn lookup(kv: &impl KeyValue, id: &str, now_ms: i64) -> Option<Product> {
    let entry: Entry = serde_json::from_slice(&kv.get(&key(id))?).ok()?;
    (entry.expires_at_ms > now_ms).then_some(entry.product)
}

pub fn store(kv: &impl KeyValue, product: &Product, now_ms: i64) {
    let entry = Entry {
        expires_at_ms: now_ms + TTL_MS,
        product: product.clone(),
    };
    kv.set(
        &key(&product.id),
        &serde_json::to_vec(&entry).expect("products serialize"),
    );
}

pub fn invalidate(kv: &impl KeyValue, id: &str) {
    kv.delete(&key(id));
}

#[cfg(test)]
pub mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;
    use crate::catalog::tests::input;

    #[derive(Default)]
    pub struct MapKv(pub RefCell<HashMap<String, Vec<u8>>>);

    impl KeyValue for MapKv {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8]) {
            self.0.borrow_mut().insert(key.into(), value.to_vec());
        }
        fn delete(&self, key: &str) {
            self.0.borrow_mut().remove(key);
        }
    }

    #[test]
    fn entries_expire_and_can_be_invalidated() {
        let kv = MapKv::default();
        let i = input("A", "A", "a", 1);
        let product = Product {
            id: "p".into(),
            sku: i.sku,
            name: i.name,
            description: i.description,
            category: i.category,
            price: i.price,
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        assert_eq!(lookup(&kv, "p", 0), None);
        store(&kv, &product, 1_000);
        assert_eq!(lookup(&kv, "p", 1_000 + TTL_MS - 1), Some(product.clone()));
        assert_eq!(lookup(&kv, "p", 1_000 + TTL_MS), None, "expired");
        store(&kv, &product, 0);
        invalidate(&kv, "p");
        assert_eq!(lookup(&kv, "p", 0), None);
        kv.set("product:p", b"garbage");
        assert_eq!(lookup(&kv, "p", 0), None, "garbage is a miss");
    }
}
