//! Outages (SPEC §4): a backing service stops while the shop serves and starts again.
//! The requests that need it fail fast with a JSON 503, the others keep answering,
//! the shop recovers by itself when the service is back, and no accepted order is lost.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_tests::full_shop::{Api, Backend, FullShop};
use shop_tests::*;

/// How fast a request that needs a stopped service must be answered.
const FAIL_WITHIN: Duration = Duration::from_secs(2);

/// A Redis of the test's own on a free port, so stopping it touches no other test.
struct PrivateRedis {
    port: u16,
    server: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let mut redis = PrivateRedis {
            port: free_port(),
            server: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn restart(&mut self) {
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A call that must be answered within [`FAIL_WITHIN`].
fn timed(api: &Api, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let started = Instant::now();
    let answer = api.call(method, path, token, body);
    assert!(
        started.elapsed() < FAIL_WITHIN,
        "{method} {path} took {:?} with a service down",
        started.elapsed()
    );
    answer
}

#[test]
fn a_redis_outage_fails_what_needs_it_fast_and_the_shop_recovers() {
    let mut redis = PrivateRedis::start();
    let shop = FullShop::start_with_key_value(Backend::Embedded, "outage-redis", 0, &[], Some(&redis.url()));
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "OUTAGE-1", 700, 100);
    let ada = api.customer("ada@example.com");
    let (status, cart) = api.call(
        "POST",
        "/cart/items",
        Some(&ada),
        Some(json!({ "product_id": product, "quantity": 1 })),
    );
    assert_eq!(status, 200, "{cart}");
    let accepted = api.place(&ada, &product, 1, "tok_ok");

    redis.stop();
    // The cart lives in the key-value store; signed-in requests check the login there.
    for (method, path) in [("GET", "/cart"), ("GET", "/users/me")] {
        let (status, body) = timed(&api, method, path, Some(&ada), None);
        assert_eq!(status, 503, "{method} {path}: {body}");
        assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
    }
    let (status, body) = timed(
        &api,
        "POST",
        "/auth/login",
        None,
        Some(json!({ "email": "ada@example.com", "password": "correct horse" })),
    );
    assert_eq!(status, 503, "login counts attempts in the store: {body}");
    // The catalog does not need it.
    let (status, body) = timed(&api, "GET", &format!("/products/{product}"), None, None);
    assert_eq!(status, 200, "{body}");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api.call("GET", "/cart", Some(&ada), None);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let order = api.concluded(&ada, &accepted, Duration::from_secs(60));
    assert_eq!(
        order["status"], "CONFIRMED",
        "the order accepted before the outage: {order}"
    );
    let again = api.place(&ada, &product, 1, "tok_ok");
    assert_eq!(
        api.concluded(&ada, &again, Duration::from_secs(60))["status"],
        "CONFIRMED"
    );
}
