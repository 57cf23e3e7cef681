//! `shop build`: run the components' build commands.

use std::process::ExitCode;

use crate::ManifestArgs;
use crate::component_build::{BuildPolicy, build};
use crate::manifest::Manifest;

pub fn run(args: &ManifestArgs, components: &[String]) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.file)?;
    let built = build(&manifest, BuildPolicy::Always, components)?;
    eprintln!("built {built} component(s)");
    Ok(ExitCode::SUCCESS)
}
