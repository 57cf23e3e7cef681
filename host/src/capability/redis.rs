//! Outbound Redis (`fermyon:spin/redis@2.0.0`): the guest names a server address;
//! the host checks it against `allowed_outbound_hosts` (scheme `redis`) and serves it
//! from one multiplexed, self-reconnecting connection per address.
//!
//! [`SharedRedis`] is also what the Redis key-value backend uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::AsyncCommands as _;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use wasmtime::component::Resource;

use super::Backends;
use super::allowed_hosts::{AllowedHosts, default_port};
use crate::bindings::fermyon::spin::redis::{self, Error, Payload, RedisParameter, RedisResult};
use crate::state::HostState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server reached through one lazily made connection manager. The first use
/// connects (bounded by a timeout, so an unreachable server fails the guest's call
/// quickly); a failed connect is retried on the next use, and the manager reconnects
/// by itself after the server comes back.
#[derive(Clone)]
pub struct SharedRedis {
    client: ::redis::Client,
    connection: Arc<OnceCell<ConnectionManager>>,
}

impl SharedRedis {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: ::redis::Client::open(url)?,
            connection: Arc::new(OnceCell::new()),
        })
    }

    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| async {
                tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_connection_manager_with_config(config))
                    .await
                    .map_err(|_| "redis unavailable: connect timed out".to_string())?
                    .map_err(|e| format!("redis unavailable: {e}"))
            })
            .await
            .cloned()
    }
}

/// Outbound connections by address, shared by every instance.
#[derive(Default)]
pub struct RedisServers {
    servers: Mutex<HashMap<String, SharedRedis>>,
}

impl RedisServers {
    fn server(&self, address: &str) -> Result<SharedRedis, Error> {
        let mut servers = self.servers.lock().expect("redis server map lock");
        if let Some(s) = servers.get(address) {
            return Ok(s.clone());
        }
        let server = SharedRedis::new(address).map_err(|_| Error::InvalidAddress)?;
        servers.insert(address.to_string(), server.clone());
        Ok(server)
    }
}

/// Per-instance outbound Redis state.
pub struct RedisAccess {
    pub allowed: Arc<AllowedHosts>,
    pub backends: Arc<Backends>,
}

/// An open connection as the guest holds it.
pub struct RedisConnection {
    connection: ConnectionManager,
}

/// Spin answers `invalid-address` both for malformed and for disallowed addresses.
fn authorize(address: &str, allowed: &AllowedHosts) -> Result<(), Error> {
    let info: ::redis::ConnectionInfo = address.parse().map_err(|_| Error::InvalidAddress)?;
    let (scheme, host, port) = match info.addr() {
        ::redis::ConnectionAddr::Tcp(host, port) => ("redis", host.clone(), *port),
        ::redis::ConnectionAddr::TcpTls { host, port, .. } => ("rediss", host.clone(), *port),
        _ => return Err(Error::InvalidAddress),
    };
    let port = Some(port).or(default_port(scheme));
    if allowed.allows(scheme, &host, port) {
        Ok(())
    } else {
        tracing::warn!(destination = %format!("{scheme}://{host}"), "outbound redis denied: not in allowed_outbound_hosts");
        Err(Error::InvalidAddress)
    }
}

fn to_error(e: ::redis::RedisError) -> Error {
    match e.kind() {
        ::redis::ErrorKind::UnexpectedReturnType => Error::TypeError,
        _ if e.code() == Some("WRONGTYPE") => Error::TypeError,
        _ => Error::Other(e.to_string()),
    }
}

