//! Test component (WASI P3, spin-sdk 7): calls the Spin 3.0 APIs and answers each
//! result as JSON, so tests can assert exactly what a spin-sdk 7 guest observes.
//!
//! - `GET /vars?name=<name>`: `variables::get(name)`.

use serde_json::json;
use spin_sdk::http::{Request, Response, Result};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> Result<Response<String>> {
    let name = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .unwrap_or_default()
        .to_string();
    let body = match spin_sdk::variables::get(&name).await {
        Ok(value) => json!({ "ok": value }),
        Err(e) => json!({ "err": format!("{e:?}") }),
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.to_string())?)
}
