//! API errors: a status and the shop's JSON error body.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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

    pub fn body(&self) -> Vec<u8> {
        json!({ "error": { "code": self.code, "message": self.message } })
            .to_string()
            .into_bytes()
    }
}
