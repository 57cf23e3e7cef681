//! The application manifest: Spin manifest v2 (`spin.toml`) plus the Kafka and cron
//! trigger tables this host adds in the style Spin uses for plugin triggers.
//!
//! Parsing is deliberately lenient about *shape* (unknown keys are collected, not
//! rejected) and strict about *meaning*: [`validate`] turns every semantic problem
//! into a [`Problem`] naming the file and key, so `shop check` can print them all.

mod event_triggers;
mod template;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

pub use event_triggers::{CronTrigger, KafkaTrigger, MessageOrdering, NotifySource, OutboxTrigger, check_topic_name};
pub use template::{Template, TemplatePart};
pub use validate::{Problem, Severity, is_valid_variable_name, validate};

/// Keys a table did not recognise, kept so they can be reported as warnings.
type Extra = BTreeMap<String, toml::Value>;

#[derive(Debug, Clone, Deserialize)]
pub struct RawManifest {
    pub spin_manifest_version: Option<toml::Value>,
    #[serde(default)]
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    /// Trigger type (`http`, `kafka`, `cron`, …) → the trigger entries of that type.
    #[serde(default)]
    pub trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    pub component: BTreeMap<String, Component>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Application {
    #[serde(default)]
    pub name: String,
    pub version: Option<String>,
    #[serde(default, rename = "description")]
    pub _description: Option<String>,
    #[serde(default, rename = "authors")]
    pub _authors: Vec<String>,
    /// App-wide settings per trigger type, e.g. `[application.trigger.kafka]`.
    #[serde(default)]
    pub trigger: BTreeMap<String, toml::Table>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Variable {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default, rename = "description")]
    pub _description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Source {
    Local(String),
    Remote {
        url: String,
        #[serde(rename = "digest")]
        _digest: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Component {
    pub source: Option<Source>,
    #[serde(default, rename = "description")]
    pub _description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    /// Topics the component may publish to through `wasi:messaging` (this host's
    /// addition; `prefix.*` allows a family).
    #[serde(default)]
    pub allowed_topics: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    pub build: Option<Build>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One build command or several run in order (Spin accepts both).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BuildCommands {
    One(String),
    Many(Vec<String>),
}

impl BuildCommands {
    pub fn commands(&self) -> Vec<&str> {
        match self {
            BuildCommands::One(c) => vec![c.as_str()],
            BuildCommands::Many(cs) => cs.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub command: BuildCommands,
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An HTTP trigger's `route`: a path, or `{ private = true }` for components reachable
/// only through local service chaining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    Path(String),
    Private,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub component: String,
    pub route: HttpRoute,
}

/// A manifest read from disk: the raw tables plus where they came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub raw: RawManifest,
}

impl Manifest {
    /// Reads and parses `path`. Fails only when the file is unreadable or not a TOML
    /// document of the expected shape; semantic checks are in [`validate`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let raw: RawManifest = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: invalid manifest: {}", path.display(), e.to_string().trim_end()))?;
        Ok(Self {
            path: path.to_path_buf(),
            raw,
        })
    }

    /// The directory relative paths in the manifest are resolved against.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// The local file a component's `source` points at, resolved against the manifest.
    pub fn source_path(&self, component: &Component) -> Option<PathBuf> {
        match component.source.as_ref()? {
            Source::Local(p) => Some(match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
                _ => PathBuf::from(p),
            }),
            Source::Remote { .. } => None,
        }
    }

    /// The component whose build command produces `component`'s source: itself when it
    /// has a build, else another component with the same `source` and a build (two
    /// components may share one `.wasm`, e.g. one relay configured per service).
    pub fn builder_of<'a>(&'a self, component: &Component) -> Option<&'a str> {
        let source = self.source_path(component)?;
        self.raw
            .component
            .iter()
            .filter(|(_, other)| other.build.is_some())
            .find(|(_, other)| std::ptr::eq(*other, component) || self.source_path(other).as_ref() == Some(&source))
            .map(|(id, _)| id.as_str())
    }

    /// Every `[[trigger.http]]` entry that parses, in manifest order. Malformed entries
    /// are reported by [`validate`] and skipped here.
    pub fn http_triggers(&self) -> Vec<HttpTrigger> {
        self.raw
            .trigger
            .get("http")
            .into_iter()
            .flatten()
            .filter_map(|t| parse_http_trigger(t).ok())
            .collect()
    }
}

/// Interprets one `[[trigger.http]]` table.
pub(crate) fn parse_http_trigger(table: &toml::Table) -> Result<HttpTrigger, String> {
    let component = match table.get("component") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Table(_)) => {
            return Err("inline component tables are not supported: define the component as [component.<id>] and reference it by id".into());
        }
        Some(other) => return Err(format!("`component` must be a string, found {}", other.type_str())),
        None => return Err("missing `component`".into()),
    };
    let route = match table.get("route") {
        Some(toml::Value::String(s)) => HttpRoute::Path(s.clone()),
        Some(toml::Value::Table(t)) => match t.get("private") {
            Some(toml::Value::Boolean(true)) => HttpRoute::Private,
            _ => return Err("`route` table must be `{ private = true }`".into()),
        },
        Some(other) => {
            return Err(format!(
                "`route` must be a string or {{ private = true }}, found {}",
                other.type_str()
            ));
        }
        None => return Err("missing `route`".into()),
    };
    Ok(HttpTrigger { component, route })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_private_and_public_routes() {
        let m = Manifest::parse(
            Path::new("spin.toml"),
            r#"
spin_manifest_version = 2
[application]
name = "t"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "b"
[component.a]
source = "a.wasm"
[component.b]
source = "b.wasm"
"#,
        )
        .unwrap();
        let triggers = m.http_triggers();
        assert_eq!(triggers.len(), 2);
        assert_eq!(triggers[0].route, HttpRoute::Path("/a/...".into()));
        assert_eq!(triggers[1].route, HttpRoute::Private);
        assert_eq!(m.source_path(&m.raw.component["a"]).unwrap(), Path::new("a.wasm"));
    }

    #[test]
    fn bad_toml_names_the_file_and_line() {
        let err = Manifest::parse(Path::new("x/spin.toml"), "[application\nname=1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x/spin.toml"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
