//! Kafka trigger benchmark: messages/s through `shop` with a no-op WebAssembly handler
//! (the `kafka-noop` component), side by side with a baseline in the same run: a plain
//! consumer of the same broker reading and committing the same messages with no
//! handler at all. Runs on the embedded log and, when reachable, on Kafka
//! (`SHOP_KAFKA_BROKERS`, default 127.0.0.1:9092).
//!
//! Usage: `cargo run --release -p shop-tests --bin bench-kafka [-- MESSAGES]`
//! (build the test components first, as `scripts/test` does).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shop_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use shop_broker::kafka::{KafkaBroker, KafkaOptions};
use shop_broker::{Broker, ConsumerEvent, OutgoingMessage};
use shop_tests::*;

const PARTITIONS: i32 = 3;
const KEYS: usize = 64;

/// Publishes `n` keyed messages, many in flight at once.
async fn fill(broker: &Arc<dyn Broker>, topic: &str, n: usize) {
    let producer = broker.producer();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|i| {
            producer.publish(OutgoingMessage {
                topic: topic.to_string(),
                key: Some(format!("key-{}", i % KEYS).into_bytes()),
                payload: format!("{{\"id\":\"m{i}\"}}").into_bytes(),
                headers: vec![("ce_id".into(), format!("e{i}").into_bytes())],
            })
        });
        for result in futures::future::join_all(sends).await {
            result.expect("publish");
        }
    }
}

/// Baseline: read all `n` messages in a fresh group, committing every 100 per partition
/// (the host batches commits too). Timed from the first message to the last.
async fn baseline(broker: &Arc<dyn Broker>, topic: &str, n: usize) -> f64 {
    let consumer = broker
        .consumer(&format!("bench-baseline-{}", free_port()), &[topic.to_string()])
        .await
        .unwrap();
    let mut first: Option<Instant> = None;
    let mut seen = 0;
    while seen < n {
        match consumer.next_event().await.unwrap() {
            ConsumerEvent::Message(m) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
                if m.offset % 100 == 0 {
                    consumer.commit(&m.topic_partition(), m.offset + 1).await.unwrap();
                }
            }
            ConsumerEvent::Revoked { done, .. } => {
                let _ = done.send(());
            }
        }
    }
    let rate = (n - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    shop_broker::leave_group(consumer.as_ref()).await;
    rate
}

fn handled(shop: &Shop, topic: &str) -> f64 {
    let metrics = shop.metrics();
    (0..PARTITIONS)
        .map(|p| {
            metric_value(
                &metrics,
                "shop_kafka_messages_handled_total",
                &[("topic", topic), ("partition", &p.to_string())],
            )
        })
        .sum()
}

/// `shop` with the no-op component: timed from the first handled message to the last,
/// so group-join time is left out.
fn through_shop(dir: &TempDir, topic: &str, n: usize, kafka: Option<&str>) -> f64 {
    let manifest = dir.manifest(&format!(
        "[[trigger.kafka]]\ncomponent = \"noop\"\ntopics = [{topic:?}]\ngroup = \"bench-shop-{}\"\nmax_in_flight = {PARTITIONS}\n{}",
        free_port(),
        component("noop", "kafka-noop", ""),
    ));
    let args = kafka
        .map(|b| vec!["--kafka-brokers".to_string(), b.to_string()])
        .unwrap_or_default();
    let shop = Shop::start_with(
        &manifest,
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args,
            env: vec![],
        },
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let (start, at_start) = loop {
        let done = handled(&shop, topic);
        if done > 0.0 {
            break (Instant::now(), done);
        }
        assert!(Instant::now() < deadline, "nothing handled:\n{}", shop.stderr.text());
        std::thread::sleep(Duration::from_millis(5));
    };
    loop {
        let done = handled(&shop, topic);
        if done >= n as f64 {
            return (n as f64 - at_start) / start.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "{done} of {n} handled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(label: &str, n: usize, kafka: Option<&str>) {
    let dir = TempDir::new(&format!("bench-kafka-{label}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker: Arc<dyn Broker> = match kafka {
        Some(brokers) => Arc::new(
            KafkaBroker::connect(KafkaOptions {
                brokers: brokers.to_string(),
                client_options: extra_client_options(),
                ..KafkaOptions::default()
            })
            .unwrap(),
        ),
        None => {
            Arc::new(EmbeddedBroker::open(&dir.path().join("data/events/log.db"), EmbeddedOptions::default()).unwrap())
        }
    };
    let topic = format!("bench.{label}.{}", free_port());
    runtime.block_on(broker.ensure_topic(&topic, PARTITIONS)).unwrap();
    let started = Instant::now();
    runtime.block_on(fill(&broker, &topic, n));
    let publish_rate = n as f64 / started.elapsed().as_secs_f64();
    let raw = runtime.block_on(baseline(&broker, &topic, n));
    drop(broker);
    let shop = through_shop(&dir, &topic, n, kafka);
    println!(
        "{label:>9}: {n} messages, {PARTITIONS} partitions | publish {publish_rate:>8.0}/s | \
         consumer baseline {raw:>8.0}/s | shop + wasm no-op {shop:>8.0}/s | shop/baseline {:.2}",
        shop / raw
    );
}

/// Extra librdkafka settings for experiments: `SHOP_BENCH_KAFKA_OPTIONS="k=v,k=v"`.
fn extra_client_options() -> Vec<(String, String)> {
    std::env::var("SHOP_BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    run("embedded", n, None);
    let brokers = std::env::var("SHOP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect(brokers.split(',').next().unwrap()).is_ok() {
        run("kafka", n, Some(&brokers));
    } else {
        println!("    kafka: skipped, no broker at {brokers} (scripts/kafka-broker start)");
    }
}
