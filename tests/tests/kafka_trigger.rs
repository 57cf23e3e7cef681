//! The Kafka trigger end to end: real `shop` processes running the `kafka-handler`
//! component, fed through a real broker. Every scenario runs twice: against the
//! Kafka-protocol broker (`SHOP_KAFKA_BROKERS`, default 127.0.0.1:9092; the test
//! command starts one) and against the embedded log under the data dir.
//!
//! The handler records each attempt and each success in the `default` SQLite
//! database, which the tests read directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shop_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use shop_broker::kafka::{KafkaBroker, KafkaOptions};
use shop_broker::{Broker, ConsumerEvent, Message, OutgoingMessage};
use shop_tests::*;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Kafka,
    Embedded,
}

fn kafka_brokers() -> String {
    std::env::var("SHOP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A test's own topics (Kafka keeps topics between tests) and the host's view of them.
struct Setup {
    backend: Backend,
    dir: TempDir,
    topic: String,
    runtime: tokio::runtime::Runtime,
    broker: Arc<dyn Broker>,
}

impl Setup {
    fn new(backend: Backend, label: &str) -> Self {
        let dir = TempDir::new(&format!("kafka-{label}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let suffix = format!("{}-{}", std::process::id(), free_port());
        let topic = format!("e2e.{label}.{suffix}");
        let broker: Arc<dyn Broker> = match backend {
            Backend::Kafka => {
                let brokers = kafka_brokers();
                let address = brokers.split(',').next().unwrap().to_string();
                assert!(
                    TcpStream::connect(&address).is_ok(),
                    "a Kafka-protocol broker must listen on {address} for this test: start one with `scripts/kafka-broker start`"
                );
                let options = KafkaOptions {
                    brokers,
                    ..KafkaOptions::default()
                };
                Arc::new(runtime.block_on(async { KafkaBroker::connect(options) }).unwrap())
            }
            Backend::Embedded => {
                let path = dir.path().join("data/events/log.db");
                Arc::new(EmbeddedBroker::open(&path, EmbeddedOptions::default()).unwrap())
            }
        };
        runtime.block_on(broker.ensure_topic(&topic, 3)).unwrap();
        Setup {
            backend,
            dir,
            topic,
            runtime,
            broker,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The app: the handler on this test's topic (plus `extra` trigger keys) with
    /// `allowed_topics` for publishing.
    fn manifest(&self, trigger_extra: &str) -> PathBuf {
        self.dir.manifest(&format!(
            "[variables]\ninstance = {{ default = \"single\" }}\n\
             [[trigger.kafka]]\ncomponent = \"handler\"\ntopics = [{:?}]\ngroup = \"{}.group\"\n{trigger_extra}\n{}",
            self.topic,
            self.topic,
            component(
                "handler",
                "kafka-handler",
                &format!(
                    "sqlite_databases = [\"default\"]\nallowed_topics = [\"{}.out\"]\n[component.handler.variables]\ninstance = \"{{{{ instance }}}}\"",
                    self.topic
                ),
            ),
        ))
    }

    fn start(&self, manifest: &Path, instance: &str) -> Shop {
        let mut args = vec![];
        if let Backend::Kafka = self.backend {
            args = vec!["--kafka-brokers".to_string(), kafka_brokers()];
        }
        Shop::start_with(
            manifest,
            ShopOptions {
                data_dir: &self.data_dir(),
                args,
                env: vec![("SPIN_VARIABLE_INSTANCE".into(), instance.into())],
            },
        )
    }

    fn publish(&self, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        self.publish_to(&self.topic, key, payload, headers);
    }

    fn publish_to(&self, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let message = OutgoingMessage {
            topic: topic.to_string(),
            key: Some(key.as_bytes().to_vec()),
            payload: payload.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        };
        self.runtime.block_on(self.broker.producer().publish(message)).unwrap();
    }

    /// Reads `expected` records of `topic` from the beginning in a fresh group.
    fn read_topic(&self, topic: &str, expected: usize) -> Vec<Message> {
        self.runtime.block_on(async {
            let consumer = self
                .broker
                .consumer(&format!("reader-{}", free_port()), &[topic.to_string()])
                .await
                .unwrap();
            let mut out = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while out.len() < expected && Instant::now() < deadline {
                if let Ok(Ok(ConsumerEvent::Message(m))) =
                    tokio::time::timeout(Duration::from_millis(500), consumer.next_event()).await
                {
                    out.push(m);
                }
            }
            shop_broker::leave_group(consumer.as_ref()).await;
            out
        })
    }

    fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.data_dir().join("sqlite_db.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    fn count(&self, sql: &str) -> i64 {
        match self.db().query_row(sql, [], |r| r.get(0)) {
            Ok(n) => n,
            // The handler creates its tables on first use.
            Err(e) if e.to_string().contains("no such table") => 0,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// Waits until `sql` counts at least `n` (or panics after `timeout`, with the logs).
    fn wait_for(&self, shop: &Shop, sql: &str, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.count(sql);
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: {have} of {n} after {timeout:?}\nstderr:\n{}",
                tail(&shop.stderr.text())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn header(message: &Message, name: &str) -> Option<String> {
    message
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

// ---- scenarios ---------------------------------------------------------------------

fn keyed_messages_are_handled_exactly_once_in_key_order(backend: Backend) {
    let setup = Setup::new(backend, "order");
    const N: usize = 1000;
    for i in 0..N {
        let payload = json!({ "id": format!("m{i}"), "seq": i }).to_string();
        let headers = [("ce_id", format!("evt-{i}")), ("ce_type", "shop.test".to_string())];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        setup.publish(&format!("key-{}", i % 20), payload.as_bytes(), &headers);
    }
    let shop = setup.start(&setup.manifest(""), "single");
    setup.wait_for(
        &shop,
        "SELECT COUNT(*) FROM handled",
        N as i64,
        Duration::from_secs(120),
    );
    // Give duplicates, if any, time to show up.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM handled"),
        N as i64,
        "each message handled exactly once"
    );
    assert_eq!(setup.count("SELECT COUNT(DISTINCT id) FROM handled"), N as i64);

    let db = setup.db();
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut partitions_of_key: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut statement = db
        .prepare("SELECT msg_key, seq, part FROM handled ORDER BY rowid")
        .unwrap();
    let rows = statement
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .unwrap();
    for row in rows {
        let (key, seq, part) = row.unwrap();
        by_key.entry(key.clone()).or_default().push(seq);
        partitions_of_key.entry(key).or_default().insert(part);
    }
    assert_eq!(by_key.len(), 20);
    for (key, seqs) in &by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key} handled out of order: {seqs:?}"
        );
        assert_eq!(partitions_of_key[key].len(), 1, "{key} stays on one partition");
    }
    let partitions: BTreeSet<i64> = partitions_of_key.values().flatten().copied().collect();
    assert_eq!(partitions.len(), 3, "keys spread over the 3 partitions");

    // Metadata and CloudEvents headers reach the guest.
    let metadata: String = db
        .query_row("SELECT metadata FROM handled WHERE id = 'm7'", [], |r| r.get(0))
        .unwrap();
    let metadata: Vec<(String, String)> = serde_json::from_str(&metadata).unwrap();
    for (name, value) in [("ce_id", "evt-7"), ("ce_type", "shop.test"), ("kafka.key", "key-7")] {
        assert!(
            metadata.contains(&(name.to_string(), value.to_string())),
            "{name}={value} in {metadata:?}"
        );
    }
    for name in ["kafka.partition", "kafka.offset", "kafka.timestamp"] {
        assert!(metadata.iter().any(|(k, _)| k == name), "{name} in {metadata:?}");
    }
    let metrics = shop.metrics();
    let handled: f64 = (0..3)
        .map(|p| {
            metric_value(
                &metrics,
                "shop_kafka_messages_handled_total",
                &[("topic", setup.topic.as_str()), ("partition", &p.to_string())],
            )
        })
        .sum();
    assert_eq!(handled, N as f64, "{metrics}");
}

fn failures_are_retried_and_poison_messages_dead_lettered(backend: Backend) {
    let setup = Setup::new(backend, "retry");
    let key = "one-partition";
    setup.publish(
        key,
        json!({ "id": "flaky", "fail_times": 2 }).to_string().as_bytes(),
        &[],
    );
    setup.publish(
        key,
        json!({ "id": "poison", "always_fail": true }).to_string().as_bytes(),
        &[("ce_id", "p-1")],
    );
    setup.publish(key, b"\xff\x00 not json", &[]);
    setup.publish(key, json!({ "id": "trap", "trap": true }).to_string().as_bytes(), &[]);
    setup.publish(key, json!({ "id": "after" }).to_string().as_bytes(), &[]);
    let shop = setup.start(&setup.manifest("max_retries = 2\nretry_backoff_ms = 20"), "single");
    setup.wait_for(
        &shop,
        "SELECT COUNT(*) FROM handled WHERE id = 'after'",
        1,
        Duration::from_secs(60),
    );

    assert_eq!(
        setup.count("SELECT COUNT(*) FROM attempts WHERE id = 'flaky'"),
        3,
        "two failures then success"
    );
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM handled WHERE id = 'flaky'"),
        1,
        "handled once"
    );
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM attempts WHERE id = 'poison'"),
        3,
        "1 + max_retries"
    );
    assert_eq!(setup.count("SELECT COUNT(*) FROM attempts WHERE id = 'trap'"), 3);
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM handled WHERE id IN ('poison', 'trap')"),
        0
    );

    let dead = setup.read_topic(&format!("{}.dlq", setup.topic), 3);
    assert_eq!(dead.len(), 3, "poison, garbage and trap are dead-lettered");
    let original_offsets: Vec<String> = dead.iter().map(|m| header(m, "x-original-offset").unwrap()).collect();
    assert_eq!(original_offsets, ["1", "2", "3"]);
    for m in &dead {
        assert_eq!(header(m, "x-attempts").as_deref(), Some("3"));
        assert_eq!(header(m, "x-original-topic").as_deref(), Some(setup.topic.as_str()));
        assert!(header(m, "x-original-partition").is_some());
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
    }
    assert_eq!(
        dead[1].payload, b"\xff\x00 not json",
        "the payload is kept byte for byte"
    );
    assert!(
        header(&dead[0], "x-error").unwrap().contains("always failing"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(header(&dead[0], "ce_id").as_deref(), Some("p-1"));
    assert!(header(&dead[1], "x-error").unwrap().contains("invalid payload"));
    assert!(header(&dead[2], "x-error").unwrap().contains("trapped"));

    // The host is still serving.
    assert!(
        client()
            .get(format!("{}/healthz", shop.admin))
            .send()
            .unwrap()
            .status()
            .is_success()
    );
}

fn publishing_is_limited_to_allowed_topics(backend: Backend) {
    let setup = Setup::new(backend, "publish");
    let out = format!("{}.out", setup.topic);
    setup.publish(
        "k",
        json!({ "id": "allowed", "publish": { "topic": out, "data": "hello", "key": "order-9" } })
            .to_string()
            .as_bytes(),
        &[("ce_id", "cause-1")],
    );
    setup.publish(
        "k",
        json!({ "id": "denied", "publish": { "topic": "somewhere.else", "data": "nope" } })
            .to_string()
            .as_bytes(),
        &[],
    );
    let shop = setup.start(&setup.manifest(""), "single");
    setup.wait_for(&shop, "SELECT COUNT(*) FROM handled", 2, Duration::from_secs(60));
    let outcome = |id: &str| -> String {
        setup
            .db()
            .query_row("SELECT outcome FROM published WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(outcome("allowed"), "ok");
    assert!(outcome("denied").contains("PermissionDenied"), "{}", outcome("denied"));
    let published = setup.read_topic(&out, 1);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].payload, b"hello");
    assert_eq!(published[0].key.as_deref(), Some(&b"order-9"[..]));
    assert_eq!(header(&published[0], "x-source").as_deref(), Some("kafka-handler"));
    assert_eq!(header(&published[0], "x-caused-by").as_deref(), Some("cause-1"));
    drop(shop);
}

fn a_killed_host_resumes_without_losing_messages(backend: Backend) {
    let setup = Setup::new(backend, "sigkill");
    const N: i64 = 400;
    for i in 0..N {
        let payload = json!({ "id": format!("m{i}"), "seq": i, "sleep_ms": 5 }).to_string();
        setup.publish(&format!("key-{}", i % 10), payload.as_bytes(), &[]);
    }
    let manifest = setup.manifest("");
    let shop = setup.start(&manifest, "first");
    setup.wait_for(&shop, "SELECT COUNT(*) FROM handled", N / 4, Duration::from_secs(120));
    drop(shop); // SIGKILL mid-stream
    let before = setup.count("SELECT COUNT(DISTINCT id) FROM handled");
    assert!(
        before < N,
        "the kill came too late to test anything ({before} of {N} done)"
    );

    let shop = setup.start(&manifest, "second");
    setup.wait_for(
        &shop,
        "SELECT COUNT(DISTINCT id) FROM handled",
        N,
        Duration::from_secs(180),
    );
    let duplicates = setup.count("SELECT COUNT(*) FROM handled") - N;
    eprintln!("{backend:?}: {before} handled before SIGKILL, {duplicates} redelivered after restart");
    assert!(duplicates >= 0);
    assert!(
        setup.count("SELECT COUNT(*) FROM handled WHERE instance = 'second'") > 0,
        "the restarted host did the rest"
    );
}

fn two_hosts_share_a_group_and_take_over_from_each_other(backend: Backend) {
    let setup = Setup::new(backend, "group");
    let manifest = setup.manifest("");
    let first = setup.start(&manifest, "a");
    let second = setup.start(&manifest, "b");
    // Ready means subscribed; the group's rebalance gives the second host its share
    // a moment later. Publishing before that, the first host could handle every
    // message alone on a busy machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(second.stderr.text().contains("partition assigned") || second.stderr.text().contains("partitions assigned"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second host got no partitions"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let publish_batch = |from: i64, to: i64| {
        for i in from..to {
            let payload = json!({ "id": format!("m{i}"), "seq": i, "sleep_ms": 10 }).to_string();
            setup.publish(&format!("key-{}", i % 12), payload.as_bytes(), &[]);
        }
    };
    publish_batch(0, 240);
    setup.wait_for(
        &first,
        "SELECT COUNT(DISTINCT id) FROM handled",
        240,
        Duration::from_secs(180),
    );
    let by_instance =
        |instance: &str| setup.count(&format!("SELECT COUNT(*) FROM handled WHERE instance = '{instance}'"));
    assert!(
        by_instance("a") > 0 && by_instance("b") > 0,
        "both hosts handled messages: a={} b={}",
        by_instance("a"),
        by_instance("b")
    );

    // Stopping one moves its partitions to the other; nothing is lost.
    let status = first.terminate();
    assert!(status.success(), "graceful stop: {status}");
    publish_batch(240, 360);
    setup.wait_for(
        &second,
        "SELECT COUNT(DISTINCT id) FROM handled",
        360,
        Duration::from_secs(180),
    );
    assert_eq!(
        setup.count(
            "SELECT COUNT(DISTINCT id) FROM handled WHERE instance = 'b' AND CAST(SUBSTR(id, 2) AS INTEGER) >= 240"
        ),
        120,
        "every message published after the stop was handled by the survivor"
    );
    drop(second);
}

/// Lag is the records a group has not handled yet: with the handler stuck on one
/// record and five more behind it on its partition, six; back to 0 once they are
/// handled. Exact on the embedded log; on Kafka the number comes from the broker's
/// watermarks (Tansu's are not reliable), so there only its presence is checked.
fn lag_counts_the_records_a_busy_handler_has_not_handled(backend: Backend) {
    let setup = Setup::new(backend, "lag");
    let shop = setup.start(&setup.manifest(""), "single");
    setup.publish("k", json!({ "id": "warm" }).to_string().as_bytes(), &[]);
    setup.wait_for(&shop, "SELECT COUNT(*) FROM handled", 1, Duration::from_secs(60));
    let partition = setup.count("SELECT part FROM handled WHERE id = 'warm'").to_string();
    let lag = || {
        let metrics = shop.metrics();
        let labels = [("topic", setup.topic.as_str()), ("partition", partition.as_str())];
        let present = metrics
            .lines()
            .any(|l| l.starts_with("shop_kafka_consumer_lag{") && l.contains(&format!("topic=\"{}\"", setup.topic)));
        (present, metric_value(&metrics, "shop_kafka_consumer_lag", &labels))
    };

    let slow = json!({ "id": "slow", "sleep_ms": 4000 }).to_string();
    setup.publish("k", slow.as_bytes(), &[]);
    for i in 0..5 {
        setup.publish("k", json!({ "id": format!("q{i}") }).to_string().as_bytes(), &[]);
    }
    setup.wait_for(
        &shop,
        "SELECT COUNT(*) FROM attempts WHERE id = 'slow'",
        1,
        Duration::from_secs(30),
    );
    let (present, busy) = lag();
    assert!(present, "no lag for {} in\n{}", setup.topic, shop.metrics());
    if let Backend::Embedded = backend {
        assert_eq!(busy, 6.0, "the record in hand and the five behind it");
    }
    setup.wait_for(&shop, "SELECT COUNT(*) FROM handled", 7, Duration::from_secs(60));
    if let Backend::Embedded = backend {
        assert_eq!(lag().1, 0.0, "all handled");
    }
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod kafka {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Kafka) })*
        }
        mod embedded {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Embedded) })*
        }
    };
}

on_both_backends!(
    keyed_messages_are_handled_exactly_once_in_key_order,
    failures_are_retried_and_poison_messages_dead_lettered,
    publishing_is_limited_to_allowed_topics,
    a_killed_host_resumes_without_losing_messages,
    two_hosts_share_a_group_and_take_over_from_each_other,
    lag_counts_the_records_a_busy_handler_has_not_handled,
);
