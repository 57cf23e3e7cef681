//! Host capabilities a component may import, one module each, granted per component
//! by the manifest.
//!
//! Each capability is a [`Capability`]: it checks its runtime-config tables and what
//! the manifest asks of it (`shop check`), builds its application-wide state (stores,
//! pools) once at start, adds its interfaces to the linker (its host functions see
//! only their own state, through a [`CapabilityView`]), builds each component's
//! configuration once at load, and prepares each instance's state from it. The list
//! in [`registry`] is the only place a capability is registered.

pub mod allowed_hosts;
pub mod bounded_map;
pub mod commits;
pub mod key_value;
pub mod messaging;
pub mod mqtt;
pub mod outbound_http;
pub mod postgres;
pub mod redis;
mod registry;
pub mod sockets;
pub mod sqlite;
pub mod variables;
pub mod wal_checkpoint;
pub mod wasi;

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};

pub use registry::{AppCapabilities, ComponentCapabilities, InstanceCapabilities, add_to_linker};

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

use crate::manifest::{Manifest, Problem};
use crate::runtime_config::RuntimeConfig;
use crate::state::HostState;
use crate::telemetry::TraceCell;

/// One host capability: the interfaces it serves, what it keeps for the whole
/// application, the configuration it builds for a component at load, and the state it
/// gives each instance.
pub trait Capability: Sized + 'static {
    /// What the capability keeps for the whole application (its stores, pools,
    /// connections), built once at start from the runtime config.
    type App: Send + Sync + 'static;
    /// What the capability keeps for one component, built once when it loads.
    type Component: Send + Sync + 'static;
    /// What the capability keeps in one instance's store.
    type Instance: Send + 'static;

    /// The runtime-config tables this capability reads (`shop check` warns of tables
    /// nothing reads).
    const RUNTIME_CONFIG_TABLES: &'static [&'static str] = &[];

    /// Problems in what the manifest and runtime config ask of this capability, for
    /// `shop check` and before `shop up` starts anything; an error refuses to start.
    fn check(_app: &CheckContext<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// Builds the application-wide state from the runtime config.
    fn configure_app(app: &AppContext<'_>) -> anyhow::Result<Self::App>;

    /// Adds the capability's interfaces to the linker; their host functions reach
    /// the store through [`view`], which yields only this capability's state.
    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()>;

    /// Checks what the manifest grants `component` and builds its configuration: an
    /// error here refuses to start the application.
    fn configure(app: &Arc<Self::App>, component: &ComponentContext<'_>) -> anyhow::Result<Self::Component>;

    /// The state of one new instance of a component configured as `component`.
    fn prepare(component: &Self::Component, instance: &InstanceContext) -> Self::Instance;
}

/// What a capability checks: the manifest and the runtime config, before anything runs.
pub struct CheckContext<'a> {
    pub manifest: &'a Manifest,
    pub runtime_config: &'a RuntimeConfig,
}

/// What a capability builds its application-wide state from.
pub struct AppContext<'a> {
    pub runtime_config: &'a RuntimeConfig,
    /// Where embedded state lives (`--data-dir`).
    pub data_dir: &'a Path,
    /// Told which component committed a write (SQLite and PostgreSQL report here).
    pub commits: &'a Arc<commits::CommitSignals>,
    /// The broker guests publish to (`None`: publishing answers a connection error).
    pub producer: Option<Arc<dyn shop_broker::Producer>>,
}

/// What a capability is told about a component it configures.
pub struct ComponentContext<'a> {
    pub id: &'a Arc<str>,
    pub manifest: &'a crate::manifest::Component,
    /// Its `allowed_outbound_hosts`, templates rendered.
    pub allowed_hosts: &'a Arc<allowed_hosts::AllowedHosts>,
    /// The application's resolved variables.
    pub variables: &'a crate::variables::Variables,
}

/// What a capability is told about an instance it prepares state for.
pub struct InstanceContext {
    /// The invocation's trace, for the spans of host calls.
    pub trace: TraceCell,
    /// Tags on the guest's stdout and stderr lines (the request id is set later).
    pub output_tags: crate::guest_output::OutputTags,
    /// Local service chaining, for outbound requests to `*.spin.internal`.
    pub local: std::sync::Weak<dyn outbound_http::LocalServices>,
}

/// A capability's slice of an instance's store: its own state and the resource table
/// the component model keeps the guest's handles in.
pub struct CapabilityView<'a, C: Capability> {
    pub state: &'a mut C::Instance,
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] through which a capability's bindings see a [`CapabilityView`].
pub struct Project<C>(PhantomData<C>);

impl<C: Capability> HasData for Project<C> {
    type Data<'a> = CapabilityView<'a, C>;
}

