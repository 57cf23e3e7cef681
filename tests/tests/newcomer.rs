//! What a newcomer does first: the README's run command in a fresh checkout with no
//! component built, on a toolchain that lacks the wasm target (rustup added the pinned
//! toolchain before the repository asked for the target), and what `shop up` shows a
//! person at a terminal.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shop_tests::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The command under the README's "The two commands" heading that runs the shop.
fn readme_run_command() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## The two commands")
        .nth(1)
        .expect("README has a `## The two commands` section");
    let block = section.split("```sh\n").nth(1).expect("a ```sh block in that section");
    let command = block.split("```").next().unwrap().trim();
    assert!(
        command.lines().count() == 1 && command.contains(" up"),
        "the README's run command should be one `… up` line, found:\n{command}"
    );
    command.to_string()
}

/// Copies the files a commit of the working tree would hold (tracked and new, not
/// ignored) into `to`: a checkout with nothing built.
fn checkout(to: &Path) {
    let root = repo_root();
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(&root)
        .output()
        .expect("git must be installed for this test");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = root.join(name);
        let Ok(metadata) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree
        };
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if metadata.is_symlink() {
            // Committed symlinks (WIT deps) stay links, as a checkout makes them.
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(&from, &dest).unwrap();
        }
    }
}

/// A build directory for the checkout that reuses compiled dependencies but holds no
/// component: seeded once from the shared target directory, then every `.wasm` output
/// removed. The workspace's own crates are rebuilt anyway (their sources are new).
fn newcomer_target() -> PathBuf {
    let shared = target_dir();
    let dir = shared.join("newcomer");
    if !dir.join("release").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for profile in ["release", "wasm32-wasip2"] {
            let status = Command::new("cp")
                .arg("-a")
                .arg(shared.join(profile))
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "seeding {}", dir.display());
        }
    }
    for wasm_dir in ["wasm32-wasip2/release", "wasm32-wasip2/release/deps"] {
        for entry in std::fs::read_dir(dir.join(wasm_dir)).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "wasm") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    dir
}

/// The wasm target the components build for (spin.toml's build commands).
const WASM_TARGET: &str = "wasm32-wasip2";

