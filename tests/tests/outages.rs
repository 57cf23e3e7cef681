//! Outages (SPEC §4): a backing service stops while the shop serves and starts again.
//! The requests that need it fail fast with a JSON 503, the others keep answering,
//! the shop recovers by itself when the service is back, and no accepted order is lost.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_tests::full_shop::{Api, Backend, FullShop, Setup};
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

/// Waits until `GET path` answers 200 again, within `within`.
fn recovered(api: &Api, path: &str, token: Option<&str>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = api.call("GET", path, token, None);
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} not recovered: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The order accepted before the outage concludes CONFIRMED, and so does a new one.
fn nothing_accepted_was_lost(api: &Api, customer: &str, product: &str, accepted: &str) {
    let order = api.concluded(customer, accepted, Duration::from_secs(60));
    assert_eq!(
        order["status"], "CONFIRMED",
        "the order accepted before the outage: {order}"
    );
    let again = api.place(customer, product, 1, "tok_ok");
    assert_eq!(
        api.concluded(customer, &again, Duration::from_secs(60))["status"],
        "CONFIRMED"
    );
}

#[test]
fn a_redis_outage_fails_what_needs_it_fast_and_the_shop_recovers() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let setup = Setup {
        key_value_url: Some(&url),
        ..Setup::default()
    };
    let shop = FullShop::start_with(Backend::Embedded, "outage-redis", setup);
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
    recovered(&api, "/cart", Some(&ada), Duration::from_secs(10));
    nothing_accepted_was_lost(&api, &ada, &product, &accepted);
}

/// A PostgreSQL server of the test's own (initdb as the `postgres` user; trust auth
/// on loopback), so stopping it touches no other test.
struct PrivatePostgres {
    port: u16,
    dir: std::path::PathBuf,
}

fn as_postgres(program: &str, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{program} must be installed (PostgreSQL): {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

impl PrivatePostgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-outage-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            Command::new("chown")
                .args(["postgres", &dir.display().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let data = dir.join("data").display().to_string();
        as_postgres("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"]);
        let server = PrivatePostgres { port: free_port(), dir };
        server.resume();
        server
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn resume(&self) {
        let data = self.dir.join("data").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        as_postgres(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-w", "-l", &format!("{data}.log"), "start"],
        );
    }

    /// As a crash: no shutdown handshake with the clients.
    fn stop(&self) {
        let data = self.dir.join("data").display().to_string();
        as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_postgres_outage_fails_what_needs_it_fast_and_the_shop_recovers() {
    let postgres = PrivatePostgres::start();
    // The catalog on that server; everything else on the embedded defaults.
    let url = format!("postgres://postgres@{}/postgres", postgres.address());
    let env = [
        ("SPIN_VARIABLE_POSTGRES_HOST", postgres.address()),
        ("SPIN_VARIABLE_PRODUCTS_DATABASE_URL", url),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let shop = FullShop::start(Backend::Embedded, "outage-postgres", 0, &env);
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "OUTAGE-PG", 900, 100);
    let ada = api.customer("ada@example.com");
    let accepted = api.place(&ada, &product, 1, "tok_ok");

    postgres.stop();
    // The catalog, and placing an order (priced by the catalog), need it.
    let (status, body) = timed(&api, "GET", &format!("/products/{product}"), None, None);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, body) = timed(
        &api,
        "POST",
        "/orders",
        Some(&ada),
        Some(json!({ "lines": [{ "product_id": product, "quantity": 1 }], "payment_token": "tok_ok" })),
    );
    assert_eq!(status, 503, "{body}");
    // An order's own state does not.
    let (status, body) = timed(&api, "GET", &format!("/orders/{accepted}"), Some(&ada), None);
    assert_eq!(status, 200, "{body}");

    postgres.resume();
    recovered(&api, &format!("/products/{product}"), None, Duration::from_secs(15));
    nothing_accepted_was_lost(&api, &ada, &product, &accepted);
}

/// A Tansu broker of the test's own (`scripts/kafka-broker`, in-memory storage), made
/// unreachable by pausing its process: what it holds survives, as a broker's would
/// across a network partition.
struct PrivateBroker {
    port: u16,
    pid: String,
}

impl PrivateBroker {
    fn start() -> Self {
        let port = free_port();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
        let status = Command::new(&script)
            .args(["start", &port.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("scripts/kafka-broker runs");
        assert!(status.success(), "scripts/kafka-broker start {port} failed");
        let tools = std::env::var("SHOP_TOOLS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/shop/tools"));
        let pid = std::fs::read_to_string(tools.join(format!("tansu-{port}.pid"))).unwrap();
        PrivateBroker {
            port,
            pid: pid.trim().to_string(),
        }
    }

    fn signal(&self, signal: &str) {
        assert!(
            Command::new("kill")
                .args([signal, &self.pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // Not `signal`: a failed assertion while a failed test unwinds would abort.
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
        let _ = Command::new(script)
            .args(["stop", &self.port.to_string()])
            .stdout(Stdio::null())
            .status();
    }
}

/// Placing an order only writes the orders database (the host relays its outbox later), so
/// a broker outage holds sagas up without refusing customers; they all finish once
/// the broker is back, and the Kafka triggers come back by themselves.
#[test]
fn a_broker_outage_holds_sagas_up_and_loses_no_accepted_order() {
    let broker = PrivateBroker::start();
    let brokers = format!("127.0.0.1:{}", broker.port);
    let setup = Setup {
        redis_db: 13,
        kafka_brokers: Some(&brokers),
        ..Setup::default()
    };
    let shop = FullShop::start_with(Backend::External, "outage-kafka", setup);
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "OUTAGE-KAFKA", 400, 100);
    let ada = api.customer("ada@example.com");
    let before = api.place(&ada, &product, 1, "tok_ok");
    assert_eq!(
        api.concluded(&ada, &before, Duration::from_secs(60))["status"],
        "CONFIRMED"
    );

    broker.signal("-STOP");
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        accepted.push(api.place(&ada, &product, 1, "tok_ok"));
        assert!(started.elapsed() < FAIL_WITHIN, "placing took {:?}", started.elapsed());
    }
    let (status, body) = timed(&api, "GET", &format!("/products/{product}"), None, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = timed(&api, "GET", &format!("/orders/{}", accepted[0]), Some(&ada), None);
    assert_eq!((status, body["status"].as_str()), (200, Some("PENDING")), "{body}");
    std::thread::sleep(Duration::from_secs(3));

    broker.signal("-CONT");
    for id in &accepted {
        let order = api.concluded(&ada, id, Duration::from_secs(120));
        assert_eq!(order["status"], "CONFIRMED", "accepted during the outage: {order}");
    }
}
