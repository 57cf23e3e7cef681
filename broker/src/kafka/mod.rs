//! Kafka behind the [`Broker`] traits, through rdkafka (librdkafka, bundled).
//!
//! - One idempotent producer per broker (`acks=all`, Java-compatible murmur2
//!   partitioner), shared by every [`Producer`] handle; `publish` awaits the delivery
//!   report.
//! - One librdkafka consumer per [`Consumer`], driven by its own thread: see
//!   [`consumer`] for the threading and the revoke handshake.
//! - Topics are created through the admin API: on [`Broker::ensure_topic`], for every
//!   subscribed topic, and before the first publish to a topic (as the embedded log
//!   creates topics implicitly), so keyed records spread over the same partition count.

mod consumer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

pub use consumer::KafkaConsumer;

use crate::{Broker, BrokerError, Consumer, Delivery, OutgoingMessage, Producer};

/// How long [`KafkaBroker::connect`] waits for the brokers to answer a metadata request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Request and operation timeout of admin calls (topic creation).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits while librdkafka's local send queue is full.
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `message.timeout.ms`: a publish that cannot be delivered within this fails
/// instead of retrying for librdkafka's default five minutes.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`KafkaBroker`].
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Extra librdkafka settings (e.g. `security.protocol`, `sasl.mechanism`), applied to
    /// the producer, the admin client and every consumer after this crate's defaults, so
    /// they can override them (e.g. `message.timeout.ms`,
    /// `partition.assignment.strategy`).
    pub client_options: Vec<(String, String)>,
    /// Partitions of topics this broker creates implicitly (subscription, first publish).
    pub default_partitions: i32,
    /// Replication factor of topics this broker creates (-1: the cluster's default).
    pub replication_factor: i32,
    /// `session.timeout.ms` of consumers: a member silent for this long leaves the group.
    pub session_timeout: Duration,
    /// This process's stable identity, for Kafka's static membership: each consumer's
    /// `group.instance.id` is made of it, its group and its place among this process's
    /// consumers of that group. A process started again under the same identity (after
    /// a crash) gets its predecessor's partitions back at once instead of waiting out
    /// its session. Must differ between live processes. `None`: dynamic membership.
    pub instance_id: Option<String>,
    /// With `instance_id`: a directory of member slots ([`crate::member_slot`]) that
    /// makes the identity `<instance_id>-<slot>`, unique among live processes sharing
    /// it, and the same again for the process started after one died. The slot is held
    /// while the broker lives.
    pub member_slots: Option<std::path::PathBuf>,
}

impl Default for KafkaOptions {
    /// Everything but `brokers`, which must be set.
    fn default() -> Self {
        KafkaOptions {
            brokers: String::new(),
            client_options: Vec::new(),
            default_partitions: 3,
            replication_factor: 1,
            session_timeout: Duration::from_secs(10),
            instance_id: None,
            member_slots: None,
        }
    }
}

impl KafkaOptions {
    /// Default options for the given `bootstrap.servers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            ..KafkaOptions::default()
        }
    }

    fn validate(&self) -> Result<(), BrokerError> {
        let problem = if self.brokers.trim().is_empty() {
            "brokers must list at least one host:port"
        } else if self.default_partitions < 1 {
            "default_partitions must be at least 1"
        } else if self.replication_factor < 1 && self.replication_factor != -1 {
            "replication_factor must be at least 1 (or -1 for the cluster's default)"
        } else if self.session_timeout < Duration::from_millis(1) || self.session_timeout.as_millis() > i32::MAX as u128
        {
            "session_timeout must be between 1 ms and about 24 days"
        } else {
            return Ok(());
        };
        Err(BrokerError::Rejected(format!("Kafka options: {problem}")))
    }

    /// The producer's `message.timeout.ms` (or its alias `delivery.timeout.ms`) as
    /// configured, so work before a send stays within the same bound.
    fn message_timeout(&self) -> Duration {
        self.client_options
            .iter()
            .rev()
            .find(|(key, _)| key == "message.timeout.ms" || key == "delivery.timeout.ms")
            .and_then(|(_, value)| value.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(MESSAGE_TIMEOUT, Duration::from_millis)
    }

    /// A librdkafka configuration: the brokers, then `defaults`, then `client_options`.
    fn client_config(&self, defaults: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers.trim());
        for (key, value) in defaults {
            config.set(*key, value);
        }
        for (key, value) in &self.client_options {
            config.set(key, value);
        }
        config
    }
}

/// Kafka through rdkafka. Cheap to share: producers are handles on one librdkafka
/// producer.
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

struct Inner {
    options: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist (created or confirmed by this broker), so only the first
    /// publish to a topic pays for the admin round trip.
    known_topics: Mutex<HashSet<String>>,
    /// Numbers consumers for their `client.id`.
    consumers: AtomicU64,
    /// Numbers this process's consumers of each group, for `group.instance.id`.
    group_members: Mutex<HashMap<String, u64>>,
    /// The member slot's lock, held while the broker lives (`member_slots`).
    _slot: Option<std::fs::File>,
}

