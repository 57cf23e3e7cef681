//! The Spin side: the HTTP API (pricing through the catalog and the cart over local
//! service chaining), the Kafka handler for inventory and payment results, and the
//! cron handler that times out stuck steps and publishes the outbox.

use event_kit::{Message, cron, kafka};
use shop_domain::ShopEvent;
use shop_domain::api::ApiError;
use shop_domain::sql::spin::SpinDatabase;
use shop_domain::types::{Cart, OrderLine, Product};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::saga::Timeouts;
use crate::service::{self, Upstream};
use crate::store::{Context, Orders, Outcome};

const DATABASE: &str = "orders";
const SOURCE: &str = "/orders";
/// Most overdue orders handled per cron tick.
const OVERDUE_BATCH: i64 = 100;

fn context() -> Result<Context<'static>, String> {
    let now = event_kit::now_secs();
    Ok(Context {
        now,
        now_text: shop_domain::time::rfc3339(now),
        new_id: &event_kit::new_id,
        timeouts: Timeouts {
            inventory_secs: event_kit::number_variable("inventory_timeout_secs", 30)?,
            payment_secs: event_kit::number_variable("payment_timeout_secs", 30)?,
            completion_secs: event_kit::number_variable("completion_timeout_secs", 30)?,
        },
    })
}

fn open() -> Result<(SpinDatabase, Context<'static>), String> {
    Ok((SpinDatabase::open_configured(DATABASE)?, context()?))
}

/// The catalog and the cart, reached over local service chaining.
struct Services;

fn call(method: Method, url: String, user: Option<&str>) -> Result<Response, ApiError> {
    let mut request = Request::builder();
    request.method(method).uri(&url);
    if let Some(user) = user {
        request.header("x-shop-user", user);
    }
    spin_sdk::http::run(spin_sdk::http::send::<_, Response>(request.build()))
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

    fn clear_cart(&self, user_id: &str) {
        if let Err(e) = call(Method::Delete, "http://cart.spin.internal/cart".into(), Some(user_id)) {
            eprintln!("orders: the cart of {user_id} stays: {}", e.message);
        }
    }
}

/// `GET /orders/{id}?wait_ms=N`: holds the request while the caller's order is
/// PENDING, up to N ms, looking at its status every few milliseconds, so a client
/// following a saga needs one request instead of a stream of polls.
fn wait_while_pending(request: &service::Request<'_>, orders: &Orders<'_, SpinDatabase>) -> Result<(), ApiError> {
    let Some((order_id, wait_ms)) = service::long_poll(request)? else {
        return Ok(());
    };
    if request.user.is_empty() {
        return Ok(()); // refused by the handler
    }
    orders.migrate().map_err(|e| ApiError::unavailable(e.to_string()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let mut pause = std::time::Duration::from_millis(2);
    while std::time::Instant::now() < deadline {
        let status = orders
            .status_of(order_id, request.user, service::is_admin(request))
            .map_err(ApiError::from)?;
        if status.as_deref() != Some("PENDING") {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
    Ok(())
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let (db, context) = match open() {
        Ok(opened) => opened,
        Err(e) => return event_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let method = req.method().to_string();
    let idempotency_key = req.header("idempotency-key").and_then(|v| v.as_str());
    let request = service::Request {
        method: &method,
        path: req.path(),
        query: req.query(),
        body: req.body(),
        user: event_kit::header(&req, "x-shop-user"),
        roles: event_kit::header(&req, "x-shop-roles"),
        idempotency_key,
    };
    if let Err(e) = wait_while_pending(&request, &Orders::new(&db, &context)) {
        return event_kit::reply(shop_domain::api::Response::error(&e));
    }
    let (response, effects) = service::handle(&request, &Orders::new(&db, &context), &Services, &event_kit::new_id);
    if effects.wrote {
        event_kit::publish_outbox(&db, SOURCE);
    }
    if effects.from_cart && response.status == 202 {
        Services.clear_cart(request.user);
    }
    event_kit::reply(response)
}

/// Whether the saga acts on `event` (results; the commands on the same topics are
/// for the other services).
fn is_result(event: &ShopEvent) -> bool {
    matches!(
        event,
        ShopEvent::InventoryReserved(_)
            | ShopEvent::InventoryRejected(_)
            | ShopEvent::InventoryReleased(_)
            | ShopEvent::InventoryCommitted(_)
            | ShopEvent::PaymentAuthorized(_)
            | ShopEvent::PaymentDeclined(_)
            | ShopEvent::PaymentCaptured(_)
            | ShopEvent::PaymentVoided(_)
            | ShopEvent::PaymentRefunded(_)
    )
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        if !is_result(&event) {
            return Ok(());
        }
        let (db, context) = open().map_err(event_kit::Error::Other)?;
        let orders = Orders::new(&db, &context);
        orders.migrate().map_err(|e| event_kit::Error::Other(e.to_string()))?;
        let outcome = orders
            .apply(Some(&envelope.id), &event.key(), &event)
            .map_err(|e| event_kit::Error::Other(e.to_string()))?;
        if matches!(outcome, Outcome::Changed(_)) {
            event_kit::publish_outbox(&db, SOURCE);
        }
        Ok(())
    }
}

impl cron::Guest for Handlers {
    fn handle_cron_event(_: cron::Metadata) -> Result<(), cron::Error> {
        let failed = |e: String| cron::Error::Other(e);
        let (db, context) = open().map_err(failed)?;
        let orders = Orders::new(&db, &context);
        orders.migrate().map_err(|e| failed(e.to_string()))?;
        // One order that cannot be timed out must not hold up the others or the relay.
        let mut problems = Vec::new();
        match orders.overdue(OVERDUE_BATCH) {
            Ok(due) => {
                for (order_id, timeout) in due {
                    if let Err(e) = orders.apply(None, &order_id, &timeout) {
                        problems.push(format!("timing out {order_id}: {e}"));
                    }
                }
            }
            Err(e) => problems.push(format!("finding overdue orders: {e}")),
        }
        if let Err(e) = event_kit::relay_outbox(&db, SOURCE) {
            problems.push(e);
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(failed(problems.join("; "))),
        }
    }
}

kafka::export_kafka_handler!(Handlers);
cron::export_cron_handler!(Handlers);
