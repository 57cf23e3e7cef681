//! The embedded event log: Kafka's model (topics, partitions, offsets, consumer groups
//! with committed offsets) on one SQLite file, used when no Kafka brokers are configured.
//!
//! Several processes may share the file (e.g. two hosts on one data dir, one consumer
//! group). There is no coordinator: each group member heartbeats into the `members`
//! table and owns partitions through time-limited rows in `leases`. Every member
//! computes the same fair assignment from the live members; it claims partitions of its
//! share that are free (or whose lease expired) and hands back partitions beyond its
//! share after the trigger acknowledged [`ConsumerEvent::Revoked`](crate::ConsumerEvent).
//! A crashed process stops heartbeating, so its leases expire after the session timeout
//! and survivors resume from the committed offsets.

mod assign;
mod consumer;
mod partitioner;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

pub use consumer::EmbeddedConsumer;
pub use partitioner::{murmur2, partition_for_key};

use crate::{Broker, BrokerError, Consumer, Delivery, Message, OutgoingMessage, Producer, TopicPartition};
use store::{Membership, Store};

/// Settings of an [`EmbeddedBroker`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Partitions of topics created implicitly (by a publish or a subscription).
    pub default_partitions: i32,
    /// This process's identity in consumer groups; each consumer appends a suffix.
    /// Must differ between processes sharing the file.
    pub member_id: String,
    /// A member whose last heartbeat is older than this is considered dead and its
    /// partitions move to the others.
    pub session_timeout: Duration,
    /// How often members heartbeat and rebalance.
    pub heartbeat_interval: Duration,
    /// How often consumers look for records written by other processes (records of this
    /// process's producers wake them at once).
    pub poll_interval: Duration,
    /// Take the member identity from the first free slot of the log instead of
    /// `member_id`: a lock file the process holds while it lives. A process started
    /// after one died gets its identity back, and with it the partitions it held, at
    /// once, instead of waiting out their session (Kafka's static membership, with the
    /// operating system telling which members are gone).
    pub reclaim_after_crash: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            default_partitions: 3,
            member_id: default_member_id(),
            session_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(20),
            reclaim_after_crash: false,
        }
    }
}

/// `pid<pid>-<random>`: unique per process even when pids are reused (containers).
fn default_member_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the clock guards against
    // a platform where it is not.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(store::now_ms());
    format!("pid{}-{:016x}", std::process::id(), hasher.finish())
}

impl EmbeddedOptions {
    fn validate(&self) -> Result<(), BrokerError> {
        let problem = if self.default_partitions < 1 {
            "default_partitions must be at least 1"
        } else if self.member_id.is_empty() {
            "member_id must not be empty"
        } else if self.heartbeat_interval.is_zero() || self.poll_interval.is_zero() {
            "heartbeat_interval and poll_interval must be positive"
        } else if self.session_timeout <= self.heartbeat_interval {
            "session_timeout must be longer than heartbeat_interval"
        } else {
            return Ok(());
        };
        Err(BrokerError::Rejected(format!("embedded event log options: {problem}")))
    }
}

/// What this process's producers appended: a wake-up for its consumers and, per
/// partition, the offset after the last local append, so that a consumer woken by a
/// publish reads only the partitions that grew (records of other processes are found
/// by the consumers' periodic look at every partition), and the last records appended
/// here, so that a consumer following the log reads what was just published from
/// memory instead of from the file.
#[derive(Default)]
pub(super) struct Published {
    wake: Notify,
    partitions: Mutex<HashMap<TopicPartition, Tail>>,
}

/// Most recent committed records kept per partition for consumers close behind.
const TAIL_RECORDS: usize = 256;

/// One partition's recent local appends, by offset (the highest is never evicted, so
/// the last one is where this process's appends end). Another process's records are
/// never here, so a run of consecutive offsets is what the file holds there.
#[derive(Default)]
struct Tail {
    records: BTreeMap<i64, Message>,
}

impl Published {
    /// `message` was committed at `delivery`.
    fn record(&self, message: &OutgoingMessage, delivery: Delivery, timestamp_ms: i64) {
        let tp = TopicPartition {
            topic: message.topic.clone(),
            partition: delivery.partition,
        };
        {
            let mut partitions = self.partitions.lock().unwrap_or_else(PoisonError::into_inner);
            let tail = partitions.entry(tp.clone()).or_default();
            tail.records.insert(
                delivery.offset,
                Message {
                    topic: tp.topic,
                    partition: tp.partition,
                    offset: delivery.offset,
                    key: message.key.clone(),
                    payload: message.payload.clone(),
                    timestamp_ms,
                    headers: message.headers.clone(),
                },
            );
            while tail.records.len() > TAIL_RECORDS {
                tail.records.pop_first();
            }
        }
        self.wake.notify_waiters();
    }

    /// The offset after the last record this process appended to `tp`, if any.
    pub(super) fn end(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tp)
            .and_then(|tail| tail.records.last_key_value())
            .map(|(offset, _)| offset + 1)
    }

    /// Up to `limit` records of `tp` from offset `from` on, from memory: `None` unless
    /// the record at `from` is there, and only consecutive offsets after it (a gap is
    /// another process's record, or one still being acknowledged: the file has it).
    pub(super) fn recent(&self, tp: &TopicPartition, from: i64, limit: usize) -> Option<Vec<Message>> {
        let partitions = self.partitions.lock().unwrap_or_else(PoisonError::into_inner);
        let tail = partitions.get(tp)?;
        let mut next = from;
        let run: Vec<Message> = tail
            .records
            .range(from..)
            .take(limit)
            .take_while(|(offset, _)| {
                let consecutive = **offset == next;
                next += 1;
                consecutive
            })
            .map(|(_, message)| message.clone())
            .collect();
        (!run.is_empty()).then_some(run)
    }

    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

