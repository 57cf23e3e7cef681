//! Open connections per client address, capped: one client holding many idle or
//! slow connections (slowloris) must not take the host's sockets from everyone
//! else. Past the cap a connection gets a short 503 JSON answer and is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// How long a refused client gets to take its 503 before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections per client address; 0: no cap.
    pub max_per_client: usize,
    /// A request head must arrive within this, or the connection is closed.
    pub header_read_timeout: Duration,
}

pub struct ClientConnections {
    /// 0: no cap.
    max_per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a client; dropping it frees its place.
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

    /// A place for one more connection from `client`, unless it is at the cap.
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

    #[test]
    fn zero_means_no_cap() {
        let connections = ClientConnections::new(0);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..1000).map(|_| connections.open(client).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
