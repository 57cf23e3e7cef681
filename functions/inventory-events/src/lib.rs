//! Inventory's saga side as a component for the `shop` host: the Kafka handler for the
//! saga's commands on `shop.inventory`, and the cron handler that expires stale
//! reservations. The events they write leave through the host's outbox relay.

#![cfg(target_arch = "wasm32")]

use event_kit::{Message, cron, kafka};
use inventory::stock::{Context, Inventory};
use shop_domain::sql::spin::SpinDatabase;

const DATABASE: &str = "inventory";

fn context() -> Result<Context<'static>, String> {
    Context::configured(guest_kit::now_secs(), &guest_kit::new_id, guest_kit::number_variable)
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Results on the same topic are for the orders service: no database needed.
        if inventory::stock::command_of(&event).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE)
            .map_err(event_kit::Error::Other)?
            .traced(&event_kit::traceparent(&message));
        let context = context().map_err(event_kit::Error::Other)?;
        let inventory = Inventory::new(&db, &context);
        inventory
            .handle(&envelope.id, &event)
            .map(drop)
            .map_err(|e| event_kit::Error::Other(e.to_string()))
    }
}

impl cron::Guest for Handlers {
    fn handle_cron_event(_: cron::Metadata) -> Result<(), cron::Error> {
        let db = SpinDatabase::open_configured(DATABASE).map_err(cron::Error::Other)?;
        let context = context().map_err(cron::Error::Other)?;
        let inventory = Inventory::new(&db, &context);
        inventory.migrate().map_err(|e| cron::Error::Other(e.to_string()))?;
        inventory
            .expire()
            .map(drop)
            .map_err(|e| cron::Error::Other(e.to_string()))
    }
}

kafka::export_kafka_handler!(Handlers);
cron::export_cron_handler!(Handlers);
