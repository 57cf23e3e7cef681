//! Behaviour of the embedded log end to end. Two `EmbeddedBroker`s on one file with
//! different member ids stand in for two processes: they share nothing but the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::*;
use crate::{ConsumerEvent, Headers, Message, TopicPartition};

const SESSION: Duration = Duration::from_millis(400);
const HEARTBEAT: Duration = Duration::from_millis(25);
/// Upper bound for anything that should happen "soon"; tests normally finish far below.
const PATIENCE: Duration = Duration::from_secs(5);

fn options(member: &str) -> EmbeddedOptions {
    EmbeddedOptions {
        default_partitions: 3,
        member_id: member.to_string(),
        session_timeout: SESSION,
        heartbeat_interval: HEARTBEAT,
        poll_interval: Duration::from_millis(10),
        reclaim_after_crash: false,
    }
}

fn open(dir: &TempDir, member: &str) -> EmbeddedBroker {
    EmbeddedBroker::open(&dir.path().join("events").join("log.db"), options(member)).expect("open the log")
}

fn record(topic: &str, key: Option<&str>, payload: &str, headers: Headers) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.to_string(),
        key: key.map(|k| k.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
        headers,
    }
}

/// A key that Kafka's partitioner puts on `partition` of `partitions`.
fn key_for(partition: i32, partitions: i32) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| partition_for_key(k.as_bytes(), partitions) == partition)
        .unwrap()
}

async fn publish(broker: &EmbeddedBroker, topic: &str, partition: i32, partitions: i32, payload: &str) -> Delivery {
    let key = key_for(partition, partitions);
    let delivery = broker
        .producer()
        .publish(record(topic, Some(&key), payload, Vec::new()))
        .await
        .expect("publish");
    assert_eq!(delivery.partition, partition);
    delivery
}

async fn join(broker: &EmbeddedBroker, group: &str, topic: &str) -> Arc<EmbeddedConsumer> {
    broker
        .join_group(group, &[topic.to_string()])
        .await
        .expect("join the group")
}

async fn next_message(consumer: &EmbeddedConsumer) -> Message {
    match timeout(PATIENCE, consumer.next_event()).await {
        Ok(Ok(ConsumerEvent::Message(message))) => message,
        Ok(Ok(ConsumerEvent::Revoked { partitions, .. })) => panic!("unexpected revoke of {partitions:?}"),
        Ok(Err(e)) => panic!("next_event failed: {e}"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

async fn messages(consumer: &EmbeddedConsumer, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next_message(consumer).await);
    }
    got
}

async fn expect_revoked(consumer: &EmbeddedConsumer) -> (BTreeSet<TopicPartition>, oneshot::Sender<()>) {
    match timeout(PATIENCE, consumer.next_event()).await {
        Ok(Ok(ConsumerEvent::Revoked { partitions, done })) => (partitions.into_iter().collect(), done),
        Ok(Ok(ConsumerEvent::Message(m))) => panic!("expected a revoke, got {}@{}", m.topic_partition(), m.offset),
        Ok(Err(e)) => panic!("next_event failed: {e}"),
        Err(_) => panic!("no revoke within {PATIENCE:?}"),
    }
}

/// Nothing is delivered for a while (several heartbeats and polls).
async fn expect_quiet(consumer: &EmbeddedConsumer) {
    if let Ok(event) = timeout(Duration::from_millis(200), consumer.next_event()).await {
        panic!("expected nothing, got {event:?}");
    }
}

/// Runs a consumer like a trigger would in the background: messages go to the returned
/// channel, revokes are acknowledged at once.
fn drive(consumer: Arc<EmbeddedConsumer>) -> mpsc::UnboundedReceiver<Message> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = consumer.next_event().await {
            if let ConsumerEvent::Message(message) = event
                && tx.send(message).is_err()
            {
                break;
            }
        }
    });
    rx
}

async fn received(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    timeout(PATIENCE, rx.recv())
        .await
        .expect("a message in time")
        .expect("driver running")
}

async fn assert_nothing_received(rx: &mut mpsc::UnboundedReceiver<Message>) {
    if let Ok(Some(m)) = timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("expected nothing, got {}@{}", m.topic_partition(), m.offset);
    }
}

