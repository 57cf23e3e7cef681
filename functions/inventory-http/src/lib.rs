//! Inventory's admin API as a Spin HTTP component: stock per SKU.

#![cfg(target_arch = "wasm32")]

use inventory::service;
use inventory::stock::{Context, Inventory};
use shop_domain::api::ApiError;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

const DATABASE: &str = "inventory";

fn context() -> Result<Context<'static>, String> {
    Context::configured(guest_kit::now_secs(), &guest_kit::new_id, guest_kit::number_variable)
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let (db, context) = match guest_kit::open_database(DATABASE, &req).and_then(|db| Ok((db, context()?))) {
        Ok(opened) => opened,
        Err(e) => return guest_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        roles: guest_kit::header(&req, "x-shop-roles"),
    };
    guest_kit::reply(service::handle(&request, &Inventory::new(&db, &context)))
}
