//! The wasmtime engine shared by every component, and the per-request limits it
//! enforces: epoch interruption for wall-clock deadlines and a pooling allocator
//! sized to the memory cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; deadlines are checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Largest linear memory a single instance may grow to.
    pub max_memory_bytes: usize,
    /// Instances that may be alive at once (pooling allocator slots).
    pub max_instances: u32,
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_memory_bytes: 128 << 20,
            max_instances: 1000,
            pooling: true,
        }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    config
}

/// Builds the engine. If the pooling allocator cannot reserve its address space
/// (e.g. under a tight `ulimit -v`) we fall back to on-demand allocation rather than
/// refusing to start, and say so.
pub fn build(options: &EngineOptions) -> anyhow::Result<Engine> {
    if options.pooling {
        let mut config = base_config();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(options.max_instances);
        pool.total_core_instances(options.max_instances * 4);
        pool.total_memories(options.max_instances * 2);
        pool.total_tables(options.max_instances * 4);
        pool.max_memory_size(options.max_memory_bytes);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_core_instances_per_component(32);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok(engine),
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; falling back to on-demand instance allocation")
            }
        }
    }
    Ok(Engine::new(&base_config())?)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
