//! Order load: customers place orders concurrently through the gateway and each waits
//! for its order to conclude. Prints orders/s (accepted orders over the time until
//! the last one concluded), placement (the 202) and placement-to-confirmed latency
//! percentiles, for the embedded defaults and for Kafka + PostgreSQL + Redis side by
//! side, with the ratio between them.
//!
//! A customer waits with one request: `POST /orders?wait_ms=` answers once the order
//! concluded (so placement and confirmation are one answer, and the placement columns
//! show that answer), falling back to `GET /orders/{id}?wait_ms=` if it did not. With `SHOP_BENCH_FLOW=poll` it
//! places with a plain `POST /orders` (the 202 at once) and then long-polls the order.
//!
//! The external run also measures the broker's own ceiling in the same run: as many
//! closed-loop chains as customers, each of [`HOPS`] produce→consume hops (an order's
//! critical path), through the same client settings, with no component at all.
//!
//! Usage: `cargo run --release -p shop-tests --bin bench-orders [-- ORDERS [CONCURRENCY [embedded|external|both]]]`
//! (build the components first, as `scripts/test` does; the external run needs the
//! services `scripts/test` starts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shop_broker::{Broker, ConsumerEvent, OutgoingMessage};
use shop_tests::full_shop::{Backend, FullShop};
use shop_tests::{metric_value, process_cpu};

/// Hops on an order's critical path, placement to CONFIRMED: reserve requested →
/// reserved → authorize requested → authorized → capture requested → captured (with
/// commit requested → committed beside it) → the order confirmed as the last is read.
const HOPS: u32 = 7;

/// How a customer learns that its order concluded.
#[derive(Clone, Copy, Debug)]
enum Flow {
    /// `POST /orders?wait_ms=`: one answer, once the order concluded.
    Wait,
    /// `POST /orders` (202 at once), then `GET /orders/{id}?wait_ms=`.
    Poll,
}

/// How long a placement may hold its answer for the order to conclude.
const PLACEMENT_WAIT_MS: u64 = 5_000;

fn flow() -> Flow {
    match std::env::var("SHOP_BENCH_FLOW").as_deref() {
        Ok("poll") => Flow::Poll,
        Ok("wait") | Err(_) => Flow::Wait,
        Ok(other) => panic!("SHOP_BENCH_FLOW is `wait` or `poll`, not `{other}`"),
    }
}

struct Run {
    backend: Backend,
    orders: usize,
    confirmed: usize,
    elapsed: Duration,
    placement: Vec<Duration>,
    to_confirmed: Vec<Duration>,
    /// Chains per second the broker alone carries (external runs).
    broker_ceiling: Option<f64>,
    /// What the measured orders cost the host, per order, from `/metrics`.
    costs: Vec<(String, f64)>,
}

/// The distinct values of `label` among the samples of `metric` in a Prometheus scrape.
fn label_values(scrape: &str, metric: &str, label: &str) -> std::collections::BTreeSet<String> {
    let prefix = format!("{label}=\"");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(metric)?.strip_prefix('{'))
        .filter_map(|labels| {
            let value = labels.split(',').find_map(|l| l.strip_prefix(prefix.as_str()))?;
            Some(value.split('"').next()?.to_string())
        })
        .collect()
}

/// Per order, what changed between two scrapes: invocations per component and trigger,
/// instantiations, records published and cron runs.
fn costs_per_order(before: &str, after: &str, orders: usize) -> Vec<(String, f64)> {
    let delta = |name: &str, labels: &[(&str, &str)]| {
        (metric_value(after, name, labels) - metric_value(before, name, labels)) / orders as f64
    };
    let mut costs: Vec<(String, f64)> = [
        ("instantiations", "shop_component_instantiation_duration_seconds_count"),
        ("records published", "shop_events_published_total"),
        ("records filtered out", "shop_kafka_messages_filtered_total"),
        ("cron runs", "shop_cron_runs_total"),
    ]
    .into_iter()
    .map(|(what, metric)| (what.to_string(), delta(metric, &[])))
    .collect();
    for (metric, what) in [
        ("shop_http_requests_total", "http"),
        ("shop_kafka_messages_handled_total", "kafka"),
    ] {
        for component in label_values(after, metric, "component") {
            let n = delta(metric, &[("component", &component)]);
            if n > 0.0 {
                costs.push((format!("{what} {component}"), n));
            }
        }
    }
    costs
}

