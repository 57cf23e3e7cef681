//! Triggers: what turns an outside event into a component invocation, one module each
//! ([`http`], [`kafka`], [`cron`]; [`outbox`] publishes a component's committed
//! events instead of calling it), each a [`Trigger`] started from one
//! [`TriggerContext`]. The invocation itself (a fresh store, its deadline, how a
//! failure is told) is [`crate::instance`], shared by all three.

pub mod cron;
pub mod http;
pub mod kafka;
pub mod outbox;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use tokio::sync::watch;
use tokio::task::JoinSet;
use wasmtime::Engine;

use crate::admin::Readiness;
use crate::app::LoadedComponent;
use crate::capability::commits::CommitSignals;
use crate::capability::outbound_http::LocalServices;
use crate::instance::RequestLimits;
use crate::manifest::Manifest;
use crate::metrics::Metrics;

/// What every trigger is given: the loaded application and the host's shared parts.
pub struct TriggerContext<'a> {
    pub manifest: &'a Manifest,
    pub engine: &'a Engine,
    pub components: &'a BTreeMap<String, Arc<LoadedComponent>>,
    pub limits: RequestLimits,
    pub metrics: &'a Arc<Metrics>,
    /// Local service chaining (`http://<component>.spin.internal`), for guests.
    pub local: &'a Weak<dyn LocalServices>,
    /// Which component committed a write (`run_on_commit`).
    pub commits: &'a Arc<CommitSignals>,
    /// Told whether the host can take work (`/readyz`).
    pub readiness: &'a Arc<Readiness>,
    /// Turns true at shutdown: a trigger then stops taking work, finishes what it
    /// holds (bounded by its own drain), and its tasks end.
    pub stop: &'a watch::Receiver<bool>,
}

/// One kind of trigger: the manifest's `[[trigger.<TYPE>]]` entries, served by tasks.
pub trait Trigger {
    /// The manifest's name for it.
    const TYPE: &'static str;
    /// What a component must export to be called by it, for errors.
    const EXPORT: &'static str;

    /// Whether `component` exports what this trigger calls.
    fn exported(component: &LoadedComponent) -> bool;

    /// Starts serving every entry of this type in the manifest; the tasks it adds to
    /// `tasks` run until `context.stop` turns true.
    fn start(self, context: &TriggerContext<'_>, tasks: &mut JoinSet<()>) -> anyhow::Result<()>;
}

/// The loaded component `id` that a `T` trigger calls, or why it cannot.
pub fn component<T: Trigger>(
    components: &BTreeMap<String, Arc<LoadedComponent>>,
    id: &str,
) -> anyhow::Result<Arc<LoadedComponent>> {
    let component = components
        .get(id)
        .ok_or_else(|| anyhow::anyhow!("component `{id}` is not loaded"))?;
    if !T::exported(component) {
        anyhow::bail!(
            "component `{id}` is used by a [[trigger.{}]] but does not export {} (it exports {})",
            T::TYPE,
            T::EXPORT,
            component.exports.describe()
        );
    }
    Ok(component.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Exports;
    use crate::capability::testing::Fixture;

    #[test]
    fn a_trigger_takes_only_a_loaded_component_with_its_export() {
        let fixture = Fixture::new("trigger", "");
        let exports = Exports {
            http: None,
            messaging: None,
            cron: None,
        };
        let components = BTreeMap::from([("c".to_string(), Arc::new(fixture.loaded(exports)))]);
        let refused = |found: anyhow::Result<Arc<LoadedComponent>>| match found {
            Ok(_) => panic!("the component was taken"),
            Err(error) => error.to_string(),
        };
        assert_eq!(
            refused(component::<cron::Cron>(&components, "c")),
            "component `c` is used by a [[trigger.cron]] but does not export fermyon:spin-cron's handle-cron-event \
             (it exports nothing a trigger can call)"
        );
        assert!(
            refused(component::<kafka::Kafka>(&components, "c"))
                .contains("does not export wasi:messaging/incoming-handler@0.2.0-draft"),
        );
        assert!(
            refused(component::<http::Http>(&components, "c"))
                .contains("does not export wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3"),
        );
        assert_eq!(
            refused(component::<cron::Cron>(&components, "ghost")),
            "component `ghost` is not loaded"
        );
    }
}
