//! The orders HTTP API (paths as the gateway forwards them): place an order from the
//! cart or explicit lines, read one with its history, list mine, cancel.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use shop_domain::ShopEvent;
use shop_domain::api::{ApiError, Response};
use shop_domain::events::{OrderCancelRequested, OrderPlaced};
use shop_domain::sql::Sql;
use shop_domain::types::{Money, OrderLine, OrderStatus, Product};

use crate::saga::Order;
use crate::store::{Orders, Outcome, StoreError, status_text};

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// The verified caller (`x-shop-user`) and roles (`x-shop-roles`).
    pub user: &'a str,
    pub roles: &'a str,
    pub idempotency_key: Option<&'a str>,
}

/// The services an order is priced from.
pub trait Upstream {
    /// The product, `None` when the catalog does not know it.
    fn product(&self, id: &str) -> Result<Option<Product>, ApiError>;
    /// The customer's cart as order lines at current prices.
    fn cart(&self, user_id: &str) -> Result<Vec<OrderLine>, ApiError>;
    /// Empties the cart once its order is placed (best effort).
    fn clear_cart(&self, user_id: &str);
    /// Hands the order's payment token to the payments service, which keeps it for
    /// the authorization: the token is in no event, no topic and no answer.
    fn keep_payment_method(&self, order_id: &str, user_id: &str, token: &str) -> Result<(), ApiError>;
    /// Withdraws the token of an order that was not placed after all (best effort).
    fn forget_payment_method(&self, order_id: &str, user_id: &str);
}

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineInput {
    product_id: String,
    quantity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    lines: Option<Vec<LineInput>>,
    payment_token: String,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooManyPending(max) => too_many_pending(max),
            other => ApiError::unavailable(other),
        }
    }
}

/// A customer's orders in flight are bounded: each one's payment may hold a handler
/// of the payments service for as long as the provider takes, and one customer's
/// many must not stall everyone else's checkout.
fn too_many_pending(max: i64) -> ApiError {
    ApiError::new(
        429,
        "too_many_pending_orders",
        format!("{max} of your orders are still in progress: place this one when one of them concludes"),
    )
    .with_retry_after(2)
}

/// What the adapter does after the answer: clear the cart an order was placed from.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    pub from_cart: bool,
    /// The order a `POST /orders` placed (or, for a retry with the same
    /// `Idempotency-Key`, placed before).
    pub placed: Option<String>,
}

pub fn handle<D: Sql>(
    request: &Request<'_>,
    orders: &Orders<'_, D>,
    upstream: &impl Upstream,
    new_id: &dyn Fn() -> String,
) -> (Response, Effects) {
    let mut effects = Effects::default();
    let response = Response::from_result(route(request, orders, upstream, new_id, &mut effects));
    (response, effects)
}

fn route<D: Sql>(
    request: &Request<'_>,
    orders: &Orders<'_, D>,
    upstream: &impl Upstream,
    new_id: &dyn Fn() -> String,
    effects: &mut Effects,
) -> Result<Response, ApiError> {
    if request.user.is_empty() {
        return Err(ApiError::new(401, "unauthorized", "no authenticated user"));
    }
    orders.migrate()?;
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
    match (segments.as_slice(), request.method) {
        (["orders"], "POST") => place(request, orders, upstream, new_id, effects),
        (["orders"], "GET") => {
            let (page, per_page) = paging(request.query)?;
            let (items, total) = orders.list(request.user, page, per_page)?;
            Ok(Response::json(
                200,
                &json!({ "items": items, "page": page, "per_page": per_page, "total": total }),
            ))
        }
        (["orders"], _) => Err(ApiError::method_not_allowed("GET, POST")),
        (["orders", id], "GET") => {
            let history = orders.history(id)?;
            let order = visible(Order::fold(&history), request)?;
            let events: Vec<_> = history
                .iter()
                .map(|r| json!({ "seq": r.seq, "id": r.event_id, "type": r.event.event_type(), "time": r.time,
                                 "data": serde_json::from_slice::<serde_json::Value>(&r.event.to_json()).unwrap_or_default() }))
                .collect();
            let mut body = view(&order);
            body["events"] = json!(events);
            Ok(Response::json(200, &body))
        }
        (["orders", _], _) => Err(ApiError::method_not_allowed("GET")),
        (["orders", id, "cancel"], "POST") => {
            let order = visible(orders.load(id)?, request)?;
            if !order.cancellable() {
                return Err(ApiError::conflict(match order.status {
                    OrderStatus::Pending => "the order is being completed and can no longer be cancelled",
                    _ => "the order is already concluded",
                }));
            }
            let cancel = ShopEvent::OrderCancelRequested(OrderCancelRequested {
                order_id: order.id.clone(),
                user_id: request.user.to_string(),
            });
            match orders.apply(None, id, &cancel)? {
                Outcome::Changed(order) => Ok(Response::json(202, &view(&order))),
                // Concluded between the read and the write.
                _ => Err(ApiError::conflict("the order can no longer be cancelled")),
            }
        }
        (["orders", _, "cancel"], _) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found(format!("no route for {}", request.path))),
    }
}

