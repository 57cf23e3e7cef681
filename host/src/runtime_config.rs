//! Spin's `runtime-config.toml`: which backend serves each key-value store and SQLite
//! database label, plus this host's `[kafka]`, `[postgres]` and `[redis]` defaults.
//! This module reads the file once: the store and database entries into typed
//! configs ([`KeyValueStoreConfig`], [`SqliteDatabaseConfig`]) that both `shop check`
//! and the capabilities use, each entry on its own so that one bad entry does not
//! hide the others; the other tables stay for the modules that read them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::capability::sqlite::Synchronous;
use crate::manifest::{Manifest, Problem, Severity};

const KNOWN_TABLES: &[&str] = &[
    "key_value_store",
    "sqlite_database",
    "kafka",
    "postgres",
    "redis",
    "variables_provider",
];

/// `[key_value_store.<label>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum KeyValueStoreConfig {
    /// An embedded SQLite file (`path` relative to the runtime config's directory;
    /// by default `key_value.db` in the data dir).
    Spin {
        path: Option<PathBuf>,
        #[serde(default)]
        synchronous: Synchronous,
    },
    /// A Redis server (`url = "redis://host:port"`).
    Redis { url: String },
}

/// `[sqlite_database.<label>]`: only embedded files (`type = "spin"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SqliteDatabaseConfig {
    Spin {
        path: Option<PathBuf>,
        #[serde(default)]
        synchronous: Synchronous,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub path: Option<PathBuf>,
    pub table: toml::Table,
    pub key_value_stores: BTreeMap<String, KeyValueStoreConfig>,
    pub sqlite_databases: BTreeMap<String, SqliteDatabaseConfig>,
    /// Entries that did not parse: (key, why).
    invalid: Vec<(String, String)>,
}

