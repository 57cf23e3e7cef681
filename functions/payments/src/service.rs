//! The payments HTTP API: `GET /payments/{order_id}` (the customer's own, or any for
//! an admin); `PUT /payment-methods/{order_id}`, where the orders service hands over
//! an order's payment token so it never travels on a topic; and the sandbox
//! provider's API under `/sandbox/`. The last two are reached only over local
//! service chaining: the gateway routes neither.

use serde::Deserialize;
use serde_json::json;
use shop_domain::api::{ApiError, Response};
use shop_domain::sql::Sql;
use shop_domain::types::Money;

use crate::ledger::{KeepRefused, Ledger};
use crate::sandbox::{Reply, SLOW_TOKEN, Sandbox};

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    pub user: &'a str,
    pub roles: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentMethod {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authorization {
    idempotency_key: String,
    token: String,
    amount: Money,
}

pub struct Services<'a, D: Sql> {
    pub ledger: &'a Ledger<'a, D>,
    pub sandbox: &'a Sandbox<'a, D>,
    /// How `tok_slow` is slow.
    pub sleep: &'a dyn Fn(),
}

pub fn handle<D: Sql>(request: &Request<'_>, services: &Services<'_, D>) -> Response {
    Response::from_result(route(request, services))
}

/// Answers `request` with the ledger and the sandbox on `db`; `tok_slow` waits
/// `sandbox_slow_ms`. The HTTP component and the in-process sandbox both use it.
pub fn handle_on<D: Sql>(
    request: &Request<'_>,
    db: &D,
    context: &crate::ledger::Context<'_>,
    sandbox_slow_ms: i64,
) -> Response {
    let sleep = move || std::thread::sleep(std::time::Duration::from_millis(sandbox_slow_ms.max(0) as u64));
    let services = Services {
        ledger: &Ledger::new(db, context),
        sandbox: &Sandbox {
            db,
            now_text: context.now_text.clone(),
            new_id: context.new_id,
        },
        sleep: &sleep,
    };
    handle(request, &services)
}

fn route<D: Sql>(request: &Request<'_>, services: &Services<'_, D>) -> Result<Response, ApiError> {
    services.ledger.migrate()?;
    shop_domain::sql::migrate(services.sandbox.db, &[crate::sandbox::SCHEMA])?;
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
    match (segments.as_slice(), request.method) {
        (["payments", order_id], "GET") => {
            let admin = request.roles.split(',').any(|r| r.trim() == "admin");
            let payment = services
                .ledger
                .payment(order_id)?
                .filter(|p| admin || (!request.user.is_empty() && p.user_id.as_deref() == Some(request.user)))
                .ok_or_else(|| ApiError::not_found("no payment for this order"))?;
            Ok(Response::json(200, &payment))
        }
        (["payments", _], _) => Err(ApiError::method_not_allowed("GET")),
        (["payment-methods", order_id], "PUT") => {
            if request.user.is_empty() {
                return Err(ApiError::new(401, "unauthorized", "no user placing this order"));
            }
            let input: PaymentMethod = ApiError::parse(request.body)?;
            if input.token.is_empty() || input.token.len() > 200 {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    "`token` is 1 to 200 characters",
                ));
            }
            match services
                .ledger
                .keep_payment_method(order_id, request.user, &input.token)
            {
                Ok(()) => Ok(Response::json(200, &json!({ "order_id": order_id }))),
                Err(KeepRefused::Conflict) => Err(ApiError::conflict("this order already has another payment method")),
                Err(KeepRefused::Sql(e)) => Err(e.into()),
            }
        }
        // The orders service withdraws a token whose order was not placed after all.
        (["payment-methods", order_id], "DELETE") => {
            if request.user.is_empty() {
                return Err(ApiError::new(401, "unauthorized", "no user placing this order"));
            }
            services.ledger.forget_payment_method(order_id, request.user)?;
            Ok(Response::json(200, &json!({ "order_id": order_id })))
        }
        (["payment-methods", _], _) => Err(ApiError::method_not_allowed("PUT, DELETE")),
        (["sandbox", "authorizations"], "POST") => {
            let input: Authorization = ApiError::parse(request.body)?;
            if input.amount.amount <= 0 || input.idempotency_key.is_empty() {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    "a positive amount and an idempotency key are required",
                ));
            }
            if input.token == SLOW_TOKEN {
                (services.sleep)();
            }
            let charge = services
                .sandbox
                .authorize(&input.idempotency_key, &input.token, &input.amount)?;
            match &charge.decline_reason {
                Some(reason) => Err(ApiError::new(402, "card_declined", reason.clone())),
                None => Ok(Response::json(201, &charge)),
            }
        }
        (["sandbox", "authorizations", "by-key", key], "GET") => match services.sandbox.by_key(key)? {
            Some(charge) => Ok(Response::json(200, &charge)),
            None => Err(ApiError::not_found(format!("no charge under key {key}"))),
        },
        (
            [
                "sandbox",
                "authorizations",
                id,
                action @ ("capture" | "void" | "refund"),
            ],
            "POST",
        ) => match services.sandbox.transition(id, action)? {
            Reply::Ok(charge) => Ok(Response::json(200, &charge)),
            Reply::NotFound => Err(ApiError::not_found(format!("no charge {id}"))),
            Reply::Refused(message) => Err(ApiError::conflict(message)),
        },
        _ => Err(ApiError::not_found(format!(
            "no route for {} {}",
            request.method, request.path
        ))),
    }
}

