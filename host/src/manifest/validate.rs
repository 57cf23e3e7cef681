//! Semantic checks of a parsed manifest. Every problem found is returned (not just the
//! first) with the file and the dotted key it concerns.

use std::collections::BTreeMap;
use std::fmt;

use super::event_triggers::{
    CRON_KEYS, KAFKA_KEYS, OUTBOX_KEYS, parse_cron_trigger, parse_kafka_trigger, parse_outbox_trigger,
};
use super::{Extra, HttpRoute, Manifest, Source, Template, check_topic_name, parse_http_trigger};
use crate::capability::allowed_hosts;
use crate::trigger::http::router::RoutePattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}: {level}: {}: {}", self.file, self.key, self.message)
    }
}

/// Spin manifest keys this host does not act on yet; reported distinctly from typos.
const SPIN_KEYS_NOT_YET_SUPPORTED: &[&str] = &[
    "files",
    "exclude_files",
    "ai_models",
    "dependencies",
    "dependencies_inherit_configuration",
    "targets",
    "tool",
    "profile",
    "allowed_http_hosts",
];

/// Trigger types this host can serve.
pub const SUPPORTED_TRIGGERS: &[&str] = &["http", "kafka", "cron", "outbox"];

struct Collector {
    file: String,
    problems: Vec<Problem>,
}

impl Collector {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, key.into(), message.into());
    }
    fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, key.into(), message.into());
    }
    fn push(&mut self, severity: Severity, key: String, message: String) {
        self.problems.push(Problem {
            severity,
            file: self.file.clone(),
            key,
            message,
        });
    }
    fn unknown_keys(&mut self, prefix: &str, extra: &Extra) {
        for key in extra.keys() {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if SPIN_KEYS_NOT_YET_SUPPORTED.contains(&key.as_str()) {
                self.warning(path, "valid in Spin but not supported by this host yet (ignored)");
            } else {
                self.warning(path, "unknown key (ignored)");
            }
        }
    }
}

/// Spin's rule for component ids: kebab-case words, each starting with a letter,
/// alphanumeric, and all lower-case or all upper-case.
pub fn is_valid_component_id(id: &str) -> bool {
    !id.is_empty()
        && id.split('-').all(|w| {
            w.starts_with(|c: char| c.is_ascii_alphabetic())
                && w.chars().all(|c| c.is_ascii_alphanumeric())
                && (w.chars().all(|c| !c.is_ascii_uppercase()) || w.chars().all(|c| !c.is_ascii_lowercase()))
        })
}

/// Spin's rule for variable names: lower-case letters, digits and underscores, starting
/// with a letter.
pub fn is_valid_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub fn validate(manifest: &Manifest) -> Vec<Problem> {
    let raw = &manifest.raw;
    let mut c = Collector {
        file: manifest.path.display().to_string(),
        problems: Vec::new(),
    };

    match &raw.spin_manifest_version {
        Some(toml::Value::Integer(2)) => {}
        Some(toml::Value::String(s)) if s == "2" => {}
        Some(other) => c.error("spin_manifest_version", format!("expected 2, found {other}")),
        None => c.error(
            "spin_manifest_version",
            "missing; this host reads Spin manifest version 2",
        ),
    }
    c.unknown_keys("", &raw.extra);
    if raw.application.name.trim().is_empty() {
        c.error("application.name", "missing application name");
    }
    c.unknown_keys("application", &raw.application.extra);

    for (name, var) in &raw.variables {
        let key = format!("variables.{name}");
        if !is_valid_variable_name(name) {
            c.error(
                &key,
                "variable names must be lower-case letters, digits and `_`, starting with a letter",
            );
        }
        match (&var.default, var.required) {
            (Some(_), true) => c.error(&key, "a variable cannot have both `default` and `required = true`"),
            (None, false) => c.error(&key, "a variable needs a `default` or `required = true`"),
            _ => {}
        }
        c.unknown_keys(&key, &var.extra);
    }

    for (trigger_type, entries) in &raw.trigger {
        if !SUPPORTED_TRIGGERS.contains(&trigger_type.as_str()) {
            c.error(
                format!("trigger.{trigger_type}"),
                format!(
                    "unknown trigger type `{trigger_type}`; this host serves: {}",
                    SUPPORTED_TRIGGERS.join(", ")
                ),
            );
            continue;
        }
        match trigger_type.as_str() {
            "http" => validate_http_triggers(&mut c, manifest, entries),
            "kafka" => validate_event_triggers(&mut c, manifest, "kafka", KAFKA_KEYS, entries, |t| {
                parse_kafka_trigger(t, &raw.application.name).map(|t| vec![("component".into(), t.component)])
            }),
            "outbox" => {
                validate_event_triggers(&mut c, manifest, "outbox", OUTBOX_KEYS, entries, |t| {
                    parse_outbox_trigger(t).map(|t| vec![("component".into(), t.component)])
                });
                validate_outbox_databases(&mut c, manifest, entries);
            }
            _ => validate_event_triggers(&mut c, manifest, "cron", CRON_KEYS, entries, |t| {
                parse_cron_trigger(t).map(|t| {
                    let committers = t.run_on_commit.into_iter().map(|id| ("run_on_commit".into(), id));
                    std::iter::once(("component".into(), t.component))
                        .chain(committers)
                        .collect()
                })
            }),
        }
    }
    for trigger_type in raw.application.trigger.keys() {
        let key = format!("application.trigger.{trigger_type}");
        // `[application.trigger.kafka]` is typed and checked with the runtime config's
        // `[kafka]` (`events::KafkaSettings::check`).
        if trigger_type != "kafka" && !SUPPORTED_TRIGGERS.contains(&trigger_type.as_str()) {
            c.error(key, format!("settings for unknown trigger type `{trigger_type}`"));
        }
    }

    for (id, component) in &raw.component {
        validate_component(&mut c, manifest, id, component);
    }
    c.problems
}

