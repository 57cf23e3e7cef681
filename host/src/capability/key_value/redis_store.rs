//! Redis key-value backend: keys and values stored as-is in the URL's database, as
//! Spin's Redis store does.

use redis::AsyncCommands as _;

use crate::capability::redis::{RedisSettings, SharedRedis};

/// Set to `1`, swaps behave as on Spin 3.6's Redis store, for testing components
/// against it: after a swap that wrote, `UNWATCH <key>` goes to Redis, which refuses
/// it, and the swap is reported as lost although the value was written.
pub const EMULATE_SPIN_CAS_ENV: &str = "SHOP_EMULATE_SPIN_REDIS_CAS";

#[derive(Clone)]
pub struct RedisStore {
    redis: SharedRedis,
    emulate_spin_cas: bool,
}

impl RedisStore {
    pub fn new(url: &str, settings: RedisSettings) -> anyhow::Result<Self> {
        Ok(Self {
            redis: SharedRedis::new(url, settings)?,
            emulate_spin_cas: std::env::var(EMULATE_SPIN_CAS_ENV).is_ok_and(|v| v == "1"),
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

    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, String> {
        let mut c = self.connection().await?;
        c.incr(key, delta).await.map_err(|e| e.to_string())
    }

    /// Stores `value` only if the key still holds `expected`, atomically on the server.
    pub async fn compare_and_swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, String> {
        // GET returns false in Lua for a missing key, so "expect absent" needs its own flag.
        const SCRIPT: &str = r"
            local current = redis.call('GET', KEYS[1])
            if ARGV[1] == '1' then
                if current ~= ARGV[2] then return 0 end
            elseif current then
                return 0
            end
            redis.call('SET', KEYS[1], ARGV[3])
            return 1";
        let mut c = self.connection().await?;
        let (flag, expected) = match expected {
            Some(v) => ("1", v),
            None => ("0", Vec::new()),
        };
        let swapped: i64 = redis::Script::new(SCRIPT)
            .key(&key)
            .arg(flag)
            .arg(expected)
            .arg(value)
            .invoke_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if swapped == 1 && self.emulate_spin_cas {
            let unwatch: redis::RedisResult<()> = redis::cmd("UNWATCH").arg(&key).query_async(&mut c).await;
            return Ok(unwatch.is_ok());
        }
        Ok(swapped == 1)
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
