//! Reading a client's request body before any component runs, so that what a client
//! does wrong is its answer and not a component's failure: a declared or streamed
//! length past the cap is a 413 as soon as it shows; a body that is cut off or badly
//! framed is a 400; a client that sends too slowly is a 408. Every one is the same
//! JSON error as the rest of the API, and says nothing of the host's internals. (A
//! request with both Content-Length and chunked framing is read by its chunks, as
//! RFC 9112 §6.3 allows: the HTTP parser drops the length.)

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt as _;

use super::invoke::{error_response, full_body};
use crate::capability::outbound_http::{GuestRequest, GuestResponse};

/// Limits on what a client sends.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// For the whole body to arrive.
    pub timeout: Duration,
}

/// The request with its body read into memory, or the error answer.
pub async fn read(
    request: hyper::Request<hyper::body::Incoming>,
    limits: BodyLimits,
) -> Result<GuestRequest, GuestResponse> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body is over {} bytes", limits.max_bytes),
        )
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_bytes as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        limits.timeout,
        http_body_util::Limited::new(body, limits.max_bytes).collect(),
    )
    .await;
    match collected {
        Ok(Ok(body)) => Ok(GuestRequest::from_parts(parts, full_body(body.to_bytes()))),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request body could not be read: it was cut off or badly framed",
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!(
                "the request body did not arrive within {} ms",
                limits.timeout.as_millis()
            ),
        )),
    }
}