/// Longest `GET /orders/{id}?wait_ms=` or `POST /orders?wait_ms=` holds its answer for
/// a PENDING order.
pub const MAX_WAIT_MS: u64 = 10_000;

/// A long poll looks at its order first at once (it may have concluded, or not be the
/// caller's), then after this pause: a saga takes at least a few hops of the log, so
/// looking sooner finds it PENDING (on embedded defaults it concludes in 25–150 ms
/// depending on load; each look is a statement and a wake-up)…
pub const FIRST_POLL_PAUSE: Duration = Duration::from_millis(20);
/// …then after a third of the time waited so far, so a look comes at most a third
/// late, but not more often than this: on embedded defaults under load the former
/// pace (after 10 ms, then a quarter of the wait, at least 20 ms apart) cost 4 % more
/// host CPU per order for the same latency (`bench-orders 3000 32 embedded`, four
/// alternating pairs)…
const FAST_POLL: Duration = Duration::from_millis(30);
/// …nor less often than this: a customer waiting on a slow saga (PostgreSQL and
/// Kafka under load take a second or more) costs ten reads a second, not fifty.
const SLOW_POLL: Duration = Duration::from_millis(100);

/// How long a long poll sleeps before its next look at the order, having waited
/// `waited` in all: a third of that, from [`FAST_POLL`] to [`SLOW_POLL`].
pub fn next_poll_pause(waited: Duration) -> Duration {
    (waited / 3).clamp(FAST_POLL, SLOW_POLL)
}

/// How long `GET /orders/{id}` may wait for a PENDING order to conclude (`wait_ms`,
/// 0 to [`MAX_WAIT_MS`]; 0 when absent) and the order it waits for. `None` for other
/// requests; a bad value is a 400.
pub fn long_poll<'a>(request: &Request<'a>) -> Result<Option<(&'a str, u64)>, ApiError> {
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
    let (["orders", id], "GET") = (segments.as_slice(), request.method) else {
        return Ok(None);
    };
    Ok(wait_ms(request.query)?.map(|ms| (*id, ms)))
}

/// How long `POST /orders?wait_ms=N` may hold its 202 for the order it placed to
/// conclude, so that a customer learns the outcome from one request instead of a
/// placement and a long poll. `None` for other requests; a bad value is a 400, found
/// before anything is placed.
pub fn placement_wait(request: &Request<'_>) -> Result<Option<u64>, ApiError> {
    match (request.path.trim_end_matches('/'), request.method) {
        ("/orders", "POST") => wait_ms(request.query),
        _ => Ok(None),
    }
}

/// The query's `wait_ms` (0 to [`MAX_WAIT_MS`]); `None` when absent or 0.
fn wait_ms(query: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(name, value)| (name == "wait_ms").then_some(value))
    else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(ms) if ms <= MAX_WAIT_MS => Ok(Some(ms)),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("`wait_ms` is a number of milliseconds from 0 to {MAX_WAIT_MS}"),
        )),
    }
}

