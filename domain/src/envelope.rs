//! CloudEvents 1.0 in binary content mode over Kafka: the attributes travel as `ce_*`
//! headers (in `wasi:messaging` metadata), the event data as the JSON value.

use std::fmt;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";

/// The CloudEvents attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    pub source: String,
    /// RFC 3339.
    pub time: String,
    /// The aggregate the event is about (order id, user id, …).
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    Missing(&'static str),
    UnsupportedSpecVersion(String),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Missing(h) => write!(f, "not a CloudEvent: header `{h}` is missing"),
            EnvelopeError::UnsupportedSpecVersion(v) => write!(f, "unsupported CloudEvents specversion `{v}`"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl Envelope {
    /// The `ce_*` headers, in the order CloudEvents lists the attributes.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![
            ("ce_specversion".to_string(), SPEC_VERSION.to_string()),
            ("ce_id".to_string(), self.id.clone()),
            ("ce_source".to_string(), self.source.clone()),
            ("ce_type".to_string(), self.event_type.clone()),
            ("ce_time".to_string(), self.time.clone()),
        ];
        if let Some(subject) = &self.subject {
            headers.push(("ce_subject".to_string(), subject.clone()));
        }
        headers
    }

    /// Reads the attributes back; other headers are ignored.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, EnvelopeError> {
        let (mut spec, mut id, mut source, mut event_type, mut time, mut subject) =
            (None, None, None, None, None, None);
        for (name, value) in headers {
            let slot = match name {
                "ce_specversion" => &mut spec,
                "ce_id" => &mut id,
                "ce_source" => &mut source,
                "ce_type" => &mut event_type,
                "ce_time" => &mut time,
                "ce_subject" => &mut subject,
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        match spec.as_deref() {
            None => return Err(EnvelopeError::Missing("ce_specversion")),
            Some(SPEC_VERSION) => {}
            Some(other) => return Err(EnvelopeError::UnsupportedSpecVersion(other.to_string())),
        }
        Ok(Self {
            id: id.ok_or(EnvelopeError::Missing("ce_id"))?,
            source: source.ok_or(EnvelopeError::Missing("ce_source"))?,
            event_type: event_type.ok_or(EnvelopeError::Missing("ce_type"))?,
            time: time.ok_or(EnvelopeError::Missing("ce_time"))?,
            subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_missing_ones_are_named() {
        let envelope = Envelope {
            id: "e-1".into(),
            event_type: "shop.order.placed".into(),
            source: "/orders".into(),
            time: "2026-11-22T03:18:37Z".into(),
            subject: Some("order-1".into()),
        };
        let headers = envelope.to_headers();
        let back = Envelope::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, envelope);
        let without_id: Vec<_> = headers.iter().filter(|(k, _)| k != "ce_id").collect();
        assert_eq!(
            Envelope::from_headers(without_id.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            Err(EnvelopeError::Missing("ce_id"))
        );
        assert!(matches!(
            Envelope::from_headers([("ce_specversion", "0.3")]),
            Err(EnvelopeError::UnsupportedSpecVersion(_))
        ));
    }
}
