//! The Kafka trigger: where a Kafka (or embedded-log) message becomes a call into a
//! component. [`delivery`] holds the semantics (ordering, retries, dead-lettering,
//! commits); [`ComponentHandler`] is the call itself: a fresh instance per message,
//! `wasi:messaging/incoming-handler.handle` with the record as a `message`.

pub mod delivery;

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use shop_broker::{Broker, Message};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;
use wasmtime::Engine;

use crate::admin::Readiness;
use crate::app::LoadedComponent;
use crate::capability::messaging::GuestMessage;
use crate::capability::outbound_http::LocalServices;
use crate::instance::{Invocation, InvocationFailure, RequestLimits};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::telemetry::{self, Kind, Span};
use delivery::MessageHandler;

/// Runs a component's `wasi:messaging/incoming-handler` for each message.
pub struct ComponentHandler {
    engine: Engine,
    component: Arc<LoadedComponent>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    local: Weak<dyn LocalServices>,
}

#[async_trait]
impl MessageHandler for ComponentHandler {
    async fn handle(&self, message: &Message) -> Result<(), String> {
        let request_id = format!("{}/{}/{}", message.topic, message.partition, message.offset);
        // The record's producer span is this consumer span's parent.
        let parent = telemetry::extract(|name| crate::capability::messaging::header(&message.headers, name));
        let mut span = Span::start(
            format!("process {}", message.topic),
            Kind::Consumer,
            parent.as_ref(),
            true,
        );
        if span.recording() {
            span.set("messaging.system", "kafka");
            span.set("messaging.operation.type", "process");
            span.set("messaging.destination.name", message.topic.clone());
            span.set("messaging.destination.partition.id", message.partition.to_string());
            span.set("messaging.kafka.offset", message.offset);
            span.set("shop.component", self.component.id.to_string());
            span.set("faas.trigger", "pubsub");
        }
        let invocation = Invocation::new(
            &self.engine,
            &self.component,
            self.limits,
            self.local.clone(),
            &request_id,
            &span.context,
        );
        let in_flight = crate::metrics::InFlight::new(&self.metrics, &self.component.id, "kafka");
        let result = self
            .run(message, invocation, &request_id, &span.context)
            .instrument(telemetry::log_span(&span.context))
            .await;
        drop(in_flight);
        match &result {
            Ok(()) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                self.metrics
                    .saga_step_duration
                    .with_label_values(&[&*self.component.id, &message.topic])
                    .observe((now_ms - message.timestamp_ms).max(0) as f64 / 1000.0);
            }
            Err(error) => span.fail(error.clone()),
        }
        span.finish();
        result
    }
}

impl ComponentHandler {
    async fn run(
        &self,
        message: &Message,
        invocation: Invocation,
        request_id: &str,
        trace: &telemetry::TraceContext,
    ) -> Result<(), String> {
        let Some(pre) = &self.component.exports.messaging else {
            return Err(format!("component `{}` has no message handler", self.component.id));
        };
        let Invocation { mut store, watch } = invocation;
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            self.metrics
                .instantiation_duration
                .with_label_values(&[&*self.component.id])
                .observe(watch.started().elapsed().as_secs_f64());
            // The guest sees this invocation's span as the record's trace context.
            let mut received = GuestMessage::received(message);
            received.metadata.retain(|(name, _)| name != telemetry::TRACEPARENT);
            received
                .metadata
                .push((telemetry::TRACEPARENT.into(), trace.traceparent()));
            let guest_message = store.data_mut().table.push(received)?;
            instance
                .wasi_messaging_incoming_handler()
                .call_handle(&mut store, guest_message)
                .await
        };
        let failed = match watch.run(call).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(returned)) => return Err(format!("handler returned {returned:?}")),
            Err(failed) => failed,
        };
        if let Some(error) = &failed.error {
            tracing::debug!(
                component = %self.component.id,
                request_id,
                trace_id = trace.trace_id_hex(),
                span_id = trace.span_id_hex(),
                error = ?error,
                "message handler trapped"
            );
        }
        self.metrics
            .component_errors
            .with_label_values(&[&*self.component.id, failed.failure.kind()])
            .inc();
        Err(match failed.failure {
            InvocationFailure::Timeout => format!("timed out after {:?}", self.limits.timeout),
            InvocationFailure::MemoryLimit => "exceeded the memory limit".into(),
            InvocationFailure::Trap => format!("trapped: {}", failed.detail()),
        })
    }
}

/// Everything the Kafka triggers of an app need.
pub struct KafkaContext<'a> {
    pub engine: &'a Engine,
    pub components: &'a std::collections::BTreeMap<String, Arc<LoadedComponent>>,
    pub limits: RequestLimits,
    pub metrics: Arc<Metrics>,
    pub local: Weak<dyn LocalServices>,
    pub broker: Arc<dyn Broker>,
    /// Told whether each trigger holds a subscription.
    pub readiness: Arc<Readiness>,
}

/// The pause before a failed trigger subscribes again; it doubles while it keeps failing.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts every `[[trigger.kafka]]` of the manifest; they run until `stop` is true.
pub fn start(
    manifest: &Manifest,
    context: KafkaContext<'_>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    for trigger in manifest.kafka_triggers() {
        let component = context
            .components
            .get(&trigger.component)
            .ok_or_else(|| anyhow::anyhow!("component `{}` is not loaded", trigger.component))?
            .clone();
        if component.exports.messaging.is_none() {
            anyhow::bail!(
                "component `{}` is used by a Kafka trigger but does not export wasi:messaging/incoming-handler@0.2.0-draft (it exports {})",
                trigger.component,
                component.exports.describe()
            );
        }
        let handler = Arc::new(ComponentHandler {
            engine: context.engine.clone(),
            component,
            limits: context.limits,
            metrics: context.metrics.clone(),
            local: context.local.clone(),
        });
        tasks.spawn(delivery::supervise(
            trigger.clone(),
            context.broker.clone(),
            handler,
            context.metrics.clone(),
            context.readiness.clone(),
            stop.clone(),
            RESTART_BACKOFF,
        ));
    }
    Ok(tasks)
}