impl KafkaBroker {
    /// Creates the clients and checks within a few seconds that the brokers answer;
    /// [`BrokerError::Unavailable`] when they don't.
    ///
    /// Blocks the calling thread for up to that long (call it at startup, or through
    /// `spawn_blocking`).
    pub fn connect(options: KafkaOptions) -> Result<Self, BrokerError> {
        let broker = Self::new(options)?;
        broker
            .inner
            .producer
            .client()
            .fetch_metadata(None, CONNECT_TIMEOUT)
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "cannot reach the Kafka brokers at {} within {} s: {e}",
                    broker.inner.options.brokers,
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?;
        Ok(broker)
    }

    /// Creates the clients without contacting the brokers: librdkafka connects in the
    /// background and requests wait (up to their timeouts) until it does.
    pub fn new(mut options: KafkaOptions) -> Result<Self, BrokerError> {
        options.validate()?;
        let slot = match (&options.instance_id, &options.member_slots) {
            (Some(instance), Some(dir)) => {
                let (slot, lock) = crate::member_slot(dir)?;
                options.instance_id = Some(format!("{instance}-{slot}"));
                Some(lock)
            }
            _ => None,
        };
        let producer: FutureProducer = options
            .client_config(&[
                ("client.id", "shop-producer".to_string()),
                ("enable.idempotence", "true".to_string()),
                ("acks", "all".to_string()),
                // Java's default partitioner: keyed records land where the embedded log
                // and Java clients put them; records without a key go to a random one.
                ("partitioner", "murmur2_random".to_string()),
                ("message.timeout.ms", MESSAGE_TIMEOUT.as_millis().to_string()),
            ])
            .create()
            .map_err(|e| config_error("producer", e))?;
        let admin: AdminClient<DefaultClientContext> = options
            .client_config(&[("client.id", "shop-admin".to_string())])
            .create()
            .map_err(|e| config_error("admin client", e))?;
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                options,
                producer,
                admin,
                known_topics: Mutex::new(HashSet::new()),
                consumers: AtomicU64::new(0),
                group_members: Mutex::default(),
                _slot: slot,
            }),
        })
    }

    /// Like [`Broker::consumer`], with the concrete type.
    pub async fn join_group(&self, group: &str, topics: &[String]) -> Result<Arc<KafkaConsumer>, BrokerError> {
        let topics = crate::subscription(group, topics)?;
        for topic in &topics {
            self.inner.ensure_known(topic, ADMIN_TIMEOUT).await?;
        }

        let options = &self.inner.options;
        let n = self.inner.consumers.fetch_add(1, Ordering::Relaxed);
        let member = format!("shop-consumer-{}-{n}", std::process::id());
        let session_ms = options.session_timeout.as_millis();
        // Kafka wants heartbeats well within the session; librdkafka's default is 3 s.
        let heartbeat_ms = (session_ms / 3).clamp(1, 3000);
        let mut settings = vec![
            ("client.id", member.clone()),
            ("group.id", group.to_string()),
            // Offsets move only through `Consumer::commit`.
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            ("auto.offset.reset", "earliest".to_string()),
            // Eager protocol: a rebalance revokes everything, then assigns afresh. Simple
            // and supported by every broker; cooperative-sticky can be set through
            // `client_options` where the cluster supports it.
            ("partition.assignment.strategy", "roundrobin".to_string()),
            ("session.timeout.ms", session_ms.to_string()),
            ("heartbeat.interval.ms", heartbeat_ms.to_string()),
        ];
        if let Some(instance) = &options.instance_id {
            let k = {
                let mut members = self.inner.group_members.lock().unwrap_or_else(PoisonError::into_inner);
                let count = members.entry(group.to_string()).or_default();
                *count += 1;
                *count - 1
            };
            settings.push(("group.instance.id", format!("{instance}.{group}.{k}")));
        }
        let config = options.client_config(&settings);
        KafkaConsumer::start(&config, group, &member, &topics)
    }
}

impl Inner {
    /// Creates `topic` with the default partition count unless this broker already knows
    /// it exists.
    async fn ensure_known(&self, topic: &str, timeout: Duration) -> Result<(), BrokerError> {
        if self
            .known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        self.create_topic(topic, self.options.default_partitions, timeout).await
    }

    /// CreateTopics; an existing topic is success (its partition count is left alone).
    async fn create_topic(&self, topic: &str, partitions: i32, timeout: Duration) -> Result<(), BrokerError> {
        let new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.options.replication_factor),
        );
        let admin_options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &admin_options)
            .await
            .map_err(|e| kafka_error(&format!("creating topic {topic:?}"), &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(code_error(code, format!("creating topic {name:?}: {code}")));
                }
            }
        }
        self.known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string());
        Ok(())
    }
}