fn validate_http_triggers(c: &mut Collector, manifest: &Manifest, entries: &[toml::Table]) {
    let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (index, table) in entries.iter().enumerate() {
        let key = format!("trigger.http[{index}]");
        for k in table.keys() {
            if !["route", "component", "id", "executor"].contains(&k.as_str()) {
                c.warning(format!("{key}.{k}"), "unknown key (ignored)");
            }
        }
        let trigger = match parse_http_trigger(table) {
            Ok(t) => t,
            Err(e) => {
                c.error(&key, e);
                continue;
            }
        };
        if !manifest.raw.component.contains_key(&trigger.component) {
            c.error(
                format!("{key}.component"),
                format!(
                    "unknown component `{}`: no [component.{}] table",
                    trigger.component, trigger.component
                ),
            );
        }
        if let HttpRoute::Path(route) = &trigger.route {
            match RoutePattern::parse(route) {
                Ok(pattern) => {
                    let canonical = pattern.to_string();
                    if let Some((other, other_component)) = seen.get(&canonical) {
                        c.error(
                            format!("{key}.route"),
                            format!(
                                "route `{route}` conflicts with trigger.http[{other}] (component `{other_component}`): both match the same requests"
                            ),
                        );
                    } else {
                        seen.insert(canonical, (index, trigger.component.clone()));
                    }
                }
                Err(e) => c.error(format!("{key}.route"), e),
            }
        }
    }
}

/// An outbox's SQLite database must be one its component may open (the host relays
/// with the component's grants).
fn validate_outbox_databases(c: &mut Collector, manifest: &Manifest, entries: &[toml::Table]) {
    for (index, table) in entries.iter().enumerate() {
        let Ok(trigger) = parse_outbox_trigger(table) else {
            continue;
        };
        let Some(component) = manifest.raw.component.get(&trigger.component) else {
            continue;
        };
        if let Some(variable) = &trigger.database_url_variable
            && !component.variables.contains_key(variable)
        {
            c.error(
                format!("trigger.outbox[{index}].database_url_variable"),
                format!(
                    "component `{}` has no variable `{variable}` (add it to [component.{}.variables])",
                    trigger.component, trigger.component
                ),
            );
        }
        let Some(label) = &trigger.database else { continue };
        if !component.sqlite_databases.contains(label) {
            c.error(
                format!("trigger.outbox[{index}].database"),
                format!(
                    "component `{}` is not granted the SQLite database `{label}` (add it to its `sqlite_databases`)",
                    trigger.component
                ),
            );
        }
    }
}

/// Kafka and cron entries: known keys, a parse, and components that exist (`parse`
/// gives each component the entry names, with the key naming it).
fn validate_event_triggers(
    c: &mut Collector,
    manifest: &Manifest,
    kind: &str,
    known_keys: &[&str],
    entries: &[toml::Table],
    parse: impl Fn(&toml::Table) -> Result<Vec<(String, String)>, String>,
) {
    for (index, table) in entries.iter().enumerate() {
        let key = format!("trigger.{kind}[{index}]");
        for k in table.keys().filter(|k| !known_keys.contains(&k.as_str())) {
            c.warning(format!("{key}.{k}"), "unknown key (ignored)");
        }
        match parse(table) {
            Ok(named) => {
                for (field, component) in named {
                    if !manifest.raw.component.contains_key(&component) {
                        c.error(
                            format!("{key}.{field}"),
                            format!("unknown component `{component}`: no [component.{component}] table"),
                        );
                    }
                }
            }
            Err(e) => c.error(&key, e),
        }
    }
}

