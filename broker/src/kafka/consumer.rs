//! A consumer-group member on Kafka.
//!
//! Threading: librdkafka runs rebalance callbacks on whichever thread polls the
//! consumer, and the revoke callback must block until the trigger has finished with the
//! partitions. So the consumer is polled by a dedicated std thread, never by a tokio
//! task: the poll thread converts records into owned [`Message`]s and queues them in
//! [`Shared`]; [`KafkaConsumer::next_event`] only takes from that queue, so the async
//! side never waits on librdkafka and is cancel-safe.
//!
//! Revoke handshake: on a revoke, the poll thread (inside `poll`, in the context's
//! `pre_rebalance`) drops the queued records of the revoked partitions, queues
//! [`ConsumerEvent::Revoked`] ahead of any remaining records, and parks until the trigger
//! sends or drops `done` (at most [`REVOKE_TIMEOUT`]). Only then does librdkafka unassign
//! the partitions and rejoin, so no other member starts them before the trigger's
//! commits. Commits run on the blocking pool (`CommitMode::Sync`), not on the poll
//! thread, so the trigger can commit while the poll thread waits in the handshake.
//!
//! Flow control: when the trigger falls behind, the poll thread pauses fetching of the
//! assigned partitions instead of blocking, so it keeps serving rebalances.

use std::collections::{BTreeSet, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, oneshot, watch};

use super::kafka_error;
use crate::{BrokerError, Consumer, ConsumerEvent, Message, TopicPartition};

/// Longest wait for the trigger's `done` before the partitions are released anyway.
pub(super) const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one poll blocks; bounds how late the poll thread notices `close` or a drained
/// queue.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Queued records at which fetching is paused, and below which it resumes.
const PAUSE_AT: usize = 512;
const RESUME_AT: usize = 128;

type Client = BaseConsumer<MemberContext>;

pub struct KafkaConsumer {
    shared: Arc<Shared>,
    /// The poll thread owns the librdkafka consumer; commits borrow it while it lives.
    client: Weak<Client>,
}

struct Shared {
    group: String,
    /// This consumer's `client.id`, for logs.
    member: String,
    state: Mutex<State>,
    /// A record or event was queued, or the consumer closed.
    changed: Notify,
    close_requested: AtomicBool,
    /// The `KafkaConsumer` was dropped: nobody answers revokes any more.
    abandoned: AtomicBool,
    /// The assignment changed since the poll thread last looked (re-apply a pause).
    assignment_changed: AtomicBool,
    /// Set once the poll thread has left the group and ended.
    closed: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    /// `Revoked` events first, then records in poll order.
    queue: VecDeque<ConsumerEvent>,
    /// Records in `queue`.
    records: usize,
    closed: bool,
}

impl State {
    fn push_record(&mut self, message: Message) {
        self.queue.push_back(ConsumerEvent::Message(message));
        self.records += 1;
    }

    /// Drops queued records of `partitions` and queues `Revoked` after earlier revokes but
    /// ahead of every record.
    fn revoke(&mut self, partitions: &BTreeSet<TopicPartition>, done: oneshot::Sender<()>) {
        self.queue.retain(|event| match event {
            ConsumerEvent::Message(m) => !partitions.contains(&m.topic_partition()),
            ConsumerEvent::Revoked { .. } => true,
        });
        self.records = self
            .queue
            .iter()
            .filter(|event| matches!(event, ConsumerEvent::Message(_)))
            .count();
        let at = self
            .queue
            .iter()
            .position(|event| matches!(event, ConsumerEvent::Message(_)))
            .unwrap_or(self.queue.len());
        self.queue.insert(
            at,
            ConsumerEvent::Revoked {
                partitions: partitions.iter().cloned().collect(),
                done,
            },
        );
    }

    fn pop(&mut self) -> Option<ConsumerEvent> {
        let event = self.queue.pop_front()?;
        if matches!(event, ConsumerEvent::Message(_)) {
            self.records -= 1;
        }
        Some(event)
    }
}

