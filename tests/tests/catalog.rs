//! The catalog service end to end: the products component on the real host (SQLite,
//! key-value cache, outbox), and catalog reads through the gateway over local service
//! chaining.

use serde_json::{Value, json};
use shop_tests::*;

fn products_component(id: &str) -> String {
    component(
        id,
        "products",
        "sqlite_databases = [\"products\"]\nkey_value_stores = [\"default\"]",
    )
}

/// The app's runtime config: the products database, found beside the manifest.
fn with_runtime_config(dir: &TempDir) {
    std::fs::write(
        dir.path().join("runtime-config.toml"),
        "[sqlite_database.products]\ntype = \"spin\"\n",
    )
    .unwrap();
}

fn send(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn mug(sku: &str, amount: i64) -> Value {
    json!({
        "sku": sku, "name": format!("Mug {sku}"), "description": "Stoneware", "category": "kitchen",
        "price": { "amount": amount, "currency": "EUR" }
    })
}

#[test]
fn products_crud_cache_and_outbox_on_the_host() {
    let dir = TempDir::new("catalog");
    with_runtime_config(&dir);
    let data = dir.path().join("data");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/products/...", "products"),
        products_component("products")
    ));
    let shop = Shop::start(&manifest, &data);
    let url = |path: &str| format!("{}{path}", shop.base);
    use reqwest::Method;

    let (status, headers, created) = send(Method::POST, url("/products"), Some(mug("MUG-1", 1299)));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(headers["location"], format!("/products/{id}").as_str());

    let (_, first, _) = send(Method::GET, url(&format!("/products/{id}")), None);
    let (_, second, body) = send(Method::GET, url(&format!("/products/{id}")), None);
    assert_eq!(
        (&first["x-cache"], &second["x-cache"]),
        (&"miss".parse().unwrap(), &"hit".parse().unwrap())
    );
    assert_eq!(body, created);

    let (status, _, updated) = send(Method::PUT, url(&format!("/products/{id}")), Some(mug("MUG-1", 999)));
    assert_eq!((status, updated["price"]["amount"].as_i64()), (200, Some(999)));
    let (_, after, body) = send(Method::GET, url(&format!("/products/{id}")), None);
    assert_eq!(after["x-cache"], "miss", "the update dropped the cached copy");
    assert_eq!(body["price"]["amount"], 999, "the update is visible immediately");

    for i in 0..25 {
        send(
            Method::POST,
            url("/products"),
            Some(mug(&format!("BULK-{i:02}"), 100 + i)),
        );
    }
    let (status, _, page) = send(Method::GET, url("/products?per_page=10&page=3&category=kitchen"), None);
    assert_eq!(
        (status, page["total"].as_i64(), page["items"].as_array().map(Vec::len)),
        (200, Some(26), Some(6))
    );
    let (_, _, found) = send(Method::GET, url("/products?q=bulk-07"), None);
    assert_eq!(found["items"][0]["sku"], "BULK-07");

    // Bad input: a JSON error and a 4xx, never a 500.
    for (method, path, body, expected) in [
        (Method::POST, "/products", Some(json!({ "sku": "X" })), 400),
        (Method::POST, "/products", Some(mug("MUG-1", 5)), 409),
        (Method::POST, "/products", Some(json!([1, 2])), 400),
        (Method::GET, "/products?per_page=0", None, 400),
        (Method::PUT, "/products/nope", Some(mug("Z", 1)), 404),
    ] {
        let (status, _, body) = send(method.clone(), url(path), body);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let oversized = client()
        .post(url("/products"))
        .body(format!("{{\"description\":\"{}\"}}", "x".repeat(70 * 1024)))
        .send()
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 413);

    let (status, _, _) = send(Method::DELETE, url(&format!("/products/{id}")), None);
    assert_eq!(status, 204);
    assert_eq!(send(Method::GET, url(&format!("/products/{id}")), None).0, 404);

    // Every change left its event in the outbox, as the consumers' types.
    let db = rusqlite::Connection::open(data.join("sqlite_db_products.db")).unwrap();
    let mut statement = db
        .prepare("SELECT event_type, payload FROM outbox ORDER BY seq")
        .unwrap();
    let events: Vec<(String, Vec<u8>)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.len(), 1 + 1 + 25 + 1, "create, update, 25 creates, delete");
    for (event_type, payload) in &events {
        shop_domain::ShopEvent::decode(event_type, payload).unwrap();
    }
    assert_eq!(events.last().unwrap().0, "shop.product.deleted");
}