fn validate_component(c: &mut Collector, manifest: &Manifest, id: &str, component: &super::Component) {
    let key = format!("component.{id}");
    if !is_valid_component_id(id) {
        c.error(&key, "component ids must be kebab-case: `-`-separated words of letters and digits, each starting with a letter and not mixing cases");
    }
    c.unknown_keys(&key, &component.extra);
    match &component.source {
        None => c.error(format!("{key}.source"), "missing `source`"),
        Some(Source::Remote { url, .. }) => c.error(
            format!("{key}.source"),
            format!("remote sources ({url}) are not supported by this host; build or download the .wasm and point `source` at the file"),
        ),
        Some(Source::Local(_)) => {
            let path = manifest.source_path(component).expect("local source");
            if !path.exists() && manifest.builder_of(component).is_none() {
                c.error(
                    format!("{key}.source"),
                    format!(
                        "{} does not exist and neither [{key}.build] nor another component with the same source has a build command to produce it",
                        path.display()
                    ),
                );
            }
        }
    }
    if let Some(build) = &component.build {
        let commands = build.command.commands();
        if commands.is_empty() || commands.iter().any(|c| c.trim().is_empty()) {
            c.error(format!("{key}.build.command"), "empty build command");
        }
        if build
            .workdir
            .as_deref()
            .is_some_and(|w| std::path::Path::new(w).is_absolute())
        {
            c.error(
                format!("{key}.build.workdir"),
                "workdir must be relative to the manifest directory",
            );
        }
        c.unknown_keys(&format!("{key}.build"), &build.extra);
    }
    let declared = &manifest.raw.variables;
    let check_template = |c: &mut Collector, k: String, text: &str| match Template::parse(text) {
        Ok(t) => {
            for v in t.variables() {
                if !declared.contains_key(v) {
                    c.error(
                        &k,
                        format!("template refers to undeclared variable `{v}` (add it to [variables])"),
                    );
                }
            }
        }
        Err(e) => c.error(&k, e),
    };
    for (name, value) in &component.variables {
        let k = format!("{key}.variables.{name}");
        if !is_valid_variable_name(name) {
            c.error(
                &k,
                "variable names must be lower-case letters, digits and `_`, starting with a letter",
            );
        }
        check_template(c, k, value);
    }
    for (i, host) in component.allowed_outbound_hosts.iter().enumerate() {
        let k = format!("{key}.allowed_outbound_hosts[{i}]");
        check_template(c, k.clone(), host);
        if !host.contains("{{") {
            if let Err(e) = allowed_hosts::check_entry(host) {
                c.error(k, e);
            }
        } else if let Some(rendered) = render_with_defaults(manifest, host)
            && let Err(e) = allowed_hosts::check_entry(&rendered)
        {
            // Spin's loader renders each entry with the variables' defaults and refuses
            // the whole app when one is not a host, whatever values a deployment sets.
            c.error(
                k,
                format!(
                    "with the variables' defaults this is `{rendered}`, which Spin refuses when it loads the app ({e}); give each variable in it a default that makes `scheme://host[:port]`"
                ),
            );
        }
    }
    for (i, topic) in component.allowed_topics.iter().enumerate() {
        if let Err(e) = check_topic_name(topic.strip_suffix('*').unwrap_or(topic)) {
            c.error(format!("{key}.allowed_topics[{i}]"), e);
        }
    }
}