impl KafkaConsumer {
    /// Creates the librdkafka consumer, subscribes it and starts its poll thread. The
    /// group join itself happens in the background.
    pub(super) fn start(
        config: &ClientConfig,
        group: &str,
        member: &str,
        topics: &[String],
    ) -> Result<Arc<Self>, BrokerError> {
        let shared = Arc::new(Shared {
            group: group.to_string(),
            member: member.to_string(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            close_requested: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            assignment_changed: AtomicBool::new(false),
            closed: watch::Sender::new(false),
        });
        let context = MemberContext {
            shared: Arc::clone(&shared),
        };
        let client = Arc::new(
            Client::from_config_and_context(config, context)
                .map_err(|e| BrokerError::Rejected(format!("invalid Kafka consumer settings: {e}")))?,
        );
        let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
        client
            .subscribe(&topic_names)
            .map_err(|e| kafka_error(&format!("subscribing group {group:?} to {topics:?}"), &e))?;

        let weak = Arc::downgrade(&client);
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || poll_loop(client, thread_shared))
            .map_err(|e| BrokerError::Unavailable(format!("cannot start the Kafka consumer thread: {e}")))?;
        tracing::info!(group, member, ?topics, "Kafka consumer joining its group");
        Ok(Arc::new(KafkaConsumer { shared, client: weak }))
    }
}

impl Drop for KafkaConsumer {
    /// Dropping without `close` still leaves the group, without waiting for revokes
    /// nobody will answer.
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
        self.shared.close_requested.store(true, Ordering::SeqCst);
        // Dropping pending `done` senders releases a poll thread waiting in a handshake.
        let queue = std::mem::take(&mut self.shared.state().queue);
        drop(queue);
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    /// Cancel-safe: only takes from the in-memory queue, in a synchronous section.
    async fn next_event(&self) -> Result<ConsumerEvent, BrokerError> {
        loop {
            // Register before looking, so a record queued in between is not missed.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            {
                let mut state = self.shared.state();
                if let Some(event) = state.pop() {
                    return Ok(event);
                }
                if state.closed {
                    return Err(BrokerError::Closed);
                }
            }
            changed.await;
        }
    }

    async fn commit(&self, partition: &TopicPartition, next_offset: i64) -> Result<(), BrokerError> {
        if next_offset < 0 {
            return Err(BrokerError::Rejected(format!(
                "cannot commit negative offset {next_offset} for {partition}"
            )));
        }
        if self.shared.state().closed {
            return Err(BrokerError::Closed);
        }
        let client = self.client.clone();
        let tp = partition.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let Some(client) = client.upgrade() else {
                return Err(BrokerError::Closed);
            };
            let mut offsets = TopicPartitionList::with_capacity(1);
            offsets
                .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next_offset))
                .map_err(|e| kafka_error(&format!("committing {tp}"), &e))?;
            client
                .commit(&offsets, CommitMode::Sync)
                .map_err(|e| kafka_error(&format!("committing offset {next_offset} of {tp}"), &e))
        })
        .await;
        committed.unwrap_or_else(|e| Err(BrokerError::Unavailable(format!("Kafka commit task failed: {e}"))))
    }

    /// Leaves the group: revokes everything through the usual handshake, then stops the
    /// poll thread. The trigger must keep calling `next_event` until it returns
    /// [`BrokerError::Closed`] (or answer within [`REVOKE_TIMEOUT`]).
    /// librdkafka's cached watermark from the last fetch response (no request; the
    /// Rust wrapper only offers the round-trip query).
    fn high_watermark(&self, partition: &TopicPartition) -> Option<i64> {
        let client = self.client.upgrade()?;
        let topic = std::ffi::CString::new(partition.topic.as_str()).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client is alive (we hold an Arc), `topic` is a NUL-terminated
        // string that outlives the call, and the two out-pointers are valid i64s.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                client.client().native_ptr(),
                topic.as_ptr(),
                partition.partition,
                &mut low,
                &mut high,
            )
        };
        (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
    }

    async fn close(&self) {
        self.shared.close_requested.store(true, Ordering::SeqCst);
        let mut closed = self.shared.closed.subscribe();
        // An error means the poll thread is gone, which also means closed.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// Marks the consumer closed when the poll thread ends, even by panic.
struct MarkClosedOnExit(Arc<Shared>);

impl Drop for MarkClosedOnExit {
    fn drop(&mut self) {
        self.0.state().closed = true;
        self.0.changed.notify_waiters();
        self.0.closed.send_replace(true);
    }
}

fn poll_loop(client: Arc<Client>, shared: Arc<Shared>) {
    let _mark_closed = MarkClosedOnExit(Arc::clone(&shared));
    // Everything logged on this thread, rebalance callbacks included, names the member.
    let _span = tracing::info_span!("kafka_consumer", group = %shared.group, member = %shared.member).entered();
    let mut closing = false;
    let mut paused = false;
    loop {
        if !closing && shared.close_requested.load(Ordering::SeqCst) {
            closing = true;
            tracing::info!("Kafka consumer leaving its group");
            // Revokes everything (the handshake runs in a later `poll`, while this thread
            // still holds the client so commits work) and leaves the group.
            client.unsubscribe();
        }

        match client.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(record)) => {
                let message = owned_message(&record);
                drop(record);
                shared.state().push_record(message);
                shared.changed.notify_waiters();
            }
            // librdkafka retries by itself (reconnects, coordinator moves); these are
            // reports, not the end of the consumer.
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
        }
        if closing && client.assignment().map_or(true, |assignment| assignment.count() == 0) {
            break;
        }

        let records = shared.state().records;
        let reassigned = shared.assignment_changed.swap(false, Ordering::SeqCst);
        let want_paused = records >= if paused { RESUME_AT } else { PAUSE_AT };
        if want_paused && (!paused || reassigned) {
            // Newly assigned partitions start unpaused: pause the whole assignment again.
            paused = set_paused(&client, true) || paused;
        } else if !want_paused && paused {
            paused = !set_paused(&client, false);
        }
    }
    // Closes and destroys the librdkafka consumer (rdkafka's `Drop` polls until the close
    // is complete) here, on this thread, unless a commit still holds it (then the
    // commit's blocking thread does).
    drop(client);
    tracing::info!("Kafka consumer closed");
}