/// Serves `body` as JSON to every request on a loopback port; returns the port.
fn serve_json(body: String) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn the_gateway_checks_tokens_and_roles_before_the_catalog() {
    use gateway::testing::{TestIssuer, b64url};
    use reqwest::Method;

    let issuer = TestIssuer::new("shop-key-1");
    let impostor = TestIssuer::new("shop-key-1");
    let jwks_port = serve_json(serde_json::to_string(&issuer.jwks).unwrap());
    let dir = TempDir::new("gateway-auth");
    with_runtime_config(&dir);
    let app = dir.manifest(&format!(
        "[variables]\njwt_issuer = {{ default = \"https://auth.test\" }}\n\
         jwks_url = {{ default = \"http://127.0.0.1:{jwks_port}/jwks\" }}\n{}{}{}{}",
        http_trigger("/...", "gateway"),
        private_trigger("products"),
        component(
            "gateway",
            "gateway",
            &format!(
                "allowed_outbound_hosts = [\"http://products.spin.internal\", \"http://127.0.0.1:{jwks_port}\"]\n\
                 key_value_stores = [\"default\"]\n\
                 [component.gateway.variables]\njwt_issuer = \"{{{{ jwt_issuer }}}}\"\njwks_url = \"{{{{ jwks_url }}}}\"\njwt_audience = \"shop\""
            ),
        ),
        products_component("products"),
    ));
    let shop = Shop::start(&app, &dir.path().join("data"));
    let claims = |roles: &[&str], exp: u64| json!({ "sub": "u-1", "iss": "https://auth.test", "aud": "shop", "exp": exp, "nbf": now() - 5, "roles": roles });
    let post = |token: Option<String>| {
        let mut request = client()
            .post(format!("{}/products", shop.base))
            .header("content-type", "application/json")
            .body(mug("GW-1", 450).to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        (status, challenge, response.json::<Value>().unwrap_or(Value::Null))
    };

    let mut wrong_audience = claims(&["admin"], now() + 300);
    wrong_audience["aud"] = json!("elsewhere");
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims(&["admin"], now() + 300).to_string().as_bytes())
    );
    for (case, token) in [
        ("missing", None),
        ("expired", Some(issuer.token(claims(&["admin"], now() - 600)))),
        ("wrong audience", Some(issuer.token(wrong_audience))),
        ("wrong key", Some(impostor.token(claims(&["admin"], now() + 300)))),
        ("alg none", Some(unsigned)),
    ] {
        let (status, challenge, body) = post(token);
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{case}");
    }
    let (status, _, body) = post(Some(issuer.token(claims(&["customer"], now() + 300))));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "customer on an admin route"
    );

    let (status, _, created) = post(Some(issuer.token(claims(&["admin"], now() + 300))));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, headers, product) = send(Method::GET, format!("{}/products/{id}", shop.base), None);
    assert_eq!((status, &product), (200, &created), "reads are public");
    assert_eq!(headers["content-type"], "application/json");
    let (status, _, page) = send(Method::GET, format!("{}/products?q=gw", shop.base), None);
    assert_eq!((status, page["total"].as_i64()), (200, Some(1)));
    assert_eq!(send(Method::GET, format!("{}/not-a-route", shop.base), None).0, 404);
}

#[test]
fn the_hosts_outbox_relay_publishes_product_events_as_cloudevents() {
    relay_publishes_product_events("catalog-relay", None);
}

/// The same with the catalog and its outbox in PostgreSQL; the relay empties it.
#[test]
fn the_hosts_outbox_relay_publishes_from_postgres() {
    let database = "shop_test_catalog_relay";
    let url = fresh_postgres_database(database);
    relay_publishes_product_events("catalog-relay-pg", Some(&url));
    assert_eq!(psql(database, "SELECT count(*) FROM products"), "0");
    assert_eq!(
        psql(database, "SELECT count(*) FROM outbox"),
        "0",
        "published rows leave the outbox"
    );
}