/// Closes `consumer`, acknowledging its final revoke as a trigger would, and returns the
/// partitions it handed back.
async fn close_with_handshake(consumer: &Arc<EmbeddedConsumer>) -> BTreeSet<TopicPartition> {
    let closing = tokio::spawn({
        let consumer = Arc::clone(consumer);
        async move { consumer.close().await }
    });
    let (revoked, done) = expect_revoked(consumer).await;
    drop(done);
    timeout(PATIENCE, closing).await.expect("close finishes").unwrap();
    assert!(matches!(consumer.next_event().await, Err(BrokerError::Closed)));
    revoked
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn positions(messages: &[Message]) -> BTreeSet<(i32, i64)> {
    messages.iter().map(|m| (m.partition, m.offset)).collect()
}

async fn committed(broker: &EmbeddedBroker, group: &str, tp: &TopicPartition) -> Option<i64> {
    let (group, tp) = (group.to_string(), tp.clone());
    broker
        .inner
        .store
        .with_conn(move |conn| store::committed(conn, &group, &tp))
        .unwrap()
}

#[tokio::test]
async fn round_trip_preserves_records_and_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "a");
    assert_eq!(broker.kind(), "embedded");
    let producer = broker.producer();

    let before = store::now_ms();
    let mut sent = Vec::new();
    for i in 0..12 {
        let key = format!("order-{}", i % 4);
        let headers = vec![
            ("ce_id".to_string(), format!("evt-{i}").into_bytes()),
            ("dup".to_string(), vec![1]),
            ("dup".to_string(), vec![0, 255]),
        ];
        let message = record("shop.orders", Some(&key), &format!("{{\"n\":{i}}}"), headers);
        let delivery = producer.publish(message.clone()).await.unwrap();
        assert_eq!(
            delivery.partition,
            partition_for_key(key.as_bytes(), 3),
            "Kafka's partition for {key}"
        );
        sent.push((message, delivery));
    }
    let after = store::now_ms();

    let consumer = join(&broker, "g", "shop.orders").await;
    let got = messages(&consumer, sent.len()).await;
    expect_quiet(&consumer).await;

    for (message, delivery) in &sent {
        let m = got
            .iter()
            .find(|m| m.partition == delivery.partition && m.offset == delivery.offset)
            .unwrap_or_else(|| panic!("{delivery:?} not delivered"));
        assert_eq!(m.topic, message.topic);
        assert_eq!(m.key, message.key);
        assert_eq!(m.payload, message.payload);
        assert_eq!(m.headers, message.headers);
        assert!(
            (before..=after).contains(&m.timestamp_ms),
            "timestamp {}",
            m.timestamp_ms
        );
    }

    // Same key, same partition; each partition delivered densely from 0, in order.
    let mut by_key: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in &got {
        by_key.entry(m.key.clone().unwrap()).or_default().insert(m.partition);
        by_partition.entry(m.partition).or_default().push(m.offset);
    }
    assert!(by_key.values().all(|p| p.len() == 1), "{by_key:?}");
    for offsets in by_partition.values() {
        assert_eq!(*offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn keyless_records_go_round_robin_and_ensure_topic_keeps_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "a");
    broker.ensure_topic("t", 2).await.unwrap();
    broker.ensure_topic("t", 5).await.unwrap(); // exists: stays at 2
    assert!(matches!(
        broker.ensure_topic("bad topic", 1).await,
        Err(BrokerError::Rejected(_))
    ));
    assert!(matches!(
        broker.ensure_topic("u", 0).await,
        Err(BrokerError::Rejected(_))
    ));

    let producer = broker.producer();
    let mut partitions = Vec::new();
    for i in 0..4 {
        let delivery = producer
            .publish(record("t", None, &i.to_string(), Vec::new()))
            .await
            .unwrap();
        partitions.push((delivery.partition, delivery.offset));
    }
    assert_eq!(partitions, vec![(0, 0), (1, 0), (0, 1), (1, 1)]);

    // A topic created by a publish gets the default partition count.
    let first = producer.publish(record("auto", None, "x", Vec::new())).await.unwrap();
    let spread: BTreeSet<i32> = [first.partition]
        .into_iter()
        .chain([
            producer
                .publish(record("auto", None, "y", Vec::new()))
                .await
                .unwrap()
                .partition,
            producer
                .publish(record("auto", None, "z", Vec::new()))
                .await
                .unwrap()
                .partition,
        ])
        .collect();
    assert_eq!(spread, BTreeSet::from([0, 1, 2]));
}

