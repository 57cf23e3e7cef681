//! The build everyone shares. `cargo build --release` at the root must link every crate
//! (clippy and `cargo check` only type-check, which hides link failures such as a
//! component's wasm-only exports built as a native library), and the README's run
//! command (`-p shop-host`) and the test command must reuse every dependency it
//! compiled: a newcomer waits for wasmtime once.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What one cargo command did: whether it succeeded, its diagnostics, and the
/// dependencies (not the workspace's own crates) it compiled rather than reused.
struct CargoRun {
    success: bool,
    stderr: String,
    compiled_dependencies: Vec<String>,
}

fn cargo(args: &[&str]) -> CargoRun {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .args(["--message-format", "json"])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", shop_tests::target_dir())
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("cargo runs");
    let mut compiled_dependencies = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["fresh"] == true {
            continue;
        }
        let package = message["package_id"].as_str().unwrap_or_default();
        if !package.starts_with("path+") {
            compiled_dependencies.push(package.to_string());
        }
    }
    CargoRun {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        compiled_dependencies,
    }
}

#[test]
fn the_root_build_links_and_the_run_and_test_commands_reuse_its_dependencies() {
    let root = cargo(&["build", "--release"]);
    assert!(
        root.success,
        "`cargo build --release` at the root failed:\n{}",
        root.stderr
    );

    for args in [
        &["build", "--release", "-p", "shop-host"][..],
        &["test", "--release", "--no-run"][..],
    ] {
        let run = cargo(args);
        assert!(run.success, "`cargo {}` failed:\n{}", args.join(" "), run.stderr);
        assert!(
            run.compiled_dependencies.is_empty(),
            "`cargo {}` compiled again what `cargo build --release` had compiled, so their \
             features differ (list them in feature-union/Cargo.toml): {:#?}",
            args.join(" "),
            run.compiled_dependencies
        );
    }
}
