//! The Kafka broker against a real Kafka-protocol broker: `SHOP_KAFKA_BROKERS`
//! (default 127.0.0.1:9092), started for tests with `scripts/kafka-broker start`.
//!
//! `SHOP_KAFKA_DEBUG=cgrp,fetch` (with `RUST_LOG=librdkafka=debug`) turns on librdkafka's
//! debug contexts for the clients of these tests.
//!
//! A missing broker fails these tests; they never pass silently. Each test has its own
//! topics and at most one consumer group: joining a group is slow on the test broker
//! (Tansu pauses about 5 s per join), so the group scenarios are few and run in parallel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shop_broker::embedded::partition_for_key;
use shop_broker::kafka::{KafkaBroker, KafkaOptions};
use shop_broker::{Broker, BrokerError, Consumer, ConsumerEvent, Message, OutgoingMessage, TopicPartition};
use tokio::sync::mpsc;

const PARTITIONS: i32 = 3;
/// Upper bound for anything involving a group join or rebalance on the test broker.
const GROUP_WAIT: Duration = Duration::from_secs(40);

fn brokers() -> String {
    std::env::var("SHOP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A name no earlier run used: topics and groups of a long-lived broker never collide.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("shop-test-{prefix}-{}-{nanos}-{n}", std::process::id())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn connect() -> KafkaBroker {
    init_tracing();
    let brokers = brokers();
    let mut options = KafkaOptions::new(brokers.clone());
    if let Ok(debug) = std::env::var("SHOP_KAFKA_DEBUG") {
        options.client_options.push(("debug".into(), debug));
    }
    match tokio::task::spawn_blocking(move || KafkaBroker::connect(options))
        .await
        .unwrap()
    {
        Ok(broker) => broker,
        Err(e) => panic!(
            "no Kafka broker at {brokers} (SHOP_KAFKA_BROKERS): {e}\n\
             start it with scripts/kafka-broker start"
        ),
    }
}

/// A key whose Java-partitioner partition among `PARTITIONS` is `partition`.
fn key_for_partition(partition: i32, nth: usize) -> Vec<u8> {
    (0..)
        .map(|i| format!("key-{i}").into_bytes())
        .filter(|key| partition_for_key(key, PARTITIONS) == partition)
        .nth(nth)
        .unwrap()
}

fn outgoing(topic: &str, key: Option<&[u8]>, payload: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.to_string(),
        key: key.map(<[u8]>::to_vec),
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

/// What a driven consumer saw, with when.
#[derive(Debug)]
enum Seen {
    Message(Message, Instant),
    Revoked {
        partitions: Vec<TopicPartition>,
        acked: Instant,
    },
    Closed,
}

/// Runs `consumer` the way the trigger does: reads events until it is closed, answering
/// each `Revoked` after `ack_delay`; forwards what it saw.
fn drive(consumer: Arc<dyn Consumer>, ack_delay: Duration) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match consumer.next_event().await {
                Ok(ConsumerEvent::Message(message)) => {
                    let _ = tx.send(Seen::Message(message, Instant::now()));
                }
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    tokio::time::sleep(ack_delay).await;
                    let acked = Instant::now();
                    let _ = done.send(());
                    let _ = tx.send(Seen::Revoked { partitions, acked });
                }
                Err(BrokerError::Closed) => {
                    let _ = tx.send(Seen::Closed);
                    return;
                }
                Err(e) => panic!("next_event failed: {e}"),
            }
        }
    });
    rx
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Seen>, deadline: Instant, what: &str) -> Seen {
    match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        Ok(Some(seen)) => seen,
        Ok(None) => panic!("consumer driver ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Reads messages directly (no handshake expected) until `n` arrived.
async fn read_messages(consumer: &dyn Consumer, n: usize) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + GROUP_WAIT;
    let mut messages = Vec::new();
    while messages.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Message(m))) => messages.push(m),
            Ok(Ok(ConsumerEvent::Revoked { partitions, .. })) => {
                panic!("unexpected revoke of {partitions:?} after {} messages", messages.len())
            }
            Ok(Err(e)) => panic!("next_event failed: {e}"),
            Err(_) => panic!("timed out after {} of {n} messages: {messages:?}", messages.len()),
        }
    }
    messages
}

