//! The orders HTTP API (paths as the gateway forwards them): place an order from the
//! cart or explicit lines, read one with its history, list mine, cancel.

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
        ApiError::unavailable(e)
    }
}

/// What `POST /orders` and `/cancel` changed, for the adapter (which publishes the
/// outbox and clears the cart).
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    pub wrote: bool,
    pub from_cart: bool,
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
                Outcome::Changed(order) => {
                    effects.wrote = true;
                    Ok(Response::json(202, &view(&order)))
                }
                // Concluded between the read and the write.
                _ => Err(ApiError::conflict("the order can no longer be cancelled")),
            }
        }
        (["orders", _, "cancel"], _) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found(format!("no route for {}", request.path))),
    }
}

/// The order if the caller may see it (its customer, or an admin); others get the
/// same 404 as for an unknown id.
fn visible(order: Option<Order>, request: &Request<'_>) -> Result<Order, ApiError> {
    let admin = request.roles.split(',').any(|r| r.trim() == "admin");
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
    if let Some(key) = request.idempotency_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err(ApiError::bad_request(
            "validation_failed",
            "`Idempotency-Key` is 1 to 200 characters",
        ));
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
    let placed = ShopEvent::OrderPlaced(OrderPlaced {
        order_id: new_id(),
        user_id: request.user.to_string(),
        lines,
        total: Money { amount, currency },
        payment_token: token.to_string(),
    });
    let order = orders.place(placed, request.idempotency_key)?;
    effects.wrote = true;
    Ok(Response::json(
        202,
        &json!({ "id": order.id, "status": status_text(order.status) }),
    ))
}

/// Explicit lines at the catalog's current prices.
fn priced(lines: &[LineInput], upstream: &impl Upstream) -> Result<Vec<OrderLine>, ApiError> {
    if lines.len() > MAX_LINES {
        return Err(ApiError::bad_request(
            "validation_failed",
            format!("at most {MAX_LINES} lines"),
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
