//! Gateway routing decisions, as plain Rust so they are unit-tested natively.

use serde_json::{Value, json};

use crate::auth::Access;

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// What to do with a request.
pub enum Decision {
    /// Answer here.
    Reply(Reply),
    /// Pass it, path and query unchanged, to this private service, once the caller has
    /// the access the route needs.
    Forward { service: &'static str, access: Access },
}

fn error(status: u16, code: &str, message: String) -> Decision {
    Decision::Reply(Reply {
        status,
        body: json!({ "error": { "code": code, "message": message } }),
    })
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The path's segments after the leading `/`, without a trailing `/`.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').skip(1).collect()
}

fn forward_if(allowed: bool, method: &str, path: &str, service: &'static str, access: Access) -> Decision {
    if allowed {
        Decision::Forward { service, access }
    } else {
        error(405, "method_not_allowed", format!("{method} is not allowed on {path}"))
    }
}

/// The OpenAPI document of everything routed here (kept in sync by a test below).
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn decide(method: &str, path: &str) -> Decision {
    if path == "/openapi.json" {
        return match method {
            "GET" => Decision::Reply(Reply {
                status: 200,
                body: serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON"),
            }),
            _ => error(405, "method_not_allowed", format!("{method} is not allowed on {path}")),
        };
    }
    if path == "/" {
        return match method {
            "GET" => Decision::Reply(Reply {
                status: 200,
                body: json!({ "service": "shop", "version": env!("CARGO_PKG_VERSION") }),
            }),
            _ => error(405, "method_not_allowed", format!("{method} is not allowed on /")),
        };
    }
    match path {
        "/auth/register"
        | "/auth/login"
        | "/auth/refresh"
        | "/auth/logout"
        | "/auth/otp/request"
        | "/auth/otp/verify"
        | "/auth/service-token" => {
            return forward_if(method == "POST", method, path, "users", Access::Public);
        }
        "/.well-known/jwks.json" => return forward_if(method == "GET", method, path, "users", Access::Public),
        "/users/me" => {
            return forward_if(
                matches!(method, "GET" | "PATCH"),
                method,
                path,
                "users",
                Access::Customer,
            );
        }
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/users/")
        && !id.is_empty()
        && !id.contains('/')
    {
        return forward_if(method == "GET", method, path, "users", Access::Service);
    }
    if under(path, "/cart") {
        let allowed = match segments(path).as_slice() {
            ["cart"] => matches!(method, "GET" | "DELETE"),
            ["cart", "items"] => method == "POST",
            ["cart", "items", _] => matches!(method, "PATCH" | "DELETE"),
            _ => return error(404, "not_found", format!("no route for {method} {path}")),
        };
        return forward_if(allowed, method, path, "cart", Access::Customer);
    }
    if under(path, "/orders") {
        let allowed = match segments(path).as_slice() {
            ["orders"] => matches!(method, "GET" | "POST"),
            ["orders", _] => method == "GET",
            ["orders", _, "cancel"] => method == "POST",
            _ => return error(404, "not_found", format!("no route for {method} {path}")),
        };
        return forward_if(allowed, method, path, "orders", Access::Customer);
    }
    if under(path, "/inventory") {
        return match segments(path).as_slice() {
            ["inventory", _] => forward_if(
                matches!(method, "GET" | "PUT"),
                method,
                path,
                "inventory",
                Access::Admin,
            ),
            _ => error(404, "not_found", format!("no route for {method} {path}")),
        };
    }
    if under(path, "/payments") {
        // The payments service shows a customer only their own payments.
        return match segments(path).as_slice() {
            ["payments", _] => forward_if(method == "GET", method, path, "payments", Access::Customer),
            _ => error(404, "not_found", format!("no route for {method} {path}")),
        };
    }
    if path == "/notifications" {
        return forward_if(method == "GET", method, path, "notifications", Access::Customer);
    }
    if under(path, "/products") {
        let access = match (segments(path).as_slice(), method) {
            (["products"] | ["products", _], "GET") => Access::Public,
            (["products"], "POST") | (["products", _], "PUT" | "DELETE") => Access::Admin,
            (["products"] | ["products", _], _) => {
                return error(405, "method_not_allowed", format!("{method} is not allowed on {path}"));
            }
            _ => return error(404, "not_found", format!("no route for {method} {path}")),
        };
        return Decision::Forward {
            service: "products",
            access,
        };
    }
    error(404, "not_found", format!("no route for {method} {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(d: Decision) -> u16 {
        match d {
            Decision::Reply(r) => r.status,
            Decision::Forward { .. } => 0,
        }
    }

    fn access(d: Decision) -> Option<Access> {
        match d {
            Decision::Forward { access, .. } => Some(access),
            _ => None,
        }
    }

    fn accepted(method: &str, path: &str) -> bool {
        !matches!(decide(method, path), Decision::Reply(r) if r.status == 404 || r.status == 405)
    }

    /// The document and the router agree both ways: every documented operation is
    /// routed, and every route found on a grid of methods × paths is documented.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = std::collections::BTreeSet::new();
        for (template, operations) in doc["paths"].as_object().unwrap() {
            let path = ["{id}", "{product_id}", "{sku}", "{order_id}"]
                .iter()
                .fold(template.clone(), |path, name| path.replace(name, "x-1"));
            for method in operations.as_object().unwrap().keys() {
                let method = method.to_uppercase();
                assert!(
                    accepted(&method, &path),
                    "documented but not routed: {method} {template}"
                );
                documented.insert((method, path.clone()));
            }
        }
        let mut paths: Vec<String> = documented.iter().map(|(_, p)| p.clone()).collect();
        paths.extend(
            [
                "/x",
                "/products/x-1/y",
                "/cart/other",
                "/auth",
                "/users",
                "/orders/x-1/other",
                "/inventory",
                "/payments",
            ]
            .map(String::from),
        );
        for path in &paths {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                if accepted(method, path) {
                    assert!(
                        documented.contains(&(method.to_string(), path.clone())),
                        "routed but not documented: {method} {path}"
                    );
                }
            }
        }
    }

    #[test]
    fn account_routes_go_to_the_users_service() {
        for path in [
            "/auth/register",
            "/auth/login",
            "/auth/refresh",
            "/auth/logout",
            "/auth/service-token",
        ] {
            assert!(matches!(
                decide("POST", path),
                Decision::Forward {
                    service: "users",
                    access: Access::Public
                }
            ));
            assert_eq!(status(decide("GET", path)), 405);
        }
        assert_eq!(access(decide("GET", "/.well-known/jwks.json")), Some(Access::Public));
        assert_eq!(access(decide("GET", "/users/me")), Some(Access::Customer));
        assert_eq!(access(decide("PATCH", "/users/me")), Some(Access::Customer));
        assert_eq!(status(decide("DELETE", "/users/me")), 405);
        assert_eq!(access(decide("GET", "/users/u-1")), Some(Access::Service));
        assert_eq!(status(decide("PUT", "/users/u-1")), 405);
        assert_eq!(status(decide("GET", "/users/u-1/x")), 404);
        assert!(matches!(
            decide("POST", "/cart/items"),
            Decision::Forward {
                service: "cart",
                access: Access::Customer
            }
        ));
    }

    #[test]
    fn index_and_errors() {
        let Decision::Reply(index) = decide("GET", "/") else {
            panic!("index is answered here")
        };
        assert_eq!(index.status, 200);
        assert_eq!(index.body["service"], "shop");
        let Decision::Reply(missing) = decide("GET", "/nope") else {
            panic!()
        };
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body["error"]["code"], "not_found");
        assert_eq!(status(decide("DELETE", "/")), 405);
    }

    #[test]
    fn catalog_reads_are_public_and_writes_need_an_admin() {
        assert_eq!(access(decide("GET", "/products")), Some(Access::Public));
        assert_eq!(access(decide("GET", "/products/p-1")), Some(Access::Public));
        assert_eq!(status(decide("GET", "/productsx")), 404);
        assert_eq!(access(decide("POST", "/products")), Some(Access::Admin));
        for method in ["PUT", "DELETE"] {
            assert_eq!(access(decide(method, "/products/p-1")), Some(Access::Admin), "{method}");
        }
        assert_eq!(status(decide("PATCH", "/products")), 405);
        assert_eq!(status(decide("POST", "/products/p-1")), 405);
        assert_eq!(status(decide("GET", "/products/p-1/more")), 404);
    }
}
