//! The whole shop as the repository's `spin.toml` describes it, on embedded defaults or
//! on Kafka + PostgreSQL + Redis, and a small client for its API: for the end-to-end
//! order tests and the load script.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Shop, ShopOptions, TempDir, client, fresh_postgres_database, psql, wasm};

pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const ADMIN_PASSWORD: &str = "change-me-now";
/// The services that keep data, each in a database of its own.
pub const DATABASES: [&str; 6] = ["products", "users", "orders", "inventory", "payments", "notifications"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite per service and the embedded event log, under the data dir.
    Embedded,
    /// Kafka (`SHOP_KAFKA_BROKERS`, topics under a prefix of their own), a PostgreSQL
    /// database per service and key-value on Redis.
    External,
}

pub struct FullShop {
    shop: Option<Shop>,
    manifest: PathBuf,
    data_dir: PathBuf,
    cache_dir: PathBuf,
    env: Vec<(String, String)>,
    pub backend: Backend,
    /// Names the PostgreSQL databases (`shop_<label>_<service>`).
    label: String,
    /// The app's namespace on Kafka.
    topic_prefix: String,
    _dir: TempDir,
}

pub fn kafka_brokers() -> String {
    std::env::var("SHOP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Where the machine's PostgreSQL keeps its socket, for the external backend's
/// `[postgres] local_socket_dir`: `SHOP_POSTGRES_SOCKET_DIR` (empty: none, TCP), or
/// Debian's `/var/run/postgresql` when the server's socket is there.
pub fn postgres_socket_dir() -> Option<PathBuf> {
    match std::env::var("SHOP_POSTGRES_SOCKET_DIR") {
        Ok(dir) => Some(PathBuf::from(dir)).filter(|dir| !dir.as_os_str().is_empty()),
        Err(_) => Some(PathBuf::from("/var/run/postgresql")).filter(|dir| dir.join(".s.PGSQL.5432").exists()),
    }
}

/// librdkafka settings of the external runs (`[kafka.options]`). Tansu holds every
/// fetch for `fetch.wait.max.ms` even with records waiting (Kafka answers as soon as
/// one arrives), and each fetch costs it work on every partition it names: with
/// librdkafka's default (500) a saga hop took ~80 ms; with 10, ~35 ms but the broker
/// spent 22–24 ms of CPU per order under load; with 50, 10–15 ms (bench-orders,
/// external, 32 customers: 38–46 orders/s against 30–31 in the same sitting). No
/// linger: a saga step publishes one record and waits for it (5 ms gained nothing).
pub const KAFKA_CLIENT_OPTIONS: [(&str, &str); 2] = [("fetch.wait.max.ms", "50"), ("linger.ms", "0")];

/// The librdkafka settings of external runs: [`KAFKA_CLIENT_OPTIONS`], or those of
/// `SHOP_KAFKA_OPTIONS` (`key=value,…`) when set, to compare settings by benchmark.
pub fn kafka_client_options() -> Vec<(String, String)> {
    match std::env::var("SHOP_KAFKA_OPTIONS") {
        Ok(list) => list
            .split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(|pair| {
                let (key, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("SHOP_KAFKA_OPTIONS: `{pair}` is not key=value"));
                (key.trim().to_string(), value.trim().to_string())
            })
            .collect(),
        Err(_) => KAFKA_CLIENT_OPTIONS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// What a full shop runs on besides its backend's defaults.
#[derive(Default)]
pub struct Setup<'a> {
    /// The Redis database for key-value on [`Backend::External`] (flushed).
    pub redis_db: u8,
    /// Extra environment (e.g. `SPIN_VARIABLE_PAYMENT_TIMEOUT_SECS`).
    pub env: &'a [(&'a str, &'a str)],
    /// The `default` key-value store on this Redis instead (either backend).
    pub key_value_url: Option<&'a str>,
    /// These Kafka brokers instead of [`kafka_brokers`] ([`Backend::External`]).
    pub kafka_brokers: Option<&'a str>,
}

impl FullShop {
    /// Starts the shop; `env` adds variables (e.g. `SPIN_VARIABLE_PAYMENT_TIMEOUT_SECS`).
    /// `redis_db` is the Redis database for key-value on [`Backend::External`] (flushed).
    pub fn start(backend: Backend, label: &str, redis_db: u8, env: &[(&str, &str)]) -> Self {
        Self::start_with(
            backend,
            label,
            Setup {
                redis_db,
                env,
                ..Setup::default()
            },
        )
    }

    /// As [`FullShop::start`], with the services of `setup`.
    pub fn start_with(backend: Backend, label: &str, setup: Setup<'_>) -> Self {
        let Setup {
            redis_db,
            env,
            key_value_url,
            kafka_brokers: brokers,
        } = setup;
        let dir = TempDir::new(label);
        let wasm_dir = wasm("gateway").parent().unwrap().to_path_buf();
        let repo_manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spin.toml");
        let manifest_text = std::fs::read_to_string(&repo_manifest).unwrap().replace(
            "source = \"target/wasm32-wasip2/release/",
            &format!("source = \"{}/", wasm_dir.display()),
        );
        let manifest = dir.path().join("spin.toml");
        std::fs::write(&manifest, manifest_text).unwrap();

        let mut runtime_config: String = DATABASES
            .iter()
            .map(|db| format!("[sqlite_database.{db}]\ntype = \"spin\"\n"))
            .collect();
        let mut env: Vec<(String, String)> = [
            ("SPIN_VARIABLE_ADMIN_EMAIL", ADMIN_EMAIL),
            ("SPIN_VARIABLE_ADMIN_PASSWORD", ADMIN_PASSWORD),
            // Load comes from one address: the rate limiter is not under test here.
            ("SPIN_VARIABLE_RATE_LIMIT_PER_MINUTE", "10000000"),
            ("SPIN_VARIABLE_RATE_LIMIT_BURST", "1000000"),
            ("SPIN_VARIABLE_MAX_WAITS_PER_CLIENT", "0"),
            ("SPIN_VARIABLE_REGISTRATIONS_PER_MINUTE", "1000000"),
            ("SPIN_VARIABLE_MAX_PENDING_ORDERS_PER_CUSTOMER", "0"),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let label = label.replace('-', "_");
        let topic_prefix = format!("{label}-{}-{}.", std::process::id(), crate::free_port());
        let key_value_url = match (key_value_url, backend) {
            (Some(url), _) => Some(url.to_string()),
            (None, Backend::External) => {
                flush_redis(redis_db);
                Some(format!("redis://127.0.0.1:6379/{redis_db}"))
            }
            (None, Backend::Embedded) => None,
        };
        if let Some(url) = key_value_url {
            runtime_config.push_str(&format!(
                "[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n"
            ));
        }
        if backend == Backend::External {
            runtime_config.push_str(&format!(
                "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{topic_prefix}\"\n[kafka.options]\n",
                brokers.map_or_else(kafka_brokers, str::to_string),
            ));
            for (key, value) in kafka_client_options() {
                runtime_config.push_str(&format!("{key:?} = {value:?}\n"));
            }
            // The services' addresses stay `postgres://…@127.0.0.1:5432/…` (what the
            // allow list names); the host reaches that server through its socket.
            if let Some(dir) = postgres_socket_dir() {
                runtime_config.push_str(&format!(
                    "[postgres]\nlocal_socket_dir = {:?}\n",
                    dir.display().to_string()
                ));
            }
            for db in DATABASES {
                let url = fresh_postgres_database(&format!("shop_{label}_{db}"));
                env.push((format!("SPIN_VARIABLE_{}_DATABASE_URL", db.to_uppercase()), url));
            }
        }
        std::fs::write(dir.path().join("runtime-config.toml"), runtime_config).unwrap();
        let mut full = FullShop {
            shop: None,
            manifest,
            data_dir: dir.path().join("data"),
            // Compiled components are shared by every full shop of the test run.
            cache_dir: wasm_dir.join("shop-test-compile-cache"),
            env,
            backend,
            label,
            topic_prefix,
            _dir: dir,
        };
        full.restart();
        full
    }

    /// Starts the host again (after [`FullShop::kill`]).
    pub fn restart(&mut self) {
        self.shop = Some(Shop::start_with(
            &self.manifest,
            ShopOptions {
                data_dir: &self.data_dir,
                args: vec![
                    "--no-build".into(),
                    "--cache-dir".into(),
                    self.cache_dir.display().to_string(),
                ],
                env: self.env.clone(),
            },
        ));
    }

    /// SIGKILL: no drain, no commits, whatever was in flight is cut off.
    pub fn kill(&mut self) {
        drop(self.shop.take());
    }

    pub fn shop(&self) -> &Shop {
        self.shop.as_ref().expect("the shop runs")
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.shop().base.clone(),
        }
    }

    /// Rows of `query` on `service`'s database, one line each, columns joined by `|`.
    pub fn sql(&self, service: &str, query: &str) -> String {
        match self.backend {
            Backend::External => psql(&format!("shop_{}_{service}", self.label), query),
            Backend::Embedded => {
                let db = rusqlite::Connection::open(self.data_dir.join(format!("sqlite_db_{service}.db"))).unwrap();
                let mut statement = db.prepare(query).unwrap();
                let columns = statement.column_count();
                let rows = statement
                    .query_map([], |row| {
                        Ok((0..columns)
                            .map(|i| match row.get_ref(i).unwrap() {
                                rusqlite::types::ValueRef::Null => String::new(),
                                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                                rusqlite::types::ValueRef::Real(r) => r.to_string(),
                                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                rusqlite::types::ValueRef::Blob(b) => String::from_utf8_lossy(b).into_owned(),
                            })
                            .collect::<Vec<_>>()
                            .join("|"))
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                rows.join("\n")
            }
        }
    }

    /// The event broker as the app sees it (plain topic names); call it inside a
    /// tokio runtime.
    pub fn broker(&self) -> std::sync::Arc<dyn shop_broker::Broker> {
        use shop_broker::namespace::Namespaced;
        match self.backend {
            Backend::Embedded => std::sync::Arc::new(
                shop_broker::embedded::EmbeddedBroker::open(
                    &self.data_dir.join("events/log.db"),
                    shop_broker::embedded::EmbeddedOptions::default(),
                )
                .unwrap(),
            ),
            Backend::External => {
                let options = shop_broker::kafka::KafkaOptions {
                    brokers: kafka_brokers(),
                    client_options: kafka_client_options(),
                    ..Default::default()
                };
                let kafka = std::sync::Arc::new(shop_broker::kafka::KafkaBroker::connect(options).unwrap());
                std::sync::Arc::new(Namespaced::new(kafka, &self.topic_prefix).unwrap())
            }
        }
    }

    /// The host's data directory (embedded databases and the event log).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the host wrote to stderr (for failure messages).
    pub fn log(&self) -> String {
        self.shop.as_ref().map(|s| s.stderr.text()).unwrap_or_default()
    }
}

/// Polls `condition` until it holds or `timeout` passes; whether it held.
pub fn wait_for(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    condition()
}

/// Empties Redis database `db` on the machine's server.
pub fn flush_redis(db: u8) {
    use std::io::{Read, Write};
    let mut redis = std::net::TcpStream::connect("127.0.0.1:6379")
        .unwrap_or_else(|e| panic!("Redis must run on 127.0.0.1:6379 for this test: {e}"));
    let db = db.to_string();
    redis
        .write_all(format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n", db.len()).as_bytes())
        .unwrap();
    let mut reply = [0u8; 64];
    let _ = redis.read(&mut reply);
}

/// The shop's public API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
}

impl Api {
    /// (status, JSON body) of one call; `Null` for a body that is not JSON.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, token, body, &[])
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = client().request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        match request.send() {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().unwrap_or(Value::Null))
            }
            // The host is down (a fault test killed it): no answer.
            Err(_) => (0, Value::Null),
        }
    }

    pub fn login(&self, email: &str, password: &str) -> String {
        let (status, tokens) = self.call(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "email": email, "password": password })),
        );
        assert_eq!(status, 200, "login {email}: {tokens}");
        tokens["access_token"].as_str().unwrap().to_string()
    }

    pub fn admin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    }

    /// Registers `email` and logs in.
    pub fn customer(&self, email: &str) -> String {
        let (status, body) = self.call(
            "POST",
            "/auth/register",
            None,
            Some(json!({ "email": email, "password": "correct horse", "name": "Test Customer" })),
        );
        assert_eq!(status, 201, "register {email}: {body}");
        self.login(email, "correct horse")
    }

    /// A product with `available` units in stock; its id.
    pub fn product(&self, admin: &str, sku: &str, amount: i64, available: u32) -> String {
        let product = json!({ "sku": sku, "name": format!("Product {sku}"), "description": "for tests",
                              "category": "tests", "price": { "amount": amount, "currency": "EUR" } });
        let (status, created) = self.call("POST", "/products", Some(admin), Some(product));
        assert_eq!(status, 201, "{created}");
        let (status, level) = self.call(
            "PUT",
            &format!("/inventory/{sku}"),
            Some(admin),
            Some(json!({ "available": available })),
        );
        assert_eq!(status, 200, "{level}");
        created["id"].as_str().unwrap().to_string()
    }

    /// (available, reserved) of `sku`.
    pub fn stock(&self, admin: &str, sku: &str) -> (u64, u64) {
        let (status, level) = self.call("GET", &format!("/inventory/{sku}"), Some(admin), None);
        assert_eq!(status, 200, "{level}");
        (
            level["available"].as_u64().unwrap(),
            level["reserved"].as_u64().unwrap(),
        )
    }

    /// Places an order; (status, body).
    pub fn order(&self, token: &str, lines: Value, payment_token: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/orders",
            Some(token),
            Some(json!({ "lines": lines, "payment_token": payment_token })),
        )
    }

    /// Places an order of `quantity` × `product`, which must be accepted; its id.
    pub fn place(&self, token: &str, product: &str, quantity: u32, payment_token: &str) -> String {
        let (status, accepted) = self.order(
            token,
            json!([{ "product_id": product, "quantity": quantity }]),
            payment_token,
        );
        assert_eq!(status, 202, "{accepted}");
        accepted["id"].as_str().unwrap().to_string()
    }

    /// Places an order of `quantity` × `product` with `POST /orders?wait_ms=`, which
    /// must be accepted: its id and its status when the answer came (PENDING only if
    /// it did not conclude within `wait_ms`).
    pub fn place_waiting(
        &self,
        token: &str,
        product: &str,
        quantity: u32,
        payment_token: &str,
        wait_ms: u64,
    ) -> (String, String) {
        let (status, accepted) = self.call(
            "POST",
            &format!("/orders?wait_ms={wait_ms}"),
            Some(token),
            Some(json!({
                "lines": [{ "product_id": product, "quantity": quantity }],
                "payment_token": payment_token,
            })),
        );
        assert_eq!(status, 202, "{accepted}");
        let text = |field: &str| accepted[field].as_str().unwrap().to_string();
        (text("id"), text("status"))
    }

    /// The status of the order's payment (empty when there is none).
    pub fn payment_status(&self, token: &str, order_id: &str) -> String {
        let (_, payment) = self.call("GET", &format!("/payments/{order_id}"), Some(token), None);
        payment["status"].as_str().unwrap_or_default().to_string()
    }

    /// The order once `done` holds for it, within `timeout`.
    pub fn order_when(&self, token: &str, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        // Quick looks first (a saga takes tens of milliseconds), then every 100 ms.
        let mut pause = Duration::from_millis(10);
        loop {
            let (status, order) = self.call("GET", &format!("/orders/{id}"), Some(token), None);
            if status == 200 && done(&order) {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} did not get there in {timeout:?}: {order}"
            );
            std::thread::sleep(pause);
            pause = (pause * 3 / 2).min(Duration::from_millis(100));
        }
    }

    /// The order once it is CONFIRMED or CANCELLED, asking the service to hold each
    /// request until then (`wait_ms`) rather than polling.
    pub fn concluded(&self, token: &str, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let asked = Instant::now();
            let (status, order) = self.call("GET", &format!("/orders/{id}?wait_ms=5000"), Some(token), None);
            if status == 200 && order["status"] != "PENDING" {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} did not conclude in {timeout:?}: {order}"
            );
            // An error, or a PENDING answer at once (the customer's wait budget was
            // spent by their other waits): look again a little later.
            if status != 200 || asked.elapsed() < Duration::from_millis(100) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
