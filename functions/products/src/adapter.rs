//! The spin-sdk side: SQLite (label `products`), key-value (`default`), the clock and
//! ids, handed to [`crate::service`].

use shop_domain::sql::spin::SpinDatabase;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

use crate::cache::KeyValue;
use crate::catalog::Context;
use crate::error::ApiError;
use crate::service::{self, Services};

const DATABASE: &str = "products";

/// The cache is optional: without a store every read is a miss.
struct SpinKv(Option<Store>);

impl KeyValue for SpinKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.as_ref()?.get(key).ok().flatten()
    }
    fn set(&self, key: &str, value: &[u8]) {
        if let Some(store) = &self.0 {
            let _ = store.set(key, value);
        }
    }
    fn delete(&self, key: &str) {
        if let Some(store) = &self.0 {
            let _ = store.delete(key);
        }
    }
}

struct Clock;

impl Context for Clock {
    fn now(&self) -> String {
        shop_domain::time::rfc3339(now_ms() / 1000)
    }
    fn new_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn reply(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Response {
    let mut builder = Response::builder();
    builder.status(status);
    for (name, value) in headers {
        builder.header(name, value);
    }
    builder.body(body).build()
}

#[http_component]
fn handle(req: Request) -> Response {
    let db = match SpinDatabase::open_configured(DATABASE)
        .map(|db| db.traced(req.header("traceparent").and_then(|v| v.as_str()).unwrap_or("")))
    {
        Ok(db) => db,
        Err(e) => {
            let error = ApiError::unavailable(e);
            return reply(
                error.status,
                vec![("content-type".into(), "application/json".into())],
                error.body(),
            );
        }
    };
    let cache = SpinKv(Store::open_default().ok());
    let request = service::Request {
        method: &req.method().to_string(),
        path: req.path(),
        query: req.query(),
        body: req.body(),
    };
    let services = Services {
        db: &db,
        cache: &cache,
        context: &Clock,
        now_ms: now_ms(),
    };
    let response = service::handle(&request, &services);
    reply(response.status, response.headers, response.body)
}
