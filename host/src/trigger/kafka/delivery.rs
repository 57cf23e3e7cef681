//! Delivery semantics of a `[[trigger.kafka]]`, independent of what handles a message:
//!
//! - one worker per assigned partition handles its messages in offset order: all of
//!   them one at a time (`ordering = "partition"`, the default), or one at a time
//!   per key, different keys side by side (`ordering = "key"`); partitions run
//!   concurrently, at most `max_in_flight` handler calls at a time in all;
//! - a partition's offset is committed only past messages whose handler succeeded (or
//!   that were dead-lettered), never past an unfinished one; a finished message's
//!   offset is committed within `COMMIT_INTERVAL` (200 ms) with whatever finished
//!   meanwhile, and at once when the partition is revoked or the trigger stops;
//! - a failure is retried with exponential backoff up to `max_retries`, then the
//!   message is published to the dead-letter topic with `x-error`, `x-attempts` and
//!   `x-original-{topic,partition,offset}` headers; only after that publish succeeded
//!   is it committed, so nothing is dropped;
//! - on revocation or shutdown a worker finishes the handler calls in hand, commits
//!   what it finished and stops; a message it did not finish is not committed and is
//!   redelivered to whichever member gets the partition next (with key ordering, so
//!   are the later messages of its partition that finished: handlers are idempotent);
//! - a subscription that fails (it cannot join, its consumer closes or a worker
//!   crashes) is started again with backoff, counted and logged as an error, and
//!   the host reports not ready on `/readyz` until it is subscribed again.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use shop_broker::{Broker, BrokerError, Consumer, ConsumerEvent, Message, OutgoingMessage, Producer, TopicPartition};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::Readiness;
use crate::manifest::{KafkaTrigger, MessageOrdering};
use crate::metrics::Metrics;

/// Messages read ahead per partition before the consumer waits for the worker.
const QUEUE_DEPTH: usize = 256;
/// Longest a finished message waits for its offset to be committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Ceiling of the exponential retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What handles one message: a component instance in production, a stub in tests.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// `Err` explains the failure (returned error, trap, timeout) for logs and the
    /// dead-letter headers.
    async fn handle(&self, message: &Message) -> Result<(), String>;
}

/// Everything the workers of one subscription share.
struct Shared {
    trigger: KafkaTrigger,
    handler: Arc<dyn MessageHandler>,
    consumer: Arc<dyn Consumer>,
    producer: Arc<dyn Producer>,
    metrics: Arc<Metrics>,
    in_flight: Semaphore,
}

/// How a worker left a message.
enum Outcome {
    /// Handled or dead-lettered: its offset may be committed.
    Done,
    /// Stopped before either (shutdown or revocation): must not be committed.
    Abandoned,
}

