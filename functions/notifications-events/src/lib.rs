//! Notifications as a component for the `shop` host: the Kafka handler for
//! `shop.users` and `shop.orders`, sending through the channels
//! (`notifications::channels`).

#![cfg(target_arch = "wasm32")]

use event_kit::{Message, kafka};
use notifications::channels::HttpChannels;
use notifications::records::{Handled, Records};
use shop_domain::sql::spin::SpinDatabase;

const DATABASE: &str = "notifications";

fn records(db: &SpinDatabase) -> Records<'_, SpinDatabase> {
    Records::at(db, guest_kit::now_secs(), &guest_kit::new_id)
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Most order events (placed, the saga's steps) call for no message.
        if notifications::messages::render(&event, None).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE).map_err(event_kit::Error::Other)?;
        let records = records(&db);
        records.migrate().map_err(|e| event_kit::Error::Other(e.to_string()))?;
        let channels = HttpChannels::configured();
        match records.handle(&envelope.id, &event, &channels) {
            Ok(Handled::Sent(_) | Handled::Duplicate | Handled::Ignored) => Ok(()),
            Err(e) => Err(event_kit::Error::Other(e)),
        }
    }
}

kafka::export_kafka_handler!(Handlers);
