//! Spin's `runtime-config.toml`, read once. Each table belongs to what it configures:
//! `[key_value_store.<label>]`, `[sqlite_database.<label>]`, `[postgres]` and
//! `[redis]` to their capabilities, `[kafka]` to the event broker. Each owner reads
//! its table through [`RuntimeConfig::section`] or [`RuntimeConfig::entries`] into its
//! own typed config (serde), so `shop check` and the running host accept exactly the
//! same thing: an entry that does not parse is an error naming its key, a key its type
//! does not know is a warning, and one bad entry does not hide the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manifest::{Problem, Severity};

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub path: Option<PathBuf>,
    table: toml::Table,
}

/// A typed value read from a table, and what it held that the type does not know.
pub struct Read<T> {
    pub value: T,
    /// Warnings, one per unknown key.
    pub warnings: Vec<Problem>,
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
        Self { path, table }
    }

    /// The file's name as problems report it.
    pub fn file(&self) -> String {
        self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }

    /// The directory relative paths in the file resolve against.
    pub fn dir(&self) -> &Path {
        match self.path.as_deref().and_then(Path::parent) {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// The top-level table `[name]` as a `T`; `T::default()` when the file has none.
    pub fn section<T: DeserializeOwned + Serialize + Default>(&self, name: &str) -> Result<Read<T>, Problem> {
        match self.table.get(name) {
            None => Ok(Read {
                value: T::default(),
                warnings: Vec::new(),
            }),
            Some(value) => read_value(value.clone(), &self.file(), name),
        }
    }

    /// `[T::TABLE]`, typed and range-checked; warnings for keys it does not know.
    pub fn settings<T: Settings>(&self) -> Result<Read<T>, Problem> {
        let read = self.section::<T>(T::TABLE)?;
        match read.value.out_of_range() {
            Some((key, expected)) => Err(error(&self.file(), &format!("{}.{key}", T::TABLE), expected.into())),
            None => Ok(read),
        }
    }

    /// The problems of `[T::TABLE]`, for a capability's `check`.
    pub fn settings_problems<T: Settings>(&self) -> Vec<Problem> {
        match self.settings::<T>() {
            Ok(read) => read.warnings,
            Err(problem) => vec![problem],
        }
    }

    /// `[T::TABLE]` as the host starts with it (`shop up` has reported its problems).
    pub fn settings_to_start<T: Settings>(&self) -> anyhow::Result<T> {
        self.settings::<T>()
            .map(|read| read.value)
            .map_err(|problem| anyhow::anyhow!("{problem}"))
    }

    /// Each `[name.<label>]` entry as a `T`, and a problem for each that does not parse
    /// (the others are still read).
    pub fn entries<T: DeserializeOwned + Serialize>(&self, name: &str) -> (BTreeMap<String, T>, Vec<Problem>) {
        let file = self.file();
        let mut parsed = BTreeMap::new();
        let mut problems = Vec::new();
        match self.table.get(name) {
            None => {}
            Some(toml::Value::Table(entries)) => {
                for (label, entry) in entries {
                    match read_value::<T>(entry.clone(), &file, &format!("{name}.{label}")) {
                        Ok(read) => {
                            parsed.insert(label.clone(), read.value);
                            problems.extend(read.warnings);
                        }
                        Err(problem) => problems.push(problem),
                    }
                }
            }
            Some(_) => problems.push(error(&file, name, "expected a table of labelled entries".into())),
        }
        (parsed, problems)
    }

    /// Top-level tables that nothing in this host reads, given the ones that are read.
    pub fn unknown_tables(&self, known: &[&str]) -> Vec<Problem> {
        let file = self.file();
        self.table
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| Problem {
                severity: Severity::Warning,
                file: file.clone(),
                key: k.clone(),
                message: format!("unknown table (ignored); known: {}", known.join(", ")),
            })
            .collect()
    }
}

/// A top-level table of settings, such as `[postgres]`: its name, and the ranges serde
/// does not check.
pub trait Settings: DeserializeOwned + Serialize + Default {
    const TABLE: &'static str;

    /// The first key whose value is out of range, and what it should be.
    fn out_of_range(&self) -> Option<(&'static str, &'static str)> {
        None
    }
}

/// A table of labelled entries (`[table.<label>]`) that components name in a
/// manifest field, such as `[sqlite_database.orders]` and `sqlite_databases`.
pub struct LabelledTable {
    pub table: &'static str,
    /// The manifest field of a component that lists labels.
    pub field: &'static str,
    /// What an entry is, for errors.
    pub noun: &'static str,
    pub labels: fn(&crate::manifest::Component) -> &[String],
}

impl LabelledTable {
    /// Each entry as a `T` and the problems with them; with a manifest also an error
    /// for each label a component lists that no entry defines (`default` needs none,
    /// and a label whose entry did not parse is already reported).
    pub fn read<T: DeserializeOwned + Serialize>(
        &self,
        runtime_config: &RuntimeConfig,
        manifest: Option<&crate::manifest::Manifest>,
    ) -> (BTreeMap<String, T>, Vec<Problem>) {
        let (entries, mut problems) = runtime_config.entries::<T>(self.table);
        let reported = |problems: &[Problem], key: &str| {
            problems
                .iter()
                .any(|p| p.key == key || p.key.starts_with(&format!("{key}.")))
        };
        for (id, component) in manifest.iter().flat_map(|m| &m.raw.component) {
            for label in (self.labels)(component) {
                let key = format!("{}.{label}", self.table);
                if label == "default" || entries.contains_key(label) || reported(&problems, &key) {
                    continue;
                }
                problems.push(Problem {
                    severity: Severity::Error,
                    file: manifest.map(|m| m.path.display().to_string()).unwrap_or_default(),
                    key: format!("component.{id}.{}", self.field),
                    message: format!(
                        "no {} labelled `{label}`: define [{key}] in the runtime config",
                        self.noun
                    ),
                });
            }
        }
        (entries, problems)
    }
}

