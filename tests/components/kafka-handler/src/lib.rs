//! Test component (WASI P2, spin-sdk 5): a `wasi:messaging` incoming handler for the
//! Kafka trigger. The JSON payload tells the handler how to behave (fail, trap, sleep,
//! publish), and every call leaves rows in the SQLite `default` database so tests can
//! count retries, spot duplicate deliveries and inspect what the host passed in:
//!
//! - `attempts`: one row per call, written first (even for an invalid payload).
//! - `handled`: one row per successful call, with topic, partition, offset, key and metadata.
//! - `published`: the outcome of the optional publish ("ok" or the error's Debug text).
//!
//! Payload: `{"id": string, "seq": int?, "fail_times": int?, "always_fail": bool?,
//! "trap": bool?, "sleep_ms": int?, "publish": {"topic": string, "data": string, "key": string?}?}`.

use serde::Deserialize;
use spin_sdk::sqlite::{Connection, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

spin_sdk::wit_bindgen::generate!({
    world: "kafka-handler",
    path: "../../../wit/shop-messaging",
    runtime_path: "spin_sdk::wit_bindgen::rt",
    generate_all,
});

use exports::wasi::messaging::incoming_handler::Guest;
use wasi::messaging::producer;
use wasi::messaging::types::{Client, Error, Message};

/// What a test asks of one call, decoded from the message payload.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct Payload {
    id: String,
    seq: Option<i64>,
    /// Fail the first N attempts for this id, then succeed.
    fail_times: Option<i64>,
    always_fail: Option<bool>,
    trap: Option<bool>,
    sleep_ms: Option<u64>,
    publish: Option<Publish>,
}

/// A message to send before the call succeeds.
#[derive(Debug, PartialEq, Deserialize)]
struct Publish {
    topic: String,
    data: String,
    key: Option<String>,
}

impl Payload {
    fn parse(data: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }
}

/// The id recorded for a payload that is not valid JSON: its bytes in hex.
fn invalid_id(data: &[u8]) -> String {
    if data.is_empty() {
        return "invalid".to_string();
    }
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Value of the first metadata entry named `name`.
fn lookup<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Metadata as a JSON array of `[key, value]` pairs, in order.
fn metadata_json(metadata: &[(String, String)]) -> String {
    let pairs: Vec<[&str; 2]> = metadata.iter().map(|(k, v)| [k.as_str(), v.as_str()]).collect();
    serde_json::to_string(&pairs).unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn instance() -> String {
    spin_sdk::variables::get("instance").unwrap_or_else(|_| "unknown".to_string())
}

fn text(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::Text(v.to_string()))
}

fn integer(value: Option<i64>) -> Value {
    value.map_or(Value::Null, Value::Integer)
}

fn other(context: &str, e: impl std::fmt::Debug) -> Error {
    Error::Other(format!("{context}: {e:?}"))
}

/// The component's tables in the `default` database.
struct Records {
    db: Connection,
}

impl Records {
    fn open() -> Result<Self, Error> {
        let db = Connection::open_default().map_err(|e| other("open sqlite", e))?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS attempts (id TEXT, attempt INTEGER, instance TEXT, at_ms INTEGER)",
            "CREATE TABLE IF NOT EXISTS handled (id TEXT, topic TEXT, part INTEGER, off INTEGER, msg_key TEXT, \
             seq INTEGER, instance TEXT, content_type TEXT, metadata TEXT, at_ms INTEGER)",
            "CREATE TABLE IF NOT EXISTS published (id TEXT, topic TEXT, outcome TEXT)",
        ] {
            db.execute(ddl, &[]).map_err(|e| other("create table", e))?;
        }
        Ok(Self { db })
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<(), Error> {
        self.db.execute(sql, params).map(drop).map_err(|e| other(sql, e))
    }

    /// Logs this call and returns its attempt number for `id` (1 for the first call).
    fn attempt(&self, id: &str, instance: &str) -> Result<i64, Error> {
        let id = Value::Text(id.to_string());
        self.execute(
            "INSERT INTO attempts (id, attempt, instance, at_ms) \
             VALUES (?, (SELECT COUNT(*) + 1 FROM attempts WHERE id = ?), ?, ?)",
            &[
                id.clone(),
                id.clone(),
                Value::Text(instance.to_string()),
                Value::Integer(now_ms()),
            ],
        )?;
        let result = self
            .db
            .execute("SELECT COUNT(*) FROM attempts WHERE id = ?", &[id])
            .map_err(|e| other("count attempts", e))?;
        Ok(result.rows.first().and_then(|row| row.get::<i64>(0)).unwrap_or(0))
    }
}

/// Sends `publish`, tagging it with its origin and the incoming CloudEvent id, if any.
fn send(publish: &Publish, incoming: &[(String, String)]) -> Result<(), Error> {
    let client = Client::connect("kafka")?;
    let message = Message::new(publish.data.as_bytes());
    if let Some(key) = &publish.key {
        message.add_metadata("kafka.key", key);
    }
    message.add_metadata("x-source", "kafka-handler");
    if let Some(ce_id) = lookup(incoming, "ce_id") {
        message.add_metadata("x-caused-by", ce_id);
    }
    producer::send(&client, &publish.topic, message)
}

struct KafkaHandler;

impl Guest for KafkaHandler {
    fn handle(message: Message) -> Result<(), Error> {
        let data = message.data();
        let metadata = message.metadata().unwrap_or_default();
        let instance = instance();
        let records = Records::open()?;

        let parsed = Payload::parse(&data);
        let id = match &parsed {
            Ok(payload) => payload.id.clone(),
            Err(_) => invalid_id(&data),
        };
        let attempt = records.attempt(&id, &instance)?;
        let payload = parsed.map_err(|e| Error::Other(format!("invalid payload: {e}")))?;

        if let Some(ms) = payload.sleep_ms {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if payload.trap == Some(true) {
            panic!("trapping on purpose (id {id})");
        }
        if let Some(n) = payload.fail_times
            && attempt <= n
        {
            return Err(Error::Other(format!("failing on purpose (attempt {attempt} of {n})")));
        }
        if payload.always_fail == Some(true) {
            return Err(Error::Other(format!("always failing on purpose (attempt {attempt})")));
        }

        if let Some(publish) = &payload.publish {
            let outcome = match send(publish, &metadata) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("{e:?}"),
            };
            records.execute(
                "INSERT INTO published (id, topic, outcome) VALUES (?, ?, ?)",
                &[
                    Value::Text(id.clone()),
                    Value::Text(publish.topic.clone()),
                    Value::Text(outcome),
                ],
            )?;
        }

        let number = |name| lookup(&metadata, name).and_then(|v| v.parse::<i64>().ok());
        records.execute(
            "INSERT INTO handled (id, topic, part, off, msg_key, seq, instance, content_type, metadata, at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::Text(id),
                text(message.topic().as_deref()),
                integer(number("kafka.partition")),
                integer(number("kafka.offset")),
                text(lookup(&metadata, "kafka.key")),
                integer(payload.seq),
                Value::Text(instance),
                text(message.content_type().as_deref()),
                Value::Text(metadata_json(&metadata)),
                Value::Integer(now_ms()),
            ],
        )?;
        Ok(())
    }
}

