//! Turns a validated manifest into runnable components: reads each `.wasm`, compiles it
//! (through the on-disk cache), links it against the host capabilities and
//! pre-instantiates it, so a request only pays for instantiation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::handler::ProxyPre;

use crate::bindings::cron::SpinCronPre;
use crate::bindings::messaging::KafkaHandlerPre;
use crate::capability::allowed_hosts::AllowedHosts;
use crate::capability::{AppCapabilities, ComponentCapabilities, ComponentContext};
use crate::compile_cache::{CacheOutcome, CompileCache};
use crate::manifest::Manifest;
use crate::state::HostState;
use crate::variables::Variables;

/// Which HTTP world a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// `wasi:http/incoming-handler@0.2.x` (spin-sdk 5, the `wasi` crate).
    P2,
    /// `wasi:http/handler@0.3.x` (spin-sdk 7).
    P3,
}

impl HttpWorld {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpWorld::P2 => "wasi:http/incoming-handler@0.2",
            HttpWorld::P3 => "wasi:http/handler@0.3",
        }
    }
}

/// What a component exports that a trigger can call.
pub struct Exports {
    /// The HTTP handler, for `[[trigger.http]]`.
    pub http: Option<(ProxyPre<HostState>, HttpWorld)>,
    /// `wasi:messaging/incoming-handler`, for `[[trigger.kafka]]`.
    pub messaging: Option<KafkaHandlerPre<HostState>>,
    /// `handle-cron-event`, for `[[trigger.cron]]`.
    pub cron: Option<SpinCronPre<HostState>>,
}

/// A component ready to be instantiated per request or message.
pub struct LoadedComponent {
    pub id: Arc<str>,
    pub exports: Exports,
    pub allowed_hosts: Arc<AllowedHosts>,
    /// What each registered capability keeps for this component.
    pub capabilities: ComponentCapabilities,
    pub cache: CacheOutcome,
}

/// Every interface a component may import: each registered capability's.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    crate::capability::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Renders a component's `allowed_outbound_hosts`, substituting `{{ variable }}`s.
/// An entry made only of a variable may hold a whole URL (a service's base URL
/// setting): it grants that URL's origin, and nothing when the variable is empty.
pub fn allowed_hosts(entries: &[String], variables: &Variables) -> anyhow::Result<AllowedHosts> {
    let mut rendered = Vec::new();
    for entry in entries {
        let value = variables
            .render(entry)
            .map_err(|err| anyhow::anyhow!("allowed_outbound_hosts entry `{entry}`: {err}"))?;
        let whole_variable = matches!(
            crate::manifest::Template::parse(entry).map(|t| t.parts),
            Ok(parts) if matches!(parts.as_slice(), [crate::manifest::TemplatePart::Variable(_)])
        );
        if whole_variable {
            match origin_of(value.trim()) {
                Some(origin) => rendered.push(origin),
                None => continue,
            }
        } else {
            rendered.push(value);
        }
    }
    AllowedHosts::parse(rendered.iter().map(String::as_str)).map_err(|e| anyhow::anyhow!(e))
}

/// `scheme://authority` of a URL (`None` for an empty value).
fn origin_of(url: &str) -> Option<String> {
    if url.is_empty() {
        return None;
    }
    Some(match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split(['/', '?', '#']).next().unwrap_or(rest)),
        None => url.to_string(),
    })
}

/// What the loader needs besides the manifest.
pub struct LoadContext<'a> {
    pub engine: &'a Engine,
    pub cache: &'a CompileCache,
    pub variables: &'a Variables,
    /// Every capability's application-wide state.
    pub capabilities: &'a AppCapabilities,
}

