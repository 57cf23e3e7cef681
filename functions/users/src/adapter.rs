//! The spin-sdk side: SQLite (label `users`), variables, clock and ids.

use shop_domain::sql::spin::SpinDatabase;
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

use spin_sdk::key_value::Store as KeyValue;

use crate::clients::ServiceClients;
use crate::keys::SigningKey;
use crate::otp::Pending;
use crate::service::{self, OtpStore, Settings};
use crate::store::Store;
use crate::throttle::Failures;

const DATABASE: &str = "users";

/// The service's state in the `default` key-value store, opened once per request:
/// pending codes under `otp:<destination>` and the login-failure counters.
struct KeyValueState(Option<KeyValue>);

impl KeyValueState {
    fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.0.as_ref()?.get(key).ok()??;
        serde_json::from_slice(&bytes).ok()
    }
    fn delete(&self, key: &str) {
        if let Some(store) = &self.0 {
            let _ = store.delete(key);
        }
    }
}

fn otp_key(destination: &str) -> String {
    format!("otp:{destination}")
}

impl OtpStore for KeyValueState {
    fn get(&self, destination: &str) -> Result<Option<Pending>, String> {
        let store = self.0.as_ref().ok_or("no key-value store")?;
        let bytes = store
            .get(&otp_key(destination))
            .map_err(|e| format!("key-value store: {e:?}"))?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }
    fn put(&self, destination: &str, pending: &Pending) -> Result<(), String> {
        let store = self.0.as_ref().ok_or("no key-value store")?;
        store
            .set(&otp_key(destination), &serde_json::to_vec(pending).unwrap_or_default())
            .map_err(|e| format!("key-value store: {e:?}"))
    }
    fn remove(&self, destination: &str) {
        self.delete(&otp_key(destination));
    }
    fn replace(&self, destination: &str, current: &Pending, next: &Pending) -> Result<bool, String> {
        swap_json(&otp_key(destination), Some(current), next)
    }
}

impl service::FailureCounters for KeyValueState {
    fn get(&self, key: &str) -> Option<Failures> {
        self.read(key)
    }
    fn replace(&self, key: &str, current: Option<&Failures>, next: &Failures) -> Result<bool, String> {
        // Without a store configured nothing is counted, rather than every login refused.
        if self.0.is_none() {
            return Ok(true);
        }
        swap_json(key, current, next)
    }
    fn remove(&self, key: &str) {
        self.delete(key);
    }
}

impl service::EndedSessions for KeyValueState {
    fn end(&self, session: &str, until: i64) -> Result<(), String> {
        let store = self.0.as_ref().ok_or("no key-value store")?;
        // The gateway reads this entry (`ended-session:<sid>`) before it forwards a
        // request carrying a token of that session.
        store
            .set(&format!("ended-session:{session}"), until.to_string().as_bytes())
            .map_err(|e| format!("{e:?}"))
    }
}

/// Stores `next` as JSON under `key` of the `default` store if the value there is
/// still `current` (`None`: absent): a compare-and-swap through wasi:keyvalue.
/// `Ok(false)`: someone else changed it first; `Err`: the store did not answer.
fn swap_json<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq>(
    key: &str,
    current: Option<&T>,
    next: &T,
) -> Result<bool, String> {
    use spin_sdk::wit::wasi::keyvalue::store;
    let unavailable = |e: store::Error| format!("key-value store: {e:?}");
    let bucket = store::open("default").map_err(unavailable)?;
    let cell = guest_kit::kv::read::<T>(&bucket, key).map_err(unavailable)?;
    if cell.current() != current {
        return Ok(false);
    }
    cell.swap(next).map_err(unavailable)
}

fn variable(name: &str) -> Option<String> {
    spin_sdk::variables::get(name).ok().filter(|v| !v.is_empty())
}

/// The configured key, else the dev key kept in the database (made on first use).
fn signing_key(db: &SpinDatabase) -> Result<SigningKey, String> {
    if let Some(pem) = variable("jwt_signing_key") {
        return SigningKey::from_pkcs8_pem(&pem);
    }
    let store = Store(db);
    store.migrate().map_err(|e| format!("{e:?}"))?;
    let der = match store.signing_key_der().map_err(|e| format!("{e:?}"))? {
        Some(der) => der,
        None => {
            let (der, _) = SigningKey::generate()?;
            store.keep_signing_key(der).map_err(|e| format!("{e:?}"))?
        }
    };
    SigningKey::from_pkcs1_der(&der)
}

fn reply(status: u16, body: Option<serde_json::Value>) -> Response {
    let mut builder = Response::builder();
    builder.status(status);
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(body.to_string())
            .build(),
        None => builder.build(),
    }
}

/// The notifications service, over local service chaining: the code goes there and
/// nowhere else.
struct NotificationsService;

impl service::OtpSender for NotificationsService {
    fn send(&self, delivery: &shop_domain::types::OtpDelivery) -> Result<(), String> {
        let url = "http://notifications.spin.internal/deliveries/otp";
        let body = serde_json::to_vec(delivery).map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(spin_sdk::http::Method::Post)
            .uri(url)
            .header("content-type", "application/json")
            .body(body)
            .build();
        let response: Response =
            spin_sdk::http::run(spin_sdk::http::send(request)).map_err(|e| format!("{url}: {e}"))?;
        match *response.status() {
            200..=299 => Ok(()),
            status => Err(format!("notifications answered {status}")),
        }
    }
}

#[http_component]
fn handle(req: Request) -> Response {
    let unavailable = |message: String| {
        reply(
            503,
            Some(serde_json::json!({ "error": { "code": "unavailable", "message": message } })),
        )
    };
    let db = match SpinDatabase::open_configured(DATABASE)
        .map(|db| db.traced(req.header("traceparent").and_then(|v| v.as_str()).unwrap_or("")))
    {
        Ok(db) => db,
        Err(e) => return unavailable(e),
    };
    let key = match signing_key(&db) {
        Ok(key) => key,
        Err(e) => return unavailable(format!("signing key: {e}")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let issuer = variable("jwt_issuer").unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let audience = variable("jwt_audience").unwrap_or_else(|| "shop".into());
    let admin_email = variable("admin_email");
    let admin_password = variable("admin_password");
    let new_id = || uuid::Uuid::new_v4().to_string();
    let service_clients = match ServiceClients::parse(&variable("service_clients").unwrap_or_default()) {
        Ok(clients) => clients,
        Err(e) => return unavailable(format!("variable `service_clients`: {e}")),
    };
    let state = KeyValueState(KeyValue::open_default().ok());
    let settings = Settings {
        issuer: &issuer,
        audience: &audience,
        admin: admin_email.as_deref().zip(admin_password.as_deref()),
        now,
        now_text: shop_domain::time::rfc3339(now),
        new_id: &new_id,
        otp: &state,
        otp_sender: &NotificationsService,
        login_failures: &state,
        ended_sessions: &state,
        service_clients: &service_clients,
    };
    let method = req.method().to_string();
    let request = service::Request {
        method: &method,
        path: req.path(),
        body: req.body(),
        user: req.header("x-shop-user").and_then(|v| v.as_str()),
        roles: req.header("x-shop-roles").and_then(|v| v.as_str()).unwrap_or(""),
        client: req.header("x-shop-client").and_then(|v| v.as_str()),
    };
    let response = service::handle(&request, &db, &key, &settings);
    let mut reply = reply(response.status, response.body);
    if let Some(seconds) = response.retry_after {
        reply.set_header("retry-after", seconds.to_string());
    }
    reply
}
