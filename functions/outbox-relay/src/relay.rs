//! Reading the outbox and publishing it, over small traits so it is tested natively.

use shop_domain::{CONTENT_TYPE, Envelope};

/// Most events published per tick, so one tick stays short.
pub const BATCH: i64 = 200;

pub const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS outbox_relay (id INTEGER PRIMARY KEY CHECK (id = 0), last_seq INTEGER NOT NULL)";

/// An outbox row as services write it (see the products catalog's schema).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub topic: String,
    pub key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub created_at: String,
}

pub trait OutboxStore {
    /// Creates the bookmark table if needed and returns the last published `seq`.
    fn bookmark(&self) -> Result<i64, String>;
    fn rows_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, String>;
    fn set_bookmark(&self, seq: i64) -> Result<(), String>;
}

pub trait Publisher {
    fn publish(&self, topic: &str, key: &str, payload: &[u8], headers: Vec<(String, String)>) -> Result<(), String>;
}

/// The headers of a row: its CloudEvents envelope and content type.
pub fn headers(row: &OutboxRow, source: &str) -> Vec<(String, String)> {
    let envelope = Envelope {
        id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        source: source.to_string(),
        time: row.created_at.clone(),
        subject: Some(row.key.clone()),
    };
    let mut headers = envelope.to_headers();
    headers.push(("content-type".into(), CONTENT_TYPE.into()));
    headers
}

/// Publishes up to [`BATCH`] pending rows in order; stops at the first failure (the
/// rest waits for the next tick). Returns how many were published.
pub fn relay(store: &impl OutboxStore, publisher: &impl Publisher, source: &str) -> Result<usize, String> {
    let last = store.bookmark()?;
    let rows = store.rows_after(last, BATCH)?;
    for (published, row) in rows.iter().enumerate() {
        if let Err(e) = publisher.publish(&row.topic, &row.key, &row.payload, headers(row, source)) {
            return if published == 0 {
                Err(format!("publishing outbox seq {}: {e}", row.seq))
            } else {
                Ok(published)
            };
        }
        store.set_bookmark(row.seq)?;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct MemoryOutbox {
        rows: Vec<OutboxRow>,
        bookmark: RefCell<i64>,
    }

    impl OutboxStore for MemoryOutbox {
        fn bookmark(&self) -> Result<i64, String> {
            Ok(*self.bookmark.borrow())
        }
        fn rows_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, String> {
            Ok(self
                .rows
                .iter()
                .filter(|r| r.seq > seq)
                .take(limit as usize)
                .cloned()
                .collect())
        }
        fn set_bookmark(&self, seq: i64) -> Result<(), String> {
            *self.bookmark.borrow_mut() = seq;
            Ok(())
        }
    }

    type Headers = Vec<(String, String)>;

    /// Accepts `accept` publishes, then fails.
    struct Flaky {
        accept: usize,
        sent: RefCell<Vec<(String, String, Headers)>>,
    }

    impl Publisher for Flaky {
        fn publish(&self, topic: &str, key: &str, _: &[u8], headers: Vec<(String, String)>) -> Result<(), String> {
            if self.sent.borrow().len() >= self.accept {
                return Err("broker unavailable".into());
            }
            self.sent.borrow_mut().push((topic.into(), key.into(), headers));
            Ok(())
        }
    }

    fn row(seq: i64) -> OutboxRow {
        OutboxRow {
            seq,
            event_id: format!("e{seq}"),
            topic: "shop.products".into(),
            key: format!("p{seq}"),
            event_type: "shop.product.created".into(),
            payload: b"{}".to_vec(),
            created_at: "2026-11-22T00:00:00Z".into(),
        }
    }

    #[test]
    fn rows_are_published_in_order_and_a_failure_resumes_where_it_stopped() {
        let outbox = MemoryOutbox {
            rows: (1..=5).map(row).collect(),
            bookmark: RefCell::new(0),
        };
        let flaky = Flaky {
            accept: 3,
            sent: RefCell::default(),
        };
        assert_eq!(relay(&outbox, &flaky, "/products"), Ok(3));
        assert_eq!(*outbox.bookmark.borrow(), 3);
        let err = relay(&outbox, &flaky, "/products").unwrap_err();
        assert!(err.contains("seq 4") && err.contains("unavailable"), "{err}");
        let healthy = Flaky {
            accept: 10,
            sent: RefCell::default(),
        };
        assert_eq!(relay(&outbox, &healthy, "/products"), Ok(2));
        let keys: Vec<String> = healthy.sent.borrow().iter().map(|(_, k, _)| k.clone()).collect();
        assert_eq!(keys, ["p4", "p5"], "exactly the rest, in order");
        assert_eq!(relay(&outbox, &healthy, "/products"), Ok(0));

        let headers = &healthy.sent.borrow()[0].2;
        let envelope = Envelope::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!((envelope.id.as_str(), envelope.source.as_str()), ("e4", "/products"));
        assert_eq!(envelope.subject.as_deref(), Some("p4"));
        assert!(headers.contains(&("content-type".into(), "application/json".into())));
    }
}
