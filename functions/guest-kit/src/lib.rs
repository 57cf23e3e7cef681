//! What every shop component shares, whatever triggers it: ids, the clock, component
//! variables, request headers and replies. It imports only what Spin provides, so an
//! HTTP component built on it stays loadable by Spin; the event side
//! (`wasi:messaging`, the Kafka and cron exports) lives in `event-kit`.

#![cfg(target_arch = "wasm32")]

/// A new id for a record or an event (a random UUID).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A component variable, if set and not empty.
pub fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name).ok().filter(|v| !v.trim().is_empty())
}

/// A numeric component variable, or `default` when unset; a value that is not a
/// number is an error naming the variable.
pub fn number_variable(name: &str, default: i64) -> Result<i64, String> {
    match variable(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("variable `{name}` must be a whole number, not `{v}`")),
    }
}

/// A header's value as text (empty when absent or not UTF-8).
pub fn header<'a>(request: &'a spin_sdk::http::Request, name: &str) -> &'a str {
    request.header(name).and_then(|v| v.as_str()).unwrap_or("")
}

/// A service's response as spin-sdk's.
pub fn reply(response: shop_domain::api::Response) -> spin_sdk::http::Response {
    let mut builder = spin_sdk::http::Response::builder();
    builder.status(response.status);
    for (name, value) in response.headers {
        builder.header(name, value);
    }
    builder.body(response.body).build()
}

/// The service's database (`database_url`'s PostgreSQL, else Spin SQLite `label`) for
/// the work of `request`: the events it writes keep the request's trace.
pub fn open_database(
    label: &str,
    request: &spin_sdk::http::Request,
) -> Result<shop_domain::sql::spin::SpinDatabase, String> {
    shop_domain::sql::spin::SpinDatabase::open_configured(label).map(|db| db.traced(header(request, "traceparent")))
}

pub mod kv;
