//! The channel adapters both notification components send through: mail and SMS over
//! HTTP APIs (`mail_api_url`, `sms_api_url`, with `channel_api_key`), the log
//! otherwise.

use spin_sdk::http::{Method, Request, Response};

use crate::messages::{Address, Draft};
use crate::records::Channels;

/// Mail and SMS over HTTP APIs when configured, the host's log otherwise.
pub struct HttpChannels {
    mail_api: Option<String>,
    sms_api: Option<String>,
    api_key: Option<String>,
}

impl HttpChannels {
    /// From the component's variables `mail_api_url`, `sms_api_url` and
    /// `channel_api_key`.
    pub fn configured() -> Self {
        let variable = |name: &str| spin_sdk::variables::get(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            mail_api: variable("mail_api_url"),
            sms_api: variable("sms_api_url"),
            api_key: variable("channel_api_key"),
        }
    }

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
