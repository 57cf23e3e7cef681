//! `shop check`: validate without running anything.

use std::process::ExitCode;

use crate::ManifestArgs;

pub fn run(args: &ManifestArgs) -> anyhow::Result<ExitCode> {
    let (manifest, _, problems) = super::load_and_check(args)?;
    let errors = super::report(&problems);
    if errors > 0 {
        eprintln!("{}: {errors} error(s)", manifest.path.display());
        return Ok(ExitCode::FAILURE);
    }
    println!("{}: ok ({} warning(s))", manifest.path.display(), problems.len());
    Ok(ExitCode::SUCCESS)
}
