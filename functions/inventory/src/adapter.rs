//! The Spin side: the HTTP API, the Kafka handler for saga commands on
//! `shop.inventory`, and the cron handler that expires stale reservations and
//! publishes the outbox.

use event_kit::{Message, cron, kafka};
use shop_domain::api::ApiError;
use shop_domain::sql::spin::SpinDatabase;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

use crate::service;
use crate::stock::{Context, Handled, Inventory};

const DATABASE: &str = "inventory";
const SOURCE: &str = "/inventory";

fn context() -> Result<Context<'static>, String> {
    let now = event_kit::now_secs();
    Ok(Context {
        now,
        now_text: shop_domain::time::rfc3339(now),
        new_id: &event_kit::new_id,
        reservation_ttl_secs: event_kit::number_variable("reservation_ttl_secs", 15 * 60)?,
    })
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let (db, context) = match SpinDatabase::open_configured(DATABASE).and_then(|db| Ok((db, context()?))) {
        Ok(opened) => opened,
        Err(e) => return event_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        roles: event_kit::header(&req, "x-shop-roles"),
    };
    event_kit::reply(service::handle(&request, &Inventory::new(&db, &context)))
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Results on the same topic are for the orders service: no database needed.
        if crate::stock::command_of(&event).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE).map_err(event_kit::Error::Other)?;
        let context = context().map_err(event_kit::Error::Other)?;
        let inventory = Inventory::new(&db, &context);
        inventory
            .migrate()
            .map_err(|e| event_kit::Error::Other(e.to_string()))?;
        let handled = inventory
            .handle(&envelope.id, &event)
            .map_err(|e| event_kit::Error::Other(e.to_string()))?;
        if matches!(handled, Handled::Done(_)) {
            event_kit::publish_outbox(&db, SOURCE);
        }
        Ok(())
    }
}

impl cron::Guest for Handlers {
    fn handle_cron_event(_: cron::Metadata) -> Result<(), cron::Error> {
        let db = SpinDatabase::open_configured(DATABASE).map_err(cron::Error::Other)?;
        let context = context().map_err(cron::Error::Other)?;
        let inventory = Inventory::new(&db, &context);
        inventory.migrate().map_err(|e| cron::Error::Other(e.to_string()))?;
        inventory.expire().map_err(|e| cron::Error::Other(e.to_string()))?;
        event_kit::relay_outbox(&db, SOURCE).map_err(cron::Error::Other)
    }
}

event_kit::kafka::export_kafka_handler!(Handlers);
event_kit::cron::export_cron_handler!(Handlers);