/// `text` with every variable at its `[variables]` default, or `None` when one has no
/// default (Spin then leaves the entry to be checked when it is used).
fn render_with_defaults(manifest: &Manifest, text: &str) -> Option<String> {
    Template::parse(text)
        .ok()?
        .render(|name| manifest.raw.variables.get(name)?.default.clone())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn problems(toml: &str) -> Vec<Problem> {
        validate(&Manifest::parse(Path::new("spin.toml"), toml).unwrap())
    }

    fn errors(toml: &str) -> Vec<String> {
        problems(toml)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    const HEADER: &str = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";

    #[test]
    fn valid_manifest_has_no_errors() {
        let toml = format!(
            "{HEADER}[variables]\napi = {{ default = \"x\" }}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"web.wasm\"\nallowed_outbound_hosts = [\"https://{{{{ api }}}}\"]\nvariables = {{ v = \"{{{{ api }}}}\" }}\n[component.web.build]\ncommand = \"true\"\n"
        );
        assert_eq!(errors(&toml), Vec::<String>::new());
    }

    #[test]
    fn outbound_host_templates_must_make_hosts_with_the_defaults_as_spin_loads_them() {
        let app = |variables: &str, hosts: &str| {
            format!(
                "{HEADER}[variables]\n{variables}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"web.wasm\"\nallowed_outbound_hosts = {hosts}\n[component.web.build]\ncommand = \"true\"\n"
            )
        };
        // An empty default (a deployment would set the real URL) and a URL with a path.
        let errs = errors(&app(
            "mail = { default = \"\" }\napi = { default = \"https://api.example.com/v1\" }",
            "[\"{{ mail }}\", \"{{ api }}\"]",
        ));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("component.web.allowed_outbound_hosts[0]: with the variables' defaults this is ``"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("`https://api.example.com/v1`") && errs[1].contains("path"),
            "{errs:?}"
        );
        // Valid defaults pass; a variable without a default is left for run time, as Spin does.
        assert_eq!(
            errors(&app(
                "mail = { default = \"https://mail.invalid\" }\nport = { required = true }",
                "[\"{{ mail }}\", \"https://api.example.com:{{ port }}\"]",
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let toml = format!(
            "{HEADER}[variables]\nBad = {{ default = \"x\", required = true }}\n[[trigger.http]]\nroute = \"/a\"\ncomponent = \"ghost\"\n[[trigger.http]]\nroute = \"/a\"\ncomponent = \"web\"\n[[trigger.mqtt]]\ncomponent = \"web\"\n[component.web]\nsource = \"missing.wasm\"\nvariables = {{ v = \"{{{{ nope }}}}\" }}\nsurprise = 1\n"
        );
        let errs = errors(&toml);
        let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
        assert!(has("variables.Bad: variable names"), "{errs:?}");
        assert!(has("variables.Bad: a variable cannot have both"), "{errs:?}");
        assert!(has("trigger.http[0].component: unknown component `ghost`"), "{errs:?}");
        assert!(
            has("trigger.http[1].route: route `/a` conflicts with trigger.http[0]"),
            "{errs:?}"
        );
        assert!(has("trigger.mqtt: unknown trigger type `mqtt`"), "{errs:?}");
        assert!(has("component.web.source: missing.wasm does not exist"), "{errs:?}");
        assert!(has("undeclared variable `nope`"), "{errs:?}");
        let warnings: Vec<_> = problems(&toml)
            .into_iter()
            .filter(|p| p.severity == Severity::Warning)
            .collect();
        assert!(
            warnings.iter().any(|w| w.key == "component.web.surprise"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_missing_source_built_by_another_component_is_fine() {
        // Two components sharing one .wasm; only the second says how to build it.
        let shared = "[component.a]\nsource = \"shared.wasm\"\n[component.b]\nsource = \"shared.wasm\"\n[component.b.build]\ncommand = \"true\"\n";
        assert_eq!(errors(&format!("{HEADER}{shared}")), Vec::<String>::new());
        let alone = "[component.a]\nsource = \"shared.wasm\"\n[component.b]\nsource = \"other.wasm\"\n[component.b.build]\ncommand = \"true\"\n";
        let errs = errors(&format!("{HEADER}{alone}"));
        assert!(
            errs.len() == 1 && errs[0].contains("component.a.source: shared.wasm does not exist"),
            "{errs:?}"
        );
    }

    #[test]
    fn trailing_slash_routes_conflict() {
        let toml = format!(
            "{HEADER}[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"web\"\n[[trigger.http]]\nroute = \"/a/.../\"\ncomponent = \"web\"\n[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"web\"\n[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"web\"\n[component.web]\nsource = \"w.wasm\"\n[component.web.build]\ncommand = \"true\"\n"
        );
        let errs = errors(&toml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("trigger.http[1].route"), "{errs:?}");
    }

    #[test]
    fn id_and_name_rules() {
        assert!(is_valid_component_id("chain-back2"));
        assert!(!is_valid_component_id("Chain"));
        assert!(is_valid_component_id("API-v2"));
        assert!(!is_valid_component_id("a-2b"));
        assert!(!is_valid_component_id("a--b"));
        assert!(!is_valid_component_id("a_b"));
        assert!(is_valid_variable_name("api_key2"));
        assert!(!is_valid_variable_name("2x"));
        assert!(!is_valid_variable_name("ApiKey"));
    }
}
