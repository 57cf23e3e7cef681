//! The wasmtime engine shared by every component, and the per-request limits it
//! enforces: epoch interruption for wall-clock deadlines and a pooling allocator
//! sized to the memory cap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Bytes of each freed memory and table slot reset in place rather than decommitted
/// when the kernel can tell which pages a guest wrote (`PAGEMAP_SCAN`, Linux 6.7+):
/// only those are reset, so a generous bound costs nothing for a small guest.
const KEEP_RESIDENT_SCANNED_BYTES: usize = 16 << 20;
/// The same without the scan, where the whole kept range is reset on every release.
const KEEP_RESIDENT_BLIND_BYTES: usize = 256 << 10;

/// How often the epoch advances; deadlines are checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

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
    // `SHOP_PROFILE=perfmap` names guest functions for `perf` (/tmp/perf-<pid>.map).
    if std::env::var("SHOP_PROFILE").as_deref() == Ok("perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
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
        // Reset a freed slot's pages in place instead of with madvise, which costs a
        // TLB shootdown on every core plus page faults for the next instance.
        let keep_resident = if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes);
            KEEP_RESIDENT_SCANNED_BYTES
        } else {
            KEEP_RESIDENT_BLIND_BYTES
        };
        pool.linear_memory_keep_resident(keep_resident);
        pool.table_keep_resident(keep_resident);
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

/// Stores alive now, and the ticker thread to wake when the first one appears: the
/// epoch only needs to advance while some guest may run, so an idle host sleeps.
static LIVE_STORES: AtomicUsize = AtomicUsize::new(0);
static TICKER_THREAD: OnceLock<std::thread::Thread> = OnceLock::new();

/// Counts one live store (held in its data): while any exists, the epoch ticks.
pub struct LiveStore(());

impl LiveStore {
    pub fn new() -> Self {
        if LIVE_STORES.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(ticker) = TICKER_THREAD.get()
        {
            ticker.unpark();
        }
        LiveStore(())
    }
}

impl Default for LiveStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        LIVE_STORES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread while a
/// store is alive ([`LiveStore`]), until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if LIVE_STORES.load(Ordering::SeqCst) == 0 {
                        // Woken by the next LiveStore; the timeout only bounds the wait
                        // for `stop`.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        let _ = TICKER_THREAD.set(thread.thread().clone());
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