/// The body of a sandbox error, for the provider client.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| json!(String::from_utf8_lossy(body)).to_string())
}

#[cfg(test)]
mod tests {
    use shop_domain::sql::testing::MemoryDb;

    use super::*;
    use crate::ledger::Context;

    /// The service over an in-memory database, `sleep` standing in for `tok_slow`.
    fn with_services(sleep: &dyn Fn(), test: impl FnOnce(&Services<'_, MemoryDb>)) {
        let db = MemoryDb::default();
        let new_id = || uuid::Uuid::new_v4().to_string();
        let context = Context {
            now: 0,
            now_text: "t".into(),
            new_id: &new_id,
        };
        test(&Services {
            ledger: &Ledger::new(&db, &context),
            sandbox: &Sandbox {
                db: &db,
                now_text: "t".into(),
                new_id: &new_id,
            },
            sleep,
        });
    }

    #[test]
    fn the_sandbox_api_authorizes_declines_finds_and_captures() {
        let slept = std::cell::Cell::new(0);
        let sleep = || slept.set(slept.get() + 1);
        with_services(&sleep, |services| {
            let call = |method: &str, path: &str, body: &str| {
                let request = Request {
                    method,
                    path,
                    body: body.as_bytes(),
                    user: "",
                    roles: "",
                };
                let response = handle(&request, services);
                (response.status, response.json_body())
            };
            let authorize = |key: &str, token: &str| {
                let body =
                    json!({ "idempotency_key": key, "token": token, "amount": { "amount": 100, "currency": "EUR" } });
                call("POST", "/sandbox/authorizations", &body.to_string())
            };
            let (status, charge) = authorize("o-1", "tok_slow");
            assert_eq!((status, charge["status"].as_str()), (201, Some("authorized")));
            assert_eq!(slept.get(), 1, "tok_slow takes its time");
            assert_eq!(authorize("o-2", "tok_declined").0, 402);
            let (status, found) = call("GET", "/sandbox/authorizations/by-key/o-1", "");
            assert_eq!((status, &found["id"]), (200, &charge["id"]));
            assert_eq!(call("GET", "/sandbox/authorizations/by-key/o-9", "").0, 404);
            let capture = format!("/sandbox/authorizations/{}/capture", charge["id"].as_str().unwrap());
            assert_eq!(call("POST", &capture, "").1["captures"], 1);
            assert_eq!(call("POST", "/sandbox/authorizations/nope/void", "").0, 404);
            assert_eq!(call("GET", "/payments/o-1", "").0, 404, "no ledger row, and no caller");
            assert_eq!(call("POST", "/sandbox/authorizations", "{}").0, 400);
        });
    }

    #[test]
    fn a_payment_method_is_kept_for_its_user_and_order() {
        with_services(&|| {}, |services| {
            let put = |user: &str, body: &str| {
                let request = Request {
                    method: "PUT",
                    path: "/payment-methods/o-1",
                    body: body.as_bytes(),
                    user,
                    roles: "customer",
                };
                let response = handle(&request, services);
                (response.status, response.json_body())
            };
            let (status, body) = put("u-1", r#"{"token": "tok_ok"}"#);
            assert_eq!(status, 200, "{body}");
            assert!(
                !body.to_string().contains("tok_ok"),
                "the answer does not echo the token"
            );
            assert_eq!(put("u-1", r#"{"token": "tok_ok"}"#).0, 200, "again: a no-op");
            assert_eq!(put("u-2", r#"{"token": "tok_ok"}"#).0, 409);
            assert_eq!(put("u-1", r#"{"token": "tok_declined"}"#).0, 409);
            assert_eq!(put("", r#"{"token": "tok_ok"}"#).0, 401);
            assert_eq!(put("u-1", r#"{"token": ""}"#).0, 400);
            assert_eq!(put("u-1", r#"["tok_ok"]"#).0, 400);
        });
    }
}