#[tokio::test]
async fn partitions_interleave_instead_of_draining_one_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "a");
    broker.ensure_topic("t", 2).await.unwrap();
    for i in 0..30 {
        publish(&broker, "t", 0, 2, &format!("a{i}")).await;
    }
    for i in 0..30 {
        publish(&broker, "t", 1, 2, &format!("b{i}")).await;
    }
    let consumer = join(&broker, "g", "t").await;
    let got = messages(&consumer, 60).await;
    let first_ten: Vec<i32> = got[..10].iter().map(|m| m.partition).collect();
    assert!(first_ten.contains(&0) && first_ten.contains(&1), "{first_ten:?}");
    for partition in [0, 1] {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(offsets, (0..30).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_local_publish_wakes_the_consumer_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow_poll = options("a");
    slow_poll.poll_interval = Duration::from_secs(30);
    let broker = EmbeddedBroker::open(&dir.path().join("log.db"), slow_poll).unwrap();
    broker.ensure_topic("t", 1).await.unwrap();
    let consumer = join(&broker, "g", "t").await;

    let waiting = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move { next_message(&consumer).await }
    });
    // Let the consumer get its partition, find it empty and go to sleep on the poll.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    publish(&broker, "t", 0, 1, "hello").await;
    let message = waiting.await.unwrap();
    assert_eq!(message.payload, b"hello");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn next_event_is_cancel_safe() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "a");
    broker.ensure_topic("t", 2).await.unwrap();
    let consumer = join(&broker, "g", "t").await;
    // A call waiting on an empty log is cancelled for certain; then calls are cut off
    // after 300 µs, which on a busy machine also lands in the middle of a delivery.
    assert!(
        timeout(Duration::from_millis(20), consumer.next_event()).await.is_err(),
        "nothing to deliver yet"
    );
    for i in 0..20 {
        publish(&broker, "t", 0, 2, &i.to_string()).await;
        publish(&broker, "t", 1, 2, &i.to_string()).await;
    }

    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < 40 {
        assert!(Instant::now() < deadline, "only {} of 40 delivered", got.len());
        match timeout(Duration::from_micros(300), consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Message(m))) => got.push(m),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    for partition in [0, 1] {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(offsets, (0..20).collect::<Vec<_>>(), "partition {partition}");
    }
    expect_quiet(&consumer).await;
}

#[tokio::test]
async fn committed_offsets_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = tp("t", 0);
    {
        let broker = open(&dir, "first-run");
        broker.ensure_topic("t", 1).await.unwrap();
        for i in 0..10 {
            publish(&broker, "t", 0, 1, &i.to_string()).await;
        }
        let consumer = join(&broker, "g", "t").await;
        let got = messages(&consumer, 10).await;
        assert_eq!(
            got.iter().map(|m| m.offset).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // Delivered but not committed: no re-delivery within this ownership period.
        expect_quiet(&consumer).await;

        consumer.commit(&t0, 6).await.unwrap();
        consumer.commit(&t0, 3).await.unwrap(); // never moves back
        assert_eq!(committed(&broker, "g", &t0).await, Some(6));
        assert!(matches!(consumer.commit(&t0, -1).await, Err(BrokerError::Rejected(_))));

        assert_eq!(close_with_handshake(&consumer).await, BTreeSet::from([t0.clone()]));
    }

    let broker = open(&dir, "second-run");
    let consumer = join(&broker, "g", "t").await;
    let got = messages(&consumer, 4).await;
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
    assert_eq!(got[0].payload, b"6");
    expect_quiet(&consumer).await;

    // Another group starts from the beginning.
    let other = join(&broker, "other", "t").await;
    assert_eq!(next_message(&other).await.offset, 0);
}

