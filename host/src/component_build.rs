//! Runs `[component.X.build]` commands the way Spin does (`sh -c`, in the manifest's
//! directory joined with `workdir`, environment inherited), with a progress line per
//! component. `shop up` builds only what is missing or stale; `shop build` builds all.
//! Rust targets the commands need are added before the first command runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;

use crate::manifest::{Component, Manifest};
use crate::rust_target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPolicy {
    /// Run every build command (cargo and friends are incremental anyway).
    Always,
    /// Only components whose source is missing or older than a watched file.
    MissingOrStale,
}

/// Why a component needs building, or `None` when its source is current.
pub fn build_reason(manifest: &Manifest, component: &Component) -> anyhow::Result<Option<String>> {
    let Some(build) = &component.build else { return Ok(None) };
    let Some(source) = manifest.source_path(component) else {
        return Ok(None);
    };
    let Ok(source_time) = std::fs::metadata(&source).and_then(|m| m.modified()) else {
        return Ok(Some(format!("{} is missing", source.display())));
    };
    let workdir = workdir(manifest, build.workdir.as_deref());
    for pattern in &build.watch {
        let full = workdir.join(pattern);
        let full = full.to_string_lossy();
        let paths = glob::glob(&full).with_context(|| format!("invalid watch pattern `{pattern}`"))?;
        for path in paths.flatten() {
            if modified(&path).is_some_and(|t| t > source_time) {
                return Ok(Some(format!("{} changed", path.display())));
            }
        }
    }
    Ok(None)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn workdir(manifest: &Manifest, workdir: Option<&str>) -> PathBuf {
    match workdir {
        Some(w) => manifest.dir().join(w),
        None => manifest.dir().to_path_buf(),
    }
}

/// Builds the selected components, printing progress to stderr. Stops at the first
/// failing command and names the component and command.
pub fn build(manifest: &Manifest, policy: BuildPolicy, only: &[String]) -> anyhow::Result<usize> {
    for id in only {
        if !manifest.raw.component.contains_key(id) {
            anyhow::bail!("unknown component `{id}` (not in {})", manifest.path.display());
        }
    }
    let mut todo = Vec::new();
    for (id, component) in &manifest.raw.component {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let Some(build) = &component.build else { continue };
        let reason = match policy {
            BuildPolicy::Always => Some("requested".to_string()),
            BuildPolicy::MissingOrStale => build_reason(manifest, component)?,
        };
        if let Some(reason) = reason {
            todo.push((id, build, reason));
        }
    }
    // A missing Rust target would fail the first cargo command minutes in: add it first.
    let dirs: Vec<_> = todo
        .iter()
        .map(|(_, build, _)| workdir(manifest, build.workdir.as_deref()))
        .collect();
    let commands = todo.iter().zip(&dirs).flat_map(|((id, build, _), dir)| {
        let id = id.as_str();
        build
            .command
            .commands()
            .into_iter()
            .map(move |c| (id, dir.as_path(), c))
    });
    for need in rust_target::needs(commands) {
        rust_target::ensure(&rust_target::Tools::default(), &need)?;
    }
    let total = todo.len();
    for (n, (id, build, reason)) in todo.into_iter().enumerate() {
        let dir = workdir(manifest, build.workdir.as_deref());
        let started = Instant::now();
        for command in build.command.commands() {
            eprintln!("[{}/{total}] building {id} ({reason}): {command}", n + 1);
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&dir)
                .status()
                .with_context(|| format!("cannot run build command for component `{id}` in {}", dir.display()))?;
            if !status.success() {
                anyhow::bail!("build command for component `{id}` failed ({status}): {command}");
            }
        }
        eprintln!(
            "[{}/{total}] built {id} in {:.1}s",
            n + 1,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_in(dir: &Path, build: &str) -> Manifest {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[component.c]\nsource = \"out.wasm\"\n[component.c.build]\n{build}\n"
        );
        let path = dir.join("spin.toml");
        std::fs::write(&path, &text).unwrap();
        Manifest::load(&path).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shop-build-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn builds_missing_source_then_considers_it_current() {
        let dir = temp_dir("missing");
        let m = manifest_in(&dir, "command = \"echo built > out.wasm\"\nwatch = [\"src/*.txt\"]");
        let c = &m.raw.component["c"];
        assert!(build_reason(&m, c).unwrap().unwrap().contains("missing"));
        assert_eq!(build(&m, BuildPolicy::MissingOrStale, &[]).unwrap(), 1);
        assert!(dir.join("out.wasm").exists());
        assert_eq!(build_reason(&m, c).unwrap(), None);
        assert_eq!(build(&m, BuildPolicy::MissingOrStale, &[]).unwrap(), 0);
        // A watched file newer than the output makes it stale again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/a.txt"), "x").unwrap();
        assert!(build_reason(&m, c).unwrap().unwrap().contains("a.txt changed"));
    }

    #[test]
    fn failing_command_names_the_component() {
        let dir = temp_dir("fail");
        let m = manifest_in(&dir, "command = [\"true\", \"exit 3\"]");
        let err = build(&m, BuildPolicy::Always, &[]).unwrap_err().to_string();
        assert!(err.contains("component `c`") && err.contains("exit 3"), "{err}");
        assert!(build(&m, BuildPolicy::Always, &["nope".into()]).is_err());
    }
}
