//! The Kafka trigger: where a Kafka (or embedded-log) message becomes a call into a
//! component. [`delivery`] holds the semantics (ordering, retries, dead-lettering,
//! commits); [`ComponentHandler`] is the call itself: a fresh instance per message,
//! `wasi:messaging/incoming-handler.handle` with the record as a `message`.

pub mod delivery;

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use shop_broker::{Broker, Message};
use tokio::task::JoinSet;
use tracing::Instrument as _;
use wasmtime::Engine;

use super::{Trigger, TriggerContext};
use crate::app::LoadedComponent;
use crate::capability::messaging::GuestMessage;
use crate::capability::outbound_http::LocalServices;
use crate::instance::{Invocation, InvocationFailure, RequestLimits};
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
                    .record_end_to_end
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

/// The Kafka trigger over the app's broker (Kafka, or the embedded log).
pub struct Kafka {
    pub broker: Arc<dyn Broker>,
}

/// The pause before a failed trigger subscribes again; it doubles while it keeps failing.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

impl Trigger for Kafka {
    const TYPE: &'static str = "kafka";
    const EXPORT: &'static str = "wasi:messaging/incoming-handler@0.2.0-draft";

    fn exported(component: &LoadedComponent) -> bool {
        component.exports.messaging.is_some()
    }

    /// Subscribes every `[[trigger.kafka]]`, each supervised: restarted with backoff
    /// while its subscription fails.
    fn start(self, context: &TriggerContext<'_>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
        for trigger in context.manifest.kafka_triggers() {
            let handler = Arc::new(ComponentHandler {
                engine: context.engine.clone(),
                component: super::component::<Self>(context.components, &trigger.component)?,
                limits: context.limits,
                metrics: context.metrics.clone(),
                local: context.local.clone(),
            });
            tasks.spawn(delivery::supervise(
                trigger.clone(),
                self.broker.clone(),
                handler,
                context.metrics.clone(),
                context.readiness.clone(),
                context.stop.clone(),
                RESTART_BACKOFF,
            ));
        }
        Ok(())
    }
}