/// A runtime and the host's embedded event log under `data`, to read what it published.
fn event_log(data: &std::path::Path) -> (tokio::runtime::Runtime, shop_broker::embedded::EmbeddedBroker) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = shop_broker::embedded::EmbeddedBroker::open(
        &data.join("events/log.db"),
        shop_broker::embedded::EmbeddedOptions::default(),
    )
    .unwrap();
    (runtime, broker)
}

/// The catalog at `/products` and the host's relay of its outbox (`outbox` adds keys
/// to its `[[trigger.outbox]]`); `postgres` is the catalog's database URL (else SQLite).
fn catalog_with_outbox(dir: &TempDir, postgres: Option<&str>, outbox: &str) -> std::path::PathBuf {
    let (storage, url_variable) = match postgres {
        None => (String::new(), ""),
        Some(url) => (
            format!(
                "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]\n[component.products.variables]\ndatabase_url = \"{url}\"\n"
            ),
            "database_url_variable = \"database_url\"\n",
        ),
    };
    dir.manifest(&format!(
        "{}[[trigger.outbox]]\ncomponent = \"products\"\ndatabase = \"products\"\n{url_variable}\
         source = \"/products\"\ntopics = [\"shop.products\"]\n{outbox}{}{storage}",
        http_trigger("/products/...", "products"),
        products_component("products"),
    ))
}

/// Creates and deletes a product and reads the relay's events off the embedded log;
/// `postgres` is the catalog's database URL (else SQLite).
fn relay_publishes_product_events(label: &str, postgres: Option<&str>) {
    use shop_broker::{Broker, ConsumerEvent};
    let dir = TempDir::new(label);
    with_runtime_config(&dir);
    let data = dir.path().join("data");
    let manifest = catalog_with_outbox(&dir, postgres, "");
    let shop = Shop::start(&manifest, &data);
    let (_, _, created) = send(
        reqwest::Method::POST,
        format!("{}/products", shop.base),
        Some(mug("EV-1", 700)),
    );
    let id = created["id"].as_str().unwrap().to_string();
    send(reqwest::Method::DELETE, format!("{}/products/{id}", shop.base), None);

    let (runtime, broker) = event_log(&data);
    let received = runtime.block_on(async {
        let consumer = broker
            .consumer("catalog-test", &["shop.products".to_string()])
            .await
            .unwrap();
        let mut received = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while received.len() < 2 && std::time::Instant::now() < deadline {
            if let Ok(Ok(ConsumerEvent::Message(m))) =
                tokio::time::timeout(std::time::Duration::from_millis(500), consumer.next_event()).await
            {
                received.push(m);
            }
        }
        shop_broker::leave_group(consumer.as_ref()).await;
        received
    });
    assert_eq!(received.len(), 2, "created and deleted events\n{}", shop.stderr.text());
    for m in &received {
        assert_eq!(m.key.as_deref(), Some(id.as_bytes()), "keyed by product id");
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()));
        let envelope = shop_domain::Envelope::from_headers(headers).unwrap();
        assert_eq!(envelope.source, "/products");
        // What the relay published decodes as the type its consumers use.
        shop_domain::ShopEvent::decode(&envelope.event_type, &m.payload).unwrap();
    }
    let types: Vec<String> = received
        .iter()
        .map(|m| {
            let (_, v) = m.headers.iter().find(|(k, _)| k == "ce_type").unwrap();
            String::from_utf8(v.clone()).unwrap()
        })
        .collect();
    assert_eq!(types, ["shop.product.created", "shop.product.deleted"]);
}

