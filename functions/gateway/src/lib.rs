//! The shop's gateway component: the only public entry point.
//!
//! Today it answers the service index and JSON 404s; authentication, rate limiting
//! and routing to the private services arrive with the shop issues (SPEC §3.1).

pub mod routes;

#[cfg(target_arch = "wasm32")]
mod adapter {
    use spin_sdk::http::{Request, Response};
    use spin_sdk::http_component;

    #[http_component]
    fn handle(req: Request) -> Response {
        let reply = crate::routes::respond(&req.method().to_string(), req.path());
        Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(reply.body.to_string())
            .build()
    }
}