/// Closed-loop chains of [`HOPS`] hops on one fresh topic: `chains` run at once until
/// `total` have finished; each hop is a record consumed by one group, its offset
/// committed, and the next hop published. Returns chains per second.
async fn broker_ceiling(broker: Arc<dyn Broker>, chains: usize, total: usize) -> f64 {
    let topic = format!("bench-ceiling-{}-{}", std::process::id(), shop_tests::free_port());
    broker.ensure_topic(&topic, 3).await.expect("create the ceiling topic");
    let consumer = broker
        .consumer(&format!("{topic}-hops"), std::slice::from_ref(&topic))
        .await
        .expect("join the ceiling group");
    let producer = broker.producer();
    let send = {
        let (producer, topic) = (producer.clone(), topic.clone());
        move |chain: usize, hop: u32| {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move {
                producer
                    .publish(OutgoingMessage {
                        topic,
                        key: Some(format!("chain-{chain}").into_bytes()),
                        payload: format!("{chain} {hop}").into_bytes(),
                        headers: vec![],
                    })
                    .await
                    .expect("publish a hop");
            }
        }
    };
    let (finished, mut finishes) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let hops = tokio::spawn({
        let (consumer, send) = (consumer.clone(), send.clone());
        async move {
            while let Ok(event) = consumer.next_event().await {
                let message = match event {
                    ConsumerEvent::Message(message) => message,
                    ConsumerEvent::Revoked { done, .. } => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let text = String::from_utf8(message.payload.clone()).unwrap();
                let (chain, hop) = text.split_once(' ').unwrap();
                let (chain, hop): (usize, u32) = (chain.parse().unwrap(), hop.parse().unwrap());
                let (consumer, send, finished) = (consumer.clone(), send.clone(), finished.clone());
                // Partitions progress side by side, as the shop's workers do.
                tokio::spawn(async move {
                    let _ = consumer.commit(&message.topic_partition(), message.offset + 1).await;
                    if hop + 1 < HOPS {
                        send(chain, hop + 1).await;
                    } else {
                        let _ = finished.send(chain);
                    }
                });
            }
        }
    });
    // One chain first, so the group's assignment is not timed.
    send(usize::MAX, 0).await;
    assert_eq!(finishes.recv().await, Some(usize::MAX));
    let started = Instant::now();
    let mut next = chains.min(total);
    for chain in 0..next {
        send(chain, 0).await;
    }
    for _ in 0..total {
        let chain = finishes.recv().await.expect("the hop task ended");
        if next < total {
            next += 1;
            send(chain, 0).await;
        }
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    hops.abort();
    rate
}

/// CPU time so far of a service beside the host.
type ServiceCpu = Box<dyn Fn() -> Option<Duration>>;

/// The services of an external run that listen on this machine, so their CPU per order
/// is reported beside the host's: the Kafka broker (when `SHOP_KAFKA_BROKERS` names a
/// loopback address) and PostgreSQL with its backends. Those not found (elsewhere, or
/// not readable) are left out.
fn local_services() -> Vec<(&'static str, ServiceCpu)> {
    let broker_port = shop_tests::full_shop::kafka_brokers()
        .split(',')
        .next()
        .and_then(|first| {
            first
                .trim()
                .strip_prefix("127.0.0.1:")
                .or(first.trim().strip_prefix("localhost:"))
        })
        .and_then(|port| port.parse::<u16>().ok());
    let mut services: Vec<(&'static str, ServiceCpu)> = Vec::new();
    if let Some(pid) = broker_port.and_then(process_cpu::listening_on) {
        services.push(("broker", Box::new(move || process_cpu::own(pid))));
    }
    let postgres_port = shop_tests::POSTGRES_SERVER
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if let Some(pid) = postgres_port.and_then(process_cpu::listening_on) {
        services.push(("PostgreSQL", Box::new(move || process_cpu::with_children(pid))));
    }
    services
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run(backend: Backend, orders: usize, concurrency: usize, flow: Flow) -> Run {
    let label = match backend {
        Backend::Embedded => "bench-orders-embedded",
        Backend::External => "bench-orders-external",
    };
    let shop = FullShop::start(backend, label, 12, &[]);
    if backend == Backend::External {
        match shop_tests::full_shop::postgres_socket_dir() {
            Some(dir) => println!("external: PostgreSQL through its socket in {}", dir.display()),
            None => println!("external: PostgreSQL over TCP"),
        }
    }
    let api = shop.api();
    let admin = api.admin();
    let product = api.product(&admin, "BENCH", 100, 1_000_000);
    let customers: Vec<String> = (0..concurrency)
        .map(|i| api.customer(&format!("load{i}@example.com")))
        .collect();
    // Warm up every component instance path once, both ways of waiting.
    let warm = api.place(&customers[0], &product, 1, "tok_ok");
    api.concluded(&customers[0], &warm, Duration::from_secs(60));
    api.place_waiting(&customers[0], &product, 1, "tok_ok", PLACEMENT_WAIT_MS);

    let metrics_before = shop.shop().metrics();
    let cpu_before = shop.shop().cpu_time();
    let services = match backend {
        Backend::Embedded => vec![],
        Backend::External => local_services(),
    };
    let services_before: Vec<Option<Duration>> = services.iter().map(|(_, cpu)| cpu()).collect();
    let started = Instant::now();
    let results: Vec<(Duration, Duration, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = customers
            .iter()
            .enumerate()
            .map(|(c, token)| {
                let (api, product) = (api.clone(), &product);
                let share = orders / concurrency + usize::from(c < orders % concurrency);
                scope.spawn(move || {
                    (0..share)
                        .map(|_| {
                            let placed_at = Instant::now();
                            let (id, status) = match flow {
                                Flow::Wait => api.place_waiting(token, product, 1, "tok_ok", PLACEMENT_WAIT_MS),
                                Flow::Poll => (api.place(token, product, 1, "tok_ok"), "PENDING".to_string()),
                            };
                            let placement = placed_at.elapsed();
                            let status = match status.as_str() {
                                "PENDING" => api.concluded(token, &id, Duration::from_secs(300))["status"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_string(),
                                _ => status,
                            };
                            (placement, placed_at.elapsed(), status == "CONFIRMED")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let mut costs = costs_per_order(&metrics_before, &shop.shop().metrics(), orders);
    if let (Some(before), Some(after)) = (cpu_before, shop.shop().cpu_time()) {
        let per_order = (after - before).as_secs_f64() * 1000.0 / orders as f64;
        costs.insert(0, ("host CPU ms".to_string(), per_order));
    }
    for (i, ((what, cpu), before)) in services.iter().zip(services_before).enumerate() {
        if let (Some(before), Some(after)) = (before, cpu()) {
            // Saturating: a backend that exits between two reads of its parent's
            // totals can be missed once.
            let per_order = after.saturating_sub(before).as_secs_f64() * 1000.0 / orders as f64;
            costs.insert((1 + i).min(costs.len()), (format!("{what} CPU ms"), per_order));
        }
    }
    let mut placement: Vec<Duration> = results.iter().map(|r| r.0).collect();
    let mut to_confirmed: Vec<Duration> = results.iter().filter(|r| r.2).map(|r| r.1).collect();
    placement.sort();
    to_confirmed.sort();
    let broker_ceiling = (backend == Backend::External).then(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async { broker_ceiling(shop.broker(), concurrency, orders).await })
    });
    Run {
        backend,
        orders: results.len(),
        confirmed: to_confirmed.len(),
        elapsed,
        placement,
        to_confirmed,
        broker_ceiling,
        costs,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let orders: usize = args.first().map_or(200, |a| a.parse().expect("ORDERS is a number"));
    let concurrency: usize = args.get(1).map_or(8, |a| a.parse().expect("CONCURRENCY is a number"));
    let which = args.get(2).map_or("both", String::as_str);
    let backends: Vec<Backend> = match which {
        "embedded" => vec![Backend::Embedded],
        "external" => vec![Backend::External],
        _ => vec![Backend::Embedded, Backend::External],
    };
    let flow = flow();
    let how = match flow {
        Flow::Wait => "POST /orders?wait_ms= answering once it concluded",
        Flow::Poll => "POST /orders, then GET /orders/{id}?wait_ms=",
    };
    println!("{orders} orders, {concurrency} customers at once, each waiting for its order to conclude ({how})");
    let runs: Vec<Run> = backends
        .into_iter()
        .map(|b| run(b, orders, concurrency, flow))
        .collect();
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "backend", "orders", "confirmed", "orders/s", "place p50", "place p99", "confirm p50", "confirm p99"
    );
    for r in &runs {
        println!(
            "{:<10} {:>9} {:>9} {:>9.1} {:>8.0}ms {:>8.0}ms {:>10.0}ms {:>10.0}ms",
            format!("{:?}", r.backend).to_lowercase(),
            r.orders,
            r.confirmed,
            r.orders as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.placement, 0.5).as_secs_f64() * 1000.0,
            percentile(&r.placement, 0.99).as_secs_f64() * 1000.0,
            percentile(&r.to_confirmed, 0.5).as_secs_f64() * 1000.0,
            percentile(&r.to_confirmed, 0.99).as_secs_f64() * 1000.0,
        );
    }
    for r in &runs {
        let costs: Vec<String> = r.costs.iter().map(|(what, n)| format!("{what} {n:.2}")).collect();
        println!(
            "{} per order: {}",
            format!("{:?}", r.backend).to_lowercase(),
            costs.join(", ")
        );
    }
    for r in &runs {
        if let Some(ceiling) = r.broker_ceiling {
            println!(
                "broker ceiling: {ceiling:.1} chains/s of {HOPS} hops with {concurrency} at once; the shop reached {:.0}% of it",
                100.0 * r.orders as f64 / r.elapsed.as_secs_f64() / ceiling
            );
        }
    }
    for r in &runs {
        let ceiling = r
            .broker_ceiling
            .map(|c| format!(" broker_ceiling_per_s={c:.1}"))
            .unwrap_or_default();
        println!(
            "RESULT backend={} clients={concurrency} orders_per_s={:.1} p50_ms={:.0} p99_ms={:.0}{ceiling}",
            match r.backend {
                Backend::Embedded => "embedded",
                Backend::External => "external",
            },
            r.orders as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.to_confirmed, 0.5).as_secs_f64() * 1000.0,
            percentile(&r.to_confirmed, 0.99).as_secs_f64() * 1000.0,
        );
    }
    if let [embedded, external] = runs.as_slice() {
        let rate = |r: &Run| r.orders as f64 / r.elapsed.as_secs_f64();
        println!(
            "external/embedded: throughput {:.2}x, confirm p50 {:.2}x",
            rate(external) / rate(embedded),
            percentile(&external.to_confirmed, 0.5).as_secs_f64()
                / percentile(&embedded.to_confirmed, 0.5).as_secs_f64()
        );
    }
}
