//! The Rust targets a component's build needs, checked before any build command runs.
//!
//! rustup installs `rust-toolchain.toml`'s `targets` only when it installs the toolchain;
//! a toolchain that is already there is left without them, and `cargo build --target
//! wasm32-wasip2` then fails minutes into the build with "can't find crate for `core`".
//! So `shop build` / `shop up` look at every `cargo … --target T` command first and add
//! a missing target with rustup, or stop at once naming what to install.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Rust target that a build command compiles for, in the directory the command runs
/// in (where `rust-toolchain.toml` picks the toolchain).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetNeed {
    pub target: String,
    /// `+toolchain` given to cargo on the command line, if any.
    pub toolchain: Option<String>,
    pub dir: PathBuf,
    /// The component whose build needs it (the first one, for messages).
    pub component: String,
}

/// The programs consulted: `rustc` and `rustup` from `PATH` unless a test says otherwise.
#[derive(Debug, Clone)]
pub struct Tools {
    pub rustc: OsString,
    pub rustup: OsString,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            rustc: "rustc".into(),
            rustup: "rustup".into(),
        }
    }
}

/// `(toolchain, target)` for each cargo invocation in a shell command line that names a
/// target (`--target T` or `--target=T`). Commands joined by `&&`, `||`, `;` or `|` are
/// read one by one; leading `NAME=value` assignments are skipped.
pub fn cargo_targets(command: &str) -> Vec<(Option<String>, String)> {
    let mut found = Vec::new();
    for segment in command.split(['&', '|', ';', '\n']) {
        let mut words = segment
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .skip_while(|w| is_assignment(w))
            .peekable();
        let Some(program) = words.next() else { continue };
        if Path::new(program).file_name().and_then(|n| n.to_str()) != Some("cargo") {
            continue;
        }
        let toolchain = words
            .next_if(|w| w.starts_with('+'))
            .map(|w| w.trim_start_matches('+').to_string());
        while let Some(word) = words.next() {
            let target = match word.strip_prefix("--target") {
                Some("") => words.next(),
                Some(rest) => rest.strip_prefix('='),
                None => None,
            };
            if let Some(target) = target.filter(|t| !t.is_empty() && !t.starts_with('-')) {
                found.push((toolchain.clone(), target.to_string()));
            }
        }
    }
    found
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=')
        .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Distinct needs of a set of `(component, directory, command)` builds.
pub fn needs<'a>(builds: impl IntoIterator<Item = (&'a str, &'a Path, &'a str)>) -> Vec<TargetNeed> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (component, dir, command) in builds {
        for (toolchain, target) in cargo_targets(command) {
            if seen.insert((dir.to_path_buf(), toolchain.clone(), target.clone())) {
                out.push(TargetNeed {
                    target,
                    toolchain,
                    dir: dir.to_path_buf(),
                    component: component.to_string(),
                });
            }
        }
    }
    out
}

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Present,
    Added,
    /// rustc does not know the target (a custom target file, a typo): cargo will say.
    Unknown,
}

/// Makes sure the toolchain that builds `need` has its target: nothing when it does,
/// `rustup target add` (one line on stderr) when it does not, and an error naming what
/// to install when there is no rustc or no rustup.
pub fn ensure(tools: &Tools, need: &TargetNeed) -> anyhow::Result<Outcome> {
    let TargetNeed {
        target,
        toolchain,
        dir,
        component,
    } = need;
    let mut rustc = Command::new(&tools.rustc);
    if let Some(toolchain) = toolchain {
        rustc.arg(format!("+{toolchain}"));
    }
    let output = match rustc
        .args(["--print", "target-libdir", "--target", target])
        .current_dir(dir)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "component `{component}` builds with cargo, but `rustc` is not installed: install Rust with rustup (https://rustup.rs)"
        ),
        Err(e) => anyhow::bail!("cannot run rustc to check the target `{target}`: {e}"),
    };
    if !output.status.success() {
        return Ok(Outcome::Unknown);
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if has_std(&libdir) {
        return Ok(Outcome::Present);
    }
    let toolchain_name = toolchain.as_deref().map(|t| format!(" `{t}`")).unwrap_or_default();
    let mut rustup = Command::new(&tools.rustup);
    rustup.args(["target", "add", target.as_str()]).current_dir(dir);
    if let Some(toolchain) = toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    eprintln!(
        "the Rust toolchain{toolchain_name} lacks the target `{target}` that component `{component}` builds for: adding it with `rustup target add {target}`"
    );
    let output = match rustup.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "component `{component}` builds for the Rust target `{target}`, which the toolchain at {} lacks, and rustup is not installed: install rustup (https://rustup.rs), or add `{target}` to that toolchain",
            sysroot_of(&libdir).display()
        ),
        Err(e) => anyhow::bail!("cannot run rustup: {e}"),
    };
    if !output.status.success() || !has_std(&libdir) {
        anyhow::bail!(
            "`rustup target add {target}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Outcome::Added)
}

/// A target's library directory holds its precompiled `core` once the target is installed.
fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    })
}