/// Closes `consumer` while answering its revokes; returns what it saw meanwhile.
async fn close_draining(consumer: &dyn Consumer) -> Vec<Seen> {
    let drain = async {
        let mut seen = Vec::new();
        loop {
            match consumer.next_event().await {
                Ok(ConsumerEvent::Message(m)) => seen.push(Seen::Message(m, Instant::now())),
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    let _ = done.send(());
                    seen.push(Seen::Revoked {
                        partitions,
                        acked: Instant::now(),
                    });
                }
                Err(BrokerError::Closed) => return seen,
                Err(e) => panic!("next_event failed while closing: {e}"),
            }
        }
    };
    let ((), seen) = tokio::time::timeout(GROUP_WAIT, async { tokio::join!(consumer.close(), drain) })
        .await
        .expect("close did not finish");
    seen
}

#[tokio::test]
async fn topics_are_created_and_keys_use_the_java_partitioner() {
    let broker = connect().await;
    let producer = broker.producer();

    let five = unique("five");
    broker.ensure_topic(&five, 5).await.unwrap();
    broker.ensure_topic(&five, 5).await.expect("an existing topic is fine");
    broker
        .ensure_topic(&five, 2)
        .await
        .expect("an existing topic keeps its partitions");
    for i in 0..20 {
        let key = format!("customer-{i}");
        let delivery = producer
            .publish(outgoing(&five, Some(key.as_bytes()), "x"))
            .await
            .unwrap();
        assert_eq!(delivery.partition, partition_for_key(key.as_bytes(), 5), "key {key}");
    }

    // Publishing to a missing topic creates it with the default partition count.
    let implicit = unique("implicit");
    let mut partitions = BTreeSet::new();
    for i in 0..20 {
        let key = format!("order-{i}");
        let delivery = producer
            .publish(outgoing(&implicit, Some(key.as_bytes()), "x"))
            .await
            .unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "key {key}"
        );
        partitions.insert(delivery.partition);
    }
    assert_eq!(
        partitions.len(),
        PARTITIONS as usize,
        "20 keys should hit every partition"
    );

    for bad in ["", "no spaces", ".."] {
        assert!(matches!(
            broker.ensure_topic(bad, 1).await,
            Err(BrokerError::Rejected(_))
        ));
        assert!(matches!(
            producer.publish(outgoing(bad, None, "x")).await,
            Err(BrokerError::Rejected(_))
        ));
    }
    assert!(matches!(
        broker.ensure_topic(&five, 0).await,
        Err(BrokerError::Rejected(_))
    ));
    assert_eq!(broker.kind(), "kafka");
}