/// Keeps `trigger` subscribed until `stop` turns true: runs it, and whenever a run
/// fails starts it again after `first_backoff`, doubled for each failure in a row
/// (a run that got subscribed starts the count over). `readiness` knows whether it
/// holds a subscription.
pub async fn supervise(
    trigger: KafkaTrigger,
    broker: Arc<dyn Broker>,
    handler: Arc<dyn MessageHandler>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
    first_backoff: Duration,
) {
    let component = trigger.component.clone();
    // One component may have several triggers: each is known by its group too.
    let name = format!("{component} (group {})", trigger.group);
    readiness.set_subscribed(&name, false);
    let mut failures = 0;
    loop {
        let subscribed = std::sync::atomic::AtomicBool::new(false);
        let on_subscribed = || {
            subscribed.store(true, std::sync::atomic::Ordering::SeqCst);
            readiness.set_subscribed(&name, true);
        };
        let outcome = run(
            trigger.clone(),
            broker.clone(),
            handler.clone(),
            metrics.clone(),
            stop.clone(),
            on_subscribed,
        )
        .await;
        readiness.set_subscribed(&name, false);
        let error = match outcome {
            Ok(()) => return,
            Err(e) if *stop.borrow() => {
                tracing::debug!(component = %component, error = %e, "kafka trigger ended while stopping");
                return;
            }
            Err(e) => e,
        };
        failures = match subscribed.into_inner() {
            true => 1,
            false => failures + 1,
        };
        let pause = backoff(first_backoff, failures);
        metrics.kafka_trigger_restarts.with_label_values(&[&*component]).inc();
        tracing::error!(
            component = %component, group = %trigger.group, error = %error, retry_in = ?pause,
            "kafka trigger failed; starting it again"
        );
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Consumes the trigger's topics in its group until `stop` turns true, then commits
/// what was finished and leaves the group.
pub async fn run(
    trigger: KafkaTrigger,
    broker: Arc<dyn Broker>,
    handler: Arc<dyn MessageHandler>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    on_subscribed: impl FnOnce() + Send,
) -> Result<(), BrokerError> {
    let consumer = broker.consumer(&trigger.group, &trigger.topics).await?;
    on_subscribed();
    tracing::info!(
        component = %trigger.component,
        group = %trigger.group,
        topics = ?trigger.topics,
        broker = broker.kind(),
        "kafka trigger subscribed"
    );
    let shared = Arc::new(Shared {
        in_flight: Semaphore::new(trigger.max_in_flight),
        trigger,
        handler,
        consumer: consumer.clone(),
        producer: broker.producer(),
        metrics,
    });
    let mut workers: HashMap<TopicPartition, Worker> = HashMap::new();
    let mut outcome = Ok(());
    loop {
        let event = tokio::select! {
            _ = stopped(&mut stop) => break,
            event = consumer.next_event() => event,
        };
        match event {
            Ok(ConsumerEvent::Message(message)) => {
                let partition = message.topic_partition();
                let worker = workers
                    .entry(partition.clone())
                    .or_insert_with(|| Worker::spawn(shared.clone(), partition.clone()));
                // A full queue holds the consumer back: that is the back-pressure.
                let sent = tokio::select! {
                    _ = stopped(&mut stop) => break,
                    sent = worker.queue.send(message) => sent,
                };
                if sent.is_err() {
                    // The worker died (a host bug, e.g. a panic) with messages queued that
                    // were never committed. Carrying on would commit past them; instead
                    // leave the group so the subscription restarts from the last commit.
                    tracing::error!(%partition, "partition worker ended unexpectedly; resubscribing");
                    outcome = Err(BrokerError::Unavailable(format!("the worker of {partition} crashed")));
                    break;
                }
            }
            Ok(ConsumerEvent::Revoked { partitions, done }) => {
                let stopping = partitions.iter().filter_map(|p| workers.remove(p)).map(Worker::stop);
                futures::future::join_all(stopping).await;
                tracing::info!(partitions = ?partitions, "partitions revoked; finished work committed");
                let _ = done.send(());
            }
            Err(BrokerError::Closed) => {
                // Nobody asked (a stop is seen above): the consumer died under us.
                outcome = Err(BrokerError::Closed);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, group = %shared.trigger.group, "consumer error; retrying in 1s");
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    futures::future::join_all(workers.into_values().map(Worker::stop)).await;
    shop_broker::leave_group(consumer.as_ref()).await;
    tracing::info!(group = %shared.trigger.group, "kafka trigger stopped");
    outcome
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The task handling one partition, and how to reach it.
struct Worker {
    queue: mpsc::Sender<Message>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    fn spawn(shared: Arc<Shared>, partition: TopicPartition) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stop_receiver) = watch::channel(false);
        let task = tokio::spawn(work_partition(shared, partition, receiver, stop_receiver));
        Worker { queue, stop, task }
    }

    /// Finishes the message in hand, commits, and ends the task.
    async fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.queue);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "partition worker panicked");
        }
    }
}