/// The store data of one instance, split for capability `C`.
pub trait Projects<C: Capability> {
    fn project(&mut self) -> CapabilityView<'_, C>;
}

/// The host getter every capability links its interfaces with.
pub fn view<C: Capability>(state: &mut HostState) -> CapabilityView<'_, C>
where
    HostState: Projects<C>,
{
    state.project()
}

/// What the capabilities' unit tests build components from: a manifest entry, the
/// embedded backends in a scratch directory, and no wasm.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use wasmtime::component::ResourceTable;

    use super::{
        AppContext, Capability, CapabilityView, ComponentContext, InstanceContext, allowed_hosts::AllowedHosts,
    };
    use crate::manifest::Manifest;
    use crate::runtime_config::RuntimeConfig;
    use crate::variables::Variables;

    /// One component `c`, declared by `component_toml` (the lines of its table).
    pub struct Fixture {
        pub manifest: Manifest,
        pub variables: Variables,
        pub allowed_hosts: Arc<AllowedHosts>,
        pub runtime_config: RuntimeConfig,
        pub commits: Arc<super::commits::CommitSignals>,
        pub id: Arc<str>,
        dir: PathBuf,
    }

    impl Fixture {
        pub fn new(name: &str, component_toml: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("shop-capability-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let manifest = Manifest::parse(
                Path::new("spin.toml"),
                &format!(
                    "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\nwho = {{ default = \"world\" }}\n\
                     [component.c]\nsource = \"c.wasm\"\n{component_toml}\n"
                ),
            )
            .unwrap();
            let variables = Variables::resolve(&manifest, |_| None).unwrap();
            let entries = &manifest.raw.component["c"].allowed_outbound_hosts;
            let allowed_hosts = Arc::new(crate::app::allowed_hosts(entries, &variables).unwrap());
            Self {
                manifest,
                variables,
                allowed_hosts,
                runtime_config: RuntimeConfig::from_table(None, toml::Table::new()),
                commits: Arc::default(),
                id: Arc::from("c"),
                dir,
            }
        }

        pub fn context(&self) -> ComponentContext<'_> {
            ComponentContext {
                id: &self.id,
                manifest: &self.manifest.raw.component["c"],
                allowed_hosts: &self.allowed_hosts,
                variables: &self.variables,
            }
        }

        /// Capability `C`'s application state, on embedded backends in the scratch dir.
        pub fn app<C: Capability>(&self) -> Arc<C::App> {
            Arc::new(
                C::configure_app(&AppContext {
                    runtime_config: &self.runtime_config,
                    data_dir: &self.dir,
                    commits: &self.commits,
                    producer: None,
                })
                .unwrap(),
            )
        }

        /// Component `c` as the loader would leave it, with `exports` and every
        /// capability configured on embedded backends.
        pub fn loaded(&self, exports: crate::app::Exports) -> crate::app::LoadedComponent {
            let capabilities = super::AppCapabilities::configure(&AppContext {
                runtime_config: &self.runtime_config,
                data_dir: &self.dir,
                commits: &self.commits,
                producer: None,
            })
            .unwrap();
            crate::app::LoadedComponent {
                id: self.id.clone(),
                exports,
                allowed_hosts: self.allowed_hosts.clone(),
                capabilities: capabilities.configure_component(&self.context()).unwrap(),
                cache: crate::compile_cache::CacheOutcome::Miss,
            }
        }

        /// A fresh instance's state for capability `C`, as the store would hold it.
        pub fn instance<C: Capability>(&self) -> Instance<C> {
            let component = C::configure(&self.app::<C>(), &self.context()).unwrap();
            let trace = crate::telemetry::TraceCell::default();
            // No app serves local service chaining for a fixture's instances.
            let local: std::sync::Weak<dyn super::outbound_http::LocalServices> =
                std::sync::Weak::<crate::trigger::http::HttpApp>::new();
            Instance {
                state: C::prepare(
                    &component,
                    &InstanceContext {
                        output_tags: crate::guest_output::OutputTags {
                            component: self.id.clone(),
                            request_id: Arc::default(),
                            trace: trace.clone(),
                        },
                        trace,
                        local,
                    },
                ),
                table: ResourceTable::new(),
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// An instance's state and resource table, outside any store.
    pub struct Instance<C: Capability> {
        pub state: C::Instance,
        pub table: ResourceTable,
    }

    impl<C: Capability> Instance<C> {
        /// What the capability's host functions see.
        pub fn view(&mut self) -> CapabilityView<'_, C> {
            CapabilityView {
                state: &mut self.state,
                table: &mut self.table,
            }
        }
    }
}
