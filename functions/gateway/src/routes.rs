//! Gateway routing decisions, as plain Rust so they are unit-tested natively.

use serde_json::{Value, json};

use crate::auth::Access;

pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The methods the path takes, for the `Allow` header of a 405.
    pub allow: Option<String>,
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
        allow: None,
    })
}

/// 405 for `method` on `path`, which takes `allowed`.
fn not_allowed(method: &str, path: &str, allowed: &[&str]) -> Decision {
    let Decision::Reply(mut reply) = error(405, "method_not_allowed", format!("{method} is not allowed on {path}"))
    else {
        unreachable!("error() replies")
    };
    reply.allow = Some(allowed.join(", "));
    Decision::Reply(reply)
}

fn ok(body: Value) -> Decision {
    Decision::Reply(Reply {
        status: 200,
        body,
        allow: None,
    })
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The path's segments after the leading `/`, without a trailing `/`.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').skip(1).collect()
}

/// Forwards `method` if it is one of `allowed`, else 405 with `Allow`.
fn forward_if(allowed: &[&str], method: &str, path: &str, service: &'static str, access: Access) -> Decision {
    if allowed.contains(&method) {
        Decision::Forward { service, access }
    } else {
        not_allowed(method, path, allowed)
    }
}

/// The OpenAPI document of everything routed here (kept in sync by a test below).
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn decide(method: &str, path: &str) -> Decision {
    if path == "/openapi.json" {
        return match method {
            "GET" => ok(serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON")),
            _ => not_allowed(method, path, &["GET"]),
        };
    }
    // The storefront web app: its index, its files and its client-side pages. Every
    // other path is the API's, so a page of the app never hides an API route.
    if path == "/" || under(path, "/assets") || under(path, "/shop") {
        return forward_if(&["GET"], method, path, "storefront", Access::Public);
    }
    match path {
        "/auth/register"
        | "/auth/login"
        | "/auth/refresh"
        | "/auth/logout"
        | "/auth/otp/request"
        | "/auth/otp/verify"
        | "/auth/password/reset"
        | "/auth/service-token" => {
            return forward_if(&["POST"], method, path, "users", Access::Public);
        }
        "/.well-known/jwks.json" => return forward_if(&["GET"], method, path, "users", Access::Public),
        "/users/me" => return forward_if(&["GET", "PATCH"], method, path, "users", Access::Customer),
        "/users/me/password" | "/users/me/email/verify" | "/users/me/phone/verify" => {
            return forward_if(&["POST"], method, path, "users", Access::Customer);
        }
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/users/")
        && !id.is_empty()
        && !id.contains('/')
    {
        return forward_if(&["GET"], method, path, "users", Access::Service);
    }
    if under(path, "/cart") {
        let allowed: &[&str] = match segments(path).as_slice() {
            ["cart"] => &["GET", "DELETE"],
            ["cart", "items"] => &["POST"],
            ["cart", "items", _] => &["PATCH", "DELETE"],
            _ => return error(404, "not_found", format!("no route for {method} {path}")),
        };
        return forward_if(allowed, method, path, "cart", Access::Customer);
    }
    if under(path, "/orders") {
        let allowed: &[&str] = match segments(path).as_slice() {
            ["orders"] => &["GET", "POST"],
            ["orders", _] => &["GET"],
            ["orders", _, "cancel"] => &["POST"],
            _ => return error(404, "not_found", format!("no route for {method} {path}")),
        };
        return forward_if(allowed, method, path, "orders", Access::Customer);
    }
    if under(path, "/inventory") {
        return match segments(path).as_slice() {
            ["inventory", _] => forward_if(&["GET", "PUT"], method, path, "inventory", Access::Admin),
            _ => error(404, "not_found", format!("no route for {method} {path}")),
        };
    }
    if under(path, "/payments") {
        // The payments service shows a customer only their own payments.
        return match segments(path).as_slice() {
            ["payments", _] => forward_if(&["GET"], method, path, "payments", Access::Customer),
            _ => error(404, "not_found", format!("no route for {method} {path}")),
        };
    }
    if path == "/notifications" {
        return forward_if(&["GET"], method, path, "notifications", Access::Customer);
    }
    if under(path, "/products") {
        let access = match (segments(path).as_slice(), method) {
            (["products"] | ["products", _], "GET") => Access::Public,
            (["products"], "POST") | (["products", _], "PUT" | "DELETE") => Access::Admin,
            (["products"], _) => return not_allowed(method, path, &["GET", "POST"]),
            (["products", _], _) => return not_allowed(method, path, &["GET", "PUT", "DELETE"]),
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

    #[test]
    fn every_405_names_the_methods_the_path_takes() {
        for (method, path, allow) in [
            ("TRACE", "/", "GET"),
            ("DELETE", "/users/me", "GET, PATCH"),
            ("PUT", "/cart/items", "POST"),
            ("PATCH", "/products", "GET, POST"),
            ("POST", "/products/p-1", "GET, PUT, DELETE"),
            ("GET", "/auth/login", "POST"),
        ] {
            match decide(method, path) {
                Decision::Reply(r) => assert_eq!((r.status, r.allow.as_deref()), (405, Some(allow)), "{method} {path}"),
                Decision::Forward { .. } => panic!("{method} {path} forwarded"),
            }
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

    fn service(d: Decision) -> Option<&'static str> {
        match d {
            Decision::Forward { service, .. } => Some(service),
            _ => None,
        }
    }

    #[test]
    fn the_storefront_gets_its_pages_and_files_and_nothing_of_the_api() {
        for path in [
            "/",
            "/assets/app.js",
            "/assets/views/cart.js",
            "/shop",
            "/shop/orders/o-1",
        ] {
            assert_eq!(service(decide("GET", path)), Some("storefront"), "{path}");
            assert_eq!(access(decide("GET", path)), Some(Access::Public), "{path}");
            assert_eq!(status(decide("POST", path)), 405, "{path}");
        }
        for path in [
            "/products",
            "/orders/o-1",
            "/cart",
            "/shopping",
            "/assetsx",
            "/openapi.json",
        ] {
            assert_ne!(service(decide("GET", path)), Some("storefront"), "{path}");
        }
        let Decision::Reply(missing) = decide("GET", "/nope") else {
            panic!()
        };
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body["error"]["code"], "not_found");
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