#[tokio::test]
async fn group_members_split_partitions_and_hand_over_through_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_a, broker_b) = (open(&dir, "a"), open(&dir, "b"));
    broker_a.ensure_topic("t", 4).await.unwrap();
    for p in 0..4 {
        publish(&broker_a, "t", p, 4, "first").await;
        publish(&broker_a, "t", p, 4, "second").await;
    }

    // Alone, A owns all four partitions; it finishes and commits the first record of each.
    let a = join(&broker_a, "g", "t").await;
    let got = messages(&a, 8).await;
    assert_eq!(positions(&got), (0..4).flat_map(|p| [(p, 0), (p, 1)]).collect());
    for p in 0..4 {
        a.commit(&tp("t", p), 1).await.unwrap();
    }

    // B joins: members "a#0" < "b#0", so A keeps partitions 0 and 2 and hands over 1 and 3.
    let b = join(&broker_b, "g", "t").await;
    let mut b_messages = drive(Arc::clone(&b));
    let (revoked, done) = expect_revoked(&a).await;
    assert_eq!(revoked, BTreeSet::from([tp("t", 1), tp("t", 3)]));
    // Until A acknowledges, B must not start them, and A can still commit its work.
    assert_nothing_received(&mut b_messages).await;
    a.commit(&tp("t", 1), 2).await.unwrap();
    drop(done);

    // B resumes from the committed offsets: partition 1 is done, partition 3 has offset 1 left.
    let m = received(&mut b_messages).await;
    assert_eq!((m.partition, m.offset, m.payload.as_slice()), (3, 1, &b"second"[..]));
    assert_nothing_received(&mut b_messages).await;

    // New records now go to their owners only.
    for p in 0..4 {
        publish(&broker_a, "t", p, 4, "third").await;
    }
    let a_got = messages(&a, 2).await;
    assert_eq!(positions(&a_got), BTreeSet::from([(0, 2), (2, 2)]));
    let b_got = vec![received(&mut b_messages).await, received(&mut b_messages).await];
    assert_eq!(positions(&b_got), BTreeSet::from([(1, 2), (3, 2)]));

    // A finishes partition 0 but not partition 2, then leaves: the handshake comes first.
    a.commit(&tp("t", 0), 3).await.unwrap();
    let closing = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.close().await }
    });
    let (revoked, done) = expect_revoked(&a).await;
    assert_eq!(revoked, BTreeSet::from([tp("t", 0), tp("t", 2)]));
    assert_nothing_received(&mut b_messages).await;
    drop(done);
    timeout(PATIENCE, closing).await.unwrap().unwrap();
    assert!(matches!(a.next_event().await, Err(BrokerError::Closed)));

    // B gets every uncommitted record of A's partitions, and nothing A committed.
    let b_got = vec![received(&mut b_messages).await, received(&mut b_messages).await];
    assert_eq!(positions(&b_got), BTreeSet::from([(2, 1), (2, 2)]));
    assert_nothing_received(&mut b_messages).await;

    // A left the group: its commits are refused.
    assert!(matches!(a.commit(&tp("t", 2), 3).await, Err(BrokerError::Rejected(_))));
    assert_eq!(committed(&broker_b, "g", &tp("t", 2)).await, Some(1));
}

#[tokio::test]
async fn a_crashed_member_loses_its_partitions_after_the_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_a, broker_b) = (open(&dir, "a"), open(&dir, "b"));
    broker_a.ensure_topic("t", 1).await.unwrap();
    for i in 0..3 {
        publish(&broker_a, "t", 0, 1, &i.to_string()).await;
    }
    let a = join(&broker_a, "g", "t").await;
    assert_eq!(
        positions(&messages(&a, 3).await),
        BTreeSet::from([(0, 0), (0, 1), (0, 2)])
    );
    a.commit(&tp("t", 0), 1).await.unwrap();

    // Dropped without close: no more heartbeats, the lease stays until it expires.
    drop(a);
    let crashed = Instant::now();
    let b = join(&broker_b, "g", "t").await;
    let mut b_messages = drive(b);
    let first = received(&mut b_messages).await;
    let waited = crashed.elapsed();
    let second = received(&mut b_messages).await;
    assert_eq!(positions(&[first, second]), BTreeSet::from([(0, 1), (0, 2)]));
    // The lease was last extended at most one heartbeat before the crash.
    assert!(waited >= SESSION - HEARTBEAT * 2, "took over after {waited:?}");
}