/// The answer to `POST /orders?wait_ms=` once the wait is over: the placement's 202
/// with the order's status as it stands then (PENDING when it did not conclude).
pub fn placed(order_id: &str, status: &str) -> Response {
    Response::json(202, &json!({ "id": order_id, "status": status }))
}

/// Whether the caller may see every order.
pub fn is_admin(request: &Request<'_>) -> bool {
    request.roles.split(',').any(|r| r.trim() == "admin")
}

fn visible(order: Option<Order>, request: &Request<'_>) -> Result<Order, ApiError> {
    let admin = is_admin(request);
    order
        .filter(|o| admin || o.user_id == request.user)
        .ok_or_else(|| ApiError::not_found("no such order"))
}

fn view(order: &Order) -> serde_json::Value {
    json!({
        "id": order.id,
        "user_id": order.user_id,
        "status": status_text(order.status),
        "step": order.step.name(),
        "lines": order.lines,
        "total": order.total,
        "reason": order.reason,
        "payment_id": order.payment_id,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
    })
}

fn paging(query: &str) -> Result<(u32, u32), ApiError> {
    let (mut page, mut per_page) = (1, 20);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<u32>()
                .map_err(|_| ApiError::bad_request("invalid_query", format!("`{name}` must be a positive number")))
        };
        match name {
            "page" => page = number()?,
            "per_page" => per_page = number()?,
            _ => {}
        }
    }
    if page == 0 || !(1..=100).contains(&per_page) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`page` starts at 1; `per_page` is 1 to 100",
        ));
    }
    Ok((page, per_page))
}

fn place<D: Sql>(
    request: &Request<'_>,
    orders: &Orders<'_, D>,
    upstream: &impl Upstream,
    new_id: &dyn Fn() -> String,
    effects: &mut Effects,
) -> Result<Response, ApiError> {
    let input: PlaceOrder = ApiError::parse(request.body)?;
    let token = input.payment_token.trim();
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::bad_request(
            "validation_failed",
            "`payment_token` is 1 to 200 characters",
        ));
    }
    if let Some(key) = request.idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(ApiError::bad_request(
                "validation_failed",
                "`Idempotency-Key` is 1 to 200 characters",
            ));
        }
        // A retry gets the order it placed, before the (emptied) cart or the
        // catalog is consulted again.
        if let Some((order, digest)) = orders.by_idempotency_key(request.user, key)? {
            same_request(digest.as_deref(), request.body)?;
            effects.placed = Some(order.id.clone());
            return Ok(placed(&order.id, status_text(order.status)));
        }
    }
    let lines = match &input.lines {
        Some(lines) => priced(lines, upstream)?,
        None => {
            effects.from_cart = true;
            upstream.cart(request.user)?
        }
    };
    if lines.is_empty() {
        return Err(ApiError::new(422, "empty_order", "nothing to order: the cart is empty"));
    }
    if lines.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "validation_failed",
            format!("at most {MAX_LINES} lines"),
        ));
    }
    let currency = lines[0].unit_price.currency.clone();
    if lines.iter().any(|l| l.unit_price.currency != currency) {
        return Err(ApiError::new(
            422,
            "mixed_currencies",
            "all lines must be in one currency",
        ));
    }
    let amount = lines
        .iter()
        .try_fold(0i64, |sum, l| {
            sum.checked_add(l.unit_price.amount.checked_mul(i64::from(l.quantity))?)
        })
        .ok_or_else(|| ApiError::bad_request("validation_failed", "the total is too large"))?;
    let order_id = new_id();
    upstream.keep_payment_method(&order_id, request.user, token)?;
    let event = ShopEvent::OrderPlaced(OrderPlaced {
        order_id: order_id.clone(),
        user_id: request.user.to_string(),
        lines,
        total: Money { amount, currency },
    });
    let digest = request_digest(request.body);
    let placement = orders.place(event, request.idempotency_key.map(|key| (key, digest.as_str())));
    if placement.is_err() {
        // Not placed: its token is not needed.
        upstream.forget_payment_method(&order_id, request.user);
    }
    let (order, placed_digest) = placement?;
    if order.id != order_id {
        // Another request with this key placed its order first: this one's token is
        // not needed (best effort: payments sweeps it within the hour otherwise).
        upstream.forget_payment_method(&order_id, request.user);
        same_request(placed_digest.as_deref(), request.body)?;
    }
    effects.placed = Some(order.id.clone());
    Ok(placed(&order.id, status_text(order.status)))
}