#[tokio::test]
async fn round_trip_keeps_records_intact_and_in_partition_order() {
    let broker = connect().await;
    let topic = unique("roundtrip");
    let group = unique("roundtrip");
    // Subscribing creates the topic with the default partition count.
    let consumer = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let producer = broker.producer();

    let before = now_ms();
    let mut expected = HashMap::new();
    for i in 0..30 {
        let key = format!("order-{}", i % 7);
        let message = OutgoingMessage {
            topic: topic.clone(),
            key: Some(key.clone().into_bytes()),
            payload: format!("payload-{i}").into_bytes(),
            headers: vec![
                ("trace".into(), format!("t-{i}").into_bytes()),
                ("dup".into(), b"1".to_vec()),
                ("dup".into(), vec![0, 255]),
                ("empty".into(), Vec::new()),
            ],
        };
        let delivery = producer.publish(message.clone()).await.unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "key {key}"
        );
        expected.insert(format!("payload-{i}"), (message, delivery));
    }
    // No key: some partition; empty payload and no headers come back as empty.
    // An empty key is a key: hashed like any other, and delivered as empty.
    let empty_key = producer
        .publish(outgoing(&topic, Some(b""), "empty-key"))
        .await
        .unwrap();
    assert_eq!(empty_key.partition, partition_for_key(b"", PARTITIONS));
    let keyless = producer
        .publish(OutgoingMessage {
            topic: topic.clone(),
            key: None,
            payload: Vec::new(),
            headers: Vec::new(),
        })
        .await
        .unwrap();
    assert!((0..PARTITIONS).contains(&keyless.partition));
    let after = now_ms();

    let received = read_messages(consumer.as_ref(), 32).await;
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_index_per_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for message in &received {
        assert_eq!(message.topic, topic);
        if let Some(last) = last_offset.insert(message.partition, message.offset) {
            assert!(
                message.offset > last,
                "partition {} went back: {last} then {}",
                message.partition,
                message.offset
            );
        }
        assert!(
            (before - 1000..=after + 1000).contains(&message.timestamp_ms),
            "timestamp {} outside [{before}, {after}]",
            message.timestamp_ms
        );
        if text(message) == "empty-key" {
            assert_eq!(
                (message.partition, message.offset),
                (empty_key.partition, empty_key.offset)
            );
            assert_eq!(message.key.as_deref(), Some(&b""[..]), "{message:?}");
            continue;
        }
        if message.key.is_none() {
            assert_eq!((message.partition, message.offset), (keyless.partition, keyless.offset));
            assert!(message.payload.is_empty() && message.headers.is_empty(), "{message:?}");
            continue;
        }
        let (sent, delivery) = expected
            .remove(&text(message))
            .unwrap_or_else(|| panic!("unexpected {message:?}"));
        assert_eq!(message.key, sent.key);
        assert_eq!(message.headers, sent.headers);
        assert_eq!(
            (message.partition, message.offset),
            (delivery.partition, delivery.offset)
        );
        let index: usize = text(message)["payload-".len()..].parse().unwrap();
        if let Some(last) = last_index_per_key.insert(sent.key.clone().unwrap(), index) {
            assert!(index > last, "key order broken: {last} then {index}");
        }
    }
    assert!(expected.is_empty(), "not received: {:?}", expected.keys());

    // A backlog far beyond what the consumer queues ahead (it pauses fetching meanwhile)
    // arrives completely, once and in offset order, although nobody reads for a while.
    let backlog = 2000;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..backlog {
        let producer = Arc::clone(&producer);
        let message = outgoing(&topic, Some(format!("bulk-{i}").as_bytes()), "bulk");
        sends.spawn(async move { producer.publish(message).await.unwrap() });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for message in read_messages(consumer.as_ref(), backlog).await {
        let last = last_offset.insert(message.partition, message.offset);
        assert_eq!(
            message.offset,
            last.map_or(0, |last| last + 1),
            "partition {}: a gap or a duplicate",
            message.partition
        );
    }
    match tokio::time::timeout(Duration::from_millis(500), consumer.next_event()).await {
        Err(_) => {}
        Ok(event) => panic!("unexpected extra event {event:?}"),
    }

    let seen = close_draining(consumer.as_ref()).await;
    assert!(
        seen.iter().all(|s| matches!(s, Seen::Revoked { .. })),
        "only revokes expected while closing: {seen:?}"
    );
}

