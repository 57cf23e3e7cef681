//! Payments' saga side as a component for the `shop` host: the Kafka handler for the
//! saga's payment commands on `shop.payments`, against the provider's HTTP API
//! (`provider_url`, `provider_api_key`; the sandbox by default, called in process).
//! The events it writes leave through the host's outbox relay.

#![cfg(target_arch = "wasm32")]

use event_kit::{Message, kafka};
use payments::ledger::{Answer, Context, Ledger, Provider};
use payments::service;
use shop_domain::sql::spin::SpinDatabase;
use shop_domain::types::Money;
use spin_sdk::http::{Method, Request, Response};

const DATABASE: &str = "payments";

fn context() -> Context<'static> {
    let now = guest_kit::now_secs();
    Context {
        now,
        now_text: shop_domain::time::rfc3339(now),
        new_id: &guest_kit::new_id,
    }
}

/// The provider's API (the sandbox's shape), over HTTP; or, when the configured
/// provider is the built-in sandbox, the sandbox's own handler called in process on
/// the same database: the same answers, without an instance and an HTTP exchange
/// per call.
struct ProviderApi<'a> {
    base: String,
    api_key: Option<String>,
    /// The built-in sandbox, reached without HTTP.
    in_process: Option<&'a SpinDatabase>,
}

/// Where the built-in sandbox is served (the `payment_provider_url` default).
const BUILT_IN_SANDBOX: &str = "http://payments.spin.internal/sandbox";

impl<'a> ProviderApi<'a> {
    fn configured(db: &'a SpinDatabase) -> Self {
        let base = guest_kit::variable("provider_url")
            .unwrap_or_else(|| BUILT_IN_SANDBOX.into())
            .trim_end_matches('/')
            .to_string();
        Self {
            in_process: (base == BUILT_IN_SANDBOX).then_some(db),
            base,
            api_key: guest_kit::variable("provider_api_key"),
        }
    }

    /// One exchange with the provider: its status and body.
    fn exchange(&self, method: Method, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        let url = format!("{}{path}", self.base);
        if let Some(db) = self.in_process {
            return Ok(sandbox_in_process(
                db,
                &method.to_string(),
                &format!("/sandbox{path}"),
                &body,
            ));
        }
        let mut request = Request::builder();
        request
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            request.header("authorization", format!("Bearer {key}"));
        }
        let response: Response = spin_sdk::http::run(spin_sdk::http::send(request.body(body).build()))
            .map_err(|e| format!("payment provider {url}: {e}"))?;
        Ok((*response.status(), response.into_body()))
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.exchange(Method::Post, path, body)?;
        match status {
            200 | 201 => {
                let charge: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("payment provider {url} answered oddly: {e}"))?;
                let reference = charge["id"]
                    .as_str()
                    .ok_or(format!("payment provider {url}: no charge id"))?;
                Ok(Answer::Approved {
                    reference: reference.to_string(),
                })
            }
            402 | 409 => Ok(Answer::Declined {
                reason: service::error_message(&body),
            }),
            status => Err(format!(
                "payment provider {url} answered {status}: {}",
                service::error_message(&body)
            )),
        }
    }
}

/// The sandbox's HTTP handler (as the `payments` component serves it), called directly.
fn sandbox_in_process(db: &SpinDatabase, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let request = service::Request {
        method,
        path,
        body,
        user: "",
        roles: "",
    };
    let slow_ms = guest_kit::number_variable("sandbox_slow_ms", 3000).unwrap_or(3000);
    let answer = service::handle_on(&request, db, &context(), slow_ms);
    (answer.status, answer.body)
}

impl Provider for ProviderApi<'_> {
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
        let path = format!("/authorizations/by-key/{idempotency_key}");
        let url = format!("{}{path}", self.base);
        match self.exchange(Method::Get, &path, Vec::new())? {
            (200, body) => {
                let charge: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("payment provider {url} answered oddly: {e}"))?;
                match (charge["id"].as_str(), charge["status"].as_str()) {
                    (Some(id), Some(status)) => Ok(Some((id.to_string(), status.to_string()))),
                    _ => Err(format!("payment provider {url}: no charge id or status")),
                }
            }
            (404, _) => Ok(None),
            (status, _) => Err(format!("payment provider {url} answered {status}")),
        }
    }
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Results on the same topic are for the orders service: no database needed.
        if payments::ledger::command_of(&event).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE)
            .map_err(event_kit::Error::Other)?
            .traced(&event_kit::traceparent(&message));
        let context = context();
        let ledger = Ledger::new(&db, &context);
        ledger
            .handle(&envelope.id, &event, &ProviderApi::configured(&db))
            .map(drop)
            .map_err(event_kit::Error::Other)
    }
}

kafka::export_kafka_handler!(Handlers);
