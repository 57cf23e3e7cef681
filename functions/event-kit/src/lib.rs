//! What the shop's event-driven components share.
//!
//! - The `wasi:messaging` imports, generated once here, and two export macros that
//!   reuse them: `kafka::export_kafka_handler!` (a `[[trigger.kafka]]` handler) and
//!   `cron::export_cron_handler!` (a `[[trigger.cron]]` handler). A component may use
//!   both; its HTTP API is a component of its own (see `guest-kit`).
//! - [`received`]: a delivered message as its CloudEvents envelope and domain event.
//! - [`Messaging`]: the outbox publisher over `wasi:messaging`.
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

/// Publishes outbox rows through the host's `kafka` messaging client.
pub struct Messaging(Client);

impl Messaging {
    pub fn connect() -> Result<Self, String> {
        Client::connect("kafka")
            .map(Self)
            .map_err(|e| format!("messaging: {e:?}"))
    }
}

impl shop_domain::outbox::Publisher for Messaging {
    fn publish(&self, topic: &str, key: &str, payload: &[u8], headers: Vec<(String, String)>) -> Result<(), String> {
        let message = Message::new(payload);
        let mut metadata = vec![("kafka.key".to_string(), key.to_string())];
        for (name, value) in headers {
            if name == "content-type" {
                message.set_content_type(&value);
            } else {
                metadata.push((name, value));
            }
        }
        message.set_metadata(&metadata);
        wasi::messaging::producer::send(&self.0, topic, message).map_err(|e| format!("{e:?}"))
    }
}

/// Publishes what is waiting in `db`'s outbox (the cron handlers' relay step).
pub fn relay_outbox(db: &impl shop_domain::sql::Sql, source: &str) -> Result<(), String> {
    let messaging = Messaging::connect()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    shop_domain::outbox::relay(db, &messaging, source, now).map(drop)
}

/// Publishes the events this instance wrote through `db` now, rather than at the
/// relay's next tick. `Err` only when some could be neither published nor handed to
/// the relay: the handler must then fail, so that its message comes back and
/// [`republish`] sends them.
pub fn publish_outbox(db: &impl shop_domain::sql::Sql, source: &str) -> Result<(), String> {
    use shop_domain::outbox::{Publisher, Unpublished, publish_written};
    /// For want of a messaging client: every event goes to the relay.
    struct Refusing(String);
    impl Publisher for Refusing {
        fn publish(&self, _: &str, _: &str, _: &[u8], _: Vec<(String, String)>) -> Result<(), String> {
            Err(self.0.clone())
        }
    }
    let published = match Messaging::connect() {
        Ok(messaging) => publish_written(db, &messaging, source),
        Err(e) => publish_written(db, &Refusing(e), source),
    };
    match published {
        Ok(_) => Ok(()),
        Err(Unpublished::LeftToRelay(e)) => {
            eprintln!("{source}: events left for the relay: {e}");
            Ok(())
        }
        Err(Unpublished::Redeliver(e)) => Err(format!("{source}: events not published: {e}")),
    }
}

/// Publishes again what handling the delivered event `event_id` wrote: it was handled
/// before, and this delivery may follow a crash between that commit and its publish.
pub fn republish(db: &impl shop_domain::sql::Sql, source: &str, event_id: &str) -> Result<(), String> {
    let messaging = Messaging::connect()?;
    shop_domain::outbox::republish(db, &messaging, source, event_id).map(drop)
}
