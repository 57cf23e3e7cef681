//! `wasi:messaging@0.2.0-draft` for guests: the `message` and `client` resources and
//! `producer.send`, publishing through the app's broker (Kafka or the embedded log).
//! A component may publish only to topics its `allowed_topics` lists.
//!
//! How a message maps onto a Kafka record, both ways:
//! - `data` is the payload; `content-type` is the `content-type` header;
//! - `metadata` holds every other header (UTF-8), CloudEvents `ce_*` ones included,
//!   plus the record's `kafka.key`, `kafka.partition`, `kafka.offset` and
//!   `kafka.timestamp` (ms) when it was received;
//! - when sending, `kafka.key` becomes the record key and other `kafka.*` entries are
//!   dropped (the broker assigns partition, offset and timestamp).

use std::sync::Arc;

use shop_broker::{BrokerError, Delivery, Message, OutgoingMessage, Producer};
use wasmtime::component::{Linker, Resource};

use self::bindings::wasi::messaging::{producer, types};
use super::{AppContext, Capability, CapabilityView, ComponentContext, InstanceContext, Project, view};
use crate::state::HostState;
use crate::telemetry::{self, Kind, Span, TraceCell, TraceContext};
use types::Error;

/// `wasi:messaging@0.2.0-draft` `types` and `producer`, the imports (world
/// `shop:messaging/host`); the Kafka trigger's handler world reuses them.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/shop-messaging",
        world: "shop:messaging/host",
        imports: { default: async | trappable },
        with: {
            "wasi:messaging/types.client": super::MessagingClient,
            "wasi:messaging/types.message": super::GuestMessage,
        },
    });
}

/// Publishing from guests: `wasi:messaging` `types` and `producer`.
pub struct Messaging;

/// The topics a component may publish to, and the broker it publishes through.
#[derive(Clone)]
pub struct MessagingGrant {
    component: Arc<str>,
    allowed_topics: Arc<TopicRules>,
    producer: Option<Arc<dyn Producer>>,
}

impl Capability for Messaging {
    /// The app's broker, if it has one.
    type App = Option<Arc<dyn Producer>>;
    type Component = MessagingGrant;
    type Instance = MessagingAccess;

    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<Self::App> {
        Ok(app.producer.clone())
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        types::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        producer::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(producer: &Arc<Self::App>, component: &ComponentContext<'_>) -> anyhow::Result<MessagingGrant> {
        Ok(MessagingGrant {
            component: component.id.clone(),
            allowed_topics: Arc::new(TopicRules::new(&component.manifest.allowed_topics)),
            producer: producer.as_ref().clone(),
        })
    }

    fn prepare(grant: &MessagingGrant, instance: &InstanceContext) -> MessagingAccess {
        MessagingAccess {
            grant: grant.clone(),
            trace: instance.trace.clone(),
        }
    }
}

pub const KEY: &str = "kafka.key";
const CONTENT_TYPE: &str = "content-type";
const RESERVED_PREFIX: &str = "kafka.";

/// Which topics a component may publish to: exact names, or prefixes ending in `*`.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    patterns: Vec<String>,
}

impl TopicRules {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            patterns: patterns.to_vec(),
        }
    }

    pub fn allows(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
    }
}

/// Per-instance messaging state.
pub struct MessagingAccess {
    grant: MessagingGrant,
    trace: TraceCell,
}

/// A connection handle; every client of an instance publishes through the same broker.
pub struct MessagingClient;

/// A message as the guest sees it (built by the guest or received from a topic).
#[derive(Debug, Clone, Default)]
pub struct GuestMessage {
    pub data: Vec<u8>,
    pub topic: Option<String>,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
}

impl GuestMessage {
    /// The guest's view of a received record.
    pub fn received(message: &Message) -> Self {
        let mut content_type = None;
        let mut metadata = Vec::with_capacity(message.headers.len() + 4);
        for (name, value) in &message.headers {
            let value = String::from_utf8_lossy(value).into_owned();
            if name.eq_ignore_ascii_case(CONTENT_TYPE) {
                content_type = Some(value);
            } else {
                metadata.push((name.clone(), value));
            }
        }
        if let Some(key) = &message.key {
            metadata.push((KEY.into(), String::from_utf8_lossy(key).into_owned()));
        }
        metadata.push(("kafka.partition".into(), message.partition.to_string()));
        metadata.push(("kafka.offset".into(), message.offset.to_string()));
        metadata.push(("kafka.timestamp".into(), message.timestamp_ms.to_string()));
        Self {
            data: message.payload.clone(),
            topic: Some(message.topic.clone()),
            content_type,
            metadata,
        }
    }

