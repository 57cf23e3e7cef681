//! On-disk cache of compiled components, so a second `shop up` skips Cranelift.
//!
//! An entry is keyed by the SHA-256 of the component bytes together with the engine's
//! precompilation-compatibility hash (wasmtime version, target, and every setting that
//! changes generated code), so a changed `.wasm` or a changed engine never loads a
//! stale artifact.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component came from, for logs, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
        }
    }
}

pub struct CompileCache {
    dir: PathBuf,
}

/// Feeds `Hash` output into SHA-256 so the engine hash becomes part of the key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only used to feed bytes into the digest")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn key(engine: &Engine, wasm: &[u8]) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.write(b"\0component\0");
        hasher.write(wasm);
        hex::encode(hasher.0.finalize())
    }

    /// Loads the compiled form of `wasm`, compiling and storing it on a miss. A cache
    /// entry that fails to load (truncated, from another build) is replaced.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.dir.join(format!("{}.cwasm", Self::key(engine, wasm)));
        if path.exists() {
            // SAFETY: entries are written only by `store` below from `precompile_component`
            // output of an engine with the same compatibility hash (part of the file
            // name); wasmtime additionally validates the artifact header on load.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compilation cache entry")
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        self.store(&path, &compiled)?;
        // SAFETY: the bytes were produced by `precompile_component` on this engine just now.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Miss))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create compilation cache dir {}", self.dir.display()))?;
        // Write-then-rename so a concurrent or interrupted start never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
