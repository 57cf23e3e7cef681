//! What one client address may hold, capped: open connections (one client holding
//! many idle or slow connections, slowloris, must not take the host's sockets from
//! everyone else; past the cap a connection gets a short 503 JSON answer and is
//! closed) and requests in flight across its connections and HTTP/2 streams (one
//! client must not take every instance slot; past the cap a request gets 429).
//! A connection with no request in flight is closed after a while: one that has sent
//! no request (a silent socket, an HTTP/2 connection that only opened) after the
//! header timeout, one that has after the idle timeout (HTTP/2 between requests;
//! hyper closes an HTTP/1 keep-alive connection by the header timeout already).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// How long a refused client gets to take its 503 before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one client address may hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections per client address; 0: no cap.
    pub max_per_client: usize,
    /// Requests in flight per client address, over all its connections; 0: no cap.
    pub max_requests_per_client: usize,
    /// A request head must arrive within this, or the connection is closed (a new
    /// connection that sends nothing included).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

/// What one connection is doing, for closing it once idle.
pub struct ConnectionActivity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Requests that have started, ever (0: it has sent none yet).
    started: AtomicUsize,
    /// When the last request ended, in ms since `opened`.
    last_end_ms: AtomicU64,
}

/// A request in flight on its connection; dropping it marks the end.
pub struct RequestInFlight(Arc<ConnectionActivity>);

impl ConnectionActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    pub fn begin(self: &Arc<Self>) -> RequestInFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        RequestInFlight(self.clone())
    }

    /// How long the connection has been idle at `now`, `None` while a request is in
    /// flight; and whether it ever sent a request.
    fn idle_for(&self, now: Instant) -> Option<(Duration, bool)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since_open = now.duration_since(self.opened);
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst));
        Some((
            since_open.saturating_sub(last_end),
            self.started.load(Ordering::SeqCst) > 0,
        ))
    }

    /// Resolves once the connection has been idle past its limit: `limits`'s header
    /// timeout before its first request, its idle timeout after.
    pub async fn idle_past(self: Arc<Self>, limits: ConnectionLimits) {
        let tick = limits
            .header_read_timeout
            .min(limits.idle_timeout)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if let Some((idle, used)) = self.idle_for(Instant::now()) {
                let limit = if used {
                    limits.idle_timeout
                } else {
                    limits.header_read_timeout
                };
                if idle >= limit {
                    return;
                }
            }
        }
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let ended = activity.opened.elapsed().as_millis() as u64;
        activity.last_end_ms.store(ended, Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Places held per client address (connections, or requests in flight), capped.
pub struct ClientConnections {
    /// 0: no cap.
    max_per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One place held by a client; dropping it frees the place.
pub struct ConnectionSlot {
    connections: Arc<ClientConnections>,
    client: IpAddr,
}

impl ClientConnections {
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_client,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// One more place for `client`, unless it is at the cap.
    pub fn open(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_default();
        if self.max_per_client != 0 && *count >= self.max_per_client {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            connections: self.clone(),
            client,
        })
    }

    fn close(&self, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.close(self.client);
    }
}

/// Answers a connection past the cap with 503 and closes it, without reading it.
pub async fn refuse(mut stream: TcpStream, max_per_client: usize) {
    let body = format!(
        r#"{{"error":{{"code":"too_many_connections","message":"this client already has {max_per_client} open connections; reuse one or close some"}}}}"#
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_at_most_the_cap_and_closing_frees_a_place() {
        let connections = ClientConnections::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = connections.open(a).unwrap();
        let _second = connections.open(a).unwrap();
        assert!(connections.open(a).is_none(), "a third one from the same client");
        assert!(connections.open(b).is_some(), "another client is not affected");
        drop(first);
        assert!(connections.open(a).is_some(), "a closed connection frees its place");
    }

    #[tokio::test]
    async fn a_connection_closes_when_idle_past_its_limit_and_never_mid_request() {
        let ms = Duration::from_millis;
        let limits = ConnectionLimits {
            max_per_client: 0,
            max_requests_per_client: 0,
            header_read_timeout: ms(200),
            idle_timeout: ms(500),
        };
        // A connection that never sends: closed after the header timeout.
        let silent = ConnectionActivity::new();
        let started = Instant::now();
        silent.clone().idle_past(limits).await;
        let waited = started.elapsed();
        assert!(waited >= ms(200) && waited < ms(500), "{waited:?}");

        // A request in flight for longer than both limits keeps it open; once it ends,
        // the idle timeout runs.
        let busy = ConnectionActivity::new();
        let request = busy.begin();
        let watch = tokio::spawn(busy.clone().idle_past(limits));
        tokio::time::sleep(ms(1200)).await;
        assert!(!watch.is_finished(), "closed mid-request");
        drop(request);
        let ended = Instant::now();
        watch.await.unwrap();
        let idle = ended.elapsed();
        assert!(idle >= ms(500), "{idle:?}");
    }

    #[test]
    fn zero_means_no_cap() {
        let connections = ClientConnections::new(0);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..1000).map(|_| connections.open(client).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
