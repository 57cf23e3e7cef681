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
        if *response.status() == 409 {
            // A cart that cannot be priced (e.g. mixed currencies) is the customer's to
            // mend, not an outage.
            let why: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
            return Err(ApiError::new(
                409,
                "cart_conflict",
                format!(
                    "the cart cannot be ordered: {}",
                    why["error"]["message"].as_str().unwrap_or("it cannot be priced")
                ),
            ));
        }
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

    fn forget_payment_method(&self, order_id: &str, user_id: &str) {
        let url = format!("http://payments.spin.internal/payment-methods/{order_id}");
        if let Err(e) = call(Method::Delete, url, Some(user_id)) {
            eprintln!(
                "orders: the unused payment token of {order_id} stays until payments sweeps it: {}",
                e.message
            );
        }
    }

    fn clear_cart(&self, user_id: &str) {
        if let Err(e) = call(Method::Delete, "http://cart.spin.internal/cart".into(), Some(user_id)) {
            eprintln!("orders: the cart of {user_id} stays: {}", e.message);
        }
    }
}

/// Looks at the status of `order_id` (as `user` sees it) until it is no longer
/// PENDING or `wait_ms` passed, now and then ([`service::next_poll_pause`]), so a
/// client following a saga needs one request instead of a stream of polls. An order
/// `just_placed` is PENDING, so the first look waits a pause. Returns the last status
/// seen (`None`: not an order the caller may see).
fn wait_while_pending(
    orders: &Orders<'_, SpinDatabase>,
    order_id: &str,
    user: &str,
    admin: bool,
    wait_ms: u64,
    just_placed: bool,
) -> Result<Option<String>, ApiError> {
    orders.migrate().map_err(|e| ApiError::unavailable(e.to_string()))?;
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_millis(wait_ms);
    let mut pause = service::FIRST_POLL_PAUSE;
    if just_placed {
        std::thread::sleep(pause.min(std::time::Duration::from_millis(wait_ms)));
        pause = service::next_poll_pause(started.elapsed());
    }
    loop {
        let status = orders.status_of(order_id, user, admin).map_err(ApiError::from)?;
        if status.as_deref() != Some("PENDING") || std::time::Instant::now() >= deadline {
            return Ok(status);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(std::time::Instant::now())));
        pause = service::next_poll_pause(started.elapsed());
    }
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
    let orders = Orders::new(&db, &context);
    let admin = service::is_admin(&request);
    // `GET /orders/{id}?wait_ms=N` waits before it reads; `POST /orders?wait_ms=N`
    // after it placed. A bad `wait_ms` is refused before either.
    let (long_poll, placement_wait) = match (service::long_poll(&request), service::placement_wait(&request)) {
        (Ok(long_poll), Ok(placement_wait)) => (long_poll, placement_wait),
        (Err(e), _) | (_, Err(e)) => return guest_kit::reply(shop_domain::api::Response::error(&e)),
    };
    if let Some((order_id, wait_ms)) = long_poll
        && !request.user.is_empty()
        && let Err(e) = wait_while_pending(&orders, order_id, request.user, admin, wait_ms, false)
    {
        return guest_kit::reply(shop_domain::api::Response::error(&e));
    }
    let (response, effects) = service::handle(&request, &orders, &Services, &guest_kit::new_id);
    if effects.from_cart && response.status == 202 {
        Services.clear_cart(request.user);
    }
    if let (Some(wait_ms), Some(order_id)) = (placement_wait, &effects.placed) {
        // The order is placed whatever the wait meets: a failed look keeps the 202
        // in hand rather than answering an error that invites placing it again.
        match wait_while_pending(&orders, order_id, request.user, admin, wait_ms, true) {
            Ok(Some(status)) => return guest_kit::reply(service::placed(order_id, &status)),
            Ok(None) => {}
            Err(e) => eprintln!("orders: the wait for {order_id} ended early: {}", e.message),
        }
    }
    guest_kit::reply(response)
}