#[tokio::test]
async fn a_new_member_resumes_after_the_committed_offsets() {
    let broker = connect().await;
    let topic = unique("resume");
    let group = unique("resume");
    let producer = broker.producer();
    let first = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();

    // Three records on each partition.
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for n in 0..3 {
            let key = key_for_partition(partition, n);
            let delivery = producer
                .publish(outgoing(&topic, Some(&key), &format!("p{partition}-{n}")))
                .await
                .unwrap();
            assert_eq!(delivery.partition, partition);
            offsets.entry(partition).or_default().push(delivery.offset);
        }
    }
    let received = read_messages(first.as_ref(), 9).await;
    assert_eq!(received.len(), 9);

    // The trigger commits when its partitions are revoked, here on close: partition 0
    // after its first record, partition 1 completely, partition 2 not at all.
    let mut revoked = Vec::new();
    let close = async {
        loop {
            match first.next_event().await {
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    first
                        .commit(&TopicPartition::new(&topic, 0), offsets[&0][0] + 1)
                        .await
                        .unwrap();
                    first
                        .commit(&TopicPartition::new(&topic, 1), offsets[&1][2] + 1)
                        .await
                        .unwrap();
                    revoked.extend(partitions);
                    let _ = done.send(());
                }
                Ok(ConsumerEvent::Message(m)) => panic!("nothing left to deliver, got {m:?}"),
                Err(BrokerError::Closed) => break,
                Err(e) => panic!("next_event failed: {e}"),
            }
        }
    };
    tokio::time::timeout(GROUP_WAIT, async { tokio::join!(first.close(), close) })
        .await
        .expect("close did not finish");
    revoked.sort();
    assert_eq!(
        revoked,
        (0..PARTITIONS)
            .map(|p| TopicPartition::new(&topic, p))
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        first.commit(&TopicPartition::new(&topic, 2), 1).await,
        Err(BrokerError::Closed)
    ));

    let second = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let mut resumed: Vec<(i32, i64)> = read_messages(second.as_ref(), 5)
        .await
        .iter()
        .map(|m| (m.partition, m.offset))
        .collect();
    // Nothing beyond the uncommitted records shows up.
    match tokio::time::timeout(Duration::from_secs(1), second.next_event()).await {
        Err(_) => {}
        Ok(event) => panic!("unexpected extra event {event:?}"),
    }
    resumed.sort();
    let expected = vec![
        (0, offsets[&0][1]),
        (0, offsets[&0][2]),
        (2, offsets[&2][0]),
        (2, offsets[&2][1]),
        (2, offsets[&2][2]),
    ];
    assert_eq!(resumed, expected);

    // Dropped without `close`, a member still leaves the group: the next one gets every
    // partition (from the same committed offsets) without a session timeout in between.
    drop(second);
    // Let it leave before the next member joins: Tansu wedges a group when a member
    // leaves while another's join is pending (it keeps electing the departed leader).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let mut again: Vec<(i32, i64)> = read_messages(third.as_ref(), 5)
        .await
        .iter()
        .map(|m| (m.partition, m.offset))
        .collect();
    again.sort();
    assert_eq!(again, expected);
    close_draining(third.as_ref()).await;
}

