//! One outbox's relay, whatever database holds it: take the oldest rows, publish them
//! as CloudEvents (rows that cannot be published as they are go to the dead-letter
//! topic), delete what the broker took. A crash between the publish and the delete
//! publishes those rows again: delivery is at-least-once, consumers dedupe by `ce_id`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shop_broker::{OutgoingMessage, Producer};
use tokio::sync::{Notify, watch};

use super::metrics::OutboxMetrics;
use crate::manifest::OutboxTrigger;

/// Most rows taken per pass, so one pass stays short; a full pass is followed at once
/// by the next.
pub const BATCH: usize = 256;
/// The pause after a failed pass (the database's, or a broker refusal); it doubles
/// while passes keep failing, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The pause after a failed pass, and that commits meanwhile do not cut it short (a
/// failing outbox waits out its backoff); the next failure waits twice as long.
fn backing_off(backoff: &mut Duration) -> (Duration, bool) {
    let pause = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    (pause, false)
}

/// An outbox row, in the documented schema's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub topic: String,
    pub key: Option<String>,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub created_at: String,
    /// A JSON object of further headers (`traceparent`, `content-type`, …).
    pub headers: Option<String>,
}

/// Why a store could not take or finish a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreError(pub String);

/// Where an outbox lives: SQLite through the host's own session, or PostgreSQL.
#[async_trait]
pub trait OutboxStore: Send {
    /// Up to `limit` rows, oldest first, held for this relay until [`finish`]; `None`
    /// when another relay (another host replica) is publishing this outbox now. A
    /// table that does not exist yet holds no rows.
    ///
    /// [`finish`]: OutboxStore::finish
    async fn take(&mut self, limit: usize) -> Result<Option<Vec<OutboxRow>>, StoreError>;
    /// Deletes the rows numbered `published` and lets go of what [`take`] held.
    ///
    /// [`take`]: OutboxStore::take
    async fn finish(&mut self, published: &[i64]) -> Result<(), StoreError>;
    /// Rows waiting now.
    async fn count(&mut self) -> Result<i64, StoreError>;
}

/// The record a row becomes, or why it cannot be one as it is.
pub fn record(row: &OutboxRow, outbox: &OutboxTrigger) -> Result<OutgoingMessage, String> {
    if !outbox.topics.contains(&row.topic) {
        return Err(format!(
            "topic `{}` is not one of the outbox's topics ({})",
            row.topic,
            outbox.topics.join(", ")
        ));
    }
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("ce_specversion".into(), b"1.0".to_vec()),
        ("ce_id".into(), row.event_id.clone().into_bytes()),
        ("ce_source".into(), outbox.source.clone().into_bytes()),
        ("ce_type".into(), row.event_type.clone().into_bytes()),
        ("ce_time".into(), row.created_at.clone().into_bytes()),
    ];
    if let Some(key) = &row.key {
        headers.push(("ce_subject".into(), key.clone().into_bytes()));
    }
    let extra = match row.headers.as_deref().map(str::trim) {
        None | Some("") => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(extra)) => extra,
            _ => return Err("`headers` is not a JSON object of strings".into()),
        },
    };
    if !extra.contains_key("content-type") {
        headers.push(("content-type".into(), b"application/json".to_vec()));
    }
    for (name, value) in extra {
        let Some(value) = value.as_str() else {
            return Err(format!("header `{name}` is not a string"));
        };
        // The envelope is the relay's to write: a row cannot pass for another event.
        if name.starts_with("ce_") {
            return Err(format!("header `{name}` is set from the row's columns, not `headers`"));
        }
        headers.push((name, value.as_bytes().to_vec()));
    }
    Ok(OutgoingMessage {
        topic: row.topic.clone(),
        key: row.key.clone().map(String::into_bytes),
        payload: row.payload.clone(),
        headers,
    })
}