/// Flattens a reply into Spin's list of results (arrays become their elements).
fn flatten(value: ::redis::Value, out: &mut Vec<RedisResult>) {
    use ::redis::Value as V;
    match value {
        V::Nil => out.push(RedisResult::Nil),
        V::Int(i) => out.push(RedisResult::Int64(i)),
        V::BulkString(b) => out.push(RedisResult::Binary(b)),
        V::SimpleString(s) => out.push(RedisResult::Status(s)),
        V::Okay => out.push(RedisResult::Status("OK".into())),
        V::Array(items) | V::Set(items) => items.into_iter().for_each(|v| flatten(v, out)),
        V::Boolean(b) => out.push(RedisResult::Int64(b as i64)),
        V::Double(d) => out.push(RedisResult::Binary(d.to_string().into_bytes())),
        V::VerbatimString { text, .. } => out.push(RedisResult::Binary(text.into_bytes())),
        V::BigNumber(n) => out.push(RedisResult::Binary(n)),
        V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        V::Attribute { data, .. } => flatten(*data, out),
        V::Push { data, .. } => data.into_iter().for_each(|v| flatten(v, out)),
        V::ServerError(e) => out.push(RedisResult::Status(format!("{e:?}"))),
        _ => out.push(RedisResult::Nil),
    }
}

impl HostState {
    fn redis_connection(&self, connection: &Resource<RedisConnection>) -> Result<ConnectionManager, Error> {
        self.table
            .get(connection)
            .map(|c| c.connection.clone())
            .map_err(|e| Error::Other(e.to_string()))
    }
}

impl redis::Host for HostState {}

impl redis::HostConnection for HostState {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, Error> {
        authorize(&address, &self.redis.allowed)?;
        let server = self.redis.backends.redis.server(&address)?;
        let connection = server.connection().await.map_err(Error::Other)?;
        self.table
            .push(RedisConnection { connection })
            .map_err(|e| Error::Other(e.to_string()))
    }

    async fn publish(&mut self, c: Resource<RedisConnection>, channel: String, payload: Payload) -> Result<(), Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.publish::<_, _, ()>(channel, payload).await.map_err(to_error)
    }

    async fn get(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Option<Payload>, Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.get(key).await.map_err(to_error)
    }

    async fn set(&mut self, c: Resource<RedisConnection>, key: String, value: Payload) -> Result<(), Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.set(key, value).await.map_err(to_error)
    }

    async fn incr(&mut self, c: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.incr(key, 1).await.map_err(to_error)
    }

    async fn del(&mut self, c: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.del(keys).await.map_err(to_error)
    }

    async fn sadd(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.sadd(key, values).await.map_err(to_error)
    }

    async fn smembers(&mut self, c: Resource<RedisConnection>, key: String) -> Result<Vec<String>, Error> {
        let mut conn = self.redis_connection(&c)?;
        let mut members: Vec<String> = conn.smembers(key).await.map_err(to_error)?;
        members.sort();
        Ok(members)
    }

    async fn srem(&mut self, c: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        let mut conn = self.redis_connection(&c)?;
        conn.srem(key, values).await.map_err(to_error)
    }

    async fn execute(
        &mut self,
        c: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let mut conn = self.redis_connection(&c)?;
        let mut cmd = ::redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(i) => cmd.arg(i),
                RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: ::redis::Value = cmd.query_async(&mut conn).await.map_err(to_error)?;
        let mut out = Vec::new();
        flatten(value, &mut out);
        Ok(out)
    }

    async fn drop(&mut self, c: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_against_allowed_hosts() {
        let allowed = AllowedHosts::parse(["redis://cache.internal"]).unwrap();
        assert!(authorize("redis://cache.internal/2", &allowed).is_ok());
        assert!(authorize("redis://cache.internal:6379", &allowed).is_ok());
        assert!(matches!(
            authorize("redis://cache.internal:7000", &allowed),
            Err(Error::InvalidAddress)
        ));
        assert!(matches!(
            authorize("redis://elsewhere", &allowed),
            Err(Error::InvalidAddress)
        ));
        assert!(matches!(
            authorize("not an address", &allowed),
            Err(Error::InvalidAddress)
        ));
    }

    #[test]
    fn arrays_are_flattened() {
        use ::redis::Value as V;
        let mut out = Vec::new();
        flatten(
            V::Array(vec![V::Int(1), V::Nil, V::BulkString(b"x".to_vec()), V::Okay]),
            &mut out,
        );
        assert_eq!(
            format!("{out:?}"),
            format!(
                "{:?}",
                vec![
                    RedisResult::Int64(1),
                    RedisResult::Nil,
                    RedisResult::Binary(b"x".to_vec()),
                    RedisResult::Status("OK".into())
                ]
            )
        );
    }
}