/// A rustup home holding the toolchain these tests run with, minus [`WASM_TARGET`]: a
/// machine where rustup installed the pinned toolchain before anyone asked for the
/// target. Files are hard links into the real toolchain except the ones rustup rewrites
/// when it adds a target, which are copies, so nothing done there reaches the original.
fn rustup_home_without_wasm_target(dir: &Path) -> PathBuf {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .unwrap_or_else(|e| panic!("{program} must be installed for this test: {e}"));
        assert!(out.status.success(), "{program} {args:?} failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // The name rustup resolves rust-toolchain.toml to, and where that toolchain lives
    // (a toolchain directory may be a link to another).
    let name = run("rustup", &["show", "active-toolchain"]);
    let name = name.split_whitespace().next().unwrap().to_string();
    let sysroot = std::fs::canonicalize(run("rustc", &["--print", "sysroot"])).unwrap();
    let home = dir.join("rustup");
    let toolchain = home.join("toolchains").join(name);
    std::fs::create_dir_all(toolchain.parent().unwrap()).unwrap();
    let linked = Command::new("cp")
        .arg("-al")
        .arg(&sysroot)
        .arg(&toolchain)
        .status()
        .unwrap();
    if !linked.success() {
        let _ = std::fs::remove_dir_all(&toolchain);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&sysroot)
            .arg(&toolchain)
            .status()
            .unwrap();
        assert!(copied.success(), "copying {}", sysroot.display());
    }
    let rustlib = toolchain.join("lib/rustlib");
    for entry in std::fs::read_dir(&rustlib).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            std::fs::remove_file(entry.path()).unwrap(); // unlink first: never write through a link
            std::fs::write(entry.path(), bytes).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(rustlib.join(WASM_TARGET));
    let _ = std::fs::remove_file(rustlib.join(format!("manifest-rust-std-{WASM_TARGET}")));
    let components = std::fs::read_to_string(rustlib.join("components")).unwrap();
    let kept: String = components
        .lines()
        .filter(|l| *l != format!("rust-std-{WASM_TARGET}"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(rustlib.join("components"), kept).unwrap();
    // rustup's own record of the toolchain's components, one `[[components]]` table each.
    let config = std::fs::read_to_string(rustlib.join("multirust-config.toml")).unwrap();
    let mut tables = config.split("[[components]]");
    let mut kept = tables.next().unwrap().to_string();
    for table in tables.filter(|t| !t.contains(&format!("target = \"{WASM_TARGET}\""))) {
        kept.push_str("[[components]]");
        kept.push_str(table);
    }
    std::fs::write(rustlib.join("multirust-config.toml"), kept).unwrap();
    home
}

/// A child process group, killed when dropped, and the file where a command that left
/// the group (`script` starts its command in a session of its own) wrote its pid.
struct Group(std::process::Child, Option<std::path::PathBuf>);

impl Drop for Group {
    fn drop(&mut self) {
        // `--` so that kill reads `-PGID` as the process group, not as a signal.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", self.0.id()))
            .status();
        if let Some(pid) = self.1.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            let _ = Command::new("kill").args(["-s", "KILL", "--", pid.trim()]).status();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn readme_run_command_serves_a_fresh_checkout() {
    let dir = TempDir::new("newcomer");
    let clone = dir.path().join("shop");
    checkout(&clone);
    std::os::unix::fs::symlink(newcomer_target(), clone.join("target")).unwrap();
    let gateway = clone.join("target/wasm32-wasip2/release/gateway.wasm");
    assert!(!gateway.exists(), "the checkout must start with no component built");
    let rustup_home = rustup_home_without_wasm_target(dir.path());
    let target_libdir = |home: &Path| {
        let out = Command::new("rustc")
            .args(["--print", "target-libdir", "--target", WASM_TARGET])
            .current_dir(&clone)
            .env("RUSTUP_HOME", home)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    assert!(
        !target_libdir(&rustup_home).exists(),
        "the newcomer's toolchain must start without {WASM_TARGET}"
    );

    let (port, admin_port) = (free_port(), free_port());
    let command = format!(
        "{} --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:{admin_port}",
        readme_run_command()
    );
    let mut process = Command::new("sh");
    process
        .arg("-c")
        .arg(&command)
        .current_dir(&clone)
        .env("RUSTUP_HOME", &rustup_home)
        // rust-toolchain.toml picks the toolchain, as in a shell, not the one running us.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUST_BACKTRACE")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOP_") || k.starts_with("SPIN_VARIABLE_")) {
        process.env_remove(key);
    }
    let mut child = process.spawn().unwrap();
    let (stdout, stderr) = (Captured::default(), Captured::default());
    stdout.follow(child.stdout.take().unwrap());
    stderr.follow(child.stderr.take().unwrap());
    let mut group = Group(child, None);

    // A cold machine compiles wasmtime and every component first.
    let deadline = Instant::now() + Duration::from_secs(40 * 60);
    let client = client();
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{admin_port}/healthz")).send()
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = group.0.try_wait().unwrap() {
            panic!(
                "`{command}` exited ({status}) before serving\nstdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "`{command}` did not serve in time\n{}",
            stderr.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(gateway.exists(), "`shop up` built the gateway");
    let added = format!("adding it with `rustup target add {WASM_TARGET}`");
    assert_eq!(
        stderr.text().matches(&added).count(),
        1,
        "one line says the target is added:\n{}",
        stderr.text()
    );
    assert!(target_libdir(&rustup_home).is_dir(), "rustup added {WASM_TARGET}");
    assert!(stdout.text().contains("Serving shop"), "{}", stdout.text());
    // What the README says to open in a browser: the storefront, built by `shop up` too.
    let storefront = client.get(format!("http://127.0.0.1:{port}/")).send().unwrap();
    assert_eq!(storefront.status(), 200);
    assert_eq!(storefront.headers()["content-type"], "text/html; charset=utf-8");
    assert!(storefront.text().unwrap().contains("/assets/app.js"));
    let products = client.get(format!("http://127.0.0.1:{port}/products")).send().unwrap();
    assert_eq!(products.status(), 200, "{:?}", products.text());
}

/// The repository's manifest (with its runtime config) in `dir`, sources pointing at
/// the components the test command built.
fn repo_manifest_in(dir: &Path) -> PathBuf {
    let wasm_dir = wasm("gateway").parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).unwrap().replace(
        "source = \"target/wasm32-wasip2/release/",
        &format!("source = \"{}/", wasm_dir.display()),
    );
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::copy(repo_root().join("runtime-config.toml"), dir.join("runtime-config.toml")).unwrap();
    path
}

/// `shop up` on the repo's manifest, output read until "Serving" and a moment after.
fn up_output(dir: &TempDir, on_terminal: bool) -> String {
    let manifest = repo_manifest_in(dir.path());
    let data = dir.path().join("data");
    // Compiled components are shared with the other full-shop tests.
    let cache = wasm("gateway").parent().unwrap().join("shop-test-compile-cache");
    let pid_file = dir.path().join("shop.pid");
    // The shell's pid is the host's once it execs.
    let up = format!(
        "echo $$ > {}; exec {} up --no-build --file {} --data-dir {} --cache-dir {} --listen 127.0.0.1:{} --admin-listen 127.0.0.1:{}",
        pid_file.display(),
        shop_bin().display(),
        manifest.display(),
        data.display(),
        cache.display(),
        free_port(),
        free_port()
    );
    let mut command = if on_terminal {
        // util-linux `script` gives the command a pseudo-terminal for stdout and stderr.
        let mut c = Command::new("script");
        c.args(["-q", "-e", "-c", &up, "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &up]);
        c
    };
    command
        .env_remove("RUST_BACKTRACE")
        .env_remove("SHOP_LOG")
        .env_remove("SHOP_LOG_FORMAT")
        .env_remove("SHOP_KAFKA_BROKERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .expect("util-linux `script` must be installed for this test");
    let (stdout, stderr) = (Captured::default(), Captured::default());
    stdout.follow(child.stdout.take().unwrap());
    stderr.follow(child.stderr.take().unwrap());
    let group = Group(child, Some(pid_file));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !stdout.text().contains("Serving") {
        assert!(
            Instant::now() < deadline,
            "no `Serving` line:\n{}\n{}",
            stdout.text(),
            stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Start-up logging that comes after the banner (consumers joining) counts too.
    std::thread::sleep(Duration::from_secs(2));
    drop(group);
    format!("{}{}", stdout.text(), stderr.text()).replace('\r', "")
}

#[test]
fn up_on_a_terminal_talks_text_and_piped_output_stays_json() {
    let dir = TempDir::new("tty");
    let terminal = up_output(&dir, true);
    let json_lines: Vec<_> = terminal.lines().filter(|l| l.trim_start().starts_with('{')).collect();
    assert!(json_lines.is_empty(), "JSON on a terminal:\n{terminal}");
    assert!(terminal.contains("Available Routes:"), "{terminal}");
    assert!(
        terminal.lines().count() < 40,
        "a terminal gets the routes and little else:\n{terminal}"
    );

    let dir = TempDir::new("piped");
    let piped = up_output(&dir, false);
    let logs: Vec<_> = piped
        .lines()
        .filter(|l| {
            !l.starts_with("Serving")
                && !l.starts_with("Available Routes")
                && !l.starts_with("  ")
                && !l.starts_with("Admin:")
        })
        .collect();
    assert!(!logs.is_empty(), "piped output has log lines:\n{piped}");
    for line in logs {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON log line: {line}\n{piped}"
        );
    }
}