/// A row that cannot be published, as the dead-letter record: its payload, what could
/// be read of it, and why.
fn dead_letter(row: &OutboxRow, outbox: &OutboxTrigger, error: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: outbox.dead_letter_topic.clone(),
        key: row.key.clone().map(String::into_bytes),
        payload: row.payload.clone(),
        headers: vec![
            ("x-error".into(), error.as_bytes().to_vec()),
            ("x-outbox-table".into(), outbox.table.clone().into_bytes()),
            ("x-outbox-topic".into(), row.topic.clone().into_bytes()),
            ("ce_id".into(), row.event_id.clone().into_bytes()),
            ("ce_type".into(), row.event_type.clone().into_bytes()),
        ],
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Rows taken, and how many of them left the outbox (published or dead-lettered).
    Done { taken: usize, published: usize },
    /// Another relay holds the outbox.
    Busy,
}

/// Takes up to [`BATCH`] rows, publishes them, deletes what the broker took. The
/// records are handed to the producer in row order, all at once: the producer keeps
/// that order per partition (Kafka's is idempotent), so a key's events arrive in the
/// order they were written. A row the broker refuses stays for the next pass.
pub async fn pass(
    store: &mut dyn OutboxStore,
    producer: &dyn Producer,
    outbox: &OutboxTrigger,
    metrics: &OutboxMetrics,
) -> Result<Pass, StoreError> {
    let Some(rows) = store.take(BATCH).await? else {
        return Ok(Pass::Busy);
    };
    if !rows.is_empty() {
        crate::crash_points::reached(crate::crash_points::OUTBOX_TAKEN);
    }
    let sends = rows.iter().map(|row| async move {
        let (mut message, broken) = match record(row, outbox) {
            Ok(message) => (message, false),
            Err(error) => {
                tracing::error!(
                    outbox = %outbox.table, component = %outbox.component, event_id = %row.event_id,
                    dead_letter_topic = %outbox.dead_letter_topic, error, "outbox row cannot be published; dead-lettering it"
                );
                (dead_letter(row, outbox, &error), true)
            }
        };
        // A child of the trace the row names (its writer's).
        let mut span = crate::capability::messaging::publish_span(&mut message, &outbox.component, None);
        if span.recording() {
            span.set("shop.outbox", outbox.table.clone());
        }
        match crate::capability::messaging::published(span, producer.publish(message).await) {
            Ok(_) => Some((row, broken)),
            Err(e) => {
                tracing::warn!(outbox = %outbox.table, component = %outbox.component, event_id = %row.event_id, error = %e, "outbox publish failed; the row stays");
                None
            }
        }
    });
    let sent: Vec<(&OutboxRow, bool)> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    let published: Vec<i64> = sent.iter().map(|(row, _)| row.seq).collect();
    if !published.is_empty() {
        crate::crash_points::reached(crate::crash_points::OUTBOX_PUBLISHED);
    }
    store.finish(&published).await?;
    let now = chrono::Utc::now();
    for (row, broken) in &sent {
        match broken {
            true => metrics.dead_lettered.inc(),
            false => {
                metrics.published.inc();
                if let Ok(written) = chrono::DateTime::parse_from_rfc3339(&row.created_at) {
                    let waited = (now - written.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0);
                    metrics.latency.observe(waited.max(0) as f64 / 1e6);
                }
            }
        }
    }
    Ok(Pass::Done {
        taken: rows.len(),
        published: published.len(),
    })
}

