//! The gateway's edge duties through the real host: rate limiting shared in key-value
//! (429 + Retry-After, then recovery), CORS for configured origins only, and the
//! request body limit.

use std::time::{Duration, Instant};

use shop_tests::*;

fn app(dir: &TempDir, variables: &str) -> std::path::PathBuf {
    app_with_runtime_config(dir, variables, "")
}

fn app_with_runtime_config(dir: &TempDir, variables: &str, runtime_config: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.path().join("runtime-config.toml"),
        format!("[sqlite_database.products]\ntype = \"spin\"\n{runtime_config}"),
    )
    .unwrap();
    dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/...", "gateway"),
        private_trigger("products"),
        component(
            "gateway",
            "gateway",
            &format!(
                "allowed_outbound_hosts = [\"http://products.spin.internal\"]\nkey_value_stores = [\"default\"]\n\
                 [component.gateway.variables]\n{variables}"
            ),
        ),
        component(
            "products",
            "products",
            "sqlite_databases = [\"products\"]\nkey_value_stores = [\"default\"]"
        ),
    ))
}

#[test]
fn requests_beyond_the_rate_get_429_with_retry_after_then_recover() {
    let dir = TempDir::new("gateway-rate");
    let shop = Shop::start(
        &app(&dir, "rate_limit_burst = \"5\"\nrate_limit_per_minute = \"60\""),
        &dir.path().join("data"),
    );
    assert_burst_then_429_then_recovery(&shop);
}

/// Spin 3.6's Redis store reports every swap that wrote as lost (the host reproduces
/// that on request); the buckets must still fill and empty as elsewhere.
#[test]
fn rate_limits_hold_on_redis_as_spin_3_6_runs_it() {
    let dir = TempDir::new("gateway-rate-spin-redis");
    shop_tests::full_shop::flush_redis(6);
    let manifest = app_with_runtime_config(
        &dir,
        "rate_limit_burst = \"5\"\nrate_limit_per_minute = \"60\"",
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/6\"\n",
    );
    let shop = Shop::start_with(
        &manifest,
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args: vec![],
            env: vec![("SHOP_EMULATE_SPIN_REDIS_CAS".into(), "1".into())],
        },
    );
    assert_burst_then_429_then_recovery(&shop);
}

fn assert_burst_then_429_then_recovery(shop: &Shop) {
    let get = || client().get(format!("{}/products", shop.base)).send().unwrap();
    let statuses: Vec<u16> = (0..5).map(|_| get().status().as_u16()).collect();
    assert_eq!(statuses, [200; 5], "the burst is allowed");
    let limited = get();
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "one token per second: {retry_after}");
    let body: serde_json::Value = limited.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // After Retry-After, a token is back.
    let deadline = Instant::now() + Duration::from_secs(retry_after);
    std::thread::sleep(deadline - Instant::now() + Duration::from_millis(100));
    assert_eq!(get().status().as_u16(), 200, "recovers");
}

/// Behind a trusted proxy (here: loopback, where the test's requests come from) each
/// customer the proxy names has a bucket of their own; a client that is not a trusted
/// proxy cannot pick its bucket by writing the header.
#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let get = |base: &str, forwarded_for: &str| {
        client()
            .get(format!("{base}/products"))
            .header("x-forwarded-for", forwarded_for)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let dir = TempDir::new("gateway-proxy");
    let limits = "rate_limit_burst = \"3\"\nrate_limit_per_minute = \"1\"";
    let shop = Shop::start(
        &app(&dir, &format!("{limits}\ntrusted_proxies = \"127.0.0.0/8, ::1\"")),
        &dir.path().join("data"),
    );
    let ada: Vec<u16> = (0..4).map(|_| get(&shop.base, "198.51.100.1")).collect();
    assert_eq!(ada, [200, 200, 200, 429], "one customer's burst");
    assert_eq!(
        get(&shop.base, "198.51.100.2"),
        200,
        "another customer behind the same proxy"
    );
    // A forged entry before the proxy's own does not buy a new bucket.
    assert_eq!(get(&shop.base, "6.6.6.6, 198.51.100.1"), 429);
    drop(shop);

    // Without trusted proxies the header is the client's own words: one bucket.
    let dir = TempDir::new("gateway-no-proxy");
    let shop = Shop::start(&app(&dir, limits), &dir.path().join("data"));
    let statuses: Vec<u16> = (1..=4).map(|i| get(&shop.base, &format!("198.51.100.{i}"))).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn cors_answers_configured_origins_only_and_bodies_are_capped() {
    let dir = TempDir::new("gateway-cors");
    let shop = Shop::start(
        &app(
            &dir,
            "cors_origins = \"https://shop.example\"\nmax_body_bytes = \"1024\"",
        ),
        &dir.path().join("data"),
    );
    let preflight = |origin: &str| {
        client()
            .request(reqwest::Method::OPTIONS, format!("{}/products", shop.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .unwrap()
    };
    let allowed = preflight("https://shop.example");
    assert_eq!(allowed.status().as_u16(), 204);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    assert!(
        allowed.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let denied = preflight("https://evil.example");
    assert_eq!(denied.status().as_u16(), 403);
    assert!(denied.headers().get("access-control-allow-origin").is_none());

    let get = client()
        .get(format!("{}/products", shop.base))
        .header("origin", "https://shop.example")
        .send()
        .unwrap();
    assert_eq!(get.headers()["access-control-allow-origin"], "https://shop.example");
    let other = client()
        .get(format!("{}/products", shop.base))
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let openapi: serde_json::Value = client()
        .get(format!("{}/openapi.json", shop.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/products/{id}"]["put"]["security"].is_array());

    let oversized = client()
        .post(format!("{}/products", shop.base))
        .header("content-type", "application/json")
        .body("x".repeat(2048))
        .send()
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 413);
    let body: serde_json::Value = oversized.json().unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
}
