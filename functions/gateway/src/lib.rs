//! The shop's gateway component: the only public entry point (SPEC §3.1).
//!
//! It answers JSON errors itself, verifies bearer tokens against the
//! issuer's JWKS (variables `jwt_issuer`, `jwt_audience`, `jwks_url`), enforces each
//! route's role, limits request rates per client address (the one trusted proxies
//! name, variable `trusted_proxies`) and per user (token buckets in key-value),
//! answers CORS for configured origins, caps request bodies, sets the browser
//! security headers, and forwards to the private services (the storefront among
//! them) over local service chaining.

pub mod auth;
pub mod client;
pub mod cors;
pub mod keys;
pub mod limits;
pub mod routes;
pub mod security;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod waits;

#[cfg(target_arch = "wasm32")]
mod adapter {
    use jsonwebtoken::jwk::JwkSet;
    use spin_sdk::http::{Method, Request, Response};
    use spin_sdk::http_component;
    use spin_sdk::key_value::Store;

    use spin_sdk::wit::wasi::keyvalue::store;

    use crate::auth::{NoMemo, Principal, Refusal, TokenMemory, TokenRules, authorize};
    use crate::cors;
    use crate::keys::{self, CACHE_KEY, Cached};
    use crate::limits::{self, Bucket, Rate, Take};
    use crate::routes::{Decision, decide};
    use crate::waits;

