//! Spin's `runtime-config.toml`: which backend serves each key-value store and SQLite
//! database label, plus this host's `[kafka]`, `[postgres]` and `[redis]` defaults.
//! This module reads the file and reports unknown tables; the capabilities that use
//! each table interpret it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::manifest::{Problem, Severity};

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

    pub fn problems(&self) -> Vec<Problem> {
        let file = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        self.table
            .keys()
            .filter(|k| !KNOWN_TABLES.contains(&k.as_str()))
            .map(|k| Problem {
                severity: Severity::Warning,
                file: file.clone(),
                key: k.clone(),
                message: format!("unknown table (ignored); known: {}", KNOWN_TABLES.join(", ")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tables_are_warnings() {
        let rc = RuntimeConfig {
            path: Some("rc.toml".into()),
            table: toml::from_str("[kafka]\nbrokers = \"x\"\n[mystery]\na = 1\n").unwrap(),
        };
        let problems = rc.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "mystery");
        assert_eq!(problems[0].severity, Severity::Warning);
    }
}
