//! Test component (WASI P3, spin-sdk 7): echoes the request as JSON; a path ending `/hello` answers `hello from p3`.
#![cfg(target_arch = "wasm32")]

use serde_json::{Map, Value, json};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{HeaderValue, Request, Response, Result};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> Result<Response<String>> {
    if req.uri().path().ends_with("/hello") {
        return Ok(respond("text/plain", "hello from p3".to_owned()));
    }
    let (parts, body) = req.into_parts();
    let body = body.bytes().await?;
    // Repeated headers are joined with ", " so that none is lost.
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<_> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_lowercase(), Value::String(values.join(", ")));
    }
    let echo = json!({
        "component": "p3-echo",
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    });
    Ok(respond("application/json", echo.to_string()))
}

fn respond(content_type: &'static str, body: String) -> Response<String> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp
}
