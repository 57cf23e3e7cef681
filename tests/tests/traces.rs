//! Traces: one order placed with a `traceparent` is one trace, with correctly parented
//! spans from every component the saga crosses, exported over OTLP/HTTP to a real
//! receiver (tests/otlp/receiver.py, decoding with the official opentelemetry-proto
//! definitions, installed by scripts/otlp-receiver); and a collector that goes away
//! or never answers changes no request's outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shop_tests::Captured;
use shop_tests::full_shop::{Backend, FullShop, Setup, wait_for};

/// A running receiver; its spans so far.
struct Receiver {
    child: Child,
    port: u16,
    spans: Captured,
}

impl Receiver {
    fn start() -> Self {
        let python = shop_tests::tool_script("otlp-receiver").concat();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the OTLP receiver starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver said {first:?}"));
        let spans = Captured::default();
        spans.follow(stdout);
        Self { child, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        self.spans
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans().into_iter().filter(|s| s["trace_id"] == trace_id).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exporting_to(endpoint: &str) -> [(&'static str, String); 3] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_SERVICE_NAME", "shop-under-test".to_string()),
        // Export every 200 ms rather than 5 s, so the test waits less.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ]
}

fn start_shop(label: &str, env: &[(&'static str, String)]) -> FullShop {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    FullShop::start_with(
        Backend::Embedded,
        label,
        Setup {
            env: &env,
            ..Setup::default()
        },
    )
}

/// The component a span ran in, or made its call from.
fn component(span: &Value) -> &str {
    span["attributes"]["shop.component"].as_str().unwrap_or("")
}

#[test]
fn one_order_is_one_trace_through_every_component_it_crosses() {
    let receiver = Receiver::start();
    let shop = start_shop("traces", &exporting_to(&receiver.endpoint()));
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "trace-1", 1500, 10);
    let customer = api.customer("tracy@example.com");

    let trace_id = format!("{:032x}", rand_u128());
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let body = json!({ "lines": [{ "product_id": product, "quantity": 1 }], "payment_token": "tok_ok" });
    let (status, accepted) = api.call_with(
        "POST",
        "/orders",
        Some(&customer),
        Some(body),
        &[("traceparent", &traceparent)],
    );
    assert_eq!(status, 202, "{accepted}");
    let order = api.concluded(&customer, accepted["id"].as_str().unwrap(), Duration::from_secs(20));
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    let expected = [
        "gateway",
        "orders",
        "orders-events",
        "inventory-events",
        "payments-events",
        "notifications-events",
    ];
    let seen = || -> BTreeSet<String> {
        receiver
            .trace(&trace_id)
            .iter()
            .map(|s| component(s).to_string())
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(20), || expected.iter().all(|c| seen().contains(*c))),
        "components in the trace: {:?}, want {expected:?}; spans:\n{}",
        seen(),
        receiver.spans.text()
    );
    // Everything that follows from the order (its notification last) has been sent.
    std::thread::sleep(Duration::from_millis(800));
    let spans = receiver.trace(&trace_id);
    let ids: BTreeMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap(), s)).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == caller_span).collect();
    assert_eq!(roots.len(), 1, "one span continues the caller's: {roots:?}");
    assert_eq!(component(roots[0]), "gateway");
    assert_eq!(roots[0]["kind"], 2, "the gateway's span is a server span");
    for span in &spans {
        let parent = span["parent_span_id"].as_str().unwrap();
        assert!(
            parent == caller_span || ids.contains_key(parent),
            "{} has a parent outside the trace: {span}",
            span["name"]
        );
        assert_eq!(span["service"], "shop-under-test");
    }
    // Chaining and Kafka hops are parented through their client and producer spans.
    let kind_of_parent = |span: &Value| {
        ids.get(span["parent_span_id"].as_str().unwrap())
            .map(|p| p["kind"].clone())
    };
    let server_of = |c: &str| spans.iter().find(|s| component(s) == c && s["kind"] == 2).unwrap();
    assert_eq!(kind_of_parent(server_of("orders")), Some(json!(3)), "a client span");
    let consumer = spans
        .iter()
        .find(|s| component(s) == "inventory-events" && s["kind"] == 5)
        .expect("inventory's consumer span");
    assert_eq!(kind_of_parent(consumer), Some(json!(4)), "a producer span");
    assert!(
        spans.iter().any(|s| s["attributes"]["db.system.name"] == "sqlite"),
        "storage calls are spans"
    );

    // The host's log lines of this trace carry its id.
    assert!(
        shop.log().contains(&trace_id),
        "no log line names trace {trace_id}:\n{}",
        shop.log()
    );
}

fn rand_u128() -> u128 {
    let a = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    a ^ (u128::from(std::process::id()) << 64) | 1
}

/// Places `n` orders one after another; every answer and outcome as without tracing.
fn orders_go_through(shop: &FullShop, n: usize, mut between: impl FnMut(usize)) {
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "steady-1", 100, 1000);
    let customer = api.customer("steady@example.com");
    for i in 0..n {
        between(i);
        let started = std::time::Instant::now();
        let id = api.place(&customer, &product, 1, "tok_ok");
        let order = api.concluded(&customer, &id, Duration::from_secs(20));
        assert_eq!(order["status"], "CONFIRMED", "order {i}: {order}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "order {i} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_collector_that_goes_away_or_never_answers_changes_no_request() {
    let mut receiver = Receiver::start();
    let shop = start_shop("traces-collector-gone", &exporting_to(&receiver.endpoint()));
    orders_go_through(&shop, 10, |i| {
        if i == 5 {
            let _ = receiver.child.kill();
            let _ = receiver.child.wait();
        }
    });
    assert!(!receiver.spans().is_empty(), "spans went out while it listened");
    drop(shop);

    // A collector that takes connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let shop = start_shop("traces-collector-silent", &exporting_to(&endpoint));
    orders_go_through(&shop, 5, |_| {});
    drop(silent);
}

/// An HTTP server on loopback that answers 200 and keeps each request's head.
fn recording_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let (mut head, mut line) = (String::new(), String::new());
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                head.push_str(&line.to_ascii_lowercase());
                line.clear();
            }
            kept.lock().unwrap().push(head);
            let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, heads)
}

/// Without any exporter, the context still travels and names the logs: an outbound
/// request carries the caller's trace, and a host event inside the invocation (here a
/// denied request) names the trace and span it happened in.
#[test]
fn the_context_travels_and_names_host_log_events_without_an_exporter() {
    use shop_tests::{Shop, TempDir, component, http_trigger};
    let (port, heads) = recording_upstream();
    let dir = TempDir::new("trace-context");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/front", "front"),
        component(
            "front",
            "chain-front",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]")
        ),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let trace_id = format!("{:032x}", rand_u128());
    let call = |target_port: u16| {
        let url = format!("{}/front?target=http%3A%2F%2F127.0.0.1%3A{target_port}%2F", shop.base);
        shop_tests::client()
            .get(url)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(call(port), 200);
    let head = heads.lock().unwrap().pop().expect("the upstream was called");
    let sent = head
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in\n{head}"))
        .trim()
        .to_string();
    assert!(sent.starts_with(&format!("00-{trace_id}-")), "{sent}");
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "a span of this host, not the caller's: {sent}"
    );

    let denied_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_eq!(call(denied_port), 502);
    assert!(
        wait_for(Duration::from_secs(5), || shop
            .stderr
            .text()
            .lines()
            .any(|l| l.contains("outbound request denied") && l.contains(&trace_id))),
        "the denial names its trace:\n{}",
        shop.stderr.text()
    );
}
