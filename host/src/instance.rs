//! A fresh store for one invocation, shared by every trigger: the component's granted
//! capabilities, the linear-memory cap, and a wall-clock deadline enforced on epoch
//! ticks (yielding to the executor until it passes, then interrupting the guest).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::handler::ExpirationError;

use crate::app::LoadedComponent;
use crate::capability::outbound_http::LocalServices;
use crate::state::{HostState, InvocationProbe};
use crate::telemetry::TraceContext;

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

/// One invocation of a component by a trigger that calls an export itself (a Kafka
/// message, a cron firing): a fresh store tagged with the invocation's request id and
/// trace, and the [`Watch`] that bounds and judges the call.
pub struct Invocation {
    pub store: Store<HostState>,
    pub watch: Watch,
}

impl Invocation {
    pub fn new(
        engine: &Engine,
        component: &LoadedComponent,
        limits: RequestLimits,
        local: Weak<dyn LocalServices>,
        request_id: &str,
        trace: &TraceContext,
    ) -> Self {
        let probe = Arc::new(InvocationProbe::new(request_id, trace));
        let started = Instant::now();
        let mut store = new_store(engine, component, limits, local);
        let _ = store.data().output_tags.request_id.set(request_id.to_string());
        let _ = store.data().trace.set(trace.clone());
        store.data_mut().limiter.probe = probe.clone();
        Self {
            store,
            watch: Watch {
                probe,
                started,
                timeout: limits.timeout,
            },
        }
    }
}

/// Bounds an invocation's call and says why it failed.
pub struct Watch {
    probe: Arc<InvocationProbe>,
    started: Instant,
    timeout: Duration,
}

/// Why an invocation ended without its export's answer.
#[derive(Debug)]
pub struct Failed {
    pub failure: InvocationFailure,
    /// What wasmtime reported; `None` when the call was abandoned, stuck in a host call
    /// past the deadline and its grace.
    pub error: Option<wasmtime::Error>,
}

impl Failed {
    /// The failure for a log line: its kind, then [`Failed::detail`].
    pub fn describe(&self) -> String {
        format!("{}: {}", self.failure.kind(), self.detail())
    }

    /// wasmtime's account of the failure, or that the call was abandoned.
    pub fn detail(&self) -> String {
        match &self.error {
            Some(error) => format!("{error:#}"),
            None => "abandoned in a host call".into(),
        }
    }
}

impl Watch {
    /// When the invocation began (its store was made).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Runs `call` (which drives the invocation's store). The epoch deadline
    /// interrupts guest code; the outer bound (deadline plus [`HARD_KILL_GRACE`]) also
    /// ends time spent in a host call that never returns.
    pub async fn run<R>(&self, call: impl Future<Output = wasmtime::Result<R>>) -> Result<R, Failed> {
        match tokio::time::timeout(self.timeout + HARD_KILL_GRACE, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(Failed {
                failure: InvocationFailure::classify(&error, &self.probe, self.started.elapsed(), self.timeout),
                error: Some(error),
            }),
            Err(_) => Err(Failed {
                failure: InvocationFailure::Timeout,
                error: None,
            }),
        }
    }
}