    /// The record to publish for this message on `topic`.
    pub fn outgoing(&self, topic: &str) -> OutgoingMessage {
        let mut key = None;
        let mut headers = Vec::with_capacity(self.metadata.len() + 1);
        for (name, value) in &self.metadata {
            if name == KEY {
                key = Some(value.clone().into_bytes());
            } else if !name.starts_with(RESERVED_PREFIX) {
                headers.push((name.clone(), value.clone().into_bytes()));
            }
        }
        if let Some(content_type) = &self.content_type {
            headers.push((CONTENT_TYPE.into(), content_type.clone().into_bytes()));
        }
        OutgoingMessage {
            topic: topic.to_string(),
            key,
            payload: self.data.clone(),
            headers,
        }
    }
}

impl CapabilityView<'_, Messaging> {
    fn guest_message(&mut self, message: &Resource<GuestMessage>) -> wasmtime::Result<&mut GuestMessage> {
        Ok(self.table.get_mut(message)?)
    }
}

impl types::Host for CapabilityView<'_, Messaging> {}

impl types::HostClient for CapabilityView<'_, Messaging> {
    async fn connect(&mut self, _name: String) -> wasmtime::Result<Result<Resource<MessagingClient>, Error>> {
        if self.state.grant.producer.is_none() {
            return Ok(Err(Error::Connection("no broker is configured for this host".into())));
        }
        Ok(Ok(self.table.push(MessagingClient)?))
    }

    async fn disconnect(&mut self, _client: Resource<MessagingClient>) -> wasmtime::Result<Result<(), Error>> {
        Ok(Ok(()))
    }

    async fn drop(&mut self, client: Resource<MessagingClient>) -> wasmtime::Result<()> {
        self.table.delete(client)?;
        Ok(())
    }
}

impl types::HostMessage for CapabilityView<'_, Messaging> {
    async fn new(&mut self, data: Vec<u8>) -> wasmtime::Result<Resource<GuestMessage>> {
        Ok(self.table.push(GuestMessage {
            data,
            ..GuestMessage::default()
        })?)
    }

    async fn topic(&mut self, m: Resource<GuestMessage>) -> wasmtime::Result<Option<String>> {
        Ok(self.guest_message(&m)?.topic.clone())
    }

    async fn content_type(&mut self, m: Resource<GuestMessage>) -> wasmtime::Result<Option<String>> {
        Ok(self.guest_message(&m)?.content_type.clone())
    }

    async fn set_content_type(&mut self, m: Resource<GuestMessage>, content_type: String) -> wasmtime::Result<()> {
        self.guest_message(&m)?.content_type = Some(content_type);
        Ok(())
    }

    async fn data(&mut self, m: Resource<GuestMessage>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.guest_message(&m)?.data.clone())
    }

    async fn set_data(&mut self, m: Resource<GuestMessage>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.guest_message(&m)?.data = data;
        Ok(())
    }

    async fn metadata(&mut self, m: Resource<GuestMessage>) -> wasmtime::Result<Option<Vec<(String, String)>>> {
        Ok(Some(self.guest_message(&m)?.metadata.clone()))
    }

    async fn add_metadata(&mut self, m: Resource<GuestMessage>, key: String, value: String) -> wasmtime::Result<()> {
        self.guest_message(&m)?.metadata.push((key, value));
        Ok(())
    }

    async fn set_metadata(&mut self, m: Resource<GuestMessage>, meta: Vec<(String, String)>) -> wasmtime::Result<()> {
        self.guest_message(&m)?.metadata = meta;
        Ok(())
    }

    async fn remove_metadata(&mut self, m: Resource<GuestMessage>, key: String) -> wasmtime::Result<()> {
        self.guest_message(&m)?.metadata.retain(|(k, _)| *k != key);
        Ok(())
    }

    async fn drop(&mut self, m: Resource<GuestMessage>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

impl producer::Host for CapabilityView<'_, Messaging> {
    async fn send(
        &mut self,
        _client: Resource<MessagingClient>,
        topic: String,
        message: Resource<GuestMessage>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let message = self.table.delete(message)?;
        let access = &self.state.grant;
        if !access.allowed_topics.allows(&topic) {
            let (trace_id, span_id) = telemetry::ids(&self.state.trace);
            tracing::warn!(
                component = %access.component,
                topic,
                trace_id,
                span_id,
                "publish denied: topic not in allowed_topics"
            );
            return Ok(Err(Error::PermissionDenied(format!(
                "component `{}` may not publish to `{topic}`: add it to the component's allowed_topics",
                access.component
            ))));
        }
        let Some(producer) = access.producer.clone() else {
            return Ok(Err(Error::Connection("no broker is configured for this host".into())));
        };
        let mut outgoing = message.outgoing(&topic);
        let span = publish_span(&mut outgoing, &access.component, self.state.trace.get());
        let result = published(span, producer.publish(outgoing).await);
        Ok(result.map(drop).map_err(|e| match e {
            BrokerError::Unavailable(m) => Error::Connection(m),
            other => Error::Other(other.to_string()),
        }))
    }
}

