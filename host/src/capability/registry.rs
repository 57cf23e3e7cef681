//! The capabilities this host offers: one line each in [`capabilities!`] below. The
//! macro gives each its field in a component's configuration and in an instance's
//! store, links it, and splits the store for it.

use wasmtime::component::Linker;

use super::{Capability, CapabilityView, ComponentContext, InstanceContext, Projects};
use crate::state::HostState;

macro_rules! capabilities {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// Every capability's configuration for one component.
        pub struct ComponentCapabilities {
            $(pub $field: <$capability as Capability>::Component,)*
        }

        /// Every capability's state in one instance's store.
        pub struct InstanceCapabilities {
            $(pub $field: <$capability as Capability>::Instance,)*
        }

        impl ComponentCapabilities {
            /// Configures each capability for the component, in registration order.
            pub fn configure(component: &ComponentContext<'_>) -> anyhow::Result<Self> {
                Ok(Self {
                    $($field: <$capability as Capability>::configure(component)?,)*
                })
            }

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
    variables: super::variables::SpinVariables,
    mqtt: super::mqtt::Mqtt,
    redis: super::redis::Redis,
    messaging: super::messaging::Messaging,
    sqlite: super::sqlite::Sqlite,
    key_value: super::key_value::KeyValue,
    postgres: super::postgres::Postgres,
}
