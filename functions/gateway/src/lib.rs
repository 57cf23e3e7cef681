//! The shop's gateway component: the only public entry point (SPEC §3.1).
//!
//! It answers the service index and JSON errors, verifies bearer tokens against the
//! issuer's JWKS (variables `jwt_issuer`, `jwt_audience`, `jwks_url`), enforces each
//! route's role, and forwards to the private services over local service chaining.
//! Rate limiting and CORS are not built yet.

pub mod auth;
pub mod keys;
pub mod routes;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod adapter {
    use jsonwebtoken::jwk::JwkSet;
    use spin_sdk::http::{Method, Request, Response};
    use spin_sdk::http_component;
    use spin_sdk::key_value::Store;

    use crate::auth::{Principal, Refusal, TokenRules, authorize};
    use crate::keys::{self, CACHE_KEY, Cached};
    use crate::routes::{Decision, decide};

    /// Response headers of a service worth passing on.
    const PASSED_HEADERS: &[&str] = &[
        "content-type",
        "location",
        "x-cache",
        "allow",
        "retry-after",
        "cache-control",
    ];

    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.to_string())
            .build()
    }

    fn error(status: u16, code: &str, message: &str) -> Response {
        json(
            status,
            &serde_json::json!({ "error": { "code": code, "message": message } }),
        )
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn variable(name: &str, default: &str) -> String {
        spin_sdk::variables::get(name).unwrap_or_else(|_| default.to_string())
    }

    async fn fetch_jwks(url: &str) -> Result<JwkSet, String> {
        let response: Response = spin_sdk::http::send(Request::get(url))
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if *response.status() != 200 {
            return Err(format!("{url} answered {}", response.status()));
        }
        serde_json::from_slice(response.body()).map_err(|e| format!("{url} is not a JWKS: {e}"))
    }

    /// The issuer's keys, from the shared cache when fresh enough for `kid`.
    async fn signing_keys(kid: Option<String>) -> Result<JwkSet, String> {
        let store = Store::open_default().ok();
        let now = now_ms();
        if let Some(cached) = store
            .as_ref()
            .and_then(|s| s.get(CACHE_KEY).ok().flatten())
            .and_then(|bytes| serde_json::from_slice::<Cached>(&bytes).ok())
            && keys::usable(&cached, kid.as_deref(), now)
        {
            return Ok(cached.jwks);
        }
        let url = variable("jwks_url", "http://users.spin.internal/.well-known/jwks.json");
        let jwks = fetch_jwks(&url).await?;
        if let Some(store) = &store {
            let cached = Cached {
                fetched_at_ms: now,
                jwks: jwks.clone(),
            };
            let _ = store.set(CACHE_KEY, &serde_json::to_vec(&cached).unwrap_or_default());
        }
        Ok(jwks)
    }

    async fn forward(service: &str, req: &Request, caller: Option<Principal>) -> Response {
        let query = match req.query() {
            "" => String::new(),
            q => format!("?{q}"),
        };
        let mut outbound = Request::builder();
        outbound
            .method(req.method().clone())
            .uri(format!("http://{service}.spin.internal{}{query}", req.path()));
        for name in ["content-type", "x-request-id"] {
            if let Some(value) = req.header(name).and_then(|v| v.as_str()) {
                outbound.header(name, value);
            }
        }
        // Services trust these because only the gateway can reach them, and it never
        // passes on a client's own x-shop-* headers.
        if let Some(caller) = caller {
            outbound.header("x-shop-user", caller.subject);
            outbound.header("x-shop-roles", caller.roles.join(","));
        }
        if *req.method() != Method::Get {
            outbound.body(req.body().to_vec());
        }
        let response: Response = match spin_sdk::http::send(outbound.build()).await {
            Ok(r) => r,
            Err(e) => {
                return error(
                    503,
                    "unavailable",
                    &format!("the {service} service did not answer: {e}"),
                );
            }
        };
        let mut reply = Response::builder();
        reply.status(*response.status());
        for (name, value) in response.headers() {
            if PASSED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                && let Some(value) = value.as_str()
            {
                reply.header(name, value);
            }
        }
        reply.body(response.into_body()).build()
    }

    #[http_component]
    async fn handle(req: Request) -> Response {
        let (service, access) = match decide(&req.method().to_string(), req.path()) {
            Decision::Reply(reply) => return json(reply.status, &reply.body),
            Decision::Forward { service, access } => (service, access),
        };
        let rules = TokenRules {
            issuer: variable("jwt_issuer", "http://127.0.0.1:3000"),
            audience: variable("jwt_audience", "shop"),
        };
        let authorization = req.header("authorization").and_then(|v| v.as_str());
        // Keys are needed only for protected routes, and loaded before verifying.
        let keys = match (access, authorization.and_then(|h| crate::auth::bearer(Some(h)).ok())) {
            (crate::auth::Access::Public, _) | (_, None) => Ok(JwkSet { keys: vec![] }),
            (_, Some(token)) => signing_keys(crate::auth::key_id(token)).await,
        };
        match authorize(access, authorization, move |_| keys, &rules) {
            Ok(caller) => forward(service, &req, caller).await,
            Err(Refusal::Unauthenticated(why)) => {
                let mut response = error(401, "unauthorized", &why);
                response.set_header("www-authenticate", "Bearer");
                response
            }
            Err(Refusal::Forbidden(why)) => error(403, "forbidden", &why),
        }
    }
}