/// Loads every component a trigger references, each once.
pub fn load_components(
    manifest: &Manifest,
    context: &LoadContext<'_>,
) -> anyhow::Result<BTreeMap<String, Arc<LoadedComponent>>> {
    let referenced: BTreeSet<String> = manifest
        .http_triggers()
        .into_iter()
        .map(|t| t.component)
        .chain(manifest.kafka_triggers().into_iter().map(|t| t.component))
        .chain(manifest.cron_triggers().into_iter().map(|t| t.component))
        .collect();
    let linker = linker(context.engine)?;
    let mut loaded = BTreeMap::new();
    for id in referenced {
        let component = load_component(manifest, context, &linker, &id)?;
        loaded.insert(id, Arc::new(component));
    }
    Ok(loaded)
}

fn load_component(
    manifest: &Manifest,
    context: &LoadContext<'_>,
    linker: &Linker<HostState>,
    id: &str,
) -> anyhow::Result<LoadedComponent> {
    let component = manifest
        .raw
        .component
        .get(id)
        .with_context(|| format!("trigger refers to unknown component `{id}`"))?;
    let path = manifest
        .source_path(component)
        .with_context(|| format!("component `{id}` has no local source"))?;
    let wasm = std::fs::read(&path).with_context(|| format!("component `{id}`: cannot read {}", path.display()))?;
    let started = Instant::now();
    let (compiled, outcome) = context
        .cache
        .load(context.engine, &wasm)
        .with_context(|| format!("component `{id}`: {} is not a valid component", path.display()))?;
    let pre = linker
        .instantiate_pre(&compiled)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{id}` needs an import this host does not provide"))?;
    let http = match wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
        Ok(p3) => Some((ProxyPre::P3(p3), HttpWorld::P3)),
        Err(_) => wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre.clone())
            .ok()
            .map(|p2| (ProxyPre::P2(p2), HttpWorld::P2)),
    };
    let exports = Exports {
        http,
        messaging: KafkaHandlerPre::new(pre.clone()).ok(),
        cron: SpinCronPre::new(pre).ok(),
    };
    tracing::info!(
        component = %id,
        exports = %exports.describe(),
        compilation_cache = outcome.as_str(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "component loaded"
    );
    let allowed = Arc::new(
        allowed_hosts(&component.allowed_outbound_hosts, context.variables)
            .with_context(|| format!("component `{id}`"))?,
    );
    let id: Arc<str> = id.into();
    let capabilities: ComponentCapabilities = context.capabilities.configure_component(&ComponentContext {
        id: &id,
        manifest: component,
        allowed_hosts: &allowed,
        variables: context.variables,
    })?;
    Ok(LoadedComponent {
        id,
        exports,
        allowed_hosts: allowed,
        capabilities,
        cache: outcome,
    })
}

impl Exports {
    /// The exports a trigger can use, for logs and errors.
    pub fn describe(&self) -> String {
        let mut names = Vec::new();
        if let Some((_, world)) = &self.http {
            names.push(world.as_str());
        }
        if self.messaging.is_some() {
            names.push("wasi:messaging/incoming-handler@0.2.0-draft");
        }
        if self.cron.is_some() {
            names.push("fermyon:spin-cron handle-cron-event");
        }
        if names.is_empty() {
            "nothing a trigger can call".into()
        } else {
            names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn a_variable_holding_a_url_grants_its_origin_and_an_empty_one_nothing() {
        let manifest = Manifest::parse(
            Path::new("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\n\
             provider = { default = \"https://pay.example:8443/v1/charges\" }\nmail = { default = \"\" }\n\
             host = { default = \"db.example\" }\n",
        )
        .unwrap();
        let variables = Variables::resolve(&manifest, |_| None).unwrap();
        let entries = ["{{ provider }}", "{{ mail }}", "postgres://{{ host }}"].map(String::from);
        let allowed = allowed_hosts(&entries, &variables).unwrap();
        assert!(allowed.allows("https", "pay.example", Some(8443)));
        assert!(!allowed.allows("https", "pay.example", Some(443)));
        assert!(allowed.allows("postgres", "db.example", Some(5432)));
        assert!(!allowed.allows("https", "mail.example", Some(443)));
        let literal_path = ["https://pay.example/v1".to_string()];
        assert!(
            allowed_hosts(&literal_path, &variables).is_err(),
            "written paths stay an error"
        );
    }
}
