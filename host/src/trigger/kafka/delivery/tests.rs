//! The delivery loop against the embedded log with a stub handler: ordering, retries,
//! dead-lettering and commits, without any WebAssembly in the way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shop_broker::embedded::{EmbeddedBroker, EmbeddedOptions};

use super::*;

/// Payloads: `ok`, `fail:<n>` (fails its first n attempts), `always` (always fails).
#[derive(Default)]
struct StubHandler {
    attempts: Mutex<HashMap<(i32, i64), u32>>,
    handled: Mutex<Vec<Message>>,
}

#[async_trait]
impl MessageHandler for StubHandler {
    async fn handle(&self, message: &Message) -> Result<(), String> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry((message.partition, message.offset)).or_default();
            *n += 1;
            *n
        };
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(!(payload == "panic-once" && attempt == 1), "a host bug in the handler");
        let fail = match payload.split_once(':') {
            Some(("fail", n)) => attempt <= n.parse::<u32>().unwrap(),
            _ => payload == "always",
        };
        if fail {
            return Err(format!("failing on purpose (attempt {attempt})"));
        }
        self.handled.lock().unwrap().push(message.clone());
        Ok(())
    }
}

fn broker(name: &str) -> (Arc<dyn Broker>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("shop-delivery-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("log.db");
    let options = EmbeddedOptions {
        heartbeat_interval: Duration::from_millis(50),
        session_timeout: Duration::from_millis(1500),
        poll_interval: Duration::from_millis(10),
        ..EmbeddedOptions::default()
    };
    (Arc::new(EmbeddedBroker::open(&path, options).unwrap()), path)
}

fn trigger(topic: &str, max_retries: u32) -> KafkaTrigger {
    KafkaTrigger {
        component: "stub".into(),
        topics: vec![topic.into()],
        group: "stub-group".into(),
        max_retries,
        retry_backoff: Duration::from_millis(5),
        dead_letter_topic: None,
        max_in_flight: 3,
        event_types: vec![],
        ordering: MessageOrdering::Partition,
    }
}

async fn publish(broker: &Arc<dyn Broker>, topic: &str, key: &str, payload: &str) {
    broker
        .producer()
        .publish(OutgoingMessage {
            topic: topic.into(),
            key: Some(key.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: vec![("ce_id".into(), format!("{key}/{payload}").into_bytes())],
        })
        .await
        .unwrap();
}

/// Runs the trigger until `done` holds for the handler (or 20 s pass), then stops it.
async fn run_until(
    broker: &Arc<dyn Broker>,
    trigger: KafkaTrigger,
    handler: &Arc<StubHandler>,
    done: impl Fn(&StubHandler) -> bool,
) {
    let (stop, task) = start(broker, trigger, handler.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(handler) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Starts the trigger in the background: stop it by sending `true`, then await it.
fn start(
    broker: &Arc<dyn Broker>,
    trigger: KafkaTrigger,
    handler: Arc<dyn MessageHandler>,
) -> (watch::Sender<bool>, JoinHandle<Result<(), BrokerError>>) {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        trigger,
        broker.clone(),
        handler,
        Arc::new(Metrics::new()),
        stop_rx,
        || {},
    ));
    (stop, task)
}

/// Every record of `topic` from the start, read by a fresh group.
async fn read_all(broker: &Arc<dyn Broker>, topic: &str, expected: usize) -> Vec<Message> {
    let consumer = broker
        .consumer(&format!("reader-{topic}"), &[topic.to_string()])
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < expected && Instant::now() < deadline {
        if let Ok(Ok(ConsumerEvent::Message(m))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next_event()).await
        {
            out.push(m);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_are_handled_once_in_order_per_key() {
    for ordering in [MessageOrdering::Partition, MessageOrdering::Key] {
        handled_once_in_order_per_key(ordering).await;
    }
}

async fn handled_once_in_order_per_key(ordering: MessageOrdering) {
    let (broker, _) = broker(&format!("order-{ordering:?}"));
    let topic = "orders";
    let trigger = |topic| KafkaTrigger {
        ordering,
        ..trigger(topic, 3)
    };
    broker.ensure_topic(topic, 3).await.unwrap();
    for seq in 0..300 {
        publish(&broker, topic, &format!("key-{}", seq % 7), &format!("ok:{seq}")).await;
    }
    let handler = Arc::new(StubHandler::default());
    run_until(&broker, trigger(topic), &handler, |h| {
        h.handled.lock().unwrap().len() >= 300
    })
    .await;
    let handled = handler.handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 300, "{ordering:?}: each message exactly once");
    let mut per_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for m in &handled {
        let seq = String::from_utf8_lossy(&m.payload)[3..].parse().unwrap();
        per_key.entry(m.key.clone().unwrap()).or_default().push(seq);
    }
    for (key, seqs) in per_key {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key:?} out of order: {seqs:?}");
    }
    let partitions: std::collections::BTreeSet<i32> = handled.iter().map(|m| m.partition).collect();
    assert_eq!(partitions.len(), 3, "the keys spread over all partitions");

    // Everything was committed: a second run of the same group handles nothing.
    let again = Arc::new(StubHandler::default());
    let started = Instant::now();
    run_until(&broker, trigger(topic), &again, |_| {
        started.elapsed() >= Duration::from_millis(800)
    })
    .await;
    assert!(again.handled.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_and_the_partition_moves_on() {
    let (broker, _) = broker("retry");
    let topic = "payments";
    broker.ensure_topic(topic, 1).await.unwrap();
    publish(&broker, topic, "a", "fail:2").await;
    publish(&broker, topic, "a", "always").await;
    publish(&broker, topic, "a", "ok").await;
    let handler = Arc::new(StubHandler::default());
    run_until(&broker, trigger(topic, 3), &handler, |h| {
        h.handled.lock().unwrap().len() >= 2
    })
    .await;

    let handled: Vec<String> = handler
        .handled
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        handled,
        ["fail:2", "ok"],
        "handled once each, in order, after the poison one"
    );
    let attempts = handler.attempts.lock().unwrap().clone();
    assert_eq!(attempts[&(0, 0)], 3, "two failures, then success");
    assert_eq!(attempts[&(0, 1)], 4, "first attempt plus max_retries");

    let dead = read_all(&broker, "payments.dlq", 1).await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(dead[0].payload, b"always");
    assert_eq!(dead[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(header("x-attempts").as_deref(), Some("4"));
    assert_eq!(header("x-original-topic").as_deref(), Some("payments"));
    assert_eq!(header("x-original-partition").as_deref(), Some("0"));
    assert_eq!(header("x-original-offset").as_deref(), Some("1"));
    assert!(header("x-error").unwrap().contains("failing on purpose"));
    assert_eq!(
        header("ce_id").as_deref(),
        Some("a/always"),
        "original headers are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_retry_commits_nothing_unhandled() {
    let (broker, path) = broker("stop");
    let topic = "slow";
    broker.ensure_topic(topic, 1).await.unwrap();
    publish(&broker, topic, "k", "ok").await;
    publish(&broker, topic, "k", "fail:1000").await;
    publish(&broker, topic, "k", "ok").await;
    let mut slow = trigger(topic, 1000);
    slow.retry_backoff = Duration::from_millis(50);
    let handler = Arc::new(StubHandler::default());
    run_until(&broker, slow, &handler, |h| {
        h.attempts.lock().unwrap().get(&(0, 1)).copied().unwrap_or(0) >= 3
    })
    .await;
    assert_eq!(
        handler.handled.lock().unwrap().len(),
        1,
        "only the first message finished"
    );

    // A restarted host (new broker handle on the same file) resumes at the failing one.
    drop(broker);
    let reopened: Arc<dyn Broker> = Arc::new(EmbeddedBroker::open(&path, EmbeddedOptions::default()).unwrap());
    let consumer = reopened.consumer("stub-group", &[topic.to_string()]).await.unwrap();
    let first = loop {
        if let ConsumerEvent::Message(m) = consumer.next_event().await.unwrap() {
            break m;
        }
    };
    assert_eq!(first.offset, 1, "the unfinished message was not committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_makes_the_subscription_restart_without_skipping_messages() {
    let (broker, _) = broker("crash");
    let topic = "fragile";
    broker.ensure_topic(topic, 1).await.unwrap();
    publish(&broker, topic, "k", "panic-once").await;
    for _ in 0..300 {
        publish(&broker, topic, "k", "ok").await;
    }
    let handler = Arc::new(StubHandler::default());
    let (_stop, stop_rx) = watch::channel(false);
    let first = run(
        trigger(topic, 3),
        broker.clone(),
        handler.clone() as Arc<dyn MessageHandler>,
        Arc::new(Metrics::new()),
        stop_rx.clone(),
        || {},
    )
    .await;
    assert!(first.is_err(), "the run ends so it can be restarted");
    assert!(
        handler.handled.lock().unwrap().is_empty(),
        "nothing after the crashed message was handled and committed"
    );
    // The restarted subscription resumes at the crashed message and handles everything.
    run_until(&broker, trigger(topic, 3), &handler, |h| {
        h.handled.lock().unwrap().len() >= 301
    })
    .await;
    let offsets: Vec<i64> = handler.handled.lock().unwrap().iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..301).collect::<Vec<_>>());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let base = Duration::from_millis(100);
    assert_eq!(backoff(base, 1), base);
    assert_eq!(backoff(base, 3), Duration::from_millis(400));
    assert_eq!(backoff(base, 40), MAX_BACKOFF);
}

fn typed(ce_type: Option<&str>) -> Message {
    Message {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: vec![],
        timestamp_ms: 0,
        headers: ce_type
            .map(|t| ("ce_type".to_string(), t.as_bytes().to_vec()))
            .into_iter()
            .collect(),
    }
}

#[test]
fn event_types_pick_messages_by_ce_type() {
    let all: Vec<String> = vec![];
    assert!(wanted(&all, &typed(Some("a"))), "no list: every message");
    let some = vec!["a".to_string()];
    assert!(wanted(&some, &typed(Some("a"))));
    assert!(!wanted(&some, &typed(Some("b"))));
    assert!(wanted(&some, &typed(None)), "untyped messages reach the component");
}

/// The embedded log, except that the first consumer it hands out is already closed,
/// as when a consumer task dies under the trigger.
struct FirstConsumerDies {
    inner: Arc<dyn Broker>,
    handed_out: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Broker for FirstConsumerDies {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn producer(&self) -> Arc<dyn Producer> {
        self.inner.producer()
    }
    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Arc<dyn Consumer>, BrokerError> {
        let consumer = self.inner.consumer(group, topics).await?;
        if self.handed_out.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            consumer.close().await;
        }
        Ok(consumer)
    }
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        self.inner.ensure_topic(topic, partitions).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_whose_consumer_dies_is_started_again_and_not_ready_meanwhile() {
    let (inner, _) = broker("supervise");
    let topic = "supervised";
    inner.ensure_topic(topic, 1).await.unwrap();
    publish(&inner, topic, "k", "ok").await;
    let broker: Arc<dyn Broker> = Arc::new(FirstConsumerDies {
        inner,
        handed_out: Default::default(),
    });
    let handler = Arc::new(StubHandler::default());
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    readiness.set(true);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(supervise(
        trigger(topic, 3),
        broker,
        handler.clone() as Arc<dyn MessageHandler>,
        metrics.clone(),
        readiness.clone(),
        stop_rx,
        Duration::from_millis(300),
    ));
    // The dead consumer's run ends at once; during the backoff the host is not ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.kafka_trigger_restarts.with_label_values(&["stub"]).get() == 0 {
        assert!(Instant::now() < deadline, "the closed consumer was not noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !readiness.is_ready(),
        "not ready while the trigger waits to subscribe again"
    );
    // The second subscription handles the message and makes the host ready again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while handler.handled.lock().unwrap().is_empty() || !readiness.is_ready() {
        assert!(Instant::now() < deadline, "the trigger was not started again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.kafka_trigger_restarts.with_label_values(&["stub"]).get(), 1);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(!readiness.is_ready(), "a stopped trigger holds no subscription");
}

/// The offset committed for `group` on partition 0 of `topic`, read from the log file.
fn committed_offset(log: &std::path::Path, group: &str, topic: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(log).unwrap();
    conn.query_row(
        "SELECT next_offset FROM committed_offsets WHERE group_id = ?1 AND topic = ?2 AND partition_id = 0",
        [group, topic],
        |row| row.get(0),
    )
    .ok()
}

/// Commits wait for company, but not for the trigger to stop: after a trickle of
/// messages the partition goes idle, and what was handled is committed by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_commits_what_it_handled_without_stopping() {
    let (broker, log) = broker("trickle");
    let topic = "trickle";
    broker.ensure_topic(topic, 1).await.unwrap();
    let handler = Arc::new(StubHandler::default());
    let (stop, task) = start(&broker, trigger(topic, 3), handler.clone());
    for seq in 0..10 {
        publish(&broker, topic, "k", &format!("ok:{seq}")).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed_offset(&log, "stub-group", topic) != Some(10) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handler.handled.lock().unwrap().len(), 10);
    assert_eq!(
        committed_offset(&log, "stub-group", topic),
        Some(10),
        "the running trigger committed everything it handled"
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Holds every message whose payload is `hold` until [`HoldingHandler::release`].
#[derive(Default)]
struct HoldingHandler {
    released: tokio::sync::Notify,
    holding: std::sync::atomic::AtomicBool,
    /// Payloads in the order their calls finished.
    finished: Mutex<Vec<String>>,
}

impl HoldingHandler {
    fn release(&self) {
        self.holding.store(false, std::sync::atomic::Ordering::SeqCst);
        self.released.notify_waiters();
    }

    fn finished(&self) -> Vec<String> {
        self.finished.lock().unwrap().clone()
    }
}

#[async_trait]
impl MessageHandler for HoldingHandler {
    async fn handle(&self, message: &Message) -> Result<(), String> {
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        if payload == "hold" {
            self.holding.store(true, std::sync::atomic::Ordering::SeqCst);
            loop {
                let released = self.released.notified();
                if !self.holding.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
        }
        self.finished.lock().unwrap().push(payload);
        Ok(())
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With key ordering a held message holds back only its own key, and the offset
/// committed never passes it: a crash would redeliver it (and what follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_runs_other_keys_past_a_held_message_and_commits_only_before_it() {
    let (broker, log) = broker("by-key");
    let topic = "by-key";
    broker.ensure_topic(topic, 1).await.unwrap();
    for (key, payload) in [("a", "hold"), ("b", "b1"), ("a", "a2"), ("c", "c1"), ("b", "b2")] {
        publish(&broker, topic, key, payload).await;
    }
    let handler = Arc::new(HoldingHandler::default());
    let (stop, task) = start(
        &broker,
        KafkaTrigger {
            ordering: MessageOrdering::Key,
            ..trigger(topic, 3)
        },
        handler.clone(),
    );
    wait_for("the other keys", || handler.finished().len() == 3).await;
    assert_eq!(
        handler.finished(),
        ["b1", "c1", "b2"],
        "a2 waits behind its key's held message"
    );
    // Longer than the commit interval: what finished after the held message is not
    // committed past it.
    tokio::time::sleep(COMMIT_INTERVAL * 2).await;
    assert!(committed_offset(&log, "stub-group", topic).unwrap_or(0) == 0);

    handler.release();
    wait_for("the held key", || handler.finished().len() == 5).await;
    assert_eq!(handler.finished()[3..], ["hold", "a2"]);
    wait_for("the commit", || committed_offset(&log, "stub-group", topic) == Some(5)).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Partition ordering (the default) holds the whole partition behind one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_holds_the_partition_behind_a_held_message() {
    let (broker, log) = broker("by-partition");
    let topic = "by-partition";
    broker.ensure_topic(topic, 1).await.unwrap();
    for (key, payload) in [("a", "hold"), ("b", "b1")] {
        publish(&broker, topic, key, payload).await;
    }
    let handler = Arc::new(HoldingHandler::default());
    let (stop, task) = start(&broker, trigger(topic, 3), handler.clone());
    wait_for("the held message", || {
        handler.holding.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handler.finished().is_empty(), "b1 waits behind the held message");
    handler.release();
    wait_for("both", || handler.finished().len() == 2).await;
    assert_eq!(handler.finished(), ["hold", "b1"]);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(committed_offset(&log, "stub-group", topic), Some(2));
}

/// Stopping with key ordering: the calls in hand finish, the offset committed stops
/// before the oldest message that did not, and the next run handles that message and
/// everything after it again, each key in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_stopped_mid_way_redelivers_from_the_oldest_unfinished_message() {
    let (broker, log) = broker("by-key-stop");
    let topic = "by-key-stop";
    broker.ensure_topic(topic, 1).await.unwrap();
    for (key, payload) in [("a", "ok:a0"), ("b", "fail:3"), ("a", "ok:a1"), ("b", "ok:b1")] {
        publish(&broker, topic, key, payload).await;
    }
    let keyed = |retry_backoff| KafkaTrigger {
        ordering: MessageOrdering::Key,
        retry_backoff,
        ..trigger(topic, 10)
    };
    let offsets = |h: &StubHandler| -> Vec<i64> { h.handled.lock().unwrap().iter().map(|m| m.offset).collect() };
    // Key a finishes; key b's first message is in a long retry backoff when the
    // trigger stops, and its second waits behind it.
    let first = Arc::new(StubHandler::default());
    run_until(&broker, keyed(Duration::from_secs(30)), &first, |h| {
        h.handled.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(offsets(&first), [0, 2]);
    assert_eq!(
        committed_offset(&log, "stub-group", topic),
        Some(1),
        "not past the unfinished offset 1"
    );

    let second = Arc::new(StubHandler::default());
    run_until(&broker, keyed(Duration::from_millis(5)), &second, |h| {
        h.handled.lock().unwrap().len() == 3
    })
    .await;
    let handled = offsets(&second);
    assert_eq!(handled.len(), 3, "{handled:?}");
    assert!(handled.contains(&2), "the finished offset 2 comes again: {handled:?}");
    let position = |offset| handled.iter().position(|o| *o == offset).unwrap();
    assert!(position(1) < position(3), "key b in order: {handled:?}");
    assert_eq!(committed_offset(&log, "stub-group", topic), Some(4));
}
