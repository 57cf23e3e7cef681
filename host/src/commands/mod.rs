//! The `shop` subcommands.

pub mod build;
pub mod check;
pub mod package;
pub mod up;

use crate::ManifestArgs;
use crate::capability::{AppCapabilities, CheckContext};
use crate::manifest::{Manifest, Problem, Severity, validate};
use crate::runtime_config::RuntimeConfig;

/// Loads the manifest and runtime config and collects every problem in both.
pub fn load_and_check(args: &ManifestArgs) -> anyhow::Result<(Manifest, RuntimeConfig, Vec<Problem>)> {
    let manifest = Manifest::load(&args.file)?;
    let runtime_config = match runtime_config_path(args, &manifest) {
        Some(path) => RuntimeConfig::load(&path)?,
        None => RuntimeConfig::default(),
    };
    let mut problems = validate(&manifest);
    let mut known_tables: Vec<&str> = AppCapabilities::RUNTIME_CONFIG_TABLES.concat();
    known_tables.push(crate::events::RUNTIME_CONFIG_TABLE);
    problems.extend(runtime_config.unknown_tables(&known_tables));
    problems.extend(AppCapabilities::check(&CheckContext {
        manifest: &manifest,
        runtime_config: &runtime_config,
    }));
    problems.extend(crate::events::KafkaSettings::check(&manifest, &runtime_config));
    Ok((manifest, runtime_config, problems))
}

/// The runtime config named on the command line, else `runtime-config.toml` beside the
/// manifest when there is one (so `shop up` in a checkout needs no flags).
fn runtime_config_path(args: &ManifestArgs, manifest: &Manifest) -> Option<std::path::PathBuf> {
    if let Some(path) = &args.runtime_config_file {
        return Some(path.clone());
    }
    let beside = manifest.dir().join("runtime-config.toml");
    beside.is_file().then(|| {
        tracing::info!(path = %beside.display(), "using the runtime config beside the manifest");
        beside
    })
}

/// Prints problems to stderr; returns how many are errors.
pub fn report(problems: &[Problem]) -> usize {
    for p in problems {
        eprintln!("{p}");
    }
    problems.iter().filter(|p| p.severity == Severity::Error).count()
}