/// A digest of a placement's body, kept with its idempotency key.
fn request_digest(body: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a request that reuses an idempotency key with another body (422, as
/// common idempotency-key implementations answer).
fn same_request(kept: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
    match kept {
        Some(kept) if kept != request_digest(body) => Err(ApiError::new(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request: use a new key for a new order",
        )),
        _ => Ok(()),
    }
}

/// Explicit lines at the catalog's current prices.
fn priced(lines: &[LineInput], upstream: &impl Upstream) -> Result<Vec<OrderLine>, ApiError> {
    if lines.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "validation_failed",
            format!("at most {MAX_LINES} lines"),
        ));
    }
    // One line per product: repeating a product would add up past the per-line cap.
    let mut seen = std::collections::HashSet::new();
    if let Some(repeated) = lines.iter().find(|l| !seen.insert(l.product_id.as_str())) {
        return Err(ApiError::bad_request(
            "validation_failed",
            format!(
                "product {} is in more than one line: give its whole quantity (1 to {MAX_QUANTITY}) in one",
                repeated.product_id
            ),
        ));
    }
    lines
        .iter()
        .map(|line| {
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    format!("`quantity` is 1 to {MAX_QUANTITY}"),
                ));
            }
            let product = upstream
                .product(&line.product_id)?
                .ok_or_else(|| ApiError::new(422, "unknown_product", format!("no product {}", line.product_id)))?;
            Ok(OrderLine {
                product_id: product.id,
                sku: product.sku,
                quantity: line.quantity,
                unit_price: product.price,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use shop_domain::sql::testing::MemoryDb;

    use super::*;
    use crate::saga::Timeouts;
    use crate::store::Context;

    /// A catalog of two products, a cart that empties when cleared, and payments that
    /// keep the tokens handed over (or are down).
    #[derive(Default)]
    struct FakeShop {
        cart: RefCell<Vec<OrderLine>>,
        /// (order id, user id, token) as handed to payments.
        payment_methods: RefCell<Vec<(String, String, String)>>,
        payments_down: bool,
    }

    fn product(id: &str, currency: &str) -> Product {
        Product {
            id: id.into(),
            sku: format!("SKU-{id}"),
            name: id.into(),
            description: String::new(),
            category: "c".into(),
            price: Money {
                amount: 250,
                currency: currency.into(),
            },
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    impl Upstream for FakeShop {
        fn product(&self, id: &str) -> Result<Option<Product>, ApiError> {
            Ok(match id {
                "p-eur" => Some(product(id, "EUR")),
                "p-usd" => Some(product(id, "USD")),
                _ => None,
            })
        }
        fn cart(&self, _: &str) -> Result<Vec<OrderLine>, ApiError> {
            Ok(self.cart.borrow().clone())
        }
        fn clear_cart(&self, _: &str) {
            self.cart.borrow_mut().clear();
        }
        fn keep_payment_method(&self, order_id: &str, user_id: &str, token: &str) -> Result<(), ApiError> {
            if self.payments_down {
                return Err(ApiError::unavailable("payments did not answer"));
            }
            self.payment_methods
                .borrow_mut()
                .push((order_id.into(), user_id.into(), token.into()));
            Ok(())
        }
        fn forget_payment_method(&self, order_id: &str, _: &str) {
            self.payment_methods
                .borrow_mut()
                .retain(|(order, _, _)| order != order_id);
        }
    }

    fn context_at_100(new_id: &dyn Fn() -> String) -> Context<'_> {
        Context {
            now: 100,
            now_text: "t100".into(),
            new_id,
            timeouts: Timeouts {
                inventory_secs: 30,
                payment_secs: 30,
                completion_secs: 30,
            },
            max_pending_per_customer: 5,
        }
    }

    fn call(
        db: &MemoryDb,
        shop: &FakeShop,
        (method, path, user): (&str, &str, &str),
        body: &str,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let new_id = || uuid::Uuid::new_v4().to_string();
        let context = context_at_100(&new_id);
        let request = Request {
            method,
            path,
            query: "",
            body: body.as_bytes(),
            user,
            roles: "customer",
            idempotency_key: key,
        };
        let (response, effects) = handle(&request, &Orders::new(db, &context), shop, &new_id);
        if effects.from_cart && response.status == 202 {
            shop.clear_cart("");
        }
        (response.status, response.json_body())
    }

    #[test]
    fn a_long_poll_looks_often_at_first_then_every_100_ms() {
        let mut pause = FIRST_POLL_PAUSE;
        let mut waited = Duration::ZERO;
        let mut looks = Vec::new();
        while waited < Duration::from_millis(2_000) {
            waited += pause;
            looks.push(waited.as_millis());
            let next = next_poll_pause(waited);
            assert!(
                next >= pause && next >= FAST_POLL && next <= SLOW_POLL,
                "{next:?} at {waited:?}"
            );
            // A conclusion just after a look is seen at most a third of the wait late.
            assert!(next <= (waited / 3).max(FAST_POLL), "{next:?} at {waited:?}");
            pause = next;
        }
        assert_eq!(pause, SLOW_POLL);
        assert_eq!(
            looks[..6],
            [20, 50, 80, 110, 146, 195],
            "every 30 ms while a saga is young"
        );
        // 25 looks in two seconds instead of the 67 of a look every 30 ms.
        assert!((20..=28).contains(&looks.len()), "{looks:?}");
    }

    /// A request of customer `u-1` without a body.
    fn bodiless<'a>(method: &'a str, path: &'a str, query: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            query,
            body: b"",
            user: "u-1",
            roles: "customer",
            idempotency_key: None,
        }
    }

    #[test]
    fn wait_ms_asks_to_wait_only_on_one_order() {
        let waits = |method, path, query| long_poll(&bodiless(method, path, query));
        assert_eq!(waits("GET", "/orders/o-1", "wait_ms=250"), Ok(Some(("o-1", 250))));
        assert_eq!(
            waits("GET", "/orders/o-1", "x=1&wait_ms=10000"),
            Ok(Some(("o-1", 10_000)))
        );
        assert_eq!(waits("GET", "/orders/o-1", ""), Ok(None));
        assert_eq!(waits("GET", "/orders/o-1", "wait_ms=0"), Ok(None));
        assert_eq!(waits("GET", "/orders", "wait_ms=250"), Ok(None), "lists do not wait");
        assert_eq!(waits("POST", "/orders/o-1/cancel", "wait_ms=250"), Ok(None));
        for bad in ["wait_ms=10001", "wait_ms=-1", "wait_ms=soon"] {
            let refused = waits("GET", "/orders/o-1", bad).unwrap_err();
            assert_eq!(refused.status, 400, "{bad}");
        }
    }

    #[test]
    fn only_a_placement_waits_after_it_answers() {
        let waits = |method, path, query| placement_wait(&bodiless(method, path, query));
        assert_eq!(waits("POST", "/orders", "wait_ms=5000"), Ok(Some(5_000)));
        assert_eq!(waits("POST", "/orders/", "wait_ms=1"), Ok(Some(1)));
        assert_eq!(waits("POST", "/orders", ""), Ok(None));
        assert_eq!(waits("POST", "/orders", "wait_ms=0"), Ok(None));
        assert_eq!(waits("GET", "/orders", "wait_ms=250"), Ok(None), "lists do not wait");
        assert_eq!(waits("POST", "/orders/o-1/cancel", "wait_ms=250"), Ok(None));
        for bad in ["wait_ms=10001", "wait_ms=", "wait_ms=1.5"] {
            assert_eq!(waits("POST", "/orders", bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn a_placement_names_the_order_to_wait_for_and_a_retry_the_same_one() {
        let db = MemoryDb::default();
        let shop = FakeShop::default();
        let new_id = || uuid::Uuid::new_v4().to_string();
        let context = context_at_100(&new_id);
        let place = |body: &str, key| {
            let request = Request {
                method: "POST",
                path: "/orders",
                query: "wait_ms=5000",
                body: body.as_bytes(),
                user: "u-1",
                roles: "customer",
                idempotency_key: Some(key),
            };
            handle(&request, &Orders::new(&db, &context), &shop, &new_id)
        };
        let body = r#"{"lines": [{"product_id": "p-eur", "quantity": 1}], "payment_token": "tok_ok"}"#;
        let (first, effects) = place(body, "k-1");
        assert_eq!(first.status, 202);
        assert!(effects.placed.is_some());
        assert_eq!(effects.placed.as_deref(), first.json_body()["id"].as_str());
        let (retry, again) = place(body, "k-1");
        assert_eq!(retry.json_body()["id"], first.json_body()["id"]);
        assert_eq!(again.placed, effects.placed);
        let (refused, nothing) = place(r#"{"lines": [], "payment_token": "tok_ok"}"#, "k-2");
        assert_eq!(refused.status, 422, "{}", refused.json_body());
        assert_eq!(nothing.placed, None);

        // The same key with another request is not answered with the first order.
        let other = r#"{"lines": [{"product_id": "p-eur", "quantity": 7}], "payment_token": "tok_ok"}"#;
        let (reused, none) = place(other, "k-1");
        assert_eq!(
            (reused.status, reused.json_body()["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        assert_eq!(none.placed, None);
        assert_eq!(place(other, "k-3").0.status, 202, "a new key places it");
        assert_eq!(shop.payment_methods.borrow().len(), 2, "one token per order placed");
    }

    #[test]
    fn a_product_may_not_be_repeated_across_lines() {
        let db = MemoryDb::default();
        let shop = FakeShop::default();
        let line = r#"{"product_id": "p-eur", "quantity": 100}"#;
        let body = format!(r#"{{"lines": [{line}, {line}], "payment_token": "tok_ok"}}"#);
        let (status, refused) = call(&db, &shop, ("POST", "/orders", "u-1"), &body, None);
        assert_eq!(status, 400, "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than one line")
        );
        assert!(
            shop.payment_methods.borrow().is_empty(),
            "nothing kept for a refused order"
        );
    }

    #[test]
    fn the_payment_token_goes_to_payments_and_nowhere_else() {
        let db = MemoryDb::default();
        let shop = FakeShop::default();
        let body = r#"{"lines": [{"product_id": "p-eur", "quantity": 1}], "payment_token": "tok_secret_42"}"#;
        let (status, placed) = call(&db, &shop, ("POST", "/orders", "u-1"), body, None);
        assert_eq!(status, 202, "{placed}");
        let id = placed["id"].as_str().unwrap();
        assert_eq!(
            *shop.payment_methods.borrow(),
            [(id.to_string(), "u-1".to_string(), "tok_secret_42".to_string())]
        );
        let (_, order) = call(&db, &shop, ("GET", &format!("/orders/{id}"), "u-1"), "", None);
        assert!(!order.to_string().contains("tok_secret_42"), "{order}");
        let stored = db.dump();
        assert!(
            !stored.contains("tok_secret_42"),
            "the orders database keeps the token: {stored}"
        );

        let down = FakeShop {
            payments_down: true,
            ..FakeShop::default()
        };
        let (status, _) = call(&db, &down, ("POST", "/orders", "u-2"), body, None);
        assert_eq!(status, 503, "no order without its payment method");
        let (_, mine) = call(&db, &down, ("GET", "/orders", "u-2"), "", None);
        assert_eq!(mine["total"], 0);
    }

    #[test]
    fn status_of_answers_only_the_owner_or_an_admin() {
        let db = MemoryDb::default();
        let shop = FakeShop {
            cart: RefCell::new(vec![]),
            ..FakeShop::default()
        };
        let body = r#"{"lines": [{"product_id": "p-eur", "quantity": 1}], "payment_token": "tok_ok"}"#;
        let (status, placed) = call(&db, &shop, ("POST", "/orders", "u-1"), body, None);
        assert_eq!(status, 202, "{placed}");
        let id = placed["id"].as_str().unwrap();
        let new_id = String::new;
        let context = context_at_100(&new_id);
        let orders = Orders::new(&db, &context);
        assert_eq!(orders.status_of(id, "u-1", false).unwrap().as_deref(), Some("PENDING"));
        assert_eq!(orders.status_of(id, "u-2", false).unwrap(), None);
        assert_eq!(orders.status_of(id, "u-2", true).unwrap().as_deref(), Some("PENDING"));
    }

    #[test]
    fn a_retried_cart_order_with_its_key_gets_the_same_order() {
        let db = MemoryDb::default();
        let shop = FakeShop {
            cart: RefCell::new(vec![OrderLine {
                product_id: "p-eur".into(),
                sku: "SKU-p-eur".into(),
                quantity: 2,
                unit_price: product("p-eur", "EUR").price,
            }]),
            ..FakeShop::default()
        };
        let place = ("POST", "/orders", "u-1");
        let body = r#"{"payment_token": "tok_ok"}"#;
        let (status, first) = call(&db, &shop, place, body, Some("k-1"));
        assert_eq!((status, first["status"].as_str()), (202, Some("PENDING")), "{first}");
        assert!(shop.cart.borrow().is_empty(), "the ordered cart is emptied");
        let (status, again) = call(&db, &shop, place, body, Some("k-1"));
        assert_eq!(
            (status, &again["id"]),
            (202, &first["id"]),
            "not a 422 for the emptied cart"
        );
        assert_eq!(
            call(&db, &shop, place, body, Some("k-2")).0,
            422,
            "a new key: the cart is empty"
        );

        let path = format!("/orders/{}", first["id"].as_str().unwrap());
        let (status, order) = call(&db, &shop, ("GET", &path, "u-1"), "", None);
        assert_eq!((status, order["total"]["amount"].as_i64()), (200, Some(500)));
        assert_eq!(order["events"].as_array().unwrap().len(), 2);
        assert_eq!(call(&db, &shop, ("GET", &path, "u-2"), "", None).0, 404, "not theirs");
        let cancel = format!("{path}/cancel");
        assert_eq!(call(&db, &shop, ("POST", &cancel, "u-1"), "", None).0, 202);
        assert_eq!(call(&db, &shop, ("POST", &cancel, "u-1"), "", None).0, 409);
        let (status, list) = call(&db, &shop, ("GET", "/orders", "u-1"), "", None);
        assert_eq!((status, list["total"].as_i64()), (200, Some(1)));
    }

    #[test]
    fn bad_orders_are_refused_with_a_4xx() {
        let db = MemoryDb::default();
        let shop = FakeShop {
            cart: RefCell::default(),
            ..FakeShop::default()
        };
        let place = ("POST", "/orders", "u-1");
        for (body, status) in [
            ("{", 400),
            (r#"{"payment_token": ""}"#, 400),
            (r#"{"payment_token": 5}"#, 400),
            (r#"{"payment_token": "t", "coupon": "x"}"#, 400),
            (
                r#"{"lines": [{"product_id": "p-eur", "quantity": 0}], "payment_token": "t"}"#,
                400,
            ),
            (
                r#"{"lines": [{"product_id": "p-eur", "quantity": 101}], "payment_token": "t"}"#,
                400,
            ),
            (
                r#"{"lines": [{"product_id": "nope", "quantity": 1}], "payment_token": "t"}"#,
                422,
            ),
            (
                r#"{"lines": [{"product_id": "p-eur", "quantity": 1}, {"product_id": "p-usd", "quantity": 1}], "payment_token": "t"}"#,
                422,
            ),
            (r#"{"lines": [], "payment_token": "t"}"#, 422),
        ] {
            let (got, error) = call(&db, &shop, place, body, None);
            assert_eq!(got, status, "{body}: {error}");
            assert!(error["error"]["message"].is_string(), "{body}");
        }
        assert_eq!(call(&db, &shop, ("POST", "/orders", ""), "{}", None).0, 401);
        assert_eq!(call(&db, &shop, ("DELETE", "/orders", "u-1"), "", None).0, 405);
    }
}
