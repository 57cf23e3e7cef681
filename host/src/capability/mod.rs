//! Host capabilities a component may import, one module each, granted per component
//! by the manifest.
//!
//! Each capability is a [`Capability`]: it adds its interfaces to the linker (its
//! host functions see only their own state, through a [`CapabilityView`]), checks
//! what the manifest grants a component and builds that component's configuration
//! once at load, and prepares each instance's state from it. The list in
//! [`registry`] is the only place a capability is registered.

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

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};

pub use registry::{ComponentCapabilities, InstanceCapabilities, add_to_linker};

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

use crate::runtime_config::RuntimeConfig;
use crate::state::HostState;
use crate::telemetry::TraceCell;

/// One host capability: the interfaces it serves, the configuration it builds for a
/// component at load, and the state it gives each instance.
pub trait Capability: Sized + 'static {
    /// What the capability keeps for one component, built once when it loads.
    type Component: Send + Sync + 'static;
    /// What the capability keeps in one instance's store.
    type Instance: Send + 'static;

    /// Adds the capability's interfaces to the linker; their host functions reach
    /// the store through [`view`], which yields only this capability's state.
    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()>;

    /// Checks what the manifest grants `component` and builds its configuration: an
    /// error here refuses to start the application.
    fn configure(component: &ComponentContext<'_>) -> anyhow::Result<Self::Component>;

    /// The state of one new instance of a component configured as `component`.
    fn prepare(component: &Self::Component, instance: &InstanceContext) -> Self::Instance;
}

/// What a capability is told about a component it configures.
pub struct ComponentContext<'a> {
    pub id: &'a Arc<str>,
    pub manifest: &'a crate::manifest::Component,
    /// Its `allowed_outbound_hosts`, templates rendered.
    pub allowed_hosts: &'a Arc<allowed_hosts::AllowedHosts>,
    /// The application's resolved variables.
    pub variables: &'a crate::variables::Variables,
    /// The application-wide stores, databases and pools.
    pub backends: &'a Arc<Backends>,
    /// The broker guests publish to (`None`: publishing answers a connection error).
    pub producer: Option<&'a Arc<dyn shop_broker::Producer>>,
}

/// What a capability is told about an instance it prepares state for.
pub struct InstanceContext {
    /// The invocation's trace, for the spans of host calls.
    pub trace: TraceCell,
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

/// The application-wide backends behind the capabilities, built once from the
/// runtime config; components reach them through their per-component grants.
pub struct Backends {
    pub key_value: key_value::KeyValueStores,
    pub sqlite: sqlite::Databases,
    pub postgres: postgres::PostgresPools,
    pub redis: redis::RedisServers,
    pub commits: std::sync::Arc<commits::CommitSignals>,
}

impl Backends {
    pub fn from_runtime_config(config: &RuntimeConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let key_value = key_value::KeyValueStores::from_config(&config.key_value_stores, config.dir(), data_dir)?;
        for (label, backend) in key_value.labels() {
            tracing::info!(store = label, backend = backend.kind(), "key-value store");
        }
        let commits = std::sync::Arc::new(commits::CommitSignals::default());
        Ok(Self {
            key_value,
            sqlite: sqlite::Databases::from_config(&config.sqlite_databases, config.dir(), data_dir, &commits)?,
            postgres: postgres::PostgresPools::default(),
            redis: redis::RedisServers::default(),
            commits,
        })
    }
}

/// What the capabilities' unit tests build components from: a manifest entry, the
/// embedded backends in a scratch directory, and no wasm.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use wasmtime::component::ResourceTable;

    use super::{Backends, Capability, CapabilityView, ComponentContext, InstanceContext, allowed_hosts::AllowedHosts};
    use crate::manifest::Manifest;
    use crate::runtime_config::RuntimeConfig;
    use crate::variables::Variables;

    /// One component `c`, declared by `component_toml` (the lines of its table).
    pub struct Fixture {
        pub manifest: Manifest,
        pub variables: Variables,
        pub allowed_hosts: Arc<AllowedHosts>,
        pub backends: Arc<Backends>,
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
            let runtime_config = RuntimeConfig::from_table(None, toml::Table::new());
            let backends = Arc::new(Backends::from_runtime_config(&runtime_config, &dir).unwrap());
            Self {
                manifest,
                variables,
                allowed_hosts,
                backends,
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
                backends: &self.backends,
                producer: None,
            }
        }

        /// A fresh instance's state for capability `C`, as the store would hold it.
        pub fn instance<C: Capability>(&self) -> Instance<C> {
            let component = C::configure(&self.context()).unwrap();
            Instance {
                state: C::prepare(
                    &component,
                    &InstanceContext {
                        trace: Default::default(),
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
