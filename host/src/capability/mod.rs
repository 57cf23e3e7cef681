//! Host capabilities a component may import, one module each, granted per component
//! by the manifest.

pub mod allowed_hosts;
pub mod bounded_map;
pub mod commits;
pub mod key_value;
pub mod messaging;
pub mod mqtt;
pub mod outbound_http;
pub mod postgres;
pub mod redis;
pub mod sockets;
pub mod sqlite;
pub mod variables;
pub mod wal_checkpoint;

use std::path::Path;

/// The first word of an SQL statement, upper-cased: what the SQLite and PostgreSQL
/// capabilities read a statement's intent from (write, transaction start or end).
pub fn leading_keyword(statement: &str) -> String {
    statement
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

use crate::runtime_config::RuntimeConfig;

/// The application-wide backends behind the capabilities, built once from the
/// runtime config; components reach them through their per-component grants.
pub struct Backends {
    pub key_value: key_value::KeyValueStores,
    pub sqlite: sqlite::Databases,
    pub postgres: postgres::PostgresPools,
    pub redis: redis::RedisServers,
    pub commits: std::sync::Arc<commits::CommitSignals>,
}

impl Backends {
    pub fn from_runtime_config(config: &RuntimeConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let key_value = key_value::KeyValueStores::from_config(&config.key_value_stores, config.dir(), data_dir)?;
        for (label, backend) in key_value.labels() {
            tracing::info!(store = label, backend = backend.kind(), "key-value store");
        }
        let commits = std::sync::Arc::new(commits::CommitSignals::default());
        Ok(Self {
            key_value,
            sqlite: sqlite::Databases::from_config(&config.sqlite_databases, config.dir(), data_dir, &commits)?,
            postgres: postgres::PostgresPools::default(),
            redis: redis::RedisServers::default(),
            commits,
        })
    }
}
