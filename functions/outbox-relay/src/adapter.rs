//! The component side: Spin SQLite for the outbox, `wasi:messaging` for publishing,
//! exported as Spin's cron handler.

use spin_sdk::sqlite::{Connection, Value};

use crate::relay::{self, OutboxRow, OutboxStore, Publisher};

spin_sdk::wit_bindgen::generate!({
    world: "outbox-relay",
    path: "../../wit/shop-messaging",
    runtime_path: "spin_sdk::wit_bindgen::rt",
    generate_all,
});

use wasi::messaging::{producer, types};

struct SqliteOutbox(Connection);

fn error(e: spin_sdk::sqlite::Error) -> String {
    format!("{e:?}")
}

impl OutboxStore for SqliteOutbox {
    fn bookmark(&self) -> Result<i64, String> {
        self.0.execute(relay::SCHEMA, &[]).map_err(error)?;
        let result = self
            .0
            .execute("SELECT last_seq FROM outbox_relay WHERE id = 0", &[])
            .map_err(error)?;
        Ok(result.rows().next().and_then(|r| r.get::<i64>("last_seq")).unwrap_or(0))
    }

    fn rows_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, String> {
        let result = match self.0.execute(
            "SELECT seq, event_id, topic, event_key, event_type, payload, created_at FROM outbox \
             WHERE seq > ? ORDER BY seq LIMIT ?",
            &[Value::Integer(seq), Value::Integer(limit)],
        ) {
            Ok(result) => result,
            // The service creates its outbox on first use: until then there is nothing to send.
            Err(e) if error(e.clone()).contains("no such table: outbox") => return Ok(Vec::new()),
            Err(e) => return Err(error(e)),
        };
        result
            .rows()
            .map(|r| {
                let text = |c: &str| {
                    r.get::<&str>(c)
                        .map(str::to_string)
                        .ok_or(format!("outbox.{c} is not text"))
                };
                Ok(OutboxRow {
                    seq: r.get::<i64>("seq").ok_or("outbox.seq is not an integer")?,
                    event_id: text("event_id")?,
                    topic: text("topic")?,
                    key: text("event_key")?,
                    event_type: text("event_type")?,
                    payload: r
                        .get::<&[u8]>("payload")
                        .map(<[u8]>::to_vec)
                        .ok_or("outbox.payload is not a blob")?,
                    created_at: text("created_at")?,
                })
            })
            .collect()
    }

    fn set_bookmark(&self, seq: i64) -> Result<(), String> {
        self.0
            .execute(
                "INSERT INTO outbox_relay (id, last_seq) VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq",
                &[Value::Integer(seq)],
            )
            .map(drop)
            .map_err(error)
    }
}

struct Messaging(types::Client);

impl Publisher for Messaging {
    fn publish(&self, topic: &str, key: &str, payload: &[u8], headers: Vec<(String, String)>) -> Result<(), String> {
        let message = types::Message::new(payload);
        let mut metadata = vec![("kafka.key".to_string(), key.to_string())];
        for (name, value) in headers {
            if name == "content-type" {
                message.set_content_type(&value);
            } else {
                metadata.push((name, value));
            }
        }
        message.set_metadata(&metadata);
        producer::send(&self.0, topic, message).map_err(|e| format!("{e:?}"))
    }
}

struct Relay;

impl Guest for Relay {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let variable =
            |name: &str| spin_sdk::variables::get(name).map_err(|e| Error::Other(format!("variable `{name}`: {e:?}")));
        let database = variable("database")?;
        let source = variable("source")?;
        let outbox = SqliteOutbox(Connection::open(&database).map_err(|e| Error::Other(error(e)))?);
        let client = types::Client::connect("kafka").map_err(|e| Error::Other(format!("{e:?}")))?;
        relay::relay(&outbox, &Messaging(client), &source)
            .map(drop)
            .map_err(Error::Other)
    }
}

export!(Relay);