/// `<sysroot>` of `<sysroot>/lib/rustlib/<target>/lib`.
fn sysroot_of(libdir: &Path) -> &Path {
    libdir.ancestors().nth(4).unwrap_or(libdir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_targets_in_cargo_commands_only() {
        assert_eq!(
            cargo_targets("cargo build --release --target wasm32-wasip2 -p cart"),
            vec![(None, "wasm32-wasip2".to_string())]
        );
        assert_eq!(
            cargo_targets("RUSTFLAGS=-Copt-level=s cargo +nightly build --target=wasm32-wasip1"),
            vec![(Some("nightly".to_string()), "wasm32-wasip1".to_string())]
        );
        assert_eq!(
            cargo_targets("npm run build && /usr/bin/cargo build --target 'wasm32-wasip2'; echo --target x"),
            vec![(None, "wasm32-wasip2".to_string())]
        );
        assert!(cargo_targets("cargo build --release").is_empty());
        assert!(cargo_targets("tinygo build --target wasip2").is_empty());
        assert!(cargo_targets("cargo build --target").is_empty());
    }

    #[test]
    fn needs_are_distinct_per_directory_and_target() {
        let dir = Path::new("/app");
        let needs = needs([
            ("a", dir, "cargo build --target wasm32-wasip2 -p a"),
            ("b", dir, "cargo build --target wasm32-wasip2 -p b"),
            ("c", Path::new("/other"), "cargo build --target wasm32-wasip2"),
        ]);
        let seen: Vec<_> = needs
            .iter()
            .map(|n| (n.component.as_str(), n.dir.to_str().unwrap()))
            .collect();
        assert_eq!(seen, vec![("a", "/app"), ("c", "/other")]);
    }

    /// Fake `rustc` and `rustup` scripts in `dir`: rustc prints a library directory under
    /// `dir`, rustup records its arguments and installs the target (puts a libcore there).
    fn fake_tools(dir: &Path, rustup_works: bool) -> Tools {
        let libdir = dir.join("sysroot/lib/rustlib/wasm32-wasip2/lib");
        let rustc = dir.join("rustc");
        std::fs::write(
            &rustc,
            format!(
                "#!/bin/sh\n[ \"$4\" = wasm32-wasip2 ] || {{ echo unknown target >&2; exit 1; }}\necho {}\n",
                libdir.display()
            ),
        )
        .unwrap();
        let rustup = dir.join("rustup");
        let install = if rustup_works {
            format!("mkdir -p {0} && touch {0}/libcore-abc.rlib", libdir.display())
        } else {
            "echo 'error: no network' >&2; exit 1".to_string()
        };
        std::fs::write(
            &rustup,
            format!(
                "#!/bin/sh\n[ \"$1\" = --probe ] && exit 0\necho \"$@\" >> {}/rustup.log\n{install}\n",
                dir.display()
            ),
        )
        .unwrap();
        for script in [&rustc, &rustup] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755)).unwrap();
            // A process another test forks while the script was open for writing holds
            // that descriptor until it execs, and exec then fails with "Text file busy".
            let runs = (0..200).any(|_| {
                let busy = Command::new(script)
                    .arg("--probe")
                    .output()
                    .is_err_and(|e| e.raw_os_error() == Some(26));
                if busy {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                !busy
            });
            assert!(runs, "{} stayed busy", script.display());
        }
        Tools {
            rustc: rustc.into(),
            rustup: rustup.into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shop-rust-target-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn need(dir: &Path, target: &str) -> TargetNeed {
        TargetNeed {
            target: target.into(),
            toolchain: None,
            dir: dir.to_path_buf(),
            component: "cart".into(),
        }
    }

    #[test]
    fn adds_a_missing_target_once_then_finds_it() {
        let dir = temp_dir("add");
        let tools = fake_tools(&dir, true);
        assert_eq!(ensure(&tools, &need(&dir, "wasm32-wasip2")).unwrap(), Outcome::Added);
        assert_eq!(ensure(&tools, &need(&dir, "wasm32-wasip2")).unwrap(), Outcome::Present);
        let log = std::fs::read_to_string(dir.join("rustup.log")).unwrap();
        assert_eq!(log, "target add wasm32-wasip2\n");
        // A target rustc does not know is left for cargo to report.
        assert_eq!(ensure(&tools, &need(&dir, "no-such-target")).unwrap(), Outcome::Unknown);
    }

    #[test]
    fn without_rustup_or_rustc_it_names_what_to_install() {
        let dir = temp_dir("missing");
        let mut tools = fake_tools(&dir, true);
        tools.rustup = dir.join("not-installed/rustup").into();
        let err = ensure(&tools, &need(&dir, "wasm32-wasip2")).unwrap_err().to_string();
        assert!(
            err.contains("rustup is not installed") && err.contains("https://rustup.rs"),
            "{err}"
        );
        assert!(err.contains(&dir.join("sysroot").display().to_string()), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        tools.rustc = dir.join("not-installed/rustc").into();
        let err = ensure(&tools, &need(&dir, "wasm32-wasip2")).unwrap_err().to_string();
        assert!(err.contains("`rustc` is not installed"), "{err}");
    }

    #[test]
    fn a_failing_rustup_is_an_error_with_its_words() {
        let dir = temp_dir("fails");
        let tools = fake_tools(&dir, false);
        let err = ensure(&tools, &need(&dir, "wasm32-wasip2")).unwrap_err().to_string();
        assert!(
            err.contains("rustup target add wasm32-wasip2") && err.contains("no network"),
            "{err}"
        );
    }
}