#[tokio::test]
async fn a_member_that_lost_its_lease_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_a, broker_b) = (open(&dir, "a"), open(&dir, "b"));
    broker_a.ensure_topic("t", 1).await.unwrap();
    publish(&broker_a, "t", 0, 1, "only").await;

    let a = join(&broker_a, "g", "t").await;
    assert_eq!(next_message(&a).await.offset, 0);
    // A stalls (e.g. the process is stopped) while still holding the message.
    a.simulate_crash();

    let b = join(&broker_b, "g", "t").await;
    let m = next_message(&b).await;
    assert_eq!((m.partition, m.offset), (0, 0));

    let refused = a.commit(&tp("t", 0), 1).await;
    assert!(matches!(refused, Err(BrokerError::Rejected(_))), "{refused:?}");
    assert_eq!(committed(&broker_b, "g", &tp("t", 0)).await, None);
    b.commit(&tp("t", 0), 1).await.unwrap();
    assert_eq!(committed(&broker_b, "g", &tp("t", 0)).await, Some(1));
}

#[tokio::test]
async fn a_member_whose_lease_was_taken_stops_delivering_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "a");
    broker.ensure_topic("t", 1).await.unwrap();
    publish(&broker, "t", 0, 1, "before").await;
    let a = join(&broker, "g", "t").await;
    assert_eq!(next_message(&a).await.offset, 0);

    // What another member does after this one missed a whole session of heartbeats.
    broker
        .inner
        .store
        .write(|conn| {
            let until = store::now_ms() + 60_000;
            conn.execute("UPDATE leases SET member_id = 'other#0', expires_ms = ?1", [until])?;
            Ok(())
        })
        .await
        .unwrap();

    let (revoked, _done) = expect_revoked(&a).await;
    assert_eq!(revoked, BTreeSet::from([tp("t", 0)]));
    publish(&broker, "t", 0, 1, "after").await;
    expect_quiet(&a).await;
    assert!(matches!(a.commit(&tp("t", 0), 1).await, Err(BrokerError::Rejected(_))));
}

#[tokio::test]
async fn consumers_of_one_process_are_separate_members() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, "p");
    broker.ensure_topic("t", 2).await.unwrap();
    let first = join(&broker, "g", "t").await;
    let second = join(&broker, "g", "t").await;
    assert_ne!(first.member_id(), second.member_id());
    let mut first_messages = drive(Arc::clone(&first));
    let mut second_messages = drive(Arc::clone(&second));
    // Let the group settle (the first member may briefly own both partitions).
    tokio::time::sleep(Duration::from_millis(300)).await;

    publish(&broker, "t", 0, 2, "zero").await;
    publish(&broker, "t", 1, 2, "one").await;
    let (x, y) = (
        received(&mut first_messages).await,
        received(&mut second_messages).await,
    );
    assert_eq!((x.partition, y.partition), (0, 1));
}

/// A process that died without leaving its groups: the next process on the log takes
/// its member slot, and with it its partitions, from the committed offsets, long before
/// the dead member's session would have run out. A live process beside it gets a slot
/// of its own.
#[tokio::test]
async fn a_process_started_after_a_crash_takes_its_partitions_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events").join("log.db");
    let reclaiming = EmbeddedOptions {
        session_timeout: Duration::from_secs(60),
        reclaim_after_crash: true,
        ..options("ignored")
    };
    let crashed = EmbeddedBroker::open(&path, reclaiming.clone()).unwrap();
    crashed.ensure_topic("t", 1).await.unwrap();
    for payload in ["first", "second"] {
        publish(&crashed, "t", 0, 1, payload).await;
    }
    let before = join(&crashed, "g", "t").await;
    assert_eq!(next_message(&before).await.offset, 0);
    before.commit(&tp("t", 0), 1).await.unwrap();
    let identity = before.member_id().to_string();
    before.simulate_crash();
    drop((before, crashed));

    let restarted = EmbeddedBroker::open(&path, reclaiming.clone()).unwrap();
    let beside = EmbeddedBroker::open(&path, reclaiming).unwrap();
    let after = join(&restarted, "g", "t").await;
    assert_eq!(after.member_id(), identity, "the dead process's identity");
    assert_ne!(
        join(&beside, "g", "t").await.member_id(),
        identity,
        "a live process's own"
    );
    // Within PATIENCE (5 s), far inside the dead member's 60 s session.
    let resumed = next_message(&after).await;
    assert_eq!((resumed.offset, resumed.payload.as_slice()), (1, &b"second"[..]));
}

