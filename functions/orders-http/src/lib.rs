//! The orders API as a Spin HTTP component: pricing through the catalog and the cart
//! over local service chaining. It imports only what Spin provides; the events it
//! writes to its outbox are published by the `orders-relay` component, woken by the
//! commit on the `shop` host.

#![cfg(target_arch = "wasm32")]

use orders::service::{self, Upstream};
use orders::store::{Context, Orders};
use shop_domain::api::ApiError;
use shop_domain::sql::spin::SpinDatabase;
use shop_domain::types::{Cart, OrderLine, Product};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

const DATABASE: &str = "orders";

fn context() -> Result<Context<'static>, String> {
    Context::configured(guest_kit::now_secs(), &guest_kit::new_id, guest_kit::number_variable)
}

fn open(req: &Request) -> Result<(SpinDatabase, Context<'static>), String> {
    Ok((guest_kit::open_database(DATABASE, req)?, context()?))
}

/// The catalog and the cart, reached over local service chaining.
struct Services;

fn call(method: Method, url: String, user: Option<&str>) -> Result<Response, ApiError> {
    call_with(method, url, user, Vec::new())
}

fn call_with(method: Method, url: String, user: Option<&str>, body: Vec<u8>) -> Result<Response, ApiError> {
    let mut request = Request::builder();
    request.method(method).uri(&url);
    if let Some(user) = user {
        request.header("x-shop-user", user);
    }
    if !body.is_empty() {
        request.header("content-type", "application/json");
    }
    spin_sdk::http::run(spin_sdk::http::send::<_, Response>(request.body(body).build()))
        .map_err(|e| ApiError::new(503, "unavailable", format!("{url} did not answer: {e}")))
}

impl Upstream for Services {
    fn product(&self, id: &str) -> Result<Option<Product>, ApiError> {
        if !shop_domain::ids::is_record_id(id) {
            return Ok(None);
        }
        let response = call(
            Method::Get,
            format!("http://products.spin.internal/products/{id}"),
            None,
        )?;
        match *response.status() {
            200 => serde_json::from_slice(response.body())
                .map(Some)
                .map_err(|e| ApiError::new(503, "unavailable", format!("the catalog answered oddly: {e}"))),
            404 => Ok(None),
            status => Err(ApiError::new(
                503,
                "unavailable",
                format!("the catalog answered {status}"),
            )),
        }
    }

    fn cart(&self, user_id: &str) -> Result<Vec<OrderLine>, ApiError> {
        let response = call(Method::Get, "http://cart.spin.internal/cart".into(), Some(user_id))?;
        if *response.status() != 200 {
            return Err(ApiError::new(
                503,
                "unavailable",
                format!("the cart answered {}", response.status()),
            ));
        }
        let cart: Cart = serde_json::from_slice(response.body())
            .map_err(|e| ApiError::new(503, "unavailable", format!("the cart answered oddly: {e}")))?;
        Ok(cart
            .lines
            .into_iter()
            .map(|line| OrderLine {
                product_id: line.product_id,
                sku: line.sku,
                quantity: line.quantity,
                unit_price: line.unit_price,
            })
            .collect())
    }

    fn keep_payment_method(&self, order_id: &str, user_id: &str, token: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "token": token }).to_string().into_bytes();
        let url = format!("http://payments.spin.internal/payment-methods/{order_id}");
        let response = call_with(Method::Put, url, Some(user_id), body)?;
        match *response.status() {
            200 => Ok(()),
            status => Err(ApiError::new(
                503,
                "unavailable",
                format!("payments did not keep the payment method (it answered {status})"),
            )),
        }
    }

    fn clear_cart(&self, user_id: &str) {
        if let Err(e) = call(Method::Delete, "http://cart.spin.internal/cart".into(), Some(user_id)) {
            eprintln!("orders: the cart of {user_id} stays: {}", e.message);
        }
    }
}

/// `GET /orders/{id}?wait_ms=N`: holds the request while the caller's order is
/// PENDING, up to N ms, looking at its status now and then
/// ([`service::next_poll_pause`]), so a client following a saga needs one request
/// instead of a stream of polls.
fn wait_while_pending(request: &service::Request<'_>, orders: &Orders<'_, SpinDatabase>) -> Result<(), ApiError> {
    let Some((order_id, wait_ms)) = service::long_poll(request)? else {
        return Ok(());
    };
    if request.user.is_empty() {
        return Ok(()); // refused by the handler
    }
    orders.migrate().map_err(|e| ApiError::unavailable(e.to_string()))?;
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_millis(wait_ms);
    let mut pause = std::time::Duration::from_millis(2);
    while std::time::Instant::now() < deadline {
        let status = orders
            .status_of(order_id, request.user, service::is_admin(request))
            .map_err(ApiError::from)?;
        if status.as_deref() != Some("PENDING") {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = service::next_poll_pause(pause, started.elapsed());
    }
    Ok(())
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let (db, context) = match open(&req) {
        Ok(opened) => opened,
        Err(e) => return guest_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let method = req.method().to_string();
    let idempotency_key = req.header("idempotency-key").and_then(|v| v.as_str());
    let request = service::Request {
        method: &method,
        path: req.path(),
        query: req.query(),
        body: req.body(),
        user: guest_kit::header(&req, "x-shop-user"),
        roles: guest_kit::header(&req, "x-shop-roles"),
        idempotency_key,
    };
    if let Err(e) = wait_while_pending(&request, &Orders::new(&db, &context)) {
        return guest_kit::reply(shop_domain::api::Response::error(&e));
    }
    let (response, effects) = service::handle(&request, &Orders::new(&db, &context), &Services, &guest_kit::new_id);
    if effects.from_cart && response.status == 202 {
        Services.clear_cart(request.user);
    }
    guest_kit::reply(response)
}
