//! What a component instance's store holds: the resource table, the state of each
//! capability granted to it (WASI included), and the per-request limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::app::LoadedComponent;
use crate::capability::outbound_http::LocalServices;
use crate::capability::{InstanceCapabilities, InstanceContext};
use crate::guest_output::OutputTags;
use crate::telemetry::{TraceCell, TraceContext};

/// Facts about one invocation that the host learns from inside the store and needs
/// afterwards to explain a failure.
#[derive(Debug, Default)]
pub struct InvocationProbe {
    pub request_id: String,
    /// The invocation's own span in its trace.
    pub trace: Option<TraceContext>,
    memory_limit_hit: AtomicBool,
}

impl InvocationProbe {
    pub fn new(request_id: &str, trace: &TraceContext) -> Self {
        Self {
            request_id: request_id.to_string(),
            trace: Some(trace.clone()),
            ..Self::default()
        }
    }

    pub fn memory_limit_hit(&self) -> bool {
        self.memory_limit_hit.load(Ordering::Relaxed)
    }
}

/// Caps linear memory per instance and records when the cap refused a growth, so a
/// guest that then aborts can be reported as out of memory rather than as a bug.
pub struct MemoryLimiter {
    pub max_memory_bytes: usize,
    pub probe: Arc<InvocationProbe>,
}

const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.probe.memory_limit_hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

pub struct HostState {
    /// The guest's handles (resources), shared by every capability's view.
    pub table: ResourceTable,
    /// The state of each registered capability (WASI and `wasi:http` included).
    pub capabilities: InstanceCapabilities,
    pub limiter: MemoryLimiter,
    /// Tags on the guest's stdout/stderr lines.
    pub output_tags: OutputTags,
    /// The invocation's trace context, for the spans of its host calls.
    pub trace: TraceCell,
    /// Wall-clock deadline of the current invocation, checked on every epoch tick.
    pub deadline: Instant,
    /// Keeps the epoch ticking while this store lives.
    _live: crate::engine::LiveStore,
}

impl HostState {
    /// The store data for one instance of `component`: each capability gets exactly
    /// what the manifest granted the component.
    pub fn new(
        component: &LoadedComponent,
        max_memory_bytes: usize,
        timeout: std::time::Duration,
        local: std::sync::Weak<dyn LocalServices>,
    ) -> Self {
        let trace = TraceCell::default();
        let output_tags = OutputTags {
            component: component.id.clone(),
            request_id: Arc::default(),
            trace: trace.clone(),
        };
        Self {
            table: ResourceTable::new(),
            _live: crate::engine::LiveStore::new(),
            capabilities: component.capabilities.prepare(&InstanceContext {
                trace: trace.clone(),
                output_tags: output_tags.clone(),
                local,
            }),
            limiter: MemoryLimiter {
                max_memory_bytes,
                probe: Arc::default(),
            },
            output_tags,
            trace,
            deadline: Instant::now() + timeout,
        }
    }

    /// The accessor `wasmtime-wasi-http`'s handler wants as a plain function pointer.
    pub fn http_view(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpView::http(self)
    }
}
