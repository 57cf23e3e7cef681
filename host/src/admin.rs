//! The admin listener: `/healthz` (the process is up), `/readyz` (triggers are
//! serving and not draining) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn respond(path: &str, metrics: &Metrics, readiness: &Readiness) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" if readiness.is_ready() => (200, "text/plain", "ready\n".to_string()),
        "/readyz" => (503, "text/plain", "not ready\n".to_string()),
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Arc<Readiness>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = respond(request.uri().path(), &metrics, &readiness);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag() {
        let metrics = Metrics::new();
        let readiness = Readiness::default();
        assert_eq!(respond("/readyz", &metrics, &readiness).status(), 503);
        readiness.set(true);
        assert_eq!(respond("/readyz", &metrics, &readiness).status(), 200);
        assert_eq!(respond("/healthz", &metrics, &readiness).status(), 200);
        assert_eq!(respond("/nope", &metrics, &readiness).status(), 404);
    }
}
