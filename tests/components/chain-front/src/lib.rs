//! Test component (WASI P2, spin-sdk 5): calls chain-back (or `?target=<url>`) over outbound HTTP and reports the answer.
#![cfg(target_arch = "wasm32")]

use serde_json::{Value, json};
use spin_sdk::http::{Request, Response, send};
use spin_sdk::http_component;

const BACK_URL: &str = "http://chain-back.spin.internal/inner/path?x=1";

#[http_component]
async fn handle(req: Request) -> Response {
    let target = form_urlencoded::parse(req.query().as_bytes())
        .find(|(key, _)| key == "target")
        .map(|(_, url)| url.into_owned())
        .unwrap_or_else(|| BACK_URL.to_owned());
    match send::<_, Response>(Request::get(target).build()).await {
        Ok(back) => {
            let back_body = serde_json::from_slice::<Value>(back.body())
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(back.body()).into_owned()));
            let answer = json!({
                "component": "chain-front",
                "back_status": back.status(),
                "back_body": back_body,
            });
            json_response(200, answer)
        }
        Err(e) => json_response(502, json!({"error": {"code": "upstream", "message": e.to_string()}})),
    }
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}
