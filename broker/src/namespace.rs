//! A namespace on a shared cluster: every topic and consumer group the app uses gets
//! a prefix on the broker, while the app (and its components) keep the plain names.
//! Several apps, environments or test runs can so share one Kafka cluster without
//! reading each other's events.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Broker, BrokerError, Consumer, ConsumerEvent, Delivery, OutgoingMessage, Producer, TopicPartition};

pub struct Namespaced {
    inner: Arc<dyn Broker>,
    prefix: String,
}

impl Namespaced {
    /// `prefix` must itself be legal in a topic name (e.g. `staging.`).
    pub fn new(inner: Arc<dyn Broker>, prefix: &str) -> Result<Self, BrokerError> {
        crate::validate_topic(&format!("{prefix}x"))?;
        Ok(Self {
            inner,
            prefix: prefix.to_string(),
        })
    }
}

fn strip(prefix: &str, topic: String) -> String {
    match topic.strip_prefix(prefix) {
        Some(plain) => plain.to_string(),
        None => topic,
    }
}

#[async_trait]
impl Broker for Namespaced {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(NamespacedProducer {
            inner: self.inner.producer(),
            prefix: self.prefix.clone(),
        })
    }

    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Arc<dyn Consumer>, BrokerError> {
        let topics: Vec<String> = topics.iter().map(|t| format!("{}{t}", self.prefix)).collect();
        let inner = self.inner.consumer(&format!("{}{group}", self.prefix), &topics).await?;
        Ok(Arc::new(NamespacedConsumer {
            inner,
            prefix: self.prefix.clone(),
        }))
    }

    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        self.inner
            .ensure_topic(&format!("{}{topic}", self.prefix), partitions)
            .await
    }
}

struct NamespacedProducer {
    inner: Arc<dyn Producer>,
    prefix: String,
}

#[async_trait]
impl Producer for NamespacedProducer {
    async fn publish(&self, mut message: OutgoingMessage) -> Result<Delivery, BrokerError> {
        message.topic = format!("{}{}", self.prefix, message.topic);
        self.inner.publish(message).await
    }
}

struct NamespacedConsumer {
    inner: Arc<dyn Consumer>,
    prefix: String,
}

#[async_trait]
impl Consumer for NamespacedConsumer {
    async fn next_event(&self) -> Result<ConsumerEvent, BrokerError> {
        Ok(match self.inner.next_event().await? {
            ConsumerEvent::Message(mut message) => {
                message.topic = strip(&self.prefix, message.topic);
                ConsumerEvent::Message(message)
            }
            ConsumerEvent::Revoked { partitions, done } => ConsumerEvent::Revoked {
                partitions: partitions
                    .into_iter()
                    .map(|tp| TopicPartition::new(strip(&self.prefix, tp.topic), tp.partition))
                    .collect(),
                done,
            },
        })
    }

    async fn commit(&self, partition: &TopicPartition, next_offset: i64) -> Result<(), BrokerError> {
        let namespaced = TopicPartition::new(format!("{}{}", self.prefix, partition.topic), partition.partition);
        self.inner.commit(&namespaced, next_offset).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedBroker, EmbeddedOptions};

    #[tokio::test]
    async fn topics_and_groups_are_prefixed_on_the_broker_and_plain_for_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Broker> =
            Arc::new(EmbeddedBroker::open(&dir.path().join("log.db"), EmbeddedOptions::default()).unwrap());
        assert!(Namespaced::new(log.clone(), "bad prefix ").is_err());
        let app = Namespaced::new(log.clone(), "test-1.").unwrap();
        app.ensure_topic("orders", 1).await.unwrap();
        let outgoing = OutgoingMessage {
            topic: "orders".into(),
            key: Some(b"o-1".to_vec()),
            payload: b"placed".to_vec(),
            headers: vec![],
        };
        app.producer().publish(outgoing).await.unwrap();

        // On the broker the record sits in the prefixed topic.
        let raw = log.consumer("raw", &["test-1.orders".to_string()]).await.unwrap();
        let ConsumerEvent::Message(seen) = raw.next_event().await.unwrap() else {
            panic!("a message")
        };
        assert_eq!(
            (seen.topic.as_str(), seen.payload.as_slice()),
            ("test-1.orders", &b"placed"[..])
        );
        crate::leave_group(raw.as_ref()).await;

        // The app reads it under its plain name and commits it.
        let consumer = app.consumer("shop", &["orders".to_string()]).await.unwrap();
        let ConsumerEvent::Message(message) = consumer.next_event().await.unwrap() else {
            panic!("a message")
        };
        assert_eq!(message.topic, "orders");
        consumer
            .commit(&message.topic_partition(), message.offset + 1)
            .await
            .unwrap();
        crate::leave_group(consumer.as_ref()).await;
        let again = app.consumer("shop", &["orders".to_string()]).await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_millis(300), again.next_event()).await;
        assert!(
            next.is_err(),
            "the commit landed on the prefixed group: nothing is redelivered"
        );
        crate::leave_group(again.as_ref()).await;
    }
}