/// A partition's messages from its queue to its handler calls: each message starts
/// once the one before it in its lane finished (see [`Lanes`]); the committed offset
/// follows the oldest message not finished yet.
async fn work_partition(
    shared: Arc<Shared>,
    partition: TopicPartition,
    mut queue: mpsc::Receiver<Message>,
    mut stop: watch::Receiver<bool>,
) {
    let trigger = &shared.trigger;
    let mut lanes = Lanes::new(trigger.ordering);
    let mut running = FuturesUnordered::new();
    let mut uncommitted: Option<i64> = None;
    // When the oldest finished message not yet committed must be: commits wait up to
    // COMMIT_INTERVAL, idle or busy, so a steady trickle of messages costs a few
    // commits a second instead of one each. A crash in between redelivers at most
    // that much, which handlers skip as already handled (their inbox).
    let mut commit_due: Option<Instant> = None;
    let lag = shared
        .metrics
        .track_lag(&trigger.component, &trigger.group, &partition, &shared.consumer);
    let calls_stop = stop.clone();
    let start = |message: Message| {
        let (shared, mut stop) = (shared.clone(), calls_stop.clone());
        async move {
            let outcome = deliver(&shared, &message, &mut stop).await;
            (message, outcome)
        }
        .boxed()
    };
    loop {
        // Read ahead no further than the queue holds.
        let room = lanes.unfinished() < QUEUE_DEPTH;
        let event = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(finished) = running.next(), if !running.is_empty() => Event::Finished(finished),
            message = queue.recv(), if room => match message {
                Some(message) => Event::Received(message),
                None => break,
            },
            () = sleep_until(commit_due) => Event::CommitDue,
        };
        match event {
            Event::Received(message) => running.extend(lanes.receive(message).map(start)),
            Event::Finished((message, Outcome::Done)) => {
                let (next, advanced) = lanes.finish(&message);
                running.extend(next.map(start));
                if let Some(offset) = advanced {
                    uncommitted = Some(offset);
                    commit_due.get_or_insert_with(|| Instant::now() + COMMIT_INTERVAL);
                    // Everything before the oldest unfinished message is handled.
                    lag.position.store(offset, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // Told to stop during a retry: it stays unfinished, so uncommitted.
            Event::Finished((_, Outcome::Abandoned)) => break,
            Event::CommitDue => {}
        }
        if commit_due.is_some_and(|due| Instant::now() >= due) {
            commit(&shared, &partition, uncommitted.take()).await;
            commit_due = None;
        }
    }
    // The calls in hand finish (one in a retry backoff ends at the stop); a message
    // waiting behind one does not start, so it stays uncommitted.
    while let Some((message, outcome)) = running.next().await {
        if let Outcome::Done = outcome
            && let (_, Some(offset)) = lanes.finish(&message)
        {
            uncommitted = Some(offset);
        }
    }
    commit(&shared, &partition, uncommitted).await;
}

enum Event {
    Received(Message),
    Finished((Message, Outcome)),
    CommitDue,
}

/// The messages of one partition between its queue and their commit. A lane's
/// messages run one at a time in offset order: with partition ordering the whole
/// partition is one lane, with key ordering each key is one (and keyless messages
/// share one).
struct Lanes {
    ordering: MessageOrdering,
    /// Offsets received and not finished (running or waiting).
    unfinished: BTreeSet<i64>,
    /// Per lane with a running message, the messages waiting behind it, oldest first.
    waiting: HashMap<Option<Vec<u8>>, VecDeque<Message>>,
    /// The offset after the newest message received.
    next_offset: Option<i64>,
}

impl Lanes {
    fn new(ordering: MessageOrdering) -> Self {
        Lanes {
            ordering,
            unfinished: BTreeSet::new(),
            waiting: HashMap::new(),
            next_offset: None,
        }
    }

    fn lane(&self, message: &Message) -> Option<Vec<u8>> {
        match self.ordering {
            MessageOrdering::Partition => None,
            MessageOrdering::Key => message.key.clone(),
        }
    }

    fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// Takes in the partition's next message; returns it when it may start now (its
    /// lane was idle).
    fn receive(&mut self, message: Message) -> Option<Message> {
        self.unfinished.insert(message.offset);
        self.next_offset = Some(message.offset + 1);
        match self.waiting.entry(self.lane(&message)) {
            Entry::Occupied(mut behind) => {
                behind.get_mut().push_back(message);
                None
            }
            Entry::Vacant(idle) => {
                idle.insert(VecDeque::new());
                Some(message)
            }
        }
    }

    /// Marks a running message finished. Returns the next message of its lane, to
    /// start now, and the offset to commit if finishing it moved that forward.
    fn finish(&mut self, message: &Message) -> (Option<Message>, Option<i64>) {
        let before = self.committable();
        self.unfinished.remove(&message.offset);
        let after = self.committable();
        let lane = self.lane(message);
        let next = match self.waiting.get_mut(&lane) {
            Some(behind) => behind.pop_front(),
            None => None,
        };
        if next.is_none() {
            self.waiting.remove(&lane);
        }
        (next, (after > before).then_some(after))
    }

    /// The offset to commit: the oldest unfinished message's, or the one after the
    /// newest received when all finished (0 before any arrived).
    fn committable(&self) -> i64 {
        self.unfinished.first().copied().or(self.next_offset).unwrap_or(0)
    }
}

/// Resolves at `due`, or never without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

async fn commit(shared: &Shared, partition: &TopicPartition, next_offset: Option<i64>) {
    let Some(next_offset) = next_offset else { return };
    if let Err(e) = shared.consumer.commit(partition, next_offset).await {
        // The partition may have moved on; the new owner redelivers from its last
        // commit, so this is a duplicate at worst, never a loss.
        tracing::warn!(%partition, next_offset, error = %e, "offset commit failed");
    }
}

/// Runs the handler until it succeeds, the retries run out (then dead-letters), or
/// the worker is told to stop.
async fn deliver(shared: &Shared, message: &Message, stop: &mut watch::Receiver<bool>) -> Outcome {
    let trigger = &shared.trigger;
    if !wanted(&trigger.event_types, message) {
        shared
            .metrics
            .messages_filtered
            .with_label_values(&[trigger.component.as_str(), message.topic.as_str()])
            .inc();
        return Outcome::Done;
    }
    let partition = message.partition.to_string();
    let labels = [trigger.component.as_str(), message.topic.as_str(), partition.as_str()];
    let mut attempt: u32 = 1;
    loop {
        let result = {
            let _permit = shared.in_flight.acquire().await.expect("semaphore is never closed");
            let started = Instant::now();
            let result = shared.handler.handle(message).await;
            shared
                .metrics
                .message_handler_duration
                .with_label_values(&[trigger.component.as_str(), message.topic.as_str()])
                .observe(started.elapsed().as_secs_f64());
            result
        };
        let error = match result {
            Ok(()) => {
                shared.metrics.messages_handled.with_label_values(&labels).inc();
                return Outcome::Done;
            }
            Err(error) => error,
        };
        shared.metrics.messages_failed.with_label_values(&labels).inc();
        tracing::warn!(
            component = %trigger.component, topic = %message.topic, partition = message.partition,
            offset = message.offset, attempt, error = %error, "message handler failed"
        );
        if attempt > trigger.max_retries {
            return dead_letter(shared, message, &error, attempt, stop).await;
        }
        shared.metrics.messages_retried.with_label_values(&labels).inc();
        let backoff = backoff(trigger.retry_backoff, attempt);
        tokio::select! {
            _ = stopped(stop) => return Outcome::Abandoned,
            _ = tokio::time::sleep(backoff) => {}
        }
        attempt += 1;
    }
}

/// Whether a trigger's `event_types` let `message` through to the component: all when
/// empty, and always a message without a `ce_type` header (the component decides what
/// to make of it, e.g. dead-letter it). The others are committed without a call.
fn wanted(event_types: &[String], message: &Message) -> bool {
    if event_types.is_empty() {
        return true;
    }
    match message.headers.iter().find(|(name, _)| name == "ce_type") {
        Some((_, value)) => std::str::from_utf8(value).is_ok_and(|t| event_types.iter().any(|e| e == t)),
        None => true,
    }
}

/// `base`, doubled for each retry after the first, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << (attempt - 1).min(20)).min(MAX_BACKOFF)
}

/// The dead-letter record: the original key, payload and headers plus why it failed.
pub fn dead_letter_record(dead_letter_topic: String, message: &Message, error: &str, attempts: u32) -> OutgoingMessage {
    let mut headers = message.headers.clone();
    headers.extend([
        ("x-error".to_string(), error.as_bytes().to_vec()),
        ("x-attempts".to_string(), attempts.to_string().into_bytes()),
        ("x-original-topic".to_string(), message.topic.clone().into_bytes()),
        (
            "x-original-partition".to_string(),
            message.partition.to_string().into_bytes(),
        ),
        ("x-original-offset".to_string(), message.offset.to_string().into_bytes()),
    ]);
    OutgoingMessage {
        topic: dead_letter_topic,
        key: message.key.clone(),
        payload: message.payload.clone(),
        headers,
    }
}

/// Publishes to the dead-letter topic, retrying the publish itself until it succeeds
/// or the worker stops (then the message stays uncommitted and comes back later).
async fn dead_letter(
    shared: &Shared,
    message: &Message,
    error: &str,
    attempts: u32,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let trigger = &shared.trigger;
    let topic = trigger.dead_letter_topic_for(&message.topic);
    let record = dead_letter_record(topic.clone(), message, error, attempts);
    let mut publish_attempt = 1;
    loop {
        match shared.producer.publish(record.clone()).await {
            Ok(delivery) => {
                let partition = message.partition.to_string();
                shared
                    .metrics
                    .messages_dead_lettered
                    .with_label_values(&[trigger.component.as_str(), message.topic.as_str(), partition.as_str()])
                    .inc();
                tracing::error!(
                    component = %trigger.component, topic = %message.topic, partition = message.partition,
                    offset = message.offset, attempts, dead_letter_topic = %topic,
                    dead_letter_offset = delivery.offset, error, "message dead-lettered"
                );
                return Outcome::Done;
            }
            Err(e) => {
                tracing::error!(dead_letter_topic = %topic, error = %e, "dead-letter publish failed; retrying");
                tokio::select! {
                    _ = stopped(stop) => return Outcome::Abandoned,
                    _ = tokio::time::sleep(backoff(trigger.retry_backoff.max(Duration::from_millis(100)), publish_attempt)) => {}
                }
                publish_attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
