//! The admin listener: `/healthz` (the process is up), `/readyz` (triggers are
//! serving, not draining, and every Kafka trigger is subscribed) and `/metrics` (Prometheus text).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Whether the host should get traffic: it has started serving, is not draining,
/// and every Kafka trigger holds a subscription.
#[derive(Default)]
pub struct Readiness {
    serving: AtomicBool,
    /// Kafka triggers (component and group) not subscribed right now: starting, or
    /// restarting after their consumer failed.
    unsubscribed: Mutex<BTreeSet<String>>,
}

impl Readiness {
    pub fn set(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Marks the Kafka trigger `trigger` (its component and group) as subscribed or not.
    pub fn set_subscribed(&self, trigger: &str, subscribed: bool) {
        let mut unsubscribed = self.unsubscribed.lock().unwrap_or_else(|e| e.into_inner());
        match subscribed {
            true => unsubscribed.remove(trigger),
            false => unsubscribed.insert(trigger.to_string()),
        };
    }

    #[cfg(test)]
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why the host is not ready, for the `/readyz` body.
    fn not_ready_because(&self) -> Option<String> {
        let unsubscribed = self.unsubscribed.lock().unwrap_or_else(|e| e.into_inner());
        if !unsubscribed.is_empty() {
            let names: Vec<&str> = unsubscribed.iter().map(String::as_str).collect();
            return Some(format!("kafka triggers not subscribed: {}", names.join(", ")));
        }
        (!self.serving.load(Ordering::SeqCst)).then(|| "not serving (starting or draining)".to_string())
    }
}

async fn respond(path: &str, metrics: &Arc<Metrics>, readiness: &Readiness) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => match readiness.not_ready_because() {
            None => (200, "text/plain", "ready\n".to_string()),
            Some(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
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
            let (metrics, readiness) = (metrics.clone(), readiness.clone());
            async move { Ok::<_, Infallible>(respond(request.uri().path(), &metrics, &readiness).await) }
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

    #[tokio::test]
    async fn readiness_follows_the_flag() {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        assert_eq!(respond("/readyz", &metrics, &readiness).await.status(), 503);
        readiness.set(true);
        assert_eq!(respond("/readyz", &metrics, &readiness).await.status(), 200);
        assert_eq!(respond("/healthz", &metrics, &readiness).await.status(), 200);
        assert_eq!(respond("/nope", &metrics, &readiness).await.status(), 404);
    }

    #[tokio::test]
    async fn an_unsubscribed_kafka_trigger_holds_readiness_back() {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        readiness.set(true);
        readiness.set_subscribed("orders-events", false);
        let answer = respond("/readyz", &metrics, &readiness).await;
        assert_eq!(answer.status(), 503);
        readiness.set_subscribed("orders-events", true);
        assert_eq!(respond("/readyz", &metrics, &readiness).await.status(), 200);
    }
}
