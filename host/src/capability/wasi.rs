//! WASI 0.2 and 0.3 for guests, as wasmtime-wasi implements them: the component's
//! `environment` from the manifest, stdout and stderr as tagged host log lines
//! ([`crate::guest_output`]), and sockets only where `allowed_outbound_hosts` allows
//! ([`super::sockets`]). wasmtime-wasi's host functions reach the store through
//! [`WasiView`], which yields this capability's context and the resource table only.

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::allowed_hosts::AllowedHosts;
use super::{AppContext, Capability, ComponentContext, InstanceContext};
use crate::guest_output::{GuestOutput, Stream};
use crate::state::HostState;

/// WASI (clocks, random, filesystem-less CLI, sockets).
pub struct Wasi;

/// A component's environment and the addresses its sockets may reach.
pub struct WasiGrant {
    environment: Vec<(String, String)>,
    allowed: Arc<AllowedHosts>,
}

impl Capability for Wasi {
    type App = ();
    type Component = WasiGrant;
    type Instance = WasiCtx;

    fn configure_app(_: &AppContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        wasmtime_wasi::p3::add_to_linker(linker)?;
        Ok(())
    }

    fn configure(_: &Arc<()>, component: &ComponentContext<'_>) -> anyhow::Result<WasiGrant> {
        Ok(WasiGrant {
            environment: component.manifest.environment.clone().into_iter().collect(),
            allowed: component.allowed_hosts.clone(),
        })
    }

    fn prepare(grant: &WasiGrant, instance: &InstanceContext) -> WasiCtx {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(instance.output_tags.clone(), Stream::Stdout))
            .stderr(GuestOutput::new(instance.output_tags.clone(), Stream::Stderr))
            .envs(&grant.environment);
        super::sockets::grant(&mut wasi, &grant.allowed);
        wasi.build()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.capabilities.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod capability_tests {
    use super::*;
    use crate::capability::testing::Fixture;

    #[test]
    fn an_instance_gets_its_components_environment() {
        let fixture = Fixture::new("wasi", "environment = { GREETING = \"hello\" }");
        let mut instance = fixture.instance::<Wasi>();
        let mut view = wasmtime_wasi::cli::WasiCliCtxView {
            ctx: instance.state.cli(),
            table: &mut instance.table,
        };
        let environment = wasmtime_wasi::p2::bindings::cli::environment::Host::get_environment(&mut view).unwrap();
        assert_eq!(environment, [("GREETING".to_string(), "hello".to_string())]);
    }
}
