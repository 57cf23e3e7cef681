//! Test component (WASI P2, spin-sdk 5): echoes method, URI, headers and body length as JSON.
#![cfg(target_arch = "wasm32")]

use serde_json::{Map, Value, json};
use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: IncomingRequest) -> Response {
    let method = req.method().to_string();
    let uri = req.uri();
    // Repeated headers are joined with ", " so that none is lost.
    let mut headers = Map::new();
    for (name, value) in req.headers().entries() {
        let value = String::from_utf8_lossy(&value).into_owned();
        match headers.entry(name.to_lowercase()) {
            serde_json::map::Entry::Vacant(slot) => {
                slot.insert(Value::String(value));
            }
            serde_json::map::Entry::Occupied(mut slot) => {
                if let Value::String(joined) = slot.get_mut() {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
            }
        }
    }
    let body = match req.into_body().await {
        Ok(body) => body,
        Err(e) => return Response::new(400, format!("cannot read body: {}", e.to_debug_string())),
    };
    let echo = json!({
        "component": "p2-echo",
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(echo.to_string())
        .build()
}
