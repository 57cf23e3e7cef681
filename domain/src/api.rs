//! What the services' HTTP APIs share: errors as a status and the shop's JSON error
//! body (`{"error": {"code", "message"}}`), and JSON responses.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (a 429 or 503 that will pass).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// The storage behind the service failed: retrying later may work.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        Self::new(503, "unavailable", format!("storage unavailable: {detail}"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(405, "method_not_allowed", format!("allowed: {allowed}"))
    }

    /// Parses a JSON object body strictly (the types deny unknown fields), as a 400
    /// naming the problem. Anything but an object is refused: serde would also fill a
    /// struct from an array of its fields.
    pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Self> {
        let invalid = |e: serde_json::Error| Self::bad_request("invalid_json", format!("invalid request body: {e}"));
        let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
        if !value.is_object() {
            return Err(Self::bad_request(
                "invalid_json",
                "invalid request body: expected a JSON object",
            ));
        }
        serde_json::from_value(value).map_err(invalid)
    }

    pub fn body(&self) -> Vec<u8> {
        json!({ "error": { "code": self.code, "message": self.message } })
            .to_string()
            .into_bytes()
    }
}

impl From<crate::sql::SqlError> for ApiError {
    fn from(e: crate::sql::SqlError) -> Self {
        ApiError::unavailable(e)
    }
}

/// A JSON response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("responses serialize"),
        }
    }

    pub fn error(e: &ApiError) -> Self {
        let mut headers = vec![("content-type".into(), "application/json".into())];
        if let Some(seconds) = e.retry_after {
            headers.push(("retry-after".into(), seconds.to_string()));
        }
        Self {
            status: e.status,
            headers,
            body: e.body(),
        }
    }

    /// `result` as a response: the value, or the error's status and body.
    pub fn from_result(result: Result<Response, ApiError>) -> Self {
        result.unwrap_or_else(|e| Self::error(&e))
    }

    /// The body as JSON (for tests).
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pair {
        a: Option<i64>,
        b: Option<i64>,
    }

    #[test]
    fn only_a_json_object_fills_a_struct() {
        let pair = ApiError::parse::<Pair>(br#"{"a": 1}"#).unwrap();
        assert_eq!((pair.a, pair.b), (Some(1), None));
        for body in [
            &b"[null, null]"[..],
            b"[1, 2]",
            b"null",
            b"7",
            b"\"a\"",
            b"{",
            b"{\"c\": 1}",
        ] {
            let refused = ApiError::parse::<Pair>(body).unwrap_err();
            assert_eq!(
                (refused.status, refused.code),
                (400, "invalid_json"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
