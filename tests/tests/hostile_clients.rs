//! Hostile clients against the whole shop: what one customer (or a few, on a few
//! addresses) can do to the others. What a stranger can do to an account is in
//! `accounts.rs` and the users service's unit tests.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_tests::full_shop::{Api, Backend, FullShop};

/// A client whose connections come from `address` (any 127.0.0.0/8 address reaches
/// the host on loopback, so each looks like another customer's machine).
fn client_from(address: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn get(client: &reqwest::blocking::Client, url: &str, token: &str) -> (u16, Value) {
    match client.get(url).bearer_auth(token).send() {
        Ok(r) => (r.status().as_u16(), r.json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// Eight accounts on eight addresses open 30 long polls each on their own PENDING
/// orders at once (the order's payment is slow), against a host allowed 100 requests
/// at once. Each wait would hold two instances for 10 s; without budgets they fill the
/// host and everyone else gets 503. With them, each customer gets two waits, the rest
/// answer at once, and another customer is served throughout.
#[test]
fn long_polls_cannot_take_the_instances_other_customers_need() {
    let shop = FullShop::start(
        Backend::Embedded,
        "hostile-long-polls",
        0,
        &[
            ("SHOP_MAX_CONCURRENT_REQUESTS", "100"),
            ("SPIN_VARIABLE_SANDBOX_SLOW_MS", "20000"),
            // This test's customers each come from their own address.
            ("SPIN_VARIABLE_MAX_WAITS_PER_CLIENT", "8"),
        ],
    );
    let api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG-HOSTILE", 1200, 1000);

    const ATTACKERS: usize = 8;
    const WAITS_EACH: usize = 30;
    let attackers: Vec<(String, String, String)> = (0..ATTACKERS)
        .map(|i| {
            let token = api.customer(&format!("poller{i}@example.com"));
            let order = api.place(&token, &mug, 1, "tok_slow");
            (format!("127.0.0.{}", i + 2), token, order)
        })
        .collect();
    let victim = api.customer("patient@example.com");

    // (seconds the wait took, status) of every attacking request.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (address, token, order) in &attackers {
        for _ in 0..WAITS_EACH {
            let (address, token, order, outcomes) = (address.clone(), token.clone(), order.clone(), outcomes.clone());
            let url = format!("{}/orders/{order}?wait_ms=10000", api.base);
            threads.push(std::thread::spawn(move || {
                let client = client_from(&address);
                let started = Instant::now();
                let (status, _) = get(&client, &url, &token);
                outcomes.lock().unwrap().push((started.elapsed(), status));
            }));
        }
    }

    // Meanwhile another customer browses and looks at their orders.
    std::thread::sleep(Duration::from_millis(1500));
    let patient = client_from("127.0.0.1");
    let mut answers = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        for path in ["/products", "/orders"] {
            let (status, body) = get(&patient, &format!("{}{path}", api.base), &victim);
            answers.push((path, status, body["error"]["code"].clone()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let refused: Vec<_> = answers.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(
        refused.is_empty(),
        "another customer was refused {} of {} requests: {refused:?}",
        refused.len(),
        answers.len()
    );

    // Each customer held at most two waits; every other request answered at once.
    let outcomes = outcomes.lock().unwrap();
    let held = outcomes
        .iter()
        .filter(|(took, _)| *took >= Duration::from_secs(5))
        .count();
    assert!(
        held <= ATTACKERS * 2,
        "{held} waits were held (at most 2 per customer): {outcomes:?}"
    );
    assert!(held > 0, "waits within the budget still wait: {outcomes:?}");
    let answered_at_once = outcomes
        .iter()
        .filter(|(took, status)| *status == 200 && *took < Duration::from_secs(3))
        .count();
    assert!(
        answered_at_once > 0,
        "waits past the budget answer with the order at once: {outcomes:?}"
    );
}

/// One address opening more requests at once than the host allows one client gets
/// 429 for the rest, before any component runs; another address is not affected.
#[test]
fn one_address_cannot_hold_more_than_its_share_of_requests() {
    let shop = FullShop::start(
        Backend::Embedded,
        "hostile-per-client",
        0,
        &[
            ("SHOP_MAX_REQUESTS_PER_CLIENT", "5"),
            ("SPIN_VARIABLE_SANDBOX_SLOW_MS", "20000"),
            ("SPIN_VARIABLE_MAX_WAITS_PER_CUSTOMER", "0"),
            ("SPIN_VARIABLE_MAX_WAITS_PER_CLIENT", "0"),
        ],
    );
    let api: Api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG-SHARE", 1200, 100);
    let token = api.customer("greedy@example.com");
    let order = api.place(&token, &mug, 1, "tok_slow");
    let url = format!("{}/orders/{order}?wait_ms=4000", api.base);
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            std::thread::spawn(move || {
                let client = client_from("127.0.0.9");
                match client.get(&url).bearer_auth(&token).send() {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry_after = r.headers().get("retry-after").is_some();
                        let body: Value = r.json().unwrap_or(Value::Null);
                        (
                            status,
                            retry_after,
                            body["error"]["code"].as_str().unwrap_or("").to_string(),
                        )
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let other = client_from("127.0.0.10");
    let other_token = api.customer("other@example.com");
    assert_eq!(get(&other, &format!("{}/products", api.base), &other_token).0, 200);
    let statuses: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let limited: Vec<_> = statuses.iter().filter(|(status, _, _)| *status == 429).collect();
    assert_eq!(
        statuses.iter().filter(|(status, _, _)| *status == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(limited.len(), 7, "{statuses:?}");
    assert!(
        limited
            .iter()
            .all(|(_, retry_after, code)| *retry_after && code == "too_many_requests"),
        "{limited:?}"
    );
}

/// Registrations share one bucket across all clients (each hashes a password): many
/// addresses registering at once get 429 past it, and an existing customer still
/// signs in.
#[test]
fn registrations_from_many_addresses_share_one_budget() {
    let shop = FullShop::start(
        Backend::Embedded,
        "hostile-registrations",
        0,
        &[("SPIN_VARIABLE_REGISTRATIONS_PER_MINUTE", "60")],
    );
    let api = shop.api();
    let statuses: Vec<(u16, bool)> = (0..12)
        .map(|i| {
            let client = client_from(&format!("127.0.1.{}", i + 1));
            let body = json!({ "email": format!("flood{i}@example.com"), "password": "correct horse", "name": "F" });
            let response = client
                .post(format!("{}/auth/register", api.base))
                .json(&body)
                .send()
                .unwrap();
            (
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            )
        })
        .collect();
    let created = statuses.iter().filter(|(s, _)| *s == 201).count();
    let limited = statuses.iter().filter(|(s, retry)| *s == 429 && *retry).count();
    assert!((4..=5).contains(&created), "a burst of 4 (60 a minute): {statuses:?}");
    assert_eq!(created + limited, 12, "{statuses:?}");
    // An existing customer is not held up by the registrations' bucket.
    let (status, _) = api.call(
        "POST",
        "/auth/login",
        None,
        Some(json!({ "email": "flood0@example.com", "password": "correct horse" })),
    );
    assert_eq!(status, 200);
}

/// A product in another currency is refused from the cart without being kept in it:
/// the cart and an order of it still work.
#[test]
fn a_product_in_another_currency_does_not_spoil_the_cart() {
    let shop = FullShop::start(Backend::Embedded, "hostile-cart-currency", 0, &[]);
    let api = shop.api();
    let admin = api.admin();
    let euro = api.product(&admin, "MUG-EUR", 1200, 10);
    let dollar_product = json!({ "sku": "MUG-USD", "name": "Dollar mug", "description": "d", "category": "c",
                                 "price": { "amount": 1300, "currency": "USD" } });
    let (status, dollar) = api.call("POST", "/products", Some(&admin), Some(dollar_product));
    assert_eq!(status, 201, "{dollar}");
    let customer = api.customer("mixer@example.com");
    let add = |product: &str| {
        api.call(
            "POST",
            "/cart/items",
            Some(&customer),
            Some(json!({ "product_id": product, "quantity": 1 })),
        )
    };
    assert_eq!(add(&euro).0, 200);
    let (status, refused) = add(dollar["id"].as_str().unwrap());
    assert_eq!(status, 409, "{refused}");
    let (status, cart) = api.call("GET", "/cart", Some(&customer), None);
    assert_eq!(
        (status, cart["lines"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{cart}"
    );
    let (status, order) = api.call(
        "POST",
        "/orders",
        Some(&customer),
        Some(json!({ "payment_token": "tok_ok" })),
    );
    assert_eq!(status, 202, "{order}");
}

/// Four customers each try to place twelve orders whose payments the provider answers
/// slowly (3 s). Each gets five in flight (the rest: 429 with Retry-After), and the
/// payments handler takes them side by side, so another customer's order still
/// concludes at once instead of queueing behind them.
#[test]
fn one_customers_slow_payments_do_not_stall_another_customers_checkout() {
    let shop = FullShop::start(
        Backend::Embedded,
        "hostile-slow-payments",
        0,
        &[("SPIN_VARIABLE_MAX_PENDING_ORDERS_PER_CUSTOMER", "5")],
    );
    let api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG-SLOW", 1200, 1000);
    let slow_customers: Vec<String> = (0..4).map(|i| api.customer(&format!("slow{i}@example.com"))).collect();
    let patient = api.customer("quick@example.com");

    let statuses: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = slow_customers
            .iter()
            .flat_map(|token| std::iter::repeat_n(token, 12))
            .map(|token| {
                let (api, mug) = (api.clone(), mug.clone());
                scope.spawn(move || api.order(token, json!([{ "product_id": mug, "quantity": 1 }]), "tok_slow"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted = statuses.iter().filter(|(s, _)| *s == 202).count();
    let refused = statuses
        .iter()
        .filter(|(s, body)| *s == 429 && body["error"]["code"] == "too_many_pending_orders")
        .count();
    assert!(
        (20..=24).contains(&accepted),
        "five each, give or take a race: {statuses:?}"
    );
    assert_eq!(accepted + refused, 48, "{statuses:?}");

    let started = Instant::now();
    let id = api.place(&patient, &mug, 1, "tok_ok");
    let order = api.concluded(&patient, &id, Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert!(
        took < Duration::from_millis(2500),
        "another customer's order waited {took:?} behind the slow payments (each 3 s)"
    );
}
