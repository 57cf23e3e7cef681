//! Redis key-value backend: keys and values stored as-is in the URL's database, as
//! Spin's Redis store does.

use redis::AsyncCommands as _;

use crate::capability::redis::SharedRedis;

#[derive(Clone)]
pub struct RedisStore {
    redis: SharedRedis,
}

impl RedisStore {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            redis: SharedRedis::new(url)?,
        })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        self.redis.connection().await
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
