//! The catalog's HTTP semantics, independent of spin-sdk. Paths are the public ones
//! (`/products`, `/products/{id}`): the gateway forwards them unchanged.

use serde::Serialize;

use crate::cache::{self, KeyValue};
use crate::catalog::{Catalog, Context};
use crate::error::ApiError;
use crate::input::{ListQuery, product_input};
use crate::sql::Sql;

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("responses serialize"),
        }
    }

    fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    fn error(e: ApiError) -> Self {
        Self {
            status: e.status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: e.body(),
        }
    }
}

/// Everything a request may touch.
pub struct Services<'a, D: Sql, K: KeyValue, C: Context> {
    pub db: &'a D,
    pub cache: &'a K,
    pub context: &'a C,
    pub now_ms: i64,
}

pub fn handle<D: Sql, K: KeyValue, C: Context>(request: &Request<'_>, services: &Services<'_, D, K, C>) -> Response {
    match route(request, services) {
        Ok(response) => response,
        Err(e) => Response::error(e),
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(405, "method_not_allowed", format!("allowed: {allowed}"))
}

fn route<D: Sql, K: KeyValue, C: Context>(
    request: &Request<'_>,
    services: &Services<'_, D, K, C>,
) -> Result<Response, ApiError> {
    let catalog = Catalog::new(services.db, services.context);
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["products"] => {
            catalog.migrate()?;
            match request.method {
                "GET" => Ok(Response::json(200, &catalog.list(&ListQuery::parse(request.query)?)?)),
                "POST" => {
                    let product = catalog.create(product_input(request.body)?)?;
                    Ok(Response::json(201, &product).with_header("location", format!("/products/{}", product.id)))
                }
                _ => Err(method_not_allowed("GET, POST")),
            }
        }
        ["products", id] => {
            catalog.migrate()?;
            let not_found = || ApiError::not_found(format!("no product with id `{id}`"));
            match request.method {
                "GET" => {
                    if let Some(product) = cache::lookup(services.cache, id, services.now_ms) {
                        return Ok(Response::json(200, &product).with_header("x-cache", "hit".into()));
                    }
                    let product = catalog.get(id)?.ok_or_else(not_found)?;
                    cache::store(services.cache, &product, services.now_ms);
                    Ok(Response::json(200, &product).with_header("x-cache", "miss".into()))
                }
                "PUT" => {
                    let input = product_input(request.body)?;
                    let product = catalog.replace(id, input)?.ok_or_else(not_found)?;
                    cache::invalidate(services.cache, id);
                    Ok(Response::json(200, &product))
                }
                "DELETE" => {
                    if !catalog.delete(id)? {
                        return Err(not_found());
                    }
                    cache::invalidate(services.cache, id);
                    Ok(Response {
                        status: 204,
                        headers: vec![],
                        body: vec![],
                    })
                }
                _ => Err(method_not_allowed("GET, PUT, DELETE")),
            }
        }
        _ => Err(ApiError::not_found(format!("no route for {}", request.path))),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::Value;

    use super::*;
    use crate::cache::tests::MapKv;
    use crate::catalog::tests::FixedContext;
    use crate::sql::testing::MemoryDb;

    struct Fixture {
        db: MemoryDb,
        kv: MapKv,
        context: FixedContext,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                db: MemoryDb::default(),
                kv: MapKv::default(),
                context: FixedContext(Cell::new(0)),
            }
        }

        fn call(&self, method: &str, path: &str, body: &str) -> (Response, Value) {
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let services = Services {
                db: &self.db,
                cache: &self.kv,
                context: &self.context,
                now_ms: 0,
            };
            let response = handle(
                &Request {
                    method,
                    path,
                    query,
                    body: body.as_bytes(),
                },
                &services,
            );
            let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            (response, json)
        }
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    const MUG: &str = r#"{"sku":"MUG-1","name":"Mug","description":"Blue","category":"kitchen","price":{"amount":1299,"currency":"EUR"}}"#;

    #[test]
    fn crud_through_http_with_the_cache_in_front_of_reads() {
        let f = Fixture::new();
        let (created, product) = f.call("POST", "/products", MUG);
        assert_eq!(created.status, 201);
        let id = product["id"].as_str().unwrap().to_string();
        assert_eq!(header(&created, "location"), Some(format!("/products/{id}").as_str()));
        assert_eq!(
            product["price"],
            serde_json::json!({ "amount": 1299, "currency": "EUR" })
        );

        let (first, _) = f.call("GET", &format!("/products/{id}"), "");
        let (second, again) = f.call("GET", &format!("/products/{id}"), "");
        assert_eq!(
            (header(&first, "x-cache"), header(&second, "x-cache")),
            (Some("miss"), Some("hit"))
        );
        assert_eq!(again, product);

        let (updated, _) = f.call("PUT", &format!("/products/{id}"), &MUG.replace("1299", "999"));
        assert_eq!(updated.status, 200);
        let (read, fresh) = f.call("GET", &format!("/products/{id}"), "");
        assert_eq!(
            header(&read, "x-cache"),
            Some("miss"),
            "an update invalidates the cache"
        );
        assert_eq!(fresh["price"]["amount"], 999);

        let (listed, page) = f.call("GET", "/products?category=kitchen&q=mug", "");
        assert_eq!((listed.status, page["total"].as_i64()), (200, Some(1)));

        assert_eq!(f.call("DELETE", &format!("/products/{id}"), "").0.status, 204);
        let (gone, body) = f.call("GET", &format!("/products/{id}"), "");
        assert_eq!((gone.status, body["error"]["code"].as_str()), (404, Some("not_found")));
    }

    #[test]
    fn mistakes_get_json_errors_with_fitting_statuses() {
        let f = Fixture::new();
        for (method, path, body, status, code) in [
            ("POST", "/products", "{nope", 400, "invalid_json"),
            ("POST", "/products", "{}", 400, "validation_failed"),
            ("PUT", "/products/missing", MUG, 404, "not_found"),
            ("DELETE", "/products/missing", "", 404, "not_found"),
            ("PATCH", "/products", "", 405, "method_not_allowed"),
            ("GET", "/products?per_page=1000", "", 400, "invalid_query"),
            ("GET", "/elsewhere", "", 404, "not_found"),
        ] {
            let (response, json) = f.call(method, path, body);
            assert_eq!(response.status, status, "{method} {path}");
            assert_eq!(json["error"]["code"].as_str(), Some(code), "{method} {path}: {json}");
        }
        assert_eq!(f.call("POST", "/products", MUG).0.status, 201);
        assert_eq!(f.call("POST", "/products", MUG).0.status, 409, "duplicate sku");
    }
}