#[test]
fn options_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut bad = options("a");
    bad.session_timeout = bad.heartbeat_interval;
    assert!(matches!(
        EmbeddedBroker::open(&path, bad),
        Err(BrokerError::Rejected(_))
    ));
    let mut bad = options("a");
    bad.default_partitions = 0;
    assert!(matches!(
        EmbeddedBroker::open(&path, bad),
        Err(BrokerError::Rejected(_))
    ));

    let defaults = EmbeddedOptions::default();
    assert_eq!(defaults.default_partitions, 3);
    assert_eq!(defaults.session_timeout, Duration::from_secs(6));
    assert_ne!(defaults.member_id, EmbeddedOptions::default().member_id);
}

/// Set in the child process of the two-process test: the path of the shared log.
const CHILD_LOG_ENV: &str = "SHOP_BROKER_TEST_CHILD_LOG";
const RECORDS_PER_PROCESS: usize = 100;

/// Two real OS processes append to the same partition at once: offsets stay dense and
/// unique, and every record of both is there.
#[tokio::test]
async fn two_processes_append_densely_to_one_partition() {
    if let Ok(path) = std::env::var(CHILD_LOG_ENV) {
        // The child: publish as fast as possible, then exit.
        let broker = EmbeddedBroker::open(Path::new(&path), options("child")).unwrap();
        let producer = broker.producer();
        for i in 0..RECORDS_PER_PROCESS {
            producer
                .publish(record("t", Some("same-key"), &format!("child-{i}"), Vec::new()))
                .await
                .unwrap();
        }
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let broker = EmbeddedBroker::open(&path, options("parent")).unwrap();
    broker.ensure_topic("t", 1).await.unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "embedded::tests::two_processes_append_densely_to_one_partition",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_LOG_ENV, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the child process");
    let producer = broker.producer();
    for i in 0..RECORDS_PER_PROCESS {
        producer
            .publish(record("t", Some("same-key"), &format!("parent-{i}"), Vec::new()))
            .await
            .unwrap();
    }
    let status = timeout(PATIENCE * 2, child.wait())
        .await
        .expect("child finishes")
        .unwrap();
    assert!(status.success(), "child failed: {status}");

    let consumer = join(&broker, "g", "t").await;
    let got = messages(&consumer, 2 * RECORDS_PER_PROCESS).await;
    let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..2 * RECORDS_PER_PROCESS as i64).collect::<Vec<_>>());
    let payloads: BTreeSet<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    for i in 0..RECORDS_PER_PROCESS {
        assert!(payloads.contains(&format!("parent-{i}")) && payloads.contains(&format!("child-{i}")));
    }
    // Each process's own records keep their order.
    for who in ["parent", "child"] {
        let mine: Vec<&Message> = got.iter().filter(|m| m.payload.starts_with(who.as_bytes())).collect();
        let numbers: Vec<usize> = mine
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload)[who.len() + 1..].parse().unwrap())
            .collect();
        assert_eq!(numbers, (0..RECORDS_PER_PROCESS).collect::<Vec<_>>(), "{who}");
    }
    expect_quiet(&consumer).await;
}

fn delivered(published: &Published, topic: &str, offset: i64) {
    let message = record(topic, None, &format!("at-{offset}"), vec![("h".into(), b"v".to_vec())]);
    published.record(&message, Delivery { partition: 0, offset }, 7);
}