    /// Response headers of a service worth passing on.
    const PASSED_HEADERS: &[&str] = &[
        "content-type",
        "location",
        "x-cache",
        "allow",
        "retry-after",
        "cache-control",
        "etag",
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

    /// Verified tokens remembered in the shared key-value store, one per subject, so
    /// every gateway instance recognises them.
    struct KeyValueMemo(Store);

    impl TokenMemory for KeyValueMemo {
        fn recall(&self, subject: &str) -> Option<String> {
            let bytes = self.0.get(&format!("verified-token:{subject}")).ok().flatten()?;
            String::from_utf8(bytes).ok()
        }
        fn remember(&self, subject: &str, digest: &str) {
            let _ = self.0.set(&format!("verified-token:{subject}"), digest.as_bytes());
        }
        fn session_ended(&self, session: &str) -> Result<bool, String> {
            self.0
                .exists(&crate::auth::ended_session_key(session))
                .map_err(|e| format!("key-value store: {e:?}"))
        }
    }

    /// Places a long poll holds in the wait budgets (see `waits`); dropping it gives
    /// them back.
    struct WaitLease {
        id: String,
        held: Vec<String>,
    }

    impl WaitLease {
        /// Places in every budget of `customer` at `client` for a wait of `wait_ms`, or
        /// `None` when one is full or the store cannot count (the poll then answers at
        /// once, which costs nothing to hold).
        fn take(customer: &str, client: &str, wait_ms: u64) -> Option<WaitLease> {
            let bucket = store::open("default").ok()?;
            let mut lease = WaitLease {
                id: guest_kit::new_id(),
                held: Vec::new(),
            };
            let maxima = [
                ("max_waits_per_customer", waits::DEFAULT_PER_CUSTOMER),
                ("max_waits_per_client", waits::DEFAULT_PER_CLIENT),
            ];
            for (key, (variable, default)) in waits::budget_keys(customer, client).into_iter().zip(maxima) {
                let max: usize = variable_or(variable, default);
                if max == 0 {
                    continue;
                }
                let taken = (0..5).find_map(|_| {
                    let cell = guest_kit::kv::read::<waits::Leases>(&bucket, &key).ok()?;
                    let current = cell.current().cloned().unwrap_or_default();
                    let Some(next) = current.take(&lease.id, max, now_ms(), wait_ms) else {
                        return Some(false);
                    };
                    cell.swap(&next).ok()?.then_some(true)
                });
                if taken != Some(true) {
                    return None; // `lease` drops, giving back what it took
                }
                lease.held.push(key);
            }
            Some(lease)
        }
    }

    impl Drop for WaitLease {
        fn drop(&mut self) {
            let Ok(bucket) = store::open("default") else { return };
            for key in &self.held {
                for _ in 0..5 {
                    let Ok(cell) = guest_kit::kv::read::<waits::Leases>(&bucket, key) else {
                        break;
                    };
                    let next = cell.current().cloned().unwrap_or_default().release(&self.id, now_ms());
                    if !matches!(cell.swap(&next), Ok(false)) {
                        break;
                    }
                }
            }
        }
    }

    async fn forward(service: &str, req: &Request, caller: Option<Principal>, client: &str) -> Response {
        // A long poll (the orders service's) waits only with a place in every wait
        // budget; else it answers now.
        let mut query = req.query().to_string();
        let _lease = match waits::requested_wait_ms(&query).filter(|_| service == "orders") {
            Some(wait_ms) => {
                let customer = caller.as_ref().map_or("anonymous", |c| c.subject.as_str());
                let lease = WaitLease::take(customer, client, wait_ms);
                if lease.is_none() {
                    query = waits::without_wait(&query);
                }
                lease
            }
            None => None,
        };
        let query = match query.as_str() {
            "" => String::new(),
            q => format!("?{q}"),
        };
        let mut outbound = Request::builder();
        outbound
            .method(req.method().clone())
            .uri(format!("http://{service}.spin.internal{}{query}", req.path()));
        for name in ["content-type", "x-request-id", "idempotency-key", "if-none-match"] {
            if let Some(value) = req.header(name).and_then(|v| v.as_str()) {
                outbound.header(name, value);
            }
        }
        // Services trust these because only the gateway can reach them, and it never
        // passes on a client's own x-shop-* headers.
        // For the services' own per-client limits (e.g. login throttling).
        outbound.header("x-shop-client", client);
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

    /// A whole-number variable (0 included), else `default`.
    fn variable_or(name: &str, default: usize) -> usize {
        variable(name, "").trim().parse().unwrap_or(default)
    }

    fn number(name: &str, default: f64) -> f64 {
        variable(name, "")
            .parse()
            .ok()
            .filter(|n: &f64| *n > 0.0)
            .unwrap_or(default)
    }

    /// Takes a token from `key`'s bucket; `Some(seconds)` when the caller must wait.
    /// Key-value trouble lets the request through: limiting is protection, not a gate
    /// that should take the shop down with the store.
    fn rate_limited(key: &str) -> Option<u64> {
        let rate = Rate {
            capacity: number("rate_limit_burst", 100.0),
            per_second: number("rate_limit_per_minute", 600.0) / 60.0,
        };
        take_token(key, rate)
    }

    /// Takes a token from the bucket all registrations share: each costs a password
    /// hash, and many addresses registering at once must not take the CPU every
    /// customer's login needs.
    fn registrations_limited() -> Option<u64> {
        let per_minute = number("registrations_per_minute", 300.0);
        let rate = Rate {
            capacity: (per_minute / 15.0).max(1.0),
            per_second: per_minute / 60.0,
        };
        take_token("ratelimit:registrations", rate)
    }

    fn take_token(key: &str, rate: Rate) -> Option<u64> {
        let bucket = store::open("default").ok()?;
        for _ in 0..5 {
            let cell = guest_kit::kv::read::<Bucket>(&bucket, key).ok()?;
            let (outcome, next) = match limits::take(cell.current().copied(), rate, now_ms()) {
                Take::Allowed(next) => (None, next),
                Take::Limited {
                    retry_after_secs,
                    bucket,
                } => (Some(retry_after_secs), bucket),
            };
            match cell.swap(&next) {
                Ok(true) => return outcome,
                Ok(false) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    fn too_many(retry_after: u64) -> Response {
        let mut response = error(
            429,
            "rate_limited",
            &format!("too many requests; retry in {retry_after} s"),
        );
        response.set_header("retry-after", retry_after.to_string());
        response
    }

    #[http_component]
    async fn handle(req: Request) -> Response {
        let mut response = answer(&req).await;
        for (name, value) in crate::security::HEADERS {
            response.set_header(name, value);
        }
        response
    }

    async fn answer(req: &Request) -> Response {
        let origins = cors::origins(&variable("cors_origins", ""));
        let origin = req.header("origin").and_then(|v| v.as_str()).map(str::to_string);
        if *req.method() == Method::Options && req.header("access-control-request-method").is_some() {
            let (status, headers) = cors::preflight(origin.as_deref(), &origins);
            let mut response = if status == 204 {
                Response::builder().status(204).build()
            } else {
                error(403, "forbidden", "origin not allowed")
            };
            for (name, value) in headers {
                response.set_header(name, value);
            }
            return response;
        }
        let mut response = route(req).await;
        for (name, value) in cors::response_headers(origin.as_deref(), &origins) {
            response.set_header(name, value);
        }
        response
    }

    async fn route(req: &Request) -> Response {
        // `spin-client-addr` is set by the host from the connection, not by the client;
        // behind trusted proxies the client is the one they name.
        let trusted = crate::client::trusted_proxies(&variable("trusted_proxies", "")).unwrap_or_else(|e| {
            eprintln!("gateway: trusted_proxies ignored: {e}");
            Vec::new()
        });
        let header = |name: &str| req.header(name).and_then(|v| v.as_str());
        let client = crate::client::client_address(
            header("spin-client-addr"),
            header("forwarded"),
            header("x-forwarded-for"),
            &trusted,
        )
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
        if let Some(wait) = rate_limited(&format!("ratelimit:client:{client}")) {
            return too_many(wait);
        }
        let max_body = number("max_body_bytes", 1_048_576.0) as usize;
        if req.body().len() > max_body {
            return error(
                413,
                "payload_too_large",
                &format!("request bodies are limited to {max_body} bytes"),
            );
        }
        if *req.method() == Method::Post
            && req.path().trim_end_matches('/') == "/auth/register"
            && let Some(wait) = registrations_limited()
        {
            return too_many(wait);
        }
        let (service, access) = match decide(&req.method().to_string(), req.path()) {
            Decision::Reply(reply) => {
                let mut response = json(reply.status, &reply.body);
                if let Some(allow) = &reply.allow {
                    response.set_header("allow", allow);
                }
                return response;
            }
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
        let memo: Box<dyn TokenMemory> = match Store::open_default() {
            Ok(store) => Box::new(KeyValueMemo(store)),
            Err(_) => Box::new(NoMemo),
        };
        match authorize(access, authorization, move |_| keys, &rules, memo.as_ref()) {
            Ok(caller) => {
                if let Some(caller) = &caller
                    && let Some(wait) = rate_limited(&format!("ratelimit:user:{}", caller.subject))
                {
                    return too_many(wait);
                }
                forward(service, req, caller, &client).await
            }
            Err(Refusal::Unauthenticated(why)) => {
                let mut response = error(401, "unauthorized", &why);
                response.set_header("www-authenticate", "Bearer");
                response
            }
            Err(Refusal::Forbidden(why)) => error(403, "forbidden", &why),
            // A store that cannot answer must not let a revoked token through.
            Err(Refusal::Unavailable(why)) => error(503, "unavailable", &why),
        }
    }
}
