//! The payments API as a Spin HTTP component: `GET /payments/{order_id}` and the
//! sandbox provider's API.

#![cfg(target_arch = "wasm32")]

use payments::ledger::Context;
use payments::service;
use shop_domain::api::ApiError;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

const DATABASE: &str = "payments";

fn context() -> Context<'static> {
    let now = guest_kit::now_secs();
    Context {
        now,
        now_text: shop_domain::time::rfc3339(now),
        new_id: &guest_kit::new_id,
    }
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let db = match guest_kit::open_database(DATABASE, &req) {
        Ok(db) => db,
        Err(e) => return guest_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let context = context();
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        user: guest_kit::header(&req, "x-shop-user"),
        roles: guest_kit::header(&req, "x-shop-roles"),
    };
    let slow_ms = guest_kit::number_variable("sandbox_slow_ms", 3000).unwrap_or(3000);
    guest_kit::reply(service::handle_on(&request, &db, &context, slow_ms))
}
