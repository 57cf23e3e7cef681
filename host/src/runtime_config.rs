//! Spin's `runtime-config.toml`: which backend serves each key-value store and SQLite
//! database label, plus this host's `[kafka]`, `[postgres]` and `[redis]` defaults.
//! This module reads the file and reports unknown tables; the capabilities that use
//! each table interpret it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::manifest::{Manifest, Problem, Severity};

const KNOWN_TABLES: &[&str] = &[
    "key_value_store",
    "sqlite_database",
    "kafka",
    "postgres",
    "redis",
    "variables_provider",
];

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub path: Option<PathBuf>,
    pub table: toml::Table,
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
        Ok(Self {
            path: Some(path.to_path_buf()),
            table,
        })
    }

    /// A top-level table such as `key_value_store`, if present.
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
        let stores = self.table("key_value_store");
        for (label, entry) in stores.into_iter().flatten() {
            let key = format!("key_value_store.{label}");
            let kind = entry.get("type").and_then(|t| t.as_str());
            match kind {
                Some("spin") => {}
                Some("redis") if entry.get("url").and_then(|u| u.as_str()).is_some() => {}
                Some("redis") => out.push(problem(
                    Severity::Error,
                    &file,
                    format!("{key}.url"),
                    "a redis store needs `url`".into(),
                )),
                _ => out.push(problem(
                    Severity::Error,
                    &file,
                    format!("{key}.type"),
                    "expected `type = \"spin\"` or `type = \"redis\"`".into(),
                )),
            }
        }
        let synchronous_entries = [
            ("key_value_store", stores),
            ("sqlite_database", self.table("sqlite_database")),
        ];
        for (table, entries) in synchronous_entries {
            for (label, entry) in entries.into_iter().flatten() {
                let valid = entry.get("synchronous").is_none_or(|v| {
                    v.as_str()
                        .and_then(crate::capability::sqlite::Synchronous::parse)
                        .is_some()
                });
                if !valid {
                    out.push(problem(
                        Severity::Error,
                        &file,
                        format!("{table}.{label}.synchronous"),
                        "expected \"normal\" (survives a crash of the process) or \"full\" (also survives power loss)"
                            .into(),
                    ));
                }
            }
        }
        let databases = self.table("sqlite_database");
        for (label, entry) in databases.into_iter().flatten() {
            if entry.get("type").and_then(|t| t.as_str()) != Some("spin") {
                let key = format!("sqlite_database.{label}.type");
                out.push(problem(
                    Severity::Error,
                    &file,
                    key,
                    "expected `type = \"spin\"`".into(),
                ));
            }
        }
        let manifest_file = manifest.path.display().to_string();
        let undefined = |labels: &[String], defined: Option<&toml::Table>| -> Vec<String> {
            labels
                .iter()
                .filter(|l| *l != "default" && !defined.is_some_and(|d| d.contains_key(*l)))
                .cloned()
                .collect()
        };
        for (id, component) in &manifest.raw.component {
            for label in undefined(&component.key_value_stores, stores) {
                out.push(problem(
                    Severity::Error,
                    &manifest_file,
                    format!("component.{id}.key_value_stores"),
                    format!(
                        "no key-value store labelled `{label}`: define [key_value_store.{label}] in the runtime config"
                    ),
                ));
            }
            for label in undefined(&component.sqlite_databases, databases) {
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
        RuntimeConfig {
            path: Some("rc.toml".into()),
            table: toml::from_str(text).unwrap(),
        }
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
        let keys: Vec<_> = problems.iter().map(|p| (p.file.as_str(), p.key.as_str())).collect();
        assert!(keys.contains(&("rc.toml", "key_value_store.cache.url")), "{problems:?}");
        assert!(keys.contains(&("rc.toml", "key_value_store.odd.type")), "{problems:?}");
        assert!(
            keys.contains(&("spin.toml", "component.c.key_value_stores")),
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
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["key_value_store.default.synchronous"], "{problems:?}");
    }
}