// The export's symbols link only for wasm32; natively the crate keeps its unit tests.
#[cfg(target_arch = "wasm32")]
export!(KafkaHandler);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_payload() {
        let payload = Payload::parse(br#"{"id": "a"}"#).unwrap();
        assert_eq!(
            payload,
            Payload {
                id: "a".into(),
                ..Payload::default()
            }
        );
    }

    #[test]
    fn parses_every_field() {
        let payload = Payload::parse(
            br#"{"id": "b", "seq": 3, "fail_times": 2, "always_fail": false, "trap": false, "sleep_ms": 50,
                 "publish": {"topic": "out", "data": "hi", "key": "k"}, "extra": true}"#,
        )
        .unwrap();
        assert_eq!(payload.seq, Some(3));
        assert_eq!(payload.fail_times, Some(2));
        assert_eq!(payload.sleep_ms, Some(50));
        let publish = payload.publish.unwrap();
        assert_eq!((publish.topic.as_str(), publish.data.as_str()), ("out", "hi"));
        assert_eq!(publish.key.as_deref(), Some("k"));
    }

    #[test]
    fn rejects_invalid_payloads() {
        assert!(Payload::parse(b"not json").is_err());
        assert!(Payload::parse(br#"{"seq": 1}"#).is_err());
        assert_eq!(invalid_id(b"\x00hi"), "006869");
        assert_eq!(invalid_id(b""), "invalid");
    }

    #[test]
    fn metadata_keeps_order_as_pairs() {
        let metadata = vec![
            ("ce_id".to_string(), "1".to_string()),
            ("kafka.offset".to_string(), "7".to_string()),
        ];
        assert_eq!(metadata_json(&metadata), r#"[["ce_id","1"],["kafka.offset","7"]]"#);
        assert_eq!(lookup(&metadata, "kafka.offset"), Some("7"));
        assert_eq!(lookup(&metadata, "kafka.key"), None);
    }
}
