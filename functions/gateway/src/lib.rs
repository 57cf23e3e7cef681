//! The shop's gateway component: the only public entry point (SPEC §3.1).
//!
//! Today it answers the service index and JSON errors, and forwards catalog reads to
//! the private products service over local service chaining; token verification, role
//! rules, rate limiting and CORS are not built yet, so admin writes are refused.

pub mod routes;

#[cfg(target_arch = "wasm32")]
mod adapter {
    use spin_sdk::http::{Method, Request, Response};
    use spin_sdk::http_component;

    use crate::routes::{Decision, decide};

    /// Response headers of a service worth passing on.
    const PASSED_HEADERS: &[&str] = &["content-type", "location", "x-cache", "allow", "retry-after"];

    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.to_string())
            .build()
    }

    async fn forward(service: &str, req: &Request) -> Response {
        let query = match req.query() {
            "" => String::new(),
            q => format!("?{q}"),
        };
        let mut outbound = Request::builder();
        outbound
            .method(req.method().clone())
            .uri(format!("http://{service}.spin.internal{}{query}", req.path()));
        for name in ["content-type", "x-request-id"] {
            if let Some(value) = req.header(name).and_then(|v| v.as_str()) {
                outbound.header(name, value);
            }
        }
        if *req.method() != Method::Get {
            outbound.body(req.body().to_vec());
        }
        let response: Response = match spin_sdk::http::send(outbound.build()).await {
            Ok(r) => r,
            Err(e) => {
                let body = serde_json::json!({ "error": {
                    "code": "unavailable", "message": format!("the {service} service did not answer: {e}")
                }});
                return json(503, &body);
            }
        };
        let mut reply = Response::builder();
        reply.status(*response.status());
        for (name, value) in response.headers() {
            if PASSED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                && let Some(value) = value.as_str()
            {
                reply.header(name, value);
            }
        }
        reply.body(response.into_body()).build()
    }

    #[http_component]
    async fn handle(req: Request) -> Response {
        match decide(&req.method().to_string(), req.path()) {
            Decision::Reply(reply) => json(reply.status, &reply.body),
            Decision::Forward(service) => forward(service, &req).await,
        }
    }
}