#[tokio::test]
async fn members_split_partitions_and_hand_them_over_on_close() {
    let broker = connect().await;
    let topic = unique("split");
    let group = unique("split");
    let producer = broker.producer();
    let all: BTreeSet<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(&topic, p)).collect();
    let publish_round = |round: &'static str| {
        let producer = Arc::clone(&producer);
        let topic = topic.clone();
        async move {
            for partition in 0..PARTITIONS {
                let key = key_for_partition(partition, 0);
                let payload = format!("{round}-p{partition}");
                producer.publish(outgoing(&topic, Some(&key), &payload)).await.unwrap();
            }
        }
    };
    let deadline = Instant::now() + GROUP_WAIT * 3;

    // One member owns everything.
    let one = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let mut one_seen = drive(Arc::clone(&one), Duration::ZERO);
    publish_round("r1").await;
    let mut got = BTreeSet::new();
    while got.len() < all.len() {
        if let Seen::Message(m, _) = recv(&mut one_seen, deadline, "round 1 on member one").await {
            got.insert(m.topic_partition());
        }
    }

    // A second member joins: the first gives everything back (eager), then they split.
    let two = broker.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let ack_delay = Duration::from_millis(1500);
    let mut two_seen = drive(Arc::clone(&two), ack_delay);
    loop {
        match recv(&mut one_seen, deadline, "member one's revoke on the join").await {
            Seen::Revoked { partitions, .. } => {
                assert_eq!(partitions.into_iter().collect::<BTreeSet<_>>(), all);
                break;
            }
            Seen::Message(m, _) => assert!(text(&m).starts_with("r1-"), "{m:?}"),
            Seen::Closed => panic!("member one closed"),
        }
    }
    publish_round("r2").await;
    let mut owner: BTreeMap<TopicPartition, u8> = BTreeMap::new();
    while owner.len() < all.len() {
        tokio::select! {
            seen = recv(&mut one_seen, deadline, "round 2 on member one") => {
                if let Seen::Message(m, _) = seen && text(&m).starts_with("r2-") {
                    assert_eq!(owner.insert(m.topic_partition(), 1), None, "{m:?} delivered twice");
                }
            }
            seen = recv(&mut two_seen, deadline, "round 2 on member two") => {
                if let Seen::Message(m, _) = seen && text(&m).starts_with("r2-") {
                    assert_eq!(owner.insert(m.topic_partition(), 2), None, "{m:?} delivered twice");
                }
            }
        }
    }
    let of_two: BTreeSet<TopicPartition> = owner
        .iter()
        .filter(|(_, m)| **m == 2)
        .map(|(tp, _)| tp.clone())
        .collect();
    assert!(
        !of_two.is_empty() && of_two.len() < all.len(),
        "both members should own partitions: {owner:?}"
    );

    // Member two leaves: it gets its partitions revoked and takes 1.5 s to answer; only
    // afterwards does member one receive anything from them.
    let close_started = Instant::now();
    tokio::time::timeout(GROUP_WAIT, two.close())
        .await
        .expect("close did not finish");
    let mut two_acked = None;
    let mut after_revoke = Vec::new();
    loop {
        match recv(&mut two_seen, deadline, "member two's close").await {
            Seen::Revoked { partitions, acked } if acked >= close_started => {
                assert_eq!(partitions.into_iter().collect::<BTreeSet<_>>(), of_two);
                two_acked = Some(acked);
            }
            Seen::Revoked { .. } => {}
            Seen::Message(m, _) if two_acked.is_some() => after_revoke.push(m),
            Seen::Message(..) => {}
            Seen::Closed => break,
        }
    }
    let two_acked = two_acked.expect("member two saw no revoke on close");
    assert!(
        after_revoke.is_empty(),
        "member two got records after its revoke: {after_revoke:?}"
    );

    publish_round("r3").await;
    let mut round3 = BTreeSet::new();
    let mut one_revoked = false;
    while round3.len() < all.len() {
        match recv(&mut one_seen, deadline, "round 3 on member one").await {
            Seen::Message(m, at) => {
                if of_two.contains(&m.topic_partition()) && at >= close_started {
                    assert!(at > two_acked, "member one got {m:?} before member two released it");
                }
                if text(&m).starts_with("r3-") {
                    round3.insert(m.topic_partition());
                }
            }
            Seen::Revoked { .. } => one_revoked = true,
            Seen::Closed => panic!("member one closed"),
        }
    }
    assert!(
        one_revoked,
        "member one should take part in the rebalance (eager protocol)"
    );
    assert_eq!(round3, all);

    close_draining_driven(&one, &mut one_seen, deadline).await;
}

/// Closes a consumer whose events go to a [`drive`] task, waiting for the task to see
/// the end.
async fn close_draining_driven(
    consumer: &Arc<dyn Consumer>,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    deadline: Instant,
) {
    tokio::time::timeout(GROUP_WAIT, consumer.close())
        .await
        .expect("close did not finish");
    while !matches!(recv(seen, deadline, "the end of the consumer").await, Seen::Closed) {}
}

#[tokio::test]
async fn an_unreachable_broker_fails_fast_instead_of_hanging() {
    init_tracing();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(|| KafkaBroker::connect(KafkaOptions::new("127.0.0.1:1")))
        .await
        .unwrap();
    match result {
        Err(BrokerError::Unavailable(text)) => assert!(text.contains("127.0.0.1:1"), "{text}"),
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "connect took {:?}",
        started.elapsed()
    );

    // Created without the check, a publish fails once the message timeout passes.
    let options = KafkaOptions {
        client_options: vec![("message.timeout.ms".into(), "2000".into())],
        ..KafkaOptions::new("127.0.0.1:1")
    };
    let broker = KafkaBroker::new(options).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        broker.producer().publish(outgoing("anything", Some(b"k"), "x")),
    )
    .await
    .expect("publish hung");
    assert!(matches!(result, Err(BrokerError::Unavailable(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "publish took {:?}",
        started.elapsed()
    );
}
