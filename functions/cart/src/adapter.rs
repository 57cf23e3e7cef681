//! The spin-sdk side: the cart in key-value (`cart:<user>`), products fetched from the
//! catalog service over local service chaining.

use std::collections::HashMap;

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

use crate::cart::{self, Refusal, StoredCart};
use shop_domain::types::Product;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .build()
}

fn refusal((status, code, message): Refusal) -> Response {
    json(
        status,
        serde_json::json!({ "error": { "code": code, "message": message } }).to_string(),
    )
}

/// The product, `None` when the catalog does not know it.
async fn product(id: &str) -> Result<Option<Product>, Refusal> {
    let unavailable = |e: String| (503, "unavailable", format!("the catalog did not answer: {e}"));
    let response: Response = spin_sdk::http::send(Request::get(format!("http://products.spin.internal/products/{id}")))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    match *response.status() {
        200 => serde_json::from_slice(response.body())
            .map(Some)
            .map_err(|e| unavailable(e.to_string())),
        404 => Ok(None),
        other => Err(unavailable(format!("status {other}"))),
    }
}

async fn handle_cart(req: &Request) -> Result<Response, Refusal> {
    let user = req.header("x-shop-user").and_then(|v| v.as_str()).ok_or((
        401,
        "unauthorized",
        "no authenticated user".to_string(),
    ))?;
    let change = cart::change(&req.method().to_string(), req.path(), req.body())?;
    let store = Store::open_default().map_err(|e| (503, "unavailable", format!("key-value: {e:?}")))?;
    let key = format!("cart:{user}");
    let now = now_ms();
    let mut stored = StoredCart::load(store.get(&key).ok().flatten().as_deref(), now);
    // Removing lines always applies (it is how a cart that cannot be priced is
    // mended); any other change is kept only if the cart can still be priced.
    let mut store_unpriced = false;
    let changed = change.is_some();
    if let Some(change) = change {
        store_unpriced = matches!(change, cart::Change::Remove { .. } | cart::Change::Clear);
        let exists = match &change {
            cart::Change::Add { product_id, .. } => product(product_id).await?.is_some(),
            _ => true,
        };
        cart::apply(&mut stored, change, exists, now)?;
    }
    let mut products = HashMap::new();
    for line in &stored.lines {
        if let Some(p) = product(&line.product_id).await? {
            products.insert(p.id.clone(), p);
        }
    }
    let view = cart::priced(user, &stored, &products, "EUR");
    if changed && (view.is_ok() || store_unpriced) {
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        store
            .set(&key, &bytes)
            .map_err(|e| (503, "unavailable", format!("key-value: {e:?}")))?;
    }
    let view = view?;
    Ok(json(200, serde_json::to_string(&view).unwrap_or_default()))
}

#[http_component]
async fn handle(req: Request) -> Response {
    handle_cart(&req).await.unwrap_or_else(refusal)
}
