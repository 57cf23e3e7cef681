//! The capabilities this host offers: one line each in [`capabilities!`] below. The
//! macro gives each its field in the application's, a component's and an instance's
//! state, checks and links it, and splits the store for it.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{AppContext, Capability, CapabilityView, CheckContext, ComponentContext, InstanceContext, Projects};
use crate::manifest::Problem;
use crate::state::HostState;

macro_rules! capabilities {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// Every capability's application-wide state.
        pub struct AppCapabilities {
            $(pub $field: Arc<<$capability as Capability>::App>,)*
        }

        /// Every capability's configuration for one component.
        pub struct ComponentCapabilities {
            $(pub $field: <$capability as Capability>::Component,)*
        }

        /// Every capability's state in one instance's store.
        pub struct InstanceCapabilities {
            $(pub $field: <$capability as Capability>::Instance,)*
        }

        impl AppCapabilities {
            /// The runtime-config tables the capabilities read.
            pub const RUNTIME_CONFIG_TABLES: &[&[&str]] =
                &[$(<$capability as Capability>::RUNTIME_CONFIG_TABLES,)*];

            /// Every capability's problems with the manifest and runtime config.
            pub fn check(app: &CheckContext<'_>) -> Vec<Problem> {
                let mut problems = Vec::new();
                $(problems.extend(<$capability as Capability>::check(app));)*
                problems
            }

            /// Builds each capability's application state, in registration order.
            pub fn configure(app: &AppContext<'_>) -> anyhow::Result<Self> {
                Ok(Self {
                    $($field: Arc::new(<$capability as Capability>::configure_app(app)?),)*
                })
            }

            /// Configures each capability for the component, in registration order.
            pub fn configure_component(&self, component: &ComponentContext<'_>) -> anyhow::Result<ComponentCapabilities> {
                Ok(ComponentCapabilities {
                    $($field: <$capability as Capability>::configure(&self.$field, component)?,)*
                })
            }
        }

        impl ComponentCapabilities {
            /// Each capability's state for a new instance.
            pub fn prepare(&self, instance: &InstanceContext) -> InstanceCapabilities {
                InstanceCapabilities {
                    $($field: <$capability as Capability>::prepare(&self.$field, instance),)*
                }
            }
        }

        /// Links every capability's interfaces.
        pub fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
            $(<$capability as Capability>::add_to_linker(linker)?;)*
            Ok(())
        }

        $(
            impl Projects<$capability> for HostState {
                fn project(&mut self) -> CapabilityView<'_, $capability> {
                    CapabilityView {
                        state: &mut self.capabilities.$field,
                        table: &mut self.table,
                    }
                }
            }
        )*
    };
}

capabilities! {
    wasi: super::wasi::Wasi,
    http: super::outbound_http::WasiHttp,
    variables: super::variables::SpinVariables,
    mqtt: super::mqtt::Mqtt,
    redis: super::redis::Redis,
    messaging: super::messaging::Messaging,
    sqlite: super::sqlite::Sqlite,
    key_value: super::key_value::KeyValue,
    postgres: super::postgres::Postgres,
}
