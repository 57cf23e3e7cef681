//! The brokers behind the shop's Kafka trigger and the guests' `wasi:messaging`
//! producer. The trigger is written once against [`Broker`]; two implementations sit
//! behind it: Kafka through rdkafka, and the embedded log (a SQLite file under the data
//! dir) used when no brokers are configured.
//!
//! Delivery contract shared by both:
//! - messages of one partition are delivered in offset order;
//! - a group's committed offset only moves when the consumer calls [`Consumer::commit`];
//! - before a partition is taken away (rebalance, shutdown) the consumer emits
//!   [`ConsumerEvent::Revoked`] and waits until the trigger has finished and committed
//!   its work on that partition, so no other member starts it from a stale offset.

pub mod embedded;
pub mod kafka;
pub mod namespace;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

/// Kafka-style record headers: ordered, names may repeat.
pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// A record as a consumer receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch (producer create time).
    pub timestamp_ms: i64,
    pub headers: Headers,
}

impl Message {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// A record to publish. The partition is chosen by the broker from the key.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

/// Where a published record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker (or the log file) cannot be reached or written right now; retrying may help.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request (unknown topic, record too large, …).
    #[error("rejected by the broker: {0}")]
    Rejected(String),
    /// The consumer was closed.
    #[error("consumer closed")]
    Closed,
}

/// What a group consumer hands the trigger next.
#[derive(Debug)]
pub enum ConsumerEvent {
    Message(Message),
    /// These partitions are leaving this member. The trigger stops work on them,
    /// commits what it finished, then sends on (or drops) `done`; only then are the
    /// partitions given to another member.
    Revoked {
        partitions: Vec<TopicPartition>,
        done: oneshot::Sender<()>,
    },
}

#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// Publishes one record durably (Kafka: idempotent, acks=all).
    async fn publish(&self, message: OutgoingMessage) -> Result<Delivery, BrokerError>;
}

#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// The next message or rebalance event. Cancel-safe: dropping the future loses nothing.
    async fn next_event(&self) -> Result<ConsumerEvent, BrokerError>;
    /// Marks every record of `partition` before `next_offset` as processed for the group.
    async fn commit(&self, partition: &TopicPartition, next_offset: i64) -> Result<(), BrokerError>;
    /// Leaves the group (partitions go to other members). Commits nothing by itself.
    async fn close(&self);
    /// The offset after the last record of `partition` (its high watermark), as this
    /// consumer last learned it, without a round trip; `None` when it does not know.
    fn high_watermark(&self, _partition: &TopicPartition) -> Option<i64> {
        None
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics ("kafka", "embedded").
    fn kind(&self) -> &'static str;
    fn producer(&self) -> Arc<dyn Producer>;
    /// Joins `group`, subscribed to `topics` (created with the default partition count
    /// when missing).
    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Arc<dyn Consumer>, BrokerError>;
    /// Creates `topic` with `partitions` partitions unless it exists.
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError>;
}

/// Kafka's topic-name rules: 1-249 characters of letters, digits, `.`, `_` and `-`.
/// The lowest-numbered slot under `dir` no live process holds, and the lock (a lock
/// file's) that keeps it this process's until the file is closed, with the process at
/// the latest. A process started after one died gets the dead one's slot back, which
/// lets it take over that one's group memberships at once (`reclaim_after_crash`, and
/// Kafka's static membership).
pub fn member_slot(dir: &std::path::Path) -> Result<(u32, std::fs::File), BrokerError> {
    let failed = |e: std::io::Error| BrokerError::Unavailable(format!("member slots in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    for slot in 0..1024 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("slot-{slot}.lock")))
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => return Ok((slot, file)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
    }
    Err(BrokerError::Unavailable(format!(
        "all 1024 member slots in {} are held by live processes",
        dir.display()
    )))
}

pub fn validate_topic(topic: &str) -> Result<(), BrokerError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." || !topic.chars().all(legal) {
        return Err(BrokerError::Rejected(format!(
            "invalid topic name {topic:?}: use 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks a group subscription; its topics sorted and without repeats.
pub(crate) fn subscription(group: &str, topics: &[String]) -> Result<Vec<String>, BrokerError> {
    if group.is_empty() {
        return Err(BrokerError::Rejected("consumer group name must not be empty".into()));
    }
    if topics.is_empty() {
        return Err(BrokerError::Rejected(format!(
            "consumer group {group:?} subscribes to no topic"
        )));
    }
    for topic in topics {
        validate_topic(topic)?;
    }
    let mut topics = topics.to_vec();
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// Leaves the group: runs [`Consumer::close`] while acknowledging the
/// [`ConsumerEvent::Revoked`] handshakes that leaving causes (close waits for them).
/// Messages still arriving are dropped unhandled and uncommitted, so the partition's
/// next owner receives them.
pub async fn leave_group(consumer: &dyn Consumer) {
    let close = consumer.close();
    tokio::pin!(close);
    loop {
        tokio::select! {
            _ = &mut close => return,
            event = consumer.next_event() => match event {
                Ok(ConsumerEvent::Revoked { done, .. }) => {
                    let _ = done.send(());
                }
                Ok(ConsumerEvent::Message(_)) => {}
                Err(_) => {
                    (&mut close).await;
                    return;
                }
            },
        }
    }
}
