//! The Spin side: the HTTP API (with the sandbox), the Kafka handler for payment
//! commands on `shop.payments`, the cron handler that publishes the outbox, and the
//! provider client over outbound HTTP (`provider_url`, `provider_api_key`).

use event_kit::{Message, cron, kafka};
use shop_domain::api::ApiError;
use shop_domain::sql::spin::SpinDatabase;
use shop_domain::types::Money;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::ledger::{Answer, Context, Handled, Ledger, Provider};
use crate::sandbox::Sandbox;
use crate::service;

const DATABASE: &str = "payments";
const SOURCE: &str = "/payments";

fn context() -> Context<'static> {
    Context {
        now_text: shop_domain::time::rfc3339(event_kit::now_secs()),
        new_id: &event_kit::new_id,
    }
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let db = match SpinDatabase::open_configured(DATABASE) {
        Ok(db) => db,
        Err(e) => return event_kit::reply(shop_domain::api::Response::error(&ApiError::unavailable(e))),
    };
    let context = context();
    let slow_ms = event_kit::number_variable("sandbox_slow_ms", 3000).unwrap_or(3000);
    let sleep = move || std::thread::sleep(std::time::Duration::from_millis(slow_ms.max(0) as u64));
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        user: event_kit::header(&req, "x-shop-user"),
        roles: event_kit::header(&req, "x-shop-roles"),
    };
    let services = service::Services {
        ledger: &Ledger::new(&db, &context),
        sandbox: &Sandbox {
            db: &db,
            now_text: context.now_text.clone(),
            new_id: &event_kit::new_id,
        },
        sleep: &sleep,
    };
    event_kit::reply(service::handle(&request, &services))
}

/// The provider's HTTP API (the sandbox's shape).
struct HttpProvider {
    base: String,
    api_key: Option<String>,
}

impl HttpProvider {
    fn configured() -> Self {
        Self {
            base: event_kit::variable("provider_url")
                .unwrap_or_else(|| "http://payments.spin.internal/sandbox".into())
                .trim_end_matches('/')
                .to_string(),
            api_key: event_kit::variable("provider_api_key"),
        }
    }

    fn request(&self, method: Method, url: &str) -> spin_sdk::http::RequestBuilder {
        let mut request = Request::builder();
        request
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            request.header("authorization", format!("Bearer {key}"));
        }
        request
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(Method::Post, &url);
        let response: Response = spin_sdk::http::run(spin_sdk::http::send(request.body(body).build()))
            .map_err(|e| format!("payment provider {url}: {e}"))?;
        match *response.status() {
            200 | 201 => {
                let charge: serde_json::Value = serde_json::from_slice(response.body())
                    .map_err(|e| format!("payment provider {url} answered oddly: {e}"))?;
                let reference = charge["id"]
                    .as_str()
                    .ok_or(format!("payment provider {url}: no charge id"))?;
                Ok(Answer::Approved {
                    reference: reference.to_string(),
                })
            }
            402 | 409 => Ok(Answer::Declined {
                reason: service::error_message(response.body()),
            }),
            status => Err(format!(
                "payment provider {url} answered {status}: {}",
                service::error_message(response.body())
            )),
        }
    }
}

impl Provider for HttpProvider {
    fn authorize(&self, idempotency_key: &str, token: &str, amount: &Money) -> Result<Answer, String> {
        let body = serde_json::json!({ "idempotency_key": idempotency_key, "token": token, "amount": amount });
        self.post("/authorizations", body.to_string().into_bytes())
    }

    fn capture(&self, reference: &str) -> Result<Answer, String> {
        self.post(&format!("/authorizations/{reference}/capture"), vec![])
    }

    fn void(&self, reference: &str) -> Result<Answer, String> {
        self.post(&format!("/authorizations/{reference}/void"), vec![])
    }

    fn refund(&self, reference: &str) -> Result<Answer, String> {
        self.post(&format!("/authorizations/{reference}/refund"), vec![])
    }

    fn find(&self, idempotency_key: &str) -> Result<Option<(String, String)>, String> {
        let url = format!("{}/authorizations/by-key/{idempotency_key}", self.base);
        let response: Response = spin_sdk::http::run(spin_sdk::http::send(self.request(Method::Get, &url).build()))
            .map_err(|e| format!("payment provider {url}: {e}"))?;
        match *response.status() {
            200 => {
                let charge: serde_json::Value = serde_json::from_slice(response.body())
                    .map_err(|e| format!("payment provider {url} answered oddly: {e}"))?;
                match (charge["id"].as_str(), charge["status"].as_str()) {
                    (Some(id), Some(status)) => Ok(Some((id.to_string(), status.to_string()))),
                    _ => Err(format!("payment provider {url}: no charge id or status")),
                }
            }
            404 => Ok(None),
            status => Err(format!("payment provider {url} answered {status}")),
        }
    }
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Results on the same topic are for the orders service: no database needed.
        if crate::ledger::command_of(&event).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE).map_err(event_kit::Error::Other)?;
        let context = context();
        let ledger = Ledger::new(&db, &context);
        ledger.migrate().map_err(|e| event_kit::Error::Other(e.to_string()))?;
        let handled = ledger
            .handle(&envelope.id, &event, &HttpProvider::configured())
            .map_err(event_kit::Error::Other)?;
        if matches!(handled, Handled::Done(_)) {
            event_kit::publish_outbox(&db, SOURCE);
        }
        Ok(())
    }
}

impl cron::Guest for Handlers {
    fn handle_cron_event(_: cron::Metadata) -> Result<(), cron::Error> {
        let db = SpinDatabase::open_configured(DATABASE).map_err(cron::Error::Other)?;
        Ledger::new(&db, &context())
            .migrate()
            .map_err(|e| cron::Error::Other(e.to_string()))?;
        event_kit::relay_outbox(&db, SOURCE).map_err(cron::Error::Other)
    }
}

kafka::export_kafka_handler!(Handlers);
cron::export_cron_handler!(Handlers);