/// Pauses or resumes fetching of the whole assignment; true when it took effect.
fn set_paused(client: &Client, pause: bool) -> bool {
    let result = client.assignment().and_then(|assignment| {
        if pause {
            client.pause(&assignment)
        } else {
            client.resume(&assignment)
        }
    });
    match result {
        Ok(()) => {
            tracing::debug!(pause, "Kafka consumer flow control");
            true
        }
        Err(e) => {
            tracing::warn!(pause, error = %e, "Kafka consumer could not pause/resume fetching");
            false
        }
    }
}

fn owned_message(record: &BorrowedMessage<'_>) -> Message {
    let headers = record
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: record.topic().to_string(),
        partition: record.partition(),
        offset: record.offset(),
        key: record.key().map(<[u8]>::to_vec),
        payload: record.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: record.timestamp().to_millis().unwrap_or(0),
        headers,
    }
}

/// The librdkafka callbacks of one member; they run on its poll thread.
struct MemberContext {
    shared: Arc<Shared>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, client: &Client, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions: BTreeSet<TopicPartition> = partitions_of(list).collect();
                if partitions.is_empty() {
                    return;
                }
                let lost = client.assignment_lost();
                let (done, done_rx) = oneshot::channel();
                {
                    // Checked under the lock `Drop` empties the queue with, so a revoke
                    // queued here is either seen by nobody and dropped there, or skipped.
                    let mut state = self.shared.state();
                    if self.shared.abandoned.load(Ordering::SeqCst) {
                        tracing::info!(partitions = %names(&partitions), "Kafka partitions revoked (consumer dropped)");
                        return;
                    }
                    state.revoke(&partitions, done);
                }
                self.shared.changed.notify_waiters();
                if lost {
                    // Already given to another member: nothing to wait for. The trigger
                    // still hears about it so it drops in-flight work.
                    tracing::warn!(partitions = %names(&partitions), "Kafka partitions lost (session expired)");
                    return;
                }
                tracing::info!(partitions = %names(&partitions), "Kafka partitions revoked; waiting for the trigger");
                let started = Instant::now();
                if wait_for_done(done_rx, REVOKE_TIMEOUT) {
                    tracing::debug!(elapsed = ?started.elapsed(), "Kafka revoke acknowledged");
                } else {
                    tracing::warn!(partitions = %names(&partitions), timeout = ?REVOKE_TIMEOUT,
                        "the trigger did not finish with revoked Kafka partitions in time; releasing them anyway");
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance error"),
        }
    }

    fn post_rebalance(&self, _client: &Client, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<TopicPartition> = partitions_of(list).collect();
            tracing::info!(partitions = %names(&partitions), "Kafka partitions assigned");
            self.shared.assignment_changed.store(true, Ordering::SeqCst);
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> impl Iterator<Item = TopicPartition> {
    list.elements()
        .into_iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
}

/// `t[0], t[1]` for logs.
fn names<'a>(partitions: impl IntoIterator<Item = &'a TopicPartition>) -> String {
    partitions
        .into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Blocks this (non-async) thread until `done` is sent or dropped, or `timeout` passes;
/// true unless it timed out.
fn wait_for_done(done: oneshot::Receiver<()>, timeout: Duration) -> bool {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut done = pin!(done);
    let deadline = Instant::now() + timeout;
    loop {
        // Sent and dropped both mean the trigger is finished with the partitions.
        if done.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> Message {
        Message {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: Vec::new(),
            timestamp_ms: 0,
            headers: Vec::new(),
        }
    }

    #[test]
    fn revoke_drops_queued_records_of_revoked_partitions_and_goes_first() {
        let mut state = State::default();
        state.push_record(record("t", 0, 0));
        state.push_record(record("t", 1, 0));
        state.push_record(record("t", 0, 1));
        state.push_record(record("u", 0, 0));
        let (done, _rx) = oneshot::channel();
        state.revoke(&BTreeSet::from([TopicPartition::new("t", 0)]), done);
        assert_eq!(state.records, 2);
        match state.pop() {
            Some(ConsumerEvent::Revoked { partitions, .. }) => {
                assert_eq!(partitions, vec![TopicPartition::new("t", 0)])
            }
            other => panic!("expected Revoked first, got {other:?}"),
        }
        let rest: Vec<_> = std::iter::from_fn(|| state.pop())
            .map(|event| match event {
                ConsumerEvent::Message(m) => m.topic_partition(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(rest, vec![TopicPartition::new("t", 1), TopicPartition::new("u", 0)]);
        assert_eq!(state.records, 0);
    }

    #[test]
    fn later_revoke_queues_behind_an_unanswered_one() {
        let mut state = State::default();
        state.push_record(record("t", 2, 5));
        let (first, _rx1) = oneshot::channel();
        state.revoke(&BTreeSet::from([TopicPartition::new("t", 0)]), first);
        let (second, _rx2) = oneshot::channel();
        state.revoke(&BTreeSet::from([TopicPartition::new("t", 1)]), second);
        let order: Vec<String> = std::iter::from_fn(|| state.pop())
            .map(|event| match event {
                ConsumerEvent::Revoked { partitions, .. } => format!("revoked {}", partitions[0]),
                ConsumerEvent::Message(m) => format!("record {}", m.topic_partition()),
            })
            .collect();
        assert_eq!(order, ["revoked t[0]", "revoked t[1]", "record t[2]"]);
    }

    #[test]
    fn wait_for_done_returns_on_send_drop_and_timeout() {
        let (tx, rx) = oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let _ = tx.send(());
        });
        assert!(wait_for_done(rx, Duration::from_secs(5)));
        sender.join().unwrap();

        let (tx, rx) = oneshot::channel::<()>();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(tx);
        });
        assert!(wait_for_done(rx, Duration::from_secs(5)));
        dropper.join().unwrap();

        let (_tx, rx) = oneshot::channel::<()>();
        let started = Instant::now();
        assert!(!wait_for_done(rx, Duration::from_millis(100)));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
