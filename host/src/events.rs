//! Chooses the app's event broker: Kafka when brokers are configured, else the
//! embedded log under the data dir. Brokers come from `--kafka-brokers` /
//! `SHOP_KAFKA_BROKERS`, else the runtime config's `[kafka]`, else the manifest's
//! `[application.trigger.kafka]` (each may also set `partitions` for topics the host
//! creates, `options`, extra librdkafka settings such as `security.protocol`, and
//! `topic_prefix`, a namespace for the app's topics and groups on a shared cluster).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use shop_broker::Broker;
use shop_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use shop_broker::kafka::{KafkaBroker, KafkaOptions};
use shop_broker::namespace::Namespaced;

use crate::manifest::Manifest;
use crate::runtime_config::RuntimeConfig;

/// Kafka settings gathered from the manifest and runtime config.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KafkaSettings {
    pub brokers: Option<String>,
    pub partitions: Option<i32>,
    pub options: Vec<(String, String)>,
    /// Prepended on the broker to every topic and group the app uses.
    pub topic_prefix: Option<String>,
}

impl KafkaSettings {
    fn from_table(table: &toml::Table, origin: &str) -> anyhow::Result<Self> {
        let brokers = match table.get("brokers") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(toml::Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|b| b.as_str().context("brokers must be strings"))
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(","),
            ),
            Some(_) => anyhow::bail!("{origin}.brokers: expected \"host:port,…\" or a list of them"),
        };
        let partitions = match table.get("partitions") {
            None => None,
            Some(toml::Value::Integer(n)) if (1..=10_000).contains(n) => Some(*n as i32),
            Some(other) => anyhow::bail!("{origin}.partitions: expected an integer from 1 to 10000, found {other}"),
        };
        let mut options = Vec::new();
        if let Some(table) = table.get("options") {
            let table = table
                .as_table()
                .with_context(|| format!("{origin}.options: expected a table"))?;
            for (k, v) in table {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                options.push((k.clone(), value));
            }
        }
        let topic_prefix = match table.get("topic_prefix") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(other) => anyhow::bail!("{origin}.topic_prefix: expected a string, found {other}"),
        };
        Ok(Self {
            brokers: brokers.filter(|b| !b.trim().is_empty()),
            partitions,
            options,
            topic_prefix,
        })
    }

    /// Runtime config wins over the manifest, key by key; `cli_brokers` over both.
    pub fn resolve(manifest: &Manifest, runtime: &RuntimeConfig, cli_brokers: Option<&str>) -> anyhow::Result<Self> {
        let from_manifest = match manifest.kafka_settings() {
            Some(t) => Self::from_table(t, "application.trigger.kafka")?,
            None => Self::default(),
        };
        let from_runtime = match runtime.table("kafka") {
            Some(t) => Self::from_table(t, "kafka")?,
            None => Self::default(),
        };
        Ok(Self {
            brokers: cli_brokers
                .filter(|b| !b.trim().is_empty())
                .map(str::to_string)
                .or(from_runtime.brokers)
                .or(from_manifest.brokers),
            partitions: from_runtime.partitions.or(from_manifest.partitions),
            topic_prefix: from_runtime.topic_prefix.or(from_manifest.topic_prefix),
            options: if from_runtime.options.is_empty() {
                from_manifest.options
            } else {
                from_runtime.options
            },
        })
    }
}

/// Whether the app needs a broker at all: a Kafka trigger, or a component that may publish.
pub fn needed(manifest: &Manifest) -> bool {
    !manifest.kafka_triggers().is_empty() || manifest.raw.component.values().any(|c| !c.allowed_topics.is_empty())
}

pub fn connect(settings: &KafkaSettings, data_dir: &Path) -> anyhow::Result<Arc<dyn Broker>> {
    let broker = connect_plain(settings, data_dir)?;
    match &settings.topic_prefix {
        None => Ok(broker),
        Some(prefix) => {
            tracing::info!(prefix = %prefix, "event broker: topics and groups prefixed");
            Ok(Arc::new(
                Namespaced::new(broker, prefix).map_err(|e| anyhow::anyhow!("kafka topic_prefix: {e}"))?,
            ))
        }
    }
}

fn connect_plain(settings: &KafkaSettings, data_dir: &Path) -> anyhow::Result<Arc<dyn Broker>> {
    let partitions = settings.partitions.unwrap_or(3);
    match &settings.brokers {
        Some(brokers) => {
            let options = KafkaOptions {
                brokers: brokers.clone(),
                client_options: settings.options.clone(),
                default_partitions: partitions,
                ..KafkaOptions::default()
            };
            let broker = KafkaBroker::connect(options).with_context(|| format!("cannot reach Kafka at {brokers}"))?;
            tracing::info!(brokers = %brokers, "event broker: kafka");
            Ok(Arc::new(broker))
        }
        None => {
            let path = data_dir.join("events").join("log.db");
            let options = EmbeddedOptions {
                default_partitions: partitions,
                ..EmbeddedOptions::default()
            };
            let broker = EmbeddedBroker::open(&path, options)
                .with_context(|| format!("cannot open the embedded event log {}", path.display()))?;
            tracing::info!(path = %path.display(), "event broker: embedded log");
            Ok(Arc::new(broker))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::parse(
            Path::new("spin.toml"),
            &format!("spin_manifest_version = 2\n[application]\nname = \"t\"\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn brokers_come_from_the_cli_then_runtime_config_then_manifest() {
        let m = manifest("[application.trigger.kafka]\nbrokers = [\"a:1\", \"b:2\"]\npartitions = 6\n");
        let none = RuntimeConfig::default();
        let s = KafkaSettings::resolve(&m, &none, None).unwrap();
        assert_eq!((s.brokers.as_deref(), s.partitions), (Some("a:1,b:2"), Some(6)));
        let runtime = RuntimeConfig::from_table(
            None,
            toml::from_str("[kafka]\nbrokers = \"r:9\"\n[kafka.options]\n\"security.protocol\" = \"ssl\"\n").unwrap(),
        );
        let s = KafkaSettings::resolve(&m, &runtime, None).unwrap();
        assert_eq!((s.brokers.as_deref(), s.partitions), (Some("r:9"), Some(6)));
        assert_eq!(s.options, vec![("security.protocol".to_string(), "ssl".to_string())]);
        let s = KafkaSettings::resolve(&m, &runtime, Some("cli:1")).unwrap();
        assert_eq!(s.brokers.as_deref(), Some("cli:1"));
        assert_eq!(
            KafkaSettings::resolve(&manifest(""), &none, Some("")).unwrap().brokers,
            None
        );
        let bad = manifest("[application.trigger.kafka]\npartitions = 0\n");
        assert!(KafkaSettings::resolve(&bad, &none, None).is_err());
    }
}
