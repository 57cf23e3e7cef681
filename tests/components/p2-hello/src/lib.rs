//! Benchmark component (WASI P2, spin-sdk 5): answers every request with `hello from p2`.
#![cfg(target_arch = "wasm32")]

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;

/// Takes the raw `IncomingRequest` so the SDK does not buffer the request body.
#[http_component]
fn handle(_req: IncomingRequest) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body("hello from p2")
        .build()
}