/// `value` (at `key` of `file`) as a `T`: an error naming the key when it does not
/// fit, a warning for each key `T` does not know.
pub fn read_value<T: DeserializeOwned + Serialize>(
    value: toml::Value,
    file: &str,
    key: &str,
) -> Result<Read<T>, Problem> {
    let given = value.clone();
    let typed: T =
        serde_path_to_error::deserialize(value).map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
            // The key of the value that did not fit, where the error knows it.
            let at = match e.path().to_string().as_str() {
                "." | "" => key.to_string(),
                path => format!("{key}.{path}"),
            };
            error(file, &at, e.inner().message().trim_end().to_string())
        })?;
    // What `T` kept, written back: a key given but not kept is one `T` does not know.
    // (Serde's own hook for ignored keys cannot see inside internally tagged enums.)
    let kept = toml::Value::try_from(&typed).ok();
    let mut unknown = Vec::new();
    unknown_keys(&given, kept.as_ref(), key, &mut unknown);
    let warnings = unknown
        .into_iter()
        .map(|path| Problem {
            severity: Severity::Warning,
            file: file.to_string(),
            key: path,
            message: "unknown key (ignored)".into(),
        })
        .collect();
    Ok(Read { value: typed, warnings })
}

/// The keys of `given` (at `path`) that `kept` lacks, nested tables included.
fn unknown_keys(given: &toml::Value, kept: Option<&toml::Value>, path: &str, out: &mut Vec<String>) {
    let (toml::Value::Table(given), Some(toml::Value::Table(kept))) = (given, kept) else {
        return;
    };
    for (name, value) in given {
        let at = format!("{path}.{name}");
        match kept.get(name) {
            None => out.push(at),
            Some(kept) => unknown_keys(value, Some(kept), &at, out),
        }
    }
}

fn error(file: &str, key: &str, message: String) -> Problem {
    Problem {
        severity: Severity::Error,
        file: file.to_string(),
        key: key.to_string(),
        message,
    }
}

/// The first error among `problems`, as the error that refuses to start the host
/// (`shop up` reports every problem before it gets here).
pub fn first_error(problems: &[Problem]) -> anyhow::Result<()> {
    match problems.iter().find(|p| p.severity == Severity::Error) {
        Some(p) => Err(anyhow::anyhow!("{p}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(default)]
    struct Settings {
        size: u32,
    }

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(tag = "type", rename_all = "lowercase")]
    enum Entry {
        Spin { path: Option<String> },
    }

    fn runtime_config(text: &str) -> RuntimeConfig {
        RuntimeConfig::from_table(Some("rc.toml".into()), toml::from_str(text).unwrap())
    }

    #[test]
    fn unknown_tables_are_warnings() {
        let problems = runtime_config("[kafka]\nbrokers = \"x\"\n[mystery]\na = 1\n").unknown_tables(&["kafka"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "mystery");
        assert_eq!(problems[0].severity, Severity::Warning);
    }

    #[test]
    fn a_section_is_typed_with_unknown_keys_as_warnings() {
        let rc = runtime_config("[pool]\nsize = 4\nszie = 5\n[bad]\nsize = \"four\"\n");
        let read = rc.section::<Settings>("pool").unwrap();
        assert_eq!(read.value, Settings { size: 4 });
        assert_eq!(read.warnings.len(), 1);
        assert_eq!(read.warnings[0].key, "pool.szie");
        assert_eq!(read.warnings[0].severity, Severity::Warning);
        let bad = rc.section::<Settings>("bad").err().unwrap();
        assert_eq!((bad.file.as_str(), bad.key.as_str()), ("rc.toml", "bad.size"));
        assert!(bad.message.contains("invalid type"), "{bad:?}");
        assert_eq!(rc.section::<Settings>("absent").unwrap().value, Settings::default());
    }

    #[test]
    fn each_entry_is_read_on_its_own() {
        let rc = runtime_config(
            "[db.a]\ntype = \"spin\"\npath = \"a.db\"\n[db.b]\ntype = \"libsql\"\n[db.c]\ntype = \"spin\"\npaht = \"c.db\"\n",
        );
        let (entries, problems) = rc.entries::<Entry>("db");
        assert_eq!(
            entries["a"],
            Entry::Spin {
                path: Some("a.db".into())
            }
        );
        assert_eq!(entries["c"], Entry::Spin { path: None });
        assert!(!entries.contains_key("b"));
        let found: Vec<_> = problems.iter().map(|p| (p.severity, p.key.as_str())).collect();
        assert_eq!(
            found,
            [(Severity::Error, "db.b.type"), (Severity::Warning, "db.c.paht")],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("unknown variant `libsql`"), "{problems:?}");
        let (_, problems) = runtime_config("db = 1\n").entries::<Entry>("db");
        assert_eq!(problems[0].message, "expected a table of labelled entries");
    }
}
