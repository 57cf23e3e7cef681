//! The inventory's HTTP API (admin): `GET /inventory/{sku}`, `PUT /inventory/{sku}`
//! with `{available}`. The gateway checks the admin role; so does this service.

use serde::Deserialize;
use shop_domain::api::{ApiError, Response};
use shop_domain::sql::Sql;

use crate::stock::Inventory;

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    /// The verified caller's roles (`x-shop-roles`).
    pub roles: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    available: u32,
}

/// SKUs as the catalog allows them.
fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len()) && sku.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub fn handle<D: Sql>(request: &Request<'_>, inventory: &Inventory<'_, D>) -> Response {
    Response::from_result(route(request, inventory))
}

fn route<D: Sql>(request: &Request<'_>, inventory: &Inventory<'_, D>) -> Result<Response, ApiError> {
    let Some(sku) = request.path.strip_prefix("/inventory/").filter(|s| !s.contains('/')) else {
        return Err(ApiError::not_found(format!("no route for {}", request.path)));
    };
    if !request.roles.split(',').any(|r| r.trim() == "admin") {
        return Err(ApiError::forbidden("stock is managed by admins"));
    }
    if !valid_sku(sku) {
        return Err(ApiError::bad_request(
            "invalid_sku",
            "a SKU is 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    inventory.migrate()?;
    match request.method {
        "GET" => match inventory.level(sku)? {
            Some(level) => Ok(Response::json(200, &level)),
            None => Err(ApiError::not_found(format!("no stock recorded for {sku}"))),
        },
        "PUT" => {
            let input: SetStock = ApiError::parse(request.body)?;
            if input.available > 1_000_000_000 {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    "`available` is at most 1000000000",
                ));
            }
            Ok(Response::json(200, &inventory.set_available(sku, input.available)?))
        }
        _ => Err(ApiError::method_not_allowed("GET, PUT")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shop_domain::sql::testing::MemoryDb;

    use super::*;
    use crate::stock::Context;

    fn call(db: &MemoryDb, method: &str, path: &str, body: &str, roles: &str) -> (u16, serde_json::Value) {
        let new_id = || "id".to_string();
        let context = Context {
            now: 0,
            now_text: "t0".into(),
            new_id: &new_id,
            reservation_ttl_secs: 60,
        };
        let inventory = Inventory::new(db, &context);
        let request = Request {
            method,
            path,
            body: body.as_bytes(),
            roles,
        };
        let response = handle(&request, &inventory);
        (response.status, response.json_body())
    }

    #[test]
    fn admins_set_and_read_stock_and_bad_input_is_a_4xx() {
        let db = MemoryDb::default();
        assert_eq!(call(&db, "GET", "/inventory/MUG", "", "admin").0, 404);
        let (status, level) = call(&db, "PUT", "/inventory/MUG", r#"{"available": 7}"#, "admin,customer");
        assert_eq!(
            (status, level),
            (200, json!({ "sku": "MUG", "available": 7, "reserved": 0 }))
        );
        assert_eq!(call(&db, "GET", "/inventory/MUG", "", "admin").1["available"], 7);
        assert_eq!(call(&db, "GET", "/inventory/MUG", "", "customer").0, 403);
        for body in [
            r#"{"available": -1}"#,
            r#"{"available": "7"}"#,
            r#"{"available": 1, "x": 1}"#,
            "{",
        ] {
            let (status, error) = call(&db, "PUT", "/inventory/MUG", body, "admin");
            assert_eq!(status, 400, "{body}");
            assert!(error["error"]["message"].is_string());
        }
        assert_eq!(
            call(&db, "PUT", "/inventory/bad%20sku", r#"{"available": 1}"#, "admin").0,
            400
        );
        assert_eq!(call(&db, "DELETE", "/inventory/MUG", "", "admin").0, 405);
        assert_eq!(call(&db, "GET", "/inventory/a/b", "", "admin").0, 404);
    }
}