/// The host dies at each boundary of a relay pass (`SHOP_CRASH_AT`, an abort with no
/// cleanup): after taking the row and before publishing it, the next host publishes
/// it once; after publishing and before deleting it, the next host publishes it again
/// under the same `ce_id` (at-least-once; consumers dedupe). Nothing is lost.
#[test]
fn a_host_killed_at_each_step_of_a_relay_pass_loses_no_event() {
    use shop_broker::{Broker, ConsumerEvent};
    for (point, copies) in [("outbox-taken", 1), ("outbox-published", 2)] {
        let dir = TempDir::new(&format!("catalog-crash-{point}"));
        with_runtime_config(&dir);
        let data = dir.path().join("data");
        let manifest = catalog_with_outbox(&dir, None, "");
        let mut crashing = Shop::start_with(
            &manifest,
            ShopOptions {
                data_dir: &data,
                args: vec![],
                env: vec![("SHOP_CRASH_AT".into(), point.into())],
            },
        );
        // The answer may or may not get out before the host dies: the commit has
        // happened either way (the relay runs after it).
        let _ = client()
            .post(format!("{}/products", crashing.base))
            .header("content-type", "application/json")
            .body(mug("CRASH-1", 700).to_string())
            .send();
        assert!(
            crashing.exited(std::time::Duration::from_secs(20)).is_some(),
            "the host did not stop at {point}\n{}",
            crashing.stderr.text()
        );
        assert!(crashing.stderr.text().contains(&format!("SHOP_CRASH_AT={point}")));

        let _shop = Shop::start(&manifest, &data);
        let (runtime, broker) = event_log(&data);
        let ids = runtime.block_on(async {
            let consumer = broker
                .consumer("crash-test", &["shop.products".to_string()])
                .await
                .unwrap();
            let mut ids = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            // Until the copies expected are in, then a moment more for any extra one.
            let mut quiet_until = None;
            while std::time::Instant::now() < quiet_until.unwrap_or(deadline) {
                if let Ok(Ok(ConsumerEvent::Message(m))) =
                    tokio::time::timeout(std::time::Duration::from_millis(200), consumer.next_event()).await
                {
                    let (_, id) = m.headers.iter().find(|(k, _)| k == "ce_id").unwrap();
                    ids.push(String::from_utf8(id.clone()).unwrap());
                }
                if ids.len() >= copies && quiet_until.is_none() {
                    quiet_until = Some(std::time::Instant::now() + std::time::Duration::from_millis(700));
                }
            }
            shop_broker::leave_group(consumer.as_ref()).await;
            ids
        });
        assert_eq!(ids.len(), copies, "{point}: published {ids:?}");
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "{point}: one event, one id: {ids:?}"
        );
    }
}

/// With the catalog in PostgreSQL, the host's relay publishes on the commit's `NOTIFY`
/// rather than its poll: here the poll is once a day and nothing else wakes it, as
/// when the HTTP half commits from other pods. Prints the latency from each committed
/// write to its event on the broker.
#[test]
fn the_relay_publishes_on_postgres_notify() {
    use shop_broker::{Broker, ConsumerEvent};
    const WRITES: usize = 50;
    let database = "shop_test_catalog_notify";
    let url = fresh_postgres_database(database);
    let dir = TempDir::new("catalog-notify");
    with_runtime_config(&dir);
    let data = dir.path().join("data");
    let manifest = catalog_with_outbox(&dir, Some(&url), "poll_interval_ms = 86400000\n");
    let shop = Shop::start(&manifest, &data);
    let (runtime, broker) = event_log(&data);
    let consumer = runtime
        .block_on(broker.consumer("notify-test", &["shop.products".to_string()]))
        .unwrap();
    let mut latencies = Vec::new();
    for i in 0..WRITES {
        let (status, _, created) = send(
            reqwest::Method::POST,
            format!("{}/products", shop.base),
            Some(mug(&format!("NOTIFY-{i}"), 100)),
        );
        assert_eq!(status, 201, "{created}");
        let committed = std::time::Instant::now();
        let id = created["id"].as_str().unwrap().as_bytes().to_vec();
        let arrived = runtime.block_on(async {
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next_event()).await {
                    Ok(Ok(ConsumerEvent::Message(m))) if m.key.as_deref() == Some(&id[..]) => break true,
                    Ok(Ok(_)) => continue,
                    _ => break false,
                }
            }
        });
        assert!(
            arrived,
            "write {i} was not published: the NOTIFY did not wake the relay\n{}",
            shop.stderr.text()
        );
        latencies.push(committed.elapsed());
    }
    runtime.block_on(shop_broker::leave_group(consumer.as_ref()));
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "commit→published over {WRITES} writes: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    assert_eq!(
        psql(database, "SELECT count(*) FROM outbox"),
        "0",
        "the relay emptied the outbox"
    );
}