/// Each entry of the top-level table `name` as a `T`, or why not.
fn entries<T: for<'de> Deserialize<'de>>(
    table: &toml::Table,
    name: &str,
    invalid: &mut Vec<(String, String)>,
) -> BTreeMap<String, T> {
    let mut parsed = BTreeMap::new();
    match table.get(name) {
        None => {}
        Some(toml::Value::Table(entries)) => {
            for (label, entry) in entries {
                match entry.clone().try_into::<T>() {
                    Ok(config) => drop(parsed.insert(label.clone(), config)),
                    Err(e) => invalid.push((format!("{name}.{label}"), e.to_string().trim_end().to_string())),
                }
            }
        }
        Some(_) => invalid.push((name.to_string(), "expected a table of labelled entries".into())),
    }
    parsed
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read runtime config {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid runtime config: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        Ok(Self::from_table(Some(path.to_path_buf()), table))
    }

    pub fn from_table(path: Option<PathBuf>, table: toml::Table) -> Self {
        let mut invalid = Vec::new();
        Self {
            path,
            key_value_stores: entries(&table, "key_value_store", &mut invalid),
            sqlite_databases: entries(&table, "sqlite_database", &mut invalid),
            table,
            invalid,
        }
    }

    /// A top-level table such as `kafka`, if present.
    pub fn table(&self, name: &str) -> Option<&toml::Table> {
        self.table.get(name).and_then(|v| v.as_table())
    }

    /// The directory relative paths in the file resolve against.
    pub fn dir(&self) -> &Path {
        match self.path.as_deref().and_then(Path::parent) {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// Problems in this file, and labels the manifest uses that it does not define.
    pub fn problems(&self, manifest: &Manifest) -> Vec<Problem> {
        let file = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let problem = |severity, file: &str, key: String, message: String| Problem {
            severity,
            file: file.to_string(),
            key,
            message,
        };
        let mut out: Vec<Problem> = self
            .table
            .keys()
            .filter(|k| !KNOWN_TABLES.contains(&k.as_str()))
            .map(|k| {
                let message = format!("unknown table (ignored); known: {}", KNOWN_TABLES.join(", "));
                problem(Severity::Warning, &file, k.clone(), message)
            })
            .collect();
        out.extend(
            self.invalid
                .iter()
                .map(|(key, why)| problem(Severity::Error, &file, key.clone(), why.clone())),
        );
        let manifest_file = manifest.path.display().to_string();
        let undefined = |labels: &[String], defined: &dyn Fn(&str) -> bool| -> Vec<String> {
            labels
                .iter()
                .filter(|l| *l != "default" && !defined(l))
                .cloned()
                .collect()
        };
        // A label whose entry did not parse is reported above, not as undefined.
        let written = |table: &str, label: &str| self.table(table).is_some_and(|t| t.contains_key(label));
        for (id, component) in &manifest.raw.component {
            for label in undefined(&component.key_value_stores, &|l| written("key_value_store", l)) {
                out.push(problem(
                    Severity::Error,
                    &manifest_file,
                    format!("component.{id}.key_value_stores"),
                    format!(
                        "no key-value store labelled `{label}`: define [key_value_store.{label}] in the runtime config"
                    ),
                ));
            }
            for label in undefined(&component.sqlite_databases, &|l| written("sqlite_database", l)) {
                out.push(problem(
                    Severity::Error,
                    &manifest_file,
                    format!("component.{id}.sqlite_databases"),
                    format!(
                        "no SQLite database labelled `{label}`: define [sqlite_database.{label}] in the runtime config"
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(stores: &str) -> Manifest {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.c]\nsource = \"c.wasm\"\nkey_value_stores = {stores}\n"
        );
        Manifest::parse(Path::new("spin.toml"), &text).unwrap()
    }

    fn runtime_config(text: &str) -> RuntimeConfig {
        RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(text).unwrap())
    }

    #[test]
    fn unknown_tables_are_warnings() {
        let rc = runtime_config("[kafka]\nbrokers = \"x\"\n[mystery]\na = 1\n");
        let problems = rc.problems(&manifest("[]"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "mystery");
        assert_eq!(problems[0].severity, Severity::Warning);
    }

    #[test]
    fn store_labels_must_be_defined_and_well_formed() {
        let rc =
            runtime_config("[key_value_store.cache]\ntype = \"redis\"\n[key_value_store.odd]\ntype = \"memcached\"\n");
        let problems = rc.problems(&manifest("[\"default\", \"cache\", \"sessions\"]"));
        let found = |file: &str, key: &str, words: &str| {
            problems
                .iter()
                .any(|p| p.file == file && p.key == key && p.message.contains(words))
        };
        assert!(
            found("rc.toml", "key_value_store.cache", "missing field `url`"),
            "{problems:?}"
        );
        assert!(
            found(
                "rc.toml",
                "key_value_store.odd",
                "unknown variant `memcached`, expected `spin` or `redis`"
            ),
            "{problems:?}"
        );
        assert!(
            found("spin.toml", "component.c.key_value_stores", "`sessions`"),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "`default` needs no definition: {problems:?}");
    }

    #[test]
    fn synchronous_is_normal_or_full() {
        let rc = runtime_config(
            "[sqlite_database.default]\ntype = \"spin\"\nsynchronous = \"full\"\n[key_value_store.default]\ntype = \"spin\"\nsynchronous = \"off\"\n",
        );
        let problems = rc.problems(&manifest("[]"));
        let found: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.message.as_str())).collect();
        assert_eq!(found.len(), 1, "{problems:?}");
        assert_eq!(found[0].0, "key_value_store.default");
        assert!(
            found[0]
                .1
                .contains("unknown variant `off`, expected `normal` or `full`"),
            "{problems:?}"
        );
    }

    /// What `shop check` accepted is what the capabilities are built from.
    #[test]
    fn entries_are_read_into_typed_configs() {
        let rc = runtime_config(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\nsynchronous = \"full\"\n\
             [key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
             [sqlite_database.orders]\ntype = \"spin\"\n\
             [sqlite_database.remote]\ntype = \"libsql\"\nurl = \"https://x\"\n",
        );
        assert_eq!(
            rc.key_value_stores["default"],
            KeyValueStoreConfig::Spin {
                path: Some("kv.db".into()),
                synchronous: Synchronous::Full
            }
        );
        assert_eq!(
            rc.key_value_stores["cache"],
            KeyValueStoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(
            rc.sqlite_databases["orders"],
            SqliteDatabaseConfig::Spin {
                path: None,
                synchronous: Synchronous::Normal
            }
        );
        assert!(!rc.sqlite_databases.contains_key("remote"));
        let problems = rc.problems(&manifest("[]"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "sqlite_database.remote");
        assert!(problems[0].message.contains("unknown variant `libsql`"), "{problems:?}");
    }
}
