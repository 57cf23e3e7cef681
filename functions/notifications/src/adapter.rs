//! The Spin side: `GET /notifications` for the caller, the Kafka handler for
//! `shop.users` and `shop.orders`, and the channel adapters: mail and SMS over HTTP
//! APIs (`mail_api_url`, `sms_api_url`, with `channel_api_key`), the log otherwise.

use event_kit::{Message, kafka};
use shop_domain::api::{ApiError, Response as ApiResponse};
use shop_domain::sql::spin::SpinDatabase;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::messages::{Address, Draft};
use crate::records::{Channels, Handled, Records};

const DATABASE: &str = "notifications";

fn records(db: &SpinDatabase) -> Records<'_, SpinDatabase> {
    Records {
        db,
        now_text: shop_domain::time::rfc3339(event_kit::now_secs()),
        new_id: &event_kit::new_id,
    }
}

#[http_component]
fn handle_http(req: Request) -> Response {
    let user = event_kit::header(&req, "x-shop-user");
    let result = (|| {
        if req.path().trim_end_matches('/') != "/notifications" {
            return Err(ApiError::not_found(format!("no route for {}", req.path())));
        }
        if *req.method() != Method::Get {
            return Err(ApiError::method_not_allowed("GET"));
        }
        if user.is_empty() {
            return Err(ApiError::new(401, "unauthorized", "no authenticated user"));
        }
        let db = SpinDatabase::open_configured(DATABASE).map_err(ApiError::unavailable)?;
        let records = records(&db);
        records.migrate()?;
        let items = records.of_user(user, 100)?;
        Ok(ApiResponse::json(200, &serde_json::json!({ "items": items })))
    })();
    event_kit::reply(ApiResponse::from_result(result))
}

/// Mail and SMS over HTTP APIs when configured, the host's log otherwise.
struct HttpChannels {
    mail_api: Option<String>,
    sms_api: Option<String>,
    api_key: Option<String>,
}

impl HttpChannels {
    fn post(&self, url: &str, body: serde_json::Value) -> Result<(), String> {
        let mut request = Request::builder();
        request
            .method(Method::Post)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            request.header("authorization", format!("Bearer {key}"));
        }
        let response: Response = spin_sdk::http::run(spin_sdk::http::send(request.body(body.to_string()).build()))
            .map_err(|e| format!("{url}: {e}"))?;
        match *response.status() {
            200..=299 => Ok(()),
            status => Err(format!("{url} answered {status}")),
        }
    }
}

impl Channels for HttpChannels {
    fn send(&self, draft: &Draft) -> Result<&'static str, String> {
        match (&draft.to, &self.mail_api, &self.sms_api) {
            (Some(Address::Email(to)), Some(api), _) => {
                let mail = serde_json::json!({ "to": to, "subject": draft.subject, "text": draft.body });
                self.post(api, mail).map(|()| "email")
            }
            (Some(Address::Phone(to)), _, Some(api)) => {
                let sms = serde_json::json!({ "to": to, "text": draft.body });
                self.post(api, sms).map(|()| "sms")
            }
            (to, _, _) => {
                eprintln!("notification [{}] to {to:?}: {}", draft.template, draft.body);
                Ok("log")
            }
        }
    }
}

struct Handlers;

impl kafka::exports::wasi::messaging::incoming_handler::Guest for Handlers {
    fn handle(message: Message) -> Result<(), event_kit::Error> {
        let (envelope, event) = event_kit::received(&message).map_err(event_kit::Error::Other)?;
        // Most order events (placed, the saga's steps) call for no message.
        if crate::messages::render(&event, None).is_none() {
            return Ok(());
        }
        let db = SpinDatabase::open_configured(DATABASE).map_err(event_kit::Error::Other)?;
        let records = records(&db);
        records.migrate().map_err(|e| event_kit::Error::Other(e.to_string()))?;
        let channels = HttpChannels {
            mail_api: event_kit::variable("mail_api_url"),
            sms_api: event_kit::variable("sms_api_url"),
            api_key: event_kit::variable("channel_api_key"),
        };
        match records.handle(&envelope.id, &event, &channels) {
            Ok(Handled::Sent(_) | Handled::Duplicate | Handled::Ignored) => Ok(()),
            Err(e) => Err(event_kit::Error::Other(e)),
        }
    }
}

kafka::export_kafka_handler!(Handlers);