/// The embedded log. Cheap to share: producers and consumers hold the same store.
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    options: EmbeddedOptions,
    /// Wakes this process's consumers right after a local publish.
    published: Arc<Published>,
    /// Next partition per topic for records without a key.
    round_robin: Mutex<HashMap<String, i32>>,
    /// Partition counts of the topics this process has appended to (fixed once a
    /// topic exists), so an append need not look its topic up.
    partitions: Mutex<HashMap<String, i32>>,
    /// Numbers this process's consumers of each group, so each has its own member id
    /// and a process started again gives them the same ones in the same order.
    consumers: Mutex<HashMap<String, u64>>,
    /// The member slot's lock, held while the broker lives (`reclaim_after_crash`).
    _slot: Option<std::fs::File>,
}

impl EmbeddedBroker {
    /// Opens the log at `path` (e.g. `<data-dir>/events/log.db`), creating the file, its
    /// parent directories and the schema when missing.
    pub fn open(path: &Path, mut options: EmbeddedOptions) -> Result<Self, BrokerError> {
        options.validate()?;
        let store = Arc::new(Store::open(path)?);
        let slot = match options.reclaim_after_crash {
            true => {
                let (slot, lock) = crate::member_slot(&path.with_extension("members"))?;
                options.member_id = format!("slot-{slot}");
                Some(lock)
            }
            false => None,
        };
        Ok(EmbeddedBroker {
            inner: Arc::new(Inner {
                store,
                options,
                published: Arc::default(),
                round_robin: Mutex::new(HashMap::new()),
                partitions: Mutex::new(HashMap::new()),
                consumers: Mutex::default(),
                _slot: slot,
            }),
        })
    }

    /// Like [`Broker::consumer`], with the concrete type.
    pub async fn join_group(&self, group: &str, topics: &[String]) -> Result<Arc<EmbeddedConsumer>, BrokerError> {
        let topics = crate::subscription(group, topics)?;

        let options = &self.inner.options;
        let n = {
            let mut consumers = self.inner.consumers.lock().unwrap_or_else(PoisonError::into_inner);
            let count = consumers.entry(group.to_string()).or_default();
            *count += 1;
            *count - 1
        };
        let membership = Membership {
            group: group.to_string(),
            member_id: format!("{}#{group}#{n}", options.member_id),
            topics,
            session_ms: store::millis(options.session_timeout),
        };
        let timing = consumer::Timing {
            heartbeat_interval: options.heartbeat_interval,
            poll_interval: options.poll_interval,
        };
        EmbeddedConsumer::join(
            Arc::clone(&self.inner.store),
            membership,
            options.default_partitions,
            timing,
            Arc::clone(&self.inner.published),
        )
        .await
    }
}

/// Kafka's topic name rules: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
impl Inner {
    fn known_partitions(&self, topic: &str) -> Option<i32> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .copied()
    }

    fn learn_partitions(&self, topic: &str, partitions: i32) {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string(), partitions);
    }

    /// The partition for a record: Kafka's murmur2 of the key, or round-robin without one.
    fn pick_partition(&self, topic: &str, key: Option<&[u8]>, partitions: i32) -> i32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => {
                let mut next = self.round_robin.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = next.entry(topic.to_string()).or_insert(0);
                let partition = *slot % partitions;
                *slot = (partition + 1) % partitions;
                partition
            }
        }
    }
}

struct EmbeddedProducer {
    inner: Arc<Inner>,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    async fn publish(&self, message: OutgoingMessage) -> Result<Delivery, BrokerError> {
        crate::validate_topic(&message.topic)?;
        let inner = Arc::clone(&self.inner);
        let default_partitions = inner.options.default_partitions;
        let known_partitions = inner.known_partitions(&message.topic);
        let timestamp_ms = store::now_ms();
        let (delivery, partitions, message) = self
            .inner
            .store
            .write(move |conn| {
                let (delivery, partitions) = store::append(
                    conn,
                    &message,
                    timestamp_ms,
                    known_partitions,
                    default_partitions,
                    |partitions| inner.pick_partition(&message.topic, message.key.as_deref(), partitions),
                )?;
                Ok((delivery, partitions, message))
            })
            .await?;
        // Only once committed: a topic created in a transaction that failed is not there.
        if known_partitions.is_none() {
            self.inner.learn_partitions(&message.topic, partitions);
        }
        self.inner.published.record(&message, delivery, timestamp_ms);
        Ok(delivery)
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(EmbeddedProducer {
            inner: Arc::clone(&self.inner),
        })
    }

    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Arc<dyn Consumer>, BrokerError> {
        Ok(self.join_group(group, topics).await?)
    }

    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        crate::validate_topic(topic)?;
        if partitions < 1 {
            return Err(BrokerError::Rejected(format!(
                "topic {topic:?} needs at least one partition, not {partitions}"
            )));
        }
        let topics = vec![topic.to_string()];
        self.inner
            .store
            .write(move |conn| store::ensure_topics(conn, &topics, partitions))
            .await
    }
}