/// Relays `store` until `stop`: a pass at once (what a dead process left goes out
/// without waiting), then after every wake-up (a commit, a `NOTIFY`), every poll
/// interval (for writers no signal reaches: another process on a shared SQLite file,
/// a lost `NOTIFY`), and straight again after a full pass. Failed passes back off,
/// commits or not.
pub async fn run(
    mut store: Box<dyn OutboxStore>,
    producer: Arc<dyn Producer>,
    outbox: OutboxTrigger,
    metrics: OutboxMetrics,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (pause, wakeable) = match pass(store.as_mut(), producer.as_ref(), &outbox, &metrics).await {
            Ok(Pass::Done { taken, published }) => {
                let left = taken - published;
                metrics.backlog.set(match taken == BATCH {
                    true => store.count().await.unwrap_or(left as i64),
                    false => left as i64,
                });
                if published < taken {
                    // The broker refused some: again after a pause, not at once.
                    backing_off(&mut backoff)
                } else if taken == BATCH {
                    backoff = FIRST_BACKOFF;
                    continue;
                } else {
                    backoff = FIRST_BACKOFF;
                    (outbox.poll_interval, true)
                }
            }
            Ok(Pass::Busy) => (outbox.poll_interval, true),
            Err(StoreError(error)) => {
                metrics.errors.inc();
                tracing::warn!(outbox = %outbox.table, component = %outbox.component, error, retry_in = ?backoff, "outbox relay pass failed");
                backing_off(&mut backoff)
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = wake.notified(), if wakeable => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use shop_broker::{BrokerError, Delivery};

    use super::*;

    fn outbox() -> OutboxTrigger {
        OutboxTrigger {
            component: "shop".into(),
            database: Some("shop".into()),
            database_url_variable: None,
            table: "outbox".into(),
            notify_channel: "outbox".into(),
            source: "/shop".into(),
            topics: vec!["t".into()],
            dead_letter_topic: "shop.outbox.dlq".into(),
            poll_interval: Duration::from_secs(1),
        }
    }

    fn row(seq: i64, topic: &str, key: &str, headers: Option<&str>) -> OutboxRow {
        OutboxRow {
            seq,
            event_id: format!("e{seq}"),
            topic: topic.into(),
            key: Some(key.into()),
            event_type: "shop.thing.done".into(),
            payload: br#"{"n":1}"#.to_vec(),
            created_at: "2026-12-08T00:00:00Z".into(),
            headers: headers.map(str::to_string),
        }
    }

    /// Rows in memory; `finish` deletes.
    #[derive(Default)]
    struct Rows(Vec<OutboxRow>, Option<Vec<i64>>);

    #[async_trait]
    impl OutboxStore for Rows {
        async fn take(&mut self, limit: usize) -> Result<Option<Vec<OutboxRow>>, StoreError> {
            Ok(Some(self.0.iter().take(limit).cloned().collect()))
        }
        async fn finish(&mut self, published: &[i64]) -> Result<(), StoreError> {
            self.0.retain(|r| !published.contains(&r.seq));
            self.1 = Some(published.to_vec());
            Ok(())
        }
        async fn count(&mut self) -> Result<i64, StoreError> {
            Ok(self.0.len() as i64)
        }
    }

    /// Takes what it is given, refusing the event ids in `refuse`.
    #[derive(Default)]
    struct Broker {
        sent: Mutex<Vec<OutgoingMessage>>,
        refuse: Vec<&'static str>,
    }

    #[async_trait]
    impl Producer for Broker {
        async fn publish(&self, message: OutgoingMessage) -> Result<Delivery, BrokerError> {
            let id = header(&message, "ce_id");
            if self.refuse.iter().any(|r| Some(r.to_string()) == id) {
                return Err(BrokerError::Unavailable("down".into()));
            }
            self.sent.lock().unwrap().push(message);
            Ok(Delivery {
                partition: 0,
                offset: 0,
            })
        }
    }

    fn header(message: &OutgoingMessage, name: &str) -> Option<String> {
        message
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }

    #[test]
    fn a_row_becomes_a_cloudevent_with_its_extra_headers() {
        let message = record(&row(1, "t", "k1", Some(r#"{"traceparent":"00-ab-cd-01"}"#)), &outbox()).unwrap();
        assert_eq!(
            (message.topic.as_str(), message.key.as_deref()),
            ("t", Some(&b"k1"[..]))
        );
        for (name, value) in [
            ("ce_specversion", "1.0"),
            ("ce_id", "e1"),
            ("ce_source", "/shop"),
            ("ce_type", "shop.thing.done"),
            ("ce_time", "2026-12-08T00:00:00Z"),
            ("ce_subject", "k1"),
            ("content-type", "application/json"),
            ("traceparent", "00-ab-cd-01"),
        ] {
            assert_eq!(header(&message, name).as_deref(), Some(value), "{name}");
        }
        let own_type = record(&row(2, "t", "k", Some(r#"{"content-type":"text/plain"}"#)), &outbox()).unwrap();
        let types: Vec<_> = own_type.headers.iter().filter(|(n, _)| n == "content-type").collect();
        assert_eq!(types.len(), 1, "the row's content type replaces the default");
    }

    #[test]
    fn rows_that_cannot_be_published_as_they_are_say_why() {
        for (row, expected) in [
            (row(1, "elsewhere", "k", None), "not one of the outbox's topics"),
            (row(2, "t", "k", Some("[1]")), "not a JSON object"),
            (row(3, "t", "k", Some(r#"{"n":1}"#)), "header `n` is not a string"),
            (
                row(4, "t", "k", Some(r#"{"ce_id":"other"}"#)),
                "set from the row's columns",
            ),
        ] {
            let error = record(&row, &outbox()).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[tokio::test]
    async fn a_pass_publishes_in_order_dead_letters_broken_rows_and_keeps_refused_ones() {
        let metrics = OutboxMetrics::unregistered();
        let mut store = Rows(
            vec![
                row(1, "t", "a", None),
                row(2, "nope", "a", None),
                row(3, "t", "b", None),
                row(4, "t", "a", None),
            ],
            None,
        );
        let broker = Broker {
            refuse: vec!["e3"],
            ..Broker::default()
        };
        let done = pass(&mut store, &broker, &outbox(), &metrics).await.unwrap();
        assert_eq!(done, Pass::Done { taken: 4, published: 3 });
        let sent: Vec<(String, Option<String>)> = broker
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.topic.clone(), header(m, "ce_id")))
            .collect();
        assert_eq!(
            sent,
            [
                ("t".to_string(), Some("e1".to_string())),
                ("shop.outbox.dlq".to_string(), Some("e2".to_string())),
                ("t".to_string(), Some("e4".to_string())),
            ]
        );
        assert_eq!(
            store.1.as_deref(),
            Some(&[1, 2, 4][..]),
            "deleted: what the broker took"
        );
        assert_eq!(
            store.0,
            [row(3, "t", "b", None)],
            "the refused row waits for the next pass"
        );
        assert_eq!((metrics.published.get(), metrics.dead_lettered.get()), (2, 1));

        let healthy = Broker::default();
        assert_eq!(
            pass(&mut store, &healthy, &outbox(), &metrics).await.unwrap(),
            Pass::Done { taken: 1, published: 1 }
        );
        assert!(store.0.is_empty());
    }

    /// Refuses everything, counting the attempts.
    #[derive(Default)]
    struct Down(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Producer for Down {
        async fn publish(&self, _: OutgoingMessage) -> Result<Delivery, BrokerError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(BrokerError::Unavailable("down".into()))
        }
    }

    /// With the broker down, commits keep coming (a wake-up every 5 ms) but the relay
    /// tries again only after its growing pause: at 0, 100 and 300 ms in the 350 ms it
    /// runs, where every wake-up would have been some 70 attempts.
    #[tokio::test]
    async fn a_refusing_broker_is_tried_again_after_a_growing_pause_whatever_commits() {
        let down = Arc::new(Down::default());
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let relay = tokio::spawn(run(
            Box::new(Rows(vec![row(1, "t", "k", None)], None)),
            down.clone(),
            outbox(),
            OutboxMetrics::unregistered(),
            wake.clone(),
            stopped,
        ));
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(350) {
            wake.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        relay.await.unwrap();
        let attempts = down.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=4).contains(&attempts), "{attempts} attempts");
    }
}
