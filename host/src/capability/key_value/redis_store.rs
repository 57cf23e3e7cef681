//! Redis key-value backend: keys and values stored as-is in the URL's database, as
//! Spin's Redis store does. The connection is made on first use and re-established
//! by the connection manager, with bounded timeouts so an unreachable Redis fails
//! the guest's call quickly instead of hanging it.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    connection: Arc<OnceCell<ConnectionManager>>,
}

impl RedisStore {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: Arc::new(OnceCell::new()),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
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

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.connection().await?;
        c.get(key).await.map_err(|e| e.to_string())
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        let mut c = self.connection().await?;
        c.set(key, value).await.map_err(|e| e.to_string())
    }

    pub async fn delete(&self, key: String) -> Result<(), String> {
        let mut c = self.connection().await?;
        c.del(key).await.map_err(|e| e.to_string())
    }

    pub async fn exists(&self, key: String) -> Result<bool, String> {
        let mut c = self.connection().await?;
        c.exists(key).await.map_err(|e| e.to_string())
    }

    pub async fn get_keys(&self) -> Result<Vec<String>, String> {
        let mut c = self.connection().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut iter: redis::AsyncIter<String> = c.scan().await.map_err(|e| e.to_string())?;
        while let Some(key) = iter.next_item().await {
            keys.push(key.map_err(|e| e.to_string())?);
        }
        drop(iter);
        keys.sort();
        Ok(keys)
    }
}