/// The in-memory tail answers only with a run of consecutive offsets from the one
/// asked for: a gap (another process's record, or one not yet acknowledged) ends it,
/// and an offset it lacks is read from the file.
#[test]
fn recent_records_are_served_only_as_a_consecutive_run() {
    let published = Published::default();
    for offset in [3, 4, 5, 7] {
        delivered(&published, "t", offset);
    }
    let offsets = |from, limit| {
        published
            .recent(&tp("t", 0), from, limit)
            .map(|run| run.iter().map(|m| m.offset).collect::<Vec<_>>())
    };
    assert_eq!(offsets(3, 64), Some(vec![3, 4, 5]), "stops before the gap at 6");
    assert_eq!(offsets(4, 1), Some(vec![4]), "at most `limit`");
    assert_eq!(offsets(6, 64), None, "6 is not here");
    assert_eq!(offsets(2, 64), None, "nor is 2");
    assert_eq!(offsets(7, 64), Some(vec![7]));
    assert_eq!(published.recent(&tp("t", 1), 3, 64), None, "another partition");
    assert_eq!(published.end(&tp("t", 0)), Some(8));
    let first = &published.recent(&tp("t", 0), 3, 1).unwrap()[0];
    assert_eq!(
        (first.payload.as_slice(), first.timestamp_ms, first.headers.clone()),
        (&b"at-3"[..], 7, vec![("h".to_string(), b"v".to_vec())])
    );
}

#[test]
fn the_tail_keeps_only_the_latest_records() {
    let published = Published::default();
    let total = TAIL_RECORDS as i64 + 10;
    for offset in 0..total {
        delivered(&published, "t", offset);
    }
    assert_eq!(published.recent(&tp("t", 0), 9, 64), None, "the oldest are gone");
    let run = published.recent(&tp("t", 0), 10, usize::MAX).unwrap();
    assert_eq!(run.len(), TAIL_RECORDS);
    assert_eq!(run.last().unwrap().offset, total - 1);
}

/// Two processes publish into one partition while a consumer of one of them follows
/// it: the records it has in memory and the other's, which only the file has, arrive
/// as one dense, ordered run with the right contents.
#[tokio::test]
async fn a_consumer_following_two_writers_gets_every_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (here, there) = (open(&dir, "here"), open(&dir, "there"));
    here.ensure_topic("t", 1).await.unwrap();
    let consumer = join(&here, "g", "t").await;
    let mut rx = drive(consumer);
    let (mine, theirs) = (here.producer(), there.producer());
    const EACH: usize = 40;
    for i in 0..EACH {
        mine.publish(record("t", Some("k"), &format!("here-{i}"), Vec::new()))
            .await
            .unwrap();
        theirs
            .publish(record("t", Some("k"), &format!("there-{i}"), Vec::new()))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 * EACH {
        got.push(received(&mut rx).await);
    }
    let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..2 * EACH as i64).collect::<Vec<_>>());
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..EACH)
        .flat_map(|i| [format!("here-{i}"), format!("there-{i}")])
        .collect();
    assert_eq!(payloads, expected);
    assert_nothing_received(&mut rx).await;
}

/// A consumer kept busy by this process's records (read from memory) still gets what
/// another process appends to the same file: the poll reads every partition from it.
#[tokio::test]
async fn a_consumer_fed_from_memory_still_sees_another_processs_records() {
    let dir = tempfile::tempdir().unwrap();
    let here = open(&dir, "here");
    let elsewhere = open(&dir, "elsewhere");
    here.ensure_topic("t", 2).await.unwrap();
    let consumer = join(&here, "g", "t").await;
    let payload = |m: Message| String::from_utf8(m.payload).unwrap();
    for round in 0..3 {
        publish(&here, "t", 0, 2, &format!("local-{round}")).await;
        assert_eq!(payload(next_message(&consumer).await), format!("local-{round}"));
        // On the other partition, which this process has not appended to.
        publish(&elsewhere, "t", 1, 2, &format!("remote-{round}")).await;
        assert_eq!(payload(next_message(&consumer).await), format!("remote-{round}"));
    }
    expect_quiet(&consumer).await;
}
