//! The `shop` subcommands.

pub mod build;
pub mod check;
pub mod up;

use crate::ManifestArgs;
use crate::manifest::{Manifest, Problem, Severity, validate};
use crate::runtime_config::RuntimeConfig;

/// Loads the manifest and runtime config and collects every problem in both.
pub fn load_and_check(args: &ManifestArgs) -> anyhow::Result<(Manifest, RuntimeConfig, Vec<Problem>)> {
    let manifest = Manifest::load(&args.file)?;
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let mut problems = validate(&manifest);
    problems.extend(runtime_config.problems(&manifest));
    Ok((manifest, runtime_config, problems))
}

/// Prints problems to stderr; returns how many are errors.
pub fn report(problems: &[Problem]) -> usize {
    for p in problems {
        eprintln!("{p}");
    }
    problems.iter().filter(|p| p.severity == Severity::Error).count()
}
