//! Present so that the `[build-dependencies]` in Cargo.toml take part in feature
//! resolution for proc-macros and build scripts.
fn main() {}