struct KafkaProducer {
    inner: Arc<Inner>,
}

#[async_trait]
impl Producer for KafkaProducer {
    /// Cancel-safe in the sense that dropping the future does not withdraw the record:
    /// librdkafka still delivers it.
    async fn publish(&self, message: OutgoingMessage) -> Result<Delivery, BrokerError> {
        crate::validate_topic(&message.topic)?;
        let budget = self.inner.options.message_timeout();
        match self.inner.ensure_known(&message.topic, budget).await {
            Ok(()) => {}
            // Unreachable: the send would time out the same way.
            Err(e @ BrokerError::Unavailable(_)) => return Err(e),
            // Creating topics may be forbidden where they are provisioned by other means;
            // the send below reports whether the topic is usable.
            Err(e) => {
                tracing::debug!(topic = %message.topic, error = %e, "Kafka topic creation before publish refused")
            }
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&message.topic)
            .payload(&message.payload)
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        match self.inner.producer.send(record, QUEUE_FULL_TIMEOUT).await {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((e, _)) => Err(kafka_error(&format!("publishing to {:?}", message.topic), &e)),
        }
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(KafkaProducer {
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
        self.inner.create_topic(topic, partitions, ADMIN_TIMEOUT).await
    }
}

/// Kafka's topic name rules: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn config_error(client: &str, e: KafkaError) -> BrokerError {
    BrokerError::Rejected(format!("invalid Kafka {client} settings: {e}"))
}

/// A librdkafka error as a [`BrokerError`], prefixed with what was being done.
fn kafka_error(doing: &str, e: &KafkaError) -> BrokerError {
    let text = format!("{doing}: {e}");
    match e.rdkafka_error_code() {
        Some(code) => code_error(code, text),
        None => BrokerError::Unavailable(text),
    }
}

/// Refusals the caller must act on are [`BrokerError::Rejected`]; everything else
/// (timeouts, transport, coordinator moves) may pass and is [`BrokerError::Unavailable`].
fn code_error(code: RDKafkaErrorCode, text: String) -> BrokerError {
    if is_rejection(code) {
        BrokerError::Rejected(text)
    } else {
        BrokerError::Unavailable(text)
    }
}

fn is_rejection(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BadMessage
            | C::InvalidArgument
            | C::UnknownTopic
            | C::UnknownPartition
            | C::UnknownTopicOrPartition
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::MessageSizeTooLarge
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::InvalidTopic
            | C::InvalidPartitions
            | C::InvalidReplicationFactor
            | C::InvalidReplicaAssignment
            | C::InvalidConfig
            | C::InvalidRequest
            | C::PolicyViolation
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidGroupId
            | C::InvalidCommitOffsetSize
            | C::OffsetMetadataTooLarge
            // The partition may no longer be this member's: the commit is refused.
            | C::IllegalGeneration
            | C::UnknownMemberId
            | C::RebalanceInProgress
            | C::FencedInstanceId
            | C::AssignmentLost
            | C::Fatal
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        assert!(KafkaOptions::new("127.0.0.1:9092").validate().is_ok());
        let broken = [
            KafkaOptions::default(),
            KafkaOptions {
                default_partitions: 0,
                ..KafkaOptions::new("k:9092")
            },
            KafkaOptions {
                replication_factor: 0,
                ..KafkaOptions::new("k:9092")
            },
            KafkaOptions {
                session_timeout: Duration::ZERO,
                ..KafkaOptions::new("k:9092")
            },
        ];
        for options in broken {
            assert!(
                matches!(options.validate(), Err(BrokerError::Rejected(_))),
                "{options:?} should be rejected"
            );
        }
        let cluster_default = KafkaOptions {
            replication_factor: -1,
            ..KafkaOptions::new("k:9092")
        };
        assert!(cluster_default.validate().is_ok());
    }

    #[test]
    fn bad_client_option_is_rejected_at_creation() {
        let options = KafkaOptions {
            client_options: vec![("no.such.setting".into(), "1".into())],
            ..KafkaOptions::new("127.0.0.1:1")
        };
        match KafkaBroker::new(options) {
            Err(BrokerError::Rejected(text)) => assert!(text.contains("no.such.setting"), "{text}"),
            Err(e) => panic!("expected a rejection, got {e:?}"),
            Ok(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn errors_are_classified() {
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(
            kafka_error("publishing", &timed_out),
            BrokerError::Unavailable(_)
        ));
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        match kafka_error("publishing", &too_large) {
            BrokerError::Rejected(text) => assert!(text.starts_with("publishing: "), "{text}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        let fenced = KafkaError::ConsumerCommit(RDKafkaErrorCode::IllegalGeneration);
        assert!(matches!(kafka_error("committing", &fenced), BrokerError::Rejected(_)));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(crate::validate_topic("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "with space", "ümlaut", &"x".repeat(250)] {
            assert!(crate::validate_topic(bad).is_err(), "{bad:?}");
        }
    }
}