/// The first value of header `name`, as text.
/// The producer span of publishing `outgoing`, whose context replaces the record's
/// trace headers: a record continues the trace it names (a relayed event its writer's),
/// else `fallback` (the publishing invocation's); its consumer's span is a child of
/// this one.
pub fn publish_span(outgoing: &mut OutgoingMessage, component: &str, fallback: Option<&TraceContext>) -> Span {
    let named = telemetry::extract(|name| header(&outgoing.headers, name));
    let parent = named.as_ref().or(fallback);
    let mut span = Span::start(
        format!("publish {}", outgoing.topic),
        Kind::Producer,
        parent,
        named.is_some(),
    );
    if span.recording() {
        span.set("messaging.system", "kafka");
        span.set("messaging.operation.type", "send");
        span.set("messaging.destination.name", outgoing.topic.clone());
        span.set("shop.component", component.to_string());
    }
    outgoing
        .headers
        .retain(|(name, _)| name != telemetry::TRACEPARENT && name != telemetry::TRACESTATE);
    outgoing.headers.extend(
        span.context
            .headers()
            .map(|(name, value)| (name.to_string(), value.into_bytes())),
    );
    span
}

/// Ends the span of a publication with where the record landed, or why it did not.
pub fn published(mut span: Span, result: Result<Delivery, BrokerError>) -> Result<Delivery, BrokerError> {
    match &result {
        Ok(delivery) => {
            span.set("messaging.destination.partition.id", delivery.partition.to_string());
            span.set("messaging.kafka.offset", delivery.offset);
        }
        Err(e) => span.fail(e.to_string()),
    }
    span.finish();
    result
}

pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules_match_exact_names_and_prefixes() {
        let rules = TopicRules::new(&["shop.orders".into(), "audit.*".into()]);
        assert!(rules.allows("shop.orders"));
        assert!(rules.allows("audit.payments"));
        assert!(!rules.allows("shop.orders.dlq"));
        assert!(!rules.allows("shop.users"));
        assert!(!TopicRules::default().allows("anything"));
    }

    #[test]
    fn received_records_round_trip_to_outgoing_ones() {
        let record = Message {
            topic: "shop.orders".into(),
            partition: 2,
            offset: 41,
            key: Some(b"order-1".to_vec()),
            payload: b"{}".to_vec(),
            timestamp_ms: 1_700_000_000_000,
            headers: vec![
                ("ce_id".into(), b"e-1".to_vec()),
                ("content-type".into(), b"application/json".to_vec()),
            ],
        };
        let guest = GuestMessage::received(&record);
        assert_eq!(guest.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            guest.metadata,
            [
                ("ce_id", "e-1"),
                ("kafka.key", "order-1"),
                ("kafka.partition", "2"),
                ("kafka.offset", "41"),
                ("kafka.timestamp", "1700000000000"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let out = guest.outgoing("shop.payments");
        assert_eq!(out.key.as_deref(), Some(&b"order-1"[..]));
        assert_eq!(
            out.headers,
            vec![
                ("ce_id".to_string(), b"e-1".to_vec()),
                ("content-type".to_string(), b"application/json".to_vec())
            ]
        );
        assert_eq!(out.payload, b"{}");
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;
    use producer::Host as _;
    use types::HostClient as _;

    #[tokio::test]
    async fn without_a_broker_connecting_fails_and_topics_outside_the_grant_are_refused() {
        let fixture = Fixture::new("messaging", "allowed_topics = [\"shop.orders\"]");
        let mut instance = fixture.instance::<Messaging>();
        let mut view = instance.view();
        assert!(matches!(
            view.connect("kafka".into()).await.unwrap(),
            Err(Error::Connection(_))
        ));
        let client = view.table.push(MessagingClient).unwrap();
        let message = view.table.push(GuestMessage::default()).unwrap();
        let refused = view.send(client, "shop.payments".into(), message).await.unwrap();
        assert!(matches!(refused, Err(Error::PermissionDenied(m)) if m.contains("allowed_topics")));
    }
}
