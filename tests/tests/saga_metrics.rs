//! What `/metrics` tells about the saga, on embedded defaults and on Kafka +
//! PostgreSQL + Redis: orders by final state (published event types), the time each
//! step waited and ran, the host's outbox relays (rows published, backlogs that
//! drain, on SQLite or PostgreSQL), and instances in flight that come back to zero.

use std::time::Duration;

use shop_tests::full_shop::{Backend, FullShop, wait_for};
use shop_tests::metric_value;

#[test]
fn the_saga_shows_in_the_metrics_on_embedded_defaults() {
    the_saga_shows_in_the_metrics(Backend::Embedded, "saga-metrics");
}

#[test]
fn the_saga_shows_in_the_metrics_on_kafka_postgres_and_redis() {
    the_saga_shows_in_the_metrics(Backend::External, "saga-metrics-ext");
}

fn the_saga_shows_in_the_metrics(backend: Backend, label: &str) {
    let shop = FullShop::start(backend, label, 14, &[]);
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "metrics-1", 700, 10);
    let customer = api.customer("metrics@example.com");
    for token in ["tok_ok", "tok_ok", "tok_declined"] {
        let id = api.place(&customer, &product, 1, token);
        api.concluded(&customer, &id, Duration::from_secs(30));
    }
    let metrics = || shop.shop().metrics();
    let published = |event_type: &str| metric_value(&metrics(), "shop_events_published_total", &[("type", event_type)]);
    assert!(
        wait_for(Duration::from_secs(10), || published("shop.order.confirmed") == 2.0
            && published("shop.order.cancelled") == 1.0),
        "orders by final state:\n{}",
        metrics()
    );
    let steps = metric_value(
        &metrics(),
        "shop_kafka_record_end_to_end_seconds_count",
        &[("component", "orders-events")],
    );
    assert!(steps >= 6.0, "each order's events reached the saga: {steps}");
    let text = metrics();
    for service in ["orders", "inventory", "payments", "users", "products"] {
        assert!(
            text.contains(&format!("shop_outbox_backlog{{component=\"{service}\"")),
            "{service}'s outbox backlog:\n{text}"
        );
    }
    for (service, at_least) in [("orders", 9.0), ("inventory", 6.0), ("payments", 5.0), ("users", 1.0)] {
        let published = metric_value(&text, "shop_outbox_published_total", &[("component", service)]);
        assert!(published >= at_least, "{service} published {published} events:\n{text}");
    }
    assert!(
        wait_for(Duration::from_secs(15), || {
            let text = metrics();
            ["orders", "inventory", "payments"]
                .iter()
                .all(|s| metric_value(&text, "shop_outbox_backlog", &[("component", s)]) == 0.0)
        }),
        "the outboxes drain:\n{}",
        metrics()
    );
    assert!(
        metrics().contains("shop_instances_in_flight{component=\"gateway\",trigger=\"http\"}"),
        "{}",
        metrics()
    );
    // Only the scrape's own request could be running now: no HTTP instance is.
    assert_eq!(
        metric_value(&metrics(), "shop_instances_in_flight", &[("trigger", "http")]),
        0.0
    );
}
