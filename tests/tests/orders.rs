//! The orders saga end to end through the gateway, with every service of the
//! repository's spin.toml: on embedded defaults, and on Kafka + PostgreSQL + Redis.

use std::time::Duration;

use serde_json::{Value, json};
use shop_tests::full_shop::{Backend, FullShop, wait_for};

const SAGA: Duration = Duration::from_secs(60);

/// The saga's outcomes, one scenario after another on one shop. Payments time out
/// after 4 s and `tok_slow` answers after 8 s, so a slow payment can be cancelled by
/// the customer or by the timeout.
fn saga_scenarios(backend: Backend, label: &str, redis_db: u8) {
    // Mail goes to a recording stand-in for a mail API.
    let (mail_api, mails) = shop_tests::recording_api();
    let mail_url = format!("{mail_api}/v1/send");
    let shop = FullShop::start(
        backend,
        label,
        redis_db,
        &[
            ("SPIN_VARIABLE_PAYMENT_TIMEOUT_SECS", "4"),
            ("SPIN_VARIABLE_SANDBOX_SLOW_MS", "8000"),
            ("SPIN_VARIABLE_MAIL_API_URL", &mail_url),
            ("SPIN_VARIABLE_MAIL_API_HOST", &mail_api),
        ],
    );
    let api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG", 1250, 10);
    let rare = api.product(&admin, "RARE", 900, 1);
    let ada = api.customer("ada@example.com");
    // The first order on a fresh Kafka namespace waits for consumer groups to form
    // (seconds on Tansu), which could trip the short payment timeout: warm up.
    let warm = api.product(&admin, "WARM", 100, 10);
    let id = api.place(&ada, &warm, 1, "tok_ok");
    api.concluded(&ada, &id, SAGA);

    // One request that waits for the outcome: the 202 comes once the order concluded.
    let (id, status) = api.place_waiting(&ada, &warm, 1, "tok_ok", 10_000);
    assert_eq!(status, "CONFIRMED", "{}", shop.log());
    assert_eq!(api.concluded(&ada, &id, SAGA)["status"], "CONFIRMED");
    // A bad wait is refused before anything is placed.
    let (_, before) = api.call("GET", "/orders", Some(&ada), None);
    let (status, refused) = api.call(
        "POST",
        "/orders?wait_ms=soon",
        Some(&ada),
        Some(json!({ "lines": [{ "product_id": warm, "quantity": 1 }], "payment_token": "tok_ok" })),
    );
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{refused}"
    );
    let (_, after) = api.call("GET", "/orders", Some(&ada), None);
    assert_eq!((before["total"].as_i64(), after["total"].as_i64()), (Some(2), Some(2)));

    // Happy path from the cart: confirmed, stock taken, captured once, notified.
    let (status, cart) = api.call(
        "POST",
        "/cart/items",
        Some(&ada),
        Some(json!({ "product_id": mug, "quantity": 2 })),
    );
    assert_eq!(status, 200, "{cart}");
    let (status, accepted) = api.call(
        "POST",
        "/orders",
        Some(&ada),
        Some(json!({ "payment_token": "tok_ok" })),
    );
    assert_eq!(
        (status, accepted["status"].as_str()),
        (202, Some("PENDING")),
        "{accepted}"
    );
    let id = accepted["id"].as_str().unwrap().to_string();
    let order = api.concluded(&ada, &id, SAGA);
    assert_eq!(order["status"], "CONFIRMED", "{order}\n{}", shop.log());
    assert_eq!(order["total"], json!({ "amount": 2500, "currency": "EUR" }));
    let types: Vec<&str> = order["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for step in [
        "shop.order.placed",
        "shop.inventory.reserved",
        "shop.payment.authorized",
        "shop.order.confirmed",
    ] {
        assert!(types.contains(&step), "{step} in the history: {types:?}");
    }
    assert_eq!(api.stock(&admin, "MUG"), (8, 0));
    let (_, payment) = api.call("GET", &format!("/payments/{id}"), Some(&ada), None);
    assert_eq!(payment["status"], "captured", "{payment}");
    let (_, cart) = api.call("GET", "/cart", Some(&ada), None);
    assert_eq!(cart["lines"], json!([]), "the ordered cart is emptied");
    // This order's confirmation (the warm-up order has one too).
    let subject = format!("Order {id} confirmed");
    let confirmation_of_this_order = || {
        let (_, notifications) = api.call("GET", "/notifications", Some(&ada), None);
        notifications["items"]
            .as_array()
            .and_then(|items| items.iter().find(|n| n["subject"] == subject.as_str()).cloned())
    };
    let notified = wait_for(SAGA, || confirmation_of_this_order().is_some());
    assert!(notified, "a confirmation is recorded\n{}", shop.log());
    let confirmation = confirmation_of_this_order().unwrap();
    assert_eq!(confirmation["template"], "order_confirmed");
    assert_eq!(confirmation["channel"], "email", "{confirmation}");
    assert_eq!(confirmation["destination"], "ada@example.com");
    let mails = mails.lock().unwrap().clone();
    let sent: Vec<Value> = mails.iter().map(|m| serde_json::from_str(m).unwrap()).collect();
    assert!(
        sent.iter().any(|m| m["to"] == "ada@example.com"
            && m["subject"] == subject.as_str()
            && m["text"].as_str().unwrap().contains("25.00 EUR")),
        "the mail API got the confirmation: {sent:?}"
    );
    assert!(sent.iter().any(|m| m["subject"] == "Welcome to the shop"), "{sent:?}");
    let bob = api.customer("bob@example.com");
    assert_eq!(
        api.call("GET", &format!("/orders/{id}"), Some(&bob), None).0,
        404,
        "not Bob's"
    );
    assert_eq!(api.call("GET", &format!("/payments/{id}"), Some(&bob), None).0, 404);

    // Declined: cancelled, the reservation released.
    let id = api.place(&ada, &mug, 1, "tok_declined");
    let order = api.concluded(&ada, &id, SAGA);
    assert_eq!(order["status"], "CANCELLED");
    assert!(order["reason"].as_str().unwrap().contains("declined"), "{order}");
    assert!(wait_for(SAGA, || api.stock(&admin, "MUG") == (8, 0)), "released");

    // Out of stock: cancelled, no payment asked for.
    let id = api.place(&ada, &rare, 2, "tok_ok");
    let order = api.concluded(&ada, &id, SAGA);
    assert_eq!(order["status"], "CANCELLED");
    assert!(order["reason"].as_str().unwrap().contains("out of stock"), "{order}");
    assert_eq!(api.call("GET", &format!("/payments/{id}"), Some(&ada), None).0, 404);
    assert_eq!(api.stock(&admin, "RARE"), (1, 0));

    // The customer cancels while the payment is slow: stock released now, the late
    // authorization voided when it comes.
    let id = api.place(&ada, &mug, 1, "tok_slow");
    api.order_when(&ada, &id, SAGA, |o| o["step"] == "payment");
    let (status, cancelled) = api.call("POST", &format!("/orders/{id}/cancel"), Some(&ada), None);
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (202, Some("CANCELLED")),
        "{cancelled}"
    );
    assert_eq!(
        api.call("POST", &format!("/orders/{id}/cancel"), Some(&ada), None).0,
        409
    );
    assert!(wait_for(SAGA, || api.stock(&admin, "MUG") == (8, 0)), "released");
    assert!(
        wait_for(SAGA, || api.payment_status(&ada, &id) == "voided"),
        "the late authorization is voided\n{}",
        shop.log()
    );

    // Nobody cancels a slow payment: the step times out and compensates.
    let id = api.place(&ada, &mug, 1, "tok_slow");
    let order = api.concluded(&ada, &id, SAGA);
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["reason"], "timed out waiting for payment");
    assert!(wait_for(SAGA, || api.stock(&admin, "MUG") == (8, 0)));
    assert!(wait_for(SAGA, || api.payment_status(&ada, &id) == "voided"));

    // The same Idempotency-Key twice: one order.
    let body = json!({ "lines": [{ "product_id": mug, "quantity": 1 }], "payment_token": "tok_ok" });
    let key = [("idempotency-key", "checkout-42")];
    let (s1, first) = api.call_with("POST", "/orders", Some(&ada), Some(body.clone()), &key);
    let (s2, second) = api.call_with("POST", "/orders", Some(&ada), Some(body), &key);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], second["id"]);
    let id = first["id"].as_str().unwrap().to_string();
    let order = api.concluded(&ada, &id, SAGA);
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(api.stock(&admin, "MUG"), (7, 0), "taken once");

    // A redelivered saga event changes nothing (the same CloudEvent id again).
    let history = order["events"].as_array().unwrap().len();
    let reserved = order["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "shop.inventory.reserved")
        .unwrap();
    redeliver(&shop, "shop.inventory", &id, reserved);
    std::thread::sleep(Duration::from_secs(3));
    let (_, again) = api.call("GET", &format!("/orders/{id}"), Some(&ada), None);
    assert_eq!(again["events"].as_array().unwrap().len(), history, "{again}");
    assert_eq!(api.stock(&admin, "MUG"), (7, 0));

    // 20 concurrent orders for the last 5 units: exactly 5 confirmed.
    let last = api.product(&admin, "LAST", 500, 5);
    let customers: Vec<String> = (0..20)
        .map(|i| api.customer(&format!("buyer{i}@example.com")))
        .collect();
    let placed: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = customers
            .iter()
            .map(|token| {
                let (api, last) = (api.clone(), last.clone());
                scope.spawn(move || (token.clone(), api.place(token, &last, 1, "tok_ok")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<Value> = placed
        .iter()
        .map(|(token, id)| api.concluded(token, id, SAGA)["status"].clone())
        .collect();
    let confirmed = statuses.iter().filter(|s| **s == "CONFIRMED").count();
    assert_eq!(confirmed, 5, "{statuses:?}");
    assert!(wait_for(SAGA, || api.stock(&admin, "LAST") == (0, 0)));

    // A poison event on a saga topic goes to the dead-letter topic; sagas go on.
    publish_raw(&shop, "shop.payments", b"{not json", "shop.payment.authorized");
    let id = api.place(&ada, &mug, 1, "tok_ok");
    assert_eq!(api.concluded(&ada, &id, SAGA)["status"], "CONFIRMED");
    assert!(
        wait_for(SAGA, || count_messages(&shop, "shop.payments.dlq") >= 1),
        "the poison event is dead-lettered\n{}",
        shop.log()
    );
}

/// Runs `work` against the shop's event broker, as the host sees it (the same log, or
/// the same topic prefix on Kafka).
fn with_broker<T>(shop: &FullShop, work: impl AsyncFnOnce(&dyn shop_broker::Broker) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The Kafka client starts inside the runtime.
    runtime.block_on(async {
        let broker = shop.broker();
        work(broker.as_ref()).await
    })
}

/// Publishes one recorded order event again, with its original CloudEvent id.
fn redeliver(shop: &FullShop, topic: &str, order_id: &str, recorded: &Value) {
    let event = shop_domain::ShopEvent::decode(
        recorded["type"].as_str().unwrap(),
        recorded["data"].to_string().as_bytes(),
    )
    .unwrap();
    let envelope = event.envelope(
        recorded["id"].as_str().unwrap().to_string(),
        "/test",
        recorded["time"].as_str().unwrap().to_string(),
    );
    let headers = envelope
        .to_headers()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    with_broker(shop, async |broker| {
        broker
            .producer()
            .publish(shop_broker::OutgoingMessage {
                topic: topic.into(),
                key: Some(order_id.as_bytes().to_vec()),
                payload: event.to_json(),
                headers,
            })
            .await
            .unwrap();
    });
}

/// Publishes bytes that are not a valid event of `event_type`.
fn publish_raw(shop: &FullShop, topic: &str, payload: &[u8], event_type: &str) {
    let headers = vec![
        ("ce_specversion".to_string(), b"1.0".to_vec()),
        ("ce_id".to_string(), b"poison-1".to_vec()),
        ("ce_source".to_string(), b"/test".to_vec()),
        ("ce_type".to_string(), event_type.as_bytes().to_vec()),
    ];
    with_broker(shop, async |broker| {
        broker
            .producer()
            .publish(shop_broker::OutgoingMessage {
                topic: topic.into(),
                key: Some(b"poison".to_vec()),
                payload: payload.to_vec(),
                headers,
            })
            .await
            .unwrap();
    });
}

/// How many messages `topic` holds (read by a throwaway group).
fn count_messages(shop: &FullShop, topic: &str) -> usize {
    with_broker(shop, async |broker| {
        let group = format!("count-{}", shop_tests::free_port());
        let consumer = broker.consumer(&group, &[topic.to_string()]).await.unwrap();
        let mut count = 0;
        // Joining a Kafka group takes a few seconds before the first message.
        while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(6), consumer.next_event()).await {
            if let shop_broker::ConsumerEvent::Message(_) = event {
                count += 1;
            }
        }
        shop_broker::leave_group(consumer.as_ref()).await;
        count
    })
}

#[test]
fn the_saga_on_embedded_defaults() {
    saga_scenarios(Backend::Embedded, "saga-embedded", 0);
}

#[test]
fn the_saga_on_kafka_postgres_and_redis() {
    saga_scenarios(Backend::External, "saga-external", 10);
}

/// A provider named by any other URL is reached over HTTP (here the same sandbox,
/// spelled with its port, over local service chaining): the same outcomes as in
/// process.
#[test]
fn a_payment_provider_over_http() {
    let shop = FullShop::start(
        Backend::Embedded,
        "orders-provider-http",
        0,
        &[(
            "SPIN_VARIABLE_PAYMENT_PROVIDER_URL",
            "http://payments.spin.internal:80/sandbox",
        )],
    );
    let api = shop.api();
    let admin = api.admin();
    let mug = api.product(&admin, "MUG-HTTP", 1250, 10);
    let ada = api.customer("ada@example.com");
    let paid = api.place(&ada, &mug, 1, "tok_ok");
    assert_eq!(api.concluded(&ada, &paid, SAGA)["status"], "CONFIRMED");
    assert_eq!(api.payment_status(&ada, &paid), "captured");
    let declined = api.place(&ada, &mug, 1, "tok_declined");
    assert_eq!(api.concluded(&ada, &declined, SAGA)["status"], "CANCELLED");
    // The sandbox's HTTP API answered the authorization (201): it went over HTTP.
    let metrics = shop.shop().metrics();
    assert!(
        metrics.contains(r#"shop_http_requests_total{component="payments",status="201"}"#),
        "no authorization over HTTP:\n{metrics}"
    );
}
