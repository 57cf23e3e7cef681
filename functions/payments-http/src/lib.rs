//! The payments API as a Spin HTTP component: `GET /payments/{order_id}` and the
//! sandbox provider's API.

#![cfg(target_arch = "wasm32")]

use payments::ledger::{Context, Ledger};
use payments::sandbox::Sandbox;
use payments::service;
use shop_domain::api::ApiError;
use shop_domain::sql::spin::SpinDatabase;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

const DATABASE: &str = "payments";

fn context() -> Context<'static> {
    Context {
        now_text: shop_domain::time::rfc3339(guest_kit::now_secs()),
        new_id: &guest_kit::new_id,
    }
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let db = match SpinDatabase::open_configured(DATABASE) {
        Ok(db) => db,
        Err(e) => return guest_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let context = context();
    let slow_ms = guest_kit::number_variable("sandbox_slow_ms", 3000).unwrap_or(3000);
    let sleep = move || std::thread::sleep(std::time::Duration::from_millis(slow_ms.max(0) as u64));
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        user: guest_kit::header(&req, "x-shop-user"),
        roles: guest_kit::header(&req, "x-shop-roles"),
    };
    let services = service::Services {
        ledger: &Ledger::new(&db, &context),
        sandbox: &Sandbox {
            db: &db,
            now_text: context.now_text.clone(),
            new_id: &guest_kit::new_id,
        },
        sleep: &sleep,
    };
    guest_kit::reply(service::handle(&request, &services))
}
