//! Spin variables (`fermyon:spin/variables@2.0.0`): a component reads the entries of
//! its `[component.X.variables]` table, whose `{{ app_variable }}` templates were
//! rendered at start-up from the resolved application variables.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Accessor, Linker};

use self::bindings::fermyon::spin as spin2;
use self::bindings::fermyon::spin::variables::{self, Error};
use self::bindings3::spin::variables::variables as v3;
use super::{AppContext, Capability, CapabilityView, ComponentContext, InstanceContext, Project, view};
use crate::manifest::is_valid_variable_name;
use crate::state::HostState;
use crate::variables::Variables;

/// `fermyon:spin/variables@2.0.0` (spin-sdk 5).
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/fermyon-spin",
        world: "fermyon:spin/variables-host",
        imports: { default: async },
    });
}

/// `spin:variables@3.0.0`, the variables API of spin-sdk 7.
pub(crate) mod bindings3 {
    wasmtime::component::bindgen!({
        path: "../wit/spin-variables",
        world: "spin:variables/host",
        imports: { default: async },
    });
}

/// Spin variables, 2.0 and 3.0: each instance reads its component's rendered table.
pub struct SpinVariables;

impl Capability for SpinVariables {
    type App = ();
    type Component = ComponentVariables;
    type Instance = ComponentVariables;

    fn configure_app(_: &AppContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        spin2::variables::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        v3::add_to_linker::<_, Project<Self>>(linker, view::<Self>)?;
        Ok(())
    }

    fn configure(_: &Arc<()>, component: &ComponentContext<'_>) -> anyhow::Result<ComponentVariables> {
        ComponentVariables::render(component.id, &component.manifest.variables, component.variables)
    }

    fn prepare(component: &ComponentVariables, _: &InstanceContext) -> ComponentVariables {
        component.clone()
    }
}

/// A component's variables, rendered.
#[derive(Clone, Default)]
pub struct ComponentVariables {
    values: Arc<BTreeMap<String, String>>,
}

impl ComponentVariables {
    pub fn render(component: &str, declared: &BTreeMap<String, String>, app: &Variables) -> anyhow::Result<Self> {
        let mut values = BTreeMap::new();
        for (name, text) in declared {
            let value = app
                .render(text)
                .map_err(|e| anyhow::anyhow!("component `{component}` variable `{name}`: {e}"))?;
            values.insert(name.clone(), value);
        }
        Ok(Self {
            values: Arc::new(values),
        })
    }

    pub fn get(&self, name: &str) -> Result<String, Error> {
        if !is_valid_variable_name(name) {
            return Err(Error::InvalidName(format!(
                "{name:?}: variable names are lower-case letters, digits and `_`, starting with a letter"
            )));
        }
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Undefined(format!("no variable `{name}` for this component")))
    }
}

impl variables::Host for CapabilityView<'_, SpinVariables> {
    async fn get(&mut self, name: String) -> Result<String, Error> {
        self.state.get(&name)
    }
}

// spin-sdk 7's `spin:variables@3.0.0`: the same lookup behind an `async func`, reached
// through the store accessor (wasmtime's component-model-async host API).
impl v3::Host for CapabilityView<'_, SpinVariables> {}

impl<U> v3::HostWithStore<U> for Project<SpinVariables> {
    async fn get(store: &Accessor<U, Self>, name: String) -> Result<String, v3::Error> {
        store.with(|mut view| view.get().state.get(&name)).map_err(|e| match e {
            Error::InvalidName(m) => v3::Error::InvalidName(m),
            Error::Undefined(m) => v3::Error::Undefined(m),
            Error::Provider(m) => v3::Error::Provider(m),
            Error::Other(m) => v3::Error::Other(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::path::Path;

    #[test]
    fn renders_templates_and_reports_errors() {
        let m = Manifest::parse(
            Path::new("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\nwho = { default = \"world\" }\n",
        )
        .unwrap();
        let app = Variables::resolve(&m, |_| None).unwrap();
        let declared = BTreeMap::from([("greeting".to_string(), "hello {{ who }}".to_string())]);
        let vars = ComponentVariables::render("c", &declared, &app).unwrap();
        assert_eq!(vars.get("greeting").unwrap(), "hello world");
        assert!(matches!(vars.get("nope"), Err(Error::Undefined(_))));
        assert!(matches!(vars.get("Bad-Name"), Err(Error::InvalidName(_))));
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;
    use variables::Host as _;

    #[tokio::test]
    async fn an_instance_reads_its_component_table_rendered() {
        let fixture = Fixture::new("variables", "[component.c.variables]\ngreeting = \"hello {{ who }}\"");
        let mut instance = fixture.instance::<SpinVariables>();
        let mut view = instance.view();
        assert_eq!(view.get("greeting".into()).await.unwrap(), "hello world");
        assert!(matches!(view.get("who".into()).await, Err(Error::Undefined(_))));
    }
}
