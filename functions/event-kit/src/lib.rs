//! What the shop's event-driven components share.
//!
//! - The `wasi:messaging` imports, generated once here, and two export macros that
//!   reuse them: `kafka::export_kafka_handler!` (a `[[trigger.kafka]]` handler) and
//!   `cron::export_cron_handler!` (a `[[trigger.cron]]` handler). A component may use
//!   both; its HTTP API is a component of its own (see `guest-kit`).
//! - [`received`]: a delivered message as its CloudEvents envelope and domain event.
//!
//! What handlers write to their service's outbox table the host publishes
//! (`[[trigger.outbox]]`): no component publishes the shop's events itself.
//!
//! Only components run by the `shop` host use it: Spin has neither `wasi:messaging`
//! nor these triggers. What HTTP components share is `guest-kit`.

#![cfg(target_arch = "wasm32")]

use shop_domain::{Envelope, ShopEvent};

spin_sdk::wit_bindgen::generate!({
    world: "host",
    path: "../../wit/shop-messaging",
    runtime_path: "spin_sdk::wit_bindgen::rt",
    generate_all,
});

/// The Kafka trigger's export (`wasi:messaging/incoming-handler`).
pub mod kafka {
    spin_sdk::wit_bindgen::generate!({
        world: "kafka-handler",
        path: "../../wit/shop-messaging",
        runtime_path: "spin_sdk::wit_bindgen::rt",
        with: {
            "wasi:messaging/types@0.2.0-draft": crate::wasi::messaging::types,
            "wasi:messaging/producer@0.2.0-draft": crate::wasi::messaging::producer,
        },
        pub_export_macro: true,
        export_macro_name: "export_kafka_handler",
        default_bindings_module: "event_kit::kafka",
    });
}

/// The cron trigger's export (`handle-cron-event`).
pub mod cron {
    spin_sdk::wit_bindgen::generate!({
        world: "outbox-relay",
        path: "../../wit/shop-messaging",
        runtime_path: "spin_sdk::wit_bindgen::rt",
        with: {
            "wasi:messaging/types@0.2.0-draft": crate::wasi::messaging::types,
            "wasi:messaging/producer@0.2.0-draft": crate::wasi::messaging::producer,
            "fermyon:spin-cron/cron-types@2.0.0": generate,
        },
        pub_export_macro: true,
        export_macro_name: "export_cron_handler",
        default_bindings_module: "event_kit::cron",
    });
}

pub use wasi::messaging::types::{Client, Error, Message};

/// A delivered message as (envelope, event). An error names what is wrong with it;
/// the handler returns it so the host retries and then dead-letters the message.
pub fn received(message: &Message) -> Result<(Envelope, ShopEvent), String> {
    let metadata = message.metadata().unwrap_or_default();
    let envelope = Envelope::from_headers(metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| format!("not a CloudEvent: {e}"))?;
    let event = ShopEvent::decode(&envelope.event_type, &message.data()).map_err(|e| e.to_string())?;
    Ok((envelope, event))
}

/// The `traceparent` the host gave a delivered message (this invocation's span), for
/// the events its handler writes (empty when there is none).
pub fn traceparent(message: &Message) -> String {
    message
        .metadata()
        .unwrap_or_default()
        .into_iter()
        .find_map(|(name, value)| (name == "traceparent").then_some(value))
        .unwrap_or_default()
}
