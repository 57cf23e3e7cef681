//! Chooses the app's event broker: Kafka when brokers are configured, else the
//! embedded log under the data dir. Brokers come from `--kafka-brokers` /
//! `SHOP_KAFKA_BROKERS`, else the runtime config's `[kafka]`, else the manifest's
//! `[application.trigger.kafka]` (each may also set `partitions` for topics the host
//! creates, `options`, extra librdkafka settings such as `security.protocol`, and
//! `topic_prefix`, a namespace for the app's topics and groups on a shared cluster).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shop_broker::Broker;
use shop_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use shop_broker::kafka::{KafkaBroker, KafkaOptions};
use shop_broker::namespace::Namespaced;

use crate::manifest::{Manifest, Problem, Severity};
use crate::runtime_config::{RuntimeConfig, read_value};

/// The runtime config's table of Kafka settings.
pub const RUNTIME_CONFIG_TABLE: &str = "kafka";
const MANIFEST_TABLE: &str = "application.trigger.kafka";

/// Kafka settings gathered from the manifest and runtime config.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KafkaSettings {
    pub brokers: Option<String>,
    pub partitions: Option<i32>,
    pub options: Vec<(String, String)>,
    /// Prepended on the broker to every topic and group the app uses.
    pub topic_prefix: Option<String>,
}

/// `[kafka]` in the runtime config, or `[application.trigger.kafka]` in the manifest.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct KafkaTable {
    brokers: Option<Brokers>,
    partitions: Option<i64>,
    /// Extra librdkafka settings; any scalar, passed on as its text.
    options: BTreeMap<String, toml::Value>,
    topic_prefix: Option<String>,
}

/// `brokers`: `"host:port,…"` or a list of `"host:port"`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Brokers(String);

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Brokers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port,…\" or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Brokers, E> {
                Ok(Brokers(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Brokers, A::Error> {
                let mut all = Vec::new();
                while let Some(broker) = seq.next_element::<String>()? {
                    all.push(broker);
                }
                Ok(Brokers(all.join(",")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl KafkaSettings {
    /// The table at `key` of `file`, typed; warnings for keys it does not know.
    fn read(table: &toml::Table, file: &str, key: &str) -> Result<(Self, Vec<Problem>), Problem> {
        let read = read_value::<KafkaTable>(toml::Value::Table(table.clone()), file, key)?;
        let KafkaTable {
            brokers,
            partitions,
            options,
            topic_prefix,
        } = read.value;
        let partitions = match partitions {
            None => None,
            Some(n) if (1..=10_000).contains(&n) => Some(n as i32),
            Some(n) => {
                return Err(Problem {
                    severity: Severity::Error,
                    file: file.to_string(),
                    key: format!("{key}.partitions"),
                    message: format!("expected an integer from 1 to 10000, found {n}"),
                });
            }
        };
        let options = options
            .into_iter()
            .map(|(k, v)| match v {
                toml::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        let settings = Self {
            brokers: brokers.map(|b| b.0).filter(|b| !b.trim().is_empty()),
            partitions,
            options,
            topic_prefix: topic_prefix.filter(|s| !s.is_empty()),
        };
        Ok((settings, read.warnings))
    }

    /// The manifest's and the runtime config's settings, each typed, and their problems.
    fn read_both(manifest: &Manifest, runtime: &RuntimeConfig) -> (Self, Self, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut read = |table: Option<&toml::Table>, file: String, key: &str| match table {
            None => Self::default(),
            Some(table) => match Self::read(table, &file, key) {
                Ok((settings, warnings)) => {
                    problems.extend(warnings);
                    settings
                }
                Err(problem) => {
                    problems.push(problem);
                    Self::default()
                }
            },
        };
        let from_manifest = read(
            manifest.kafka_settings(),
            manifest.path.display().to_string(),
            MANIFEST_TABLE,
        );
        let runtime_table = runtime.section::<Option<toml::Table>>(RUNTIME_CONFIG_TABLE);
        let from_runtime = match runtime_table {
            Ok(table) => read(table.value.as_ref(), runtime.file(), RUNTIME_CONFIG_TABLE),
            Err(problem) => {
                problems.push(problem);
                Self::default()
            }
        };
        (from_manifest, from_runtime, problems)
    }

    /// Problems in the Kafka settings of the manifest and runtime config.
    pub fn check(manifest: &Manifest, runtime: &RuntimeConfig) -> Vec<Problem> {
        Self::read_both(manifest, runtime).2
    }

    /// Runtime config wins over the manifest, key by key; `cli_brokers` over both.
    pub fn resolve(manifest: &Manifest, runtime: &RuntimeConfig, cli_brokers: Option<&str>) -> anyhow::Result<Self> {
        let (from_manifest, from_runtime, problems) = Self::read_both(manifest, runtime);
        crate::runtime_config::first_error(&problems)?;
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
    !manifest.kafka_triggers().is_empty()
        || !manifest.outbox_triggers().is_empty()
        || manifest.raw.component.values().any(|c| !c.allowed_topics.is_empty())
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
            // Static membership: a host started again after a crash on this machine
            // (the same host name and member slot) resumes its partitions at once.
            let options = KafkaOptions {
                brokers: brokers.clone(),
                client_options: settings.options.clone(),
                default_partitions: partitions,
                instance_id: Some(host_name()),
                member_slots: Some(data_dir.join("events").join("kafka-members")),
                ..KafkaOptions::default()
            };
            let broker = KafkaBroker::connect(options).with_context(|| format!("cannot reach Kafka at {brokers}"))?;
            tracing::info!(brokers = %brokers, "event broker: kafka");
            Ok(Arc::new(broker))
        }
        None => {
            let path = data_dir.join("events").join("log.db");
            // A host started again after a crash resumes its partitions at once.
            let options = EmbeddedOptions {
                default_partitions: partitions,
                reclaim_after_crash: true,
                ..EmbeddedOptions::default()
            };
            let broker = EmbeddedBroker::open(&path, options)
                .with_context(|| format!("cannot open the embedded event log {}", path.display()))?;
            tracing::info!(path = %path.display(), "event broker: embedded log");
            Ok(Arc::new(broker))
        }
    }
}

/// This machine's name (a pod's name on Kubernetes), for identities that must survive
/// a restart of the process.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "shop".into())
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

    #[test]
    fn both_tables_are_typed_and_checked() {
        let m = manifest("[application.trigger.kafka]\nbrokers = 9092\ntopic_prefix = \"staging.\"\n");
        let runtime = RuntimeConfig::from_table(
            Some("rc.toml".into()),
            toml::from_str("[kafka]\nbrokers = [\"a:1\"]\npartitions = 20000\nlinger = 5\n").unwrap(),
        );
        let problems = KafkaSettings::check(&m, &runtime);
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.severity, p.file.as_str(), p.key.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (Severity::Error, "spin.toml", "application.trigger.kafka.brokers"),
                (Severity::Error, "rc.toml", "kafka.partitions"),
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("\"host:port,…\" or a list of them"),
            "{problems:?}"
        );
        let fine = RuntimeConfig::from_table(
            Some("rc.toml".into()),
            toml::from_str("[kafka]\nbrokers = [\"a:1\"]\nlinger = 5\n").unwrap(),
        );
        let problems = KafkaSettings::check(&manifest("[application.trigger.kafka]\ntopic_prefix = \"s.\"\n"), &fine);
        assert_eq!(problems.len(), 1, "topic_prefix is known, linger is not: {problems:?}");
        assert_eq!(
            (problems[0].severity, problems[0].key.as_str()),
            (Severity::Warning, "kafka.linger")
        );
    }
}
