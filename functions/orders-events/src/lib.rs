//! The orders saga as a component for the `shop` host: the Kafka handler for inventory
//! and payment results, and the cron handler that times out stuck steps. The events
//! they write leave through the host's outbox relay.

#![cfg(target_arch = "wasm32")]

use event_kit::{Message, cron, kafka};
use orders::store::{Context, Orders};
use shop_domain::ShopEvent;
use shop_domain::sql::spin::SpinDatabase;

const DATABASE: &str = "orders";
/// Most overdue orders handled per cron tick.
const OVERDUE_BATCH: i64 = 100;

fn context() -> Result<Context<'static>, String> {
    Context::configured(guest_kit::now_secs(), &guest_kit::new_id, guest_kit::number_variable)
}

/// The database for work of the trace `traceparent` (empty: none).
fn open(traceparent: &str) -> Result<(SpinDatabase, Context<'static>), String> {
    Ok((SpinDatabase::open_configured(DATABASE)?.traced(traceparent), context()?))
}

/// Whether the saga acts on `event` (results; the commands on the same topics are
/// for the other services).
fn is_result(event: &ShopEvent) -> bool {
    matches!(
        event,
        ShopEvent::InventoryReserved(_)
            | ShopEvent::InventoryRejected(_)
            | ShopEvent::InventoryReleased(_)
            | ShopEvent::InventoryCommitted(_)
            | ShopEvent::PaymentAuthorized(_)
            | ShopEvent::PaymentDeclined(_)
            | ShopEvent::PaymentCaptured(_)
            | ShopEvent::PaymentVoided(_)
            | ShopEvent::PaymentRefunded(_)
    )
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        if !is_result(&event) {
            return Ok(());
        }
        let (db, context) = open(&event_kit::traceparent(&message)).map_err(event_kit::Error::Other)?;
        let orders = Orders::new(&db, &context);
        orders
            .apply(Some(&envelope.id), &event.key(), &event)
            .map(drop)
            .map_err(|e| event_kit::Error::Other(e.to_string()))
    }
}

impl cron::Guest for Handlers {
    fn handle_cron_event(_: cron::Metadata) -> Result<(), cron::Error> {
        let failed = |e: String| cron::Error::Other(e);
        let (db, context) = open("").map_err(failed)?;
        let orders = Orders::new(&db, &context);
        orders.migrate().map_err(|e| failed(e.to_string()))?;
        // One order that cannot be timed out must not hold up the others.
        let mut problems = Vec::new();
        match orders.overdue(OVERDUE_BATCH) {
            Ok(due) => {
                for (order_id, timeout) in due {
                    if let Err(e) = orders.apply(None, &order_id, &timeout) {
                        problems.push(format!("timing out {order_id}: {e}"));
                    }
                }
            }
            Err(e) => problems.push(format!("finding overdue orders: {e}")),
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(failed(problems.join("; "))),
        }
    }
}

kafka::export_kafka_handler!(Handlers);
cron::export_cron_handler!(Handlers);
