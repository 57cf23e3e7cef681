//! A fresh store for one invocation, shared by every trigger: the component's granted
//! capabilities, the linear-memory cap, and a wall-clock deadline enforced on epoch
//! ticks (yielding to the executor until it passes, then interrupting the guest).

use std::sync::Weak;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::handler::ExpirationError;

use crate::app::LoadedComponent;
use crate::capability::outbound_http::LocalServices;
use crate::state::{HostState, InvocationProbe};

/// Limits applied to every invocation.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub timeout: Duration,
    pub max_memory_bytes: usize,
}

/// How long past its deadline an invocation stuck outside guest code (e.g. in a host
/// call) may linger before the host abandons it regardless.
pub const HARD_KILL_GRACE: Duration = Duration::from_secs(1);

pub fn new_store(
    engine: &Engine,
    component: &LoadedComponent,
    limits: RequestLimits,
    local: Weak<dyn LocalServices>,
) -> Store<HostState> {
    let state = HostState::new(component, limits.max_memory_bytes, limits.timeout, local);
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    // Check the deadline on every epoch tick; until it passes, yield to the executor so
    // a spinning guest cannot monopolise a runtime thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Why an invocation produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationFailure {
    Timeout,
    MemoryLimit,
    Trap,
}

impl InvocationFailure {
    pub fn status(self) -> http::StatusCode {
        match self {
            InvocationFailure::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            InvocationFailure::MemoryLimit | InvocationFailure::Trap => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            InvocationFailure::Timeout => "timeout",
            InvocationFailure::MemoryLimit => "memory_limit",
            InvocationFailure::Trap => "trap",
        }
    }

    pub fn classify(error: &wasmtime::Error, probe: &InvocationProbe, elapsed: Duration, timeout: Duration) -> Self {
        let interrupted = error
            .chain()
            .any(|e| matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)))
            || error.chain().any(|e| e.downcast_ref::<ExpirationError>().is_some());
        if interrupted || elapsed >= timeout {
            InvocationFailure::Timeout
        } else if probe.memory_limit_hit() {
            InvocationFailure::MemoryLimit
        } else {
            InvocationFailure::Trap
        }
    }
}
