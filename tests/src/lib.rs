//! Harness for end-to-end tests: finds the `shop` binary and the test components
//! built into the shared target directory, writes throwaway applications, and runs
//! the host as a real process on loopback ports.

pub mod full_shop;
pub mod process_cpu;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cargo profile directory this binary was built into: `<target>/release` for
/// binaries, one level above `deps/` for test executables.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe has a directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("profile dir above deps").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The cargo target directory shared by the workspace.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("target dir above the profile dir")
        .to_path_buf()
}

pub fn shop_bin() -> PathBuf {
    let bin = profile_dir().join("shop");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p shop-host` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Path of a test component built for wasm32-wasip2, by crate name.
pub fn wasm(crate_name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the test components with `cargo build --release --target wasm32-wasip2 -p {crate_name}` (scripts/test does)",
        path.display()
    );
    path
}

/// Runs one of `scripts/` that installs a test tool (pinned, outside the clone) and
/// prints where it is; its output lines. Installation progress goes to stderr.
pub fn tool_script(name: &str) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name);
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("scripts/{name} runs: {e}"));
    assert!(output.status.success(), "scripts/{name} could not install its tools");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shop-e2e-{label}-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Writes `spin.toml` with `body` after a standard header and returns its path.
    pub fn manifest(&self, body: &str) -> PathBuf {
        let path = self.0.join("spin.toml");
        let text = format!("spin_manifest_version = 2\n[application]\nname = \"e2e\"\n{body}");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `[component.<id>]` table pointing at a built test component.
pub fn component(id: &str, crate_name: &str, extra: &str) -> String {
    format!(
        "[component.{id}]\nsource = {:?}\n{extra}\n",
        wasm(crate_name).display().to_string()
    )
}

pub fn http_trigger(route: &str, component: &str) -> String {
    format!("[[trigger.http]]\nroute = {route:?}\ncomponent = {component:?}\n")
}

pub fn private_trigger(component: &str) -> String {
    format!("[[trigger.http]]\nroute = {{ private = true }}\ncomponent = {component:?}\n")
}

/// Output lines captured from a child process.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>);

impl Captured {
    pub fn follow(&self, stream: impl Read + Send + 'static) {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A running `shop up`.
pub struct Shop {
    child: Child,
    pub base: String,
    pub admin: String,
    pub stdout: Captured,
    pub stderr: Captured,
}

pub struct ShopOptions<'a> {
    pub data_dir: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Shop {
    pub fn start(manifest: &Path, data_dir: &Path) -> Self {
        Self::start_with(
            manifest,
            ShopOptions {
                data_dir,
                args: vec![],
                env: vec![],
            },
        )
    }

    pub fn start_with(manifest: &Path, options: ShopOptions<'_>) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let mut command = Command::new(shop_bin());
        command
            .arg("up")
            .arg("--file")
            .arg(manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--data-dir")
            .arg(options.data_dir)
            .args(&options.args)
            // With RUST_BACKTRACE set, wasmtime captures a backtrace for an internal
            // error on every store drop, i.e. every request; production runs without it.
            .env_remove("RUST_BACKTRACE")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The host reads SHOP_* settings from the environment (the test command exports
        // SHOP_KAFKA_BROKERS for the tests' own use); each test passes what it means.
        // SHOP_PROFILE changes no behaviour: it lets `perf` see into a benchmark.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOP_") && k != "SHOP_PROFILE") {
            if !options.env.iter().any(|(k, _)| *k == key) {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("spawn shop");
        let stdout = Captured::default();
        let stderr = Captured::default();
        stdout.follow(child.stdout.take().unwrap());
        stderr.follow(child.stderr.take().unwrap());
        let shop = Shop {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            stdout,
            stderr,
        };
        shop.wait_ready();
        shop
    }

    fn wait_ready(&self) {
        // The first start compiles components with Cranelift; allow for a busy machine.
        let deadline = Instant::now() + Duration::from_secs(180);
        let client = client();
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.admin)).send()
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "shop did not become ready\nstdout:\n{}\nstderr:\n{}",
                self.stdout.text(),
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to end by itself (a crash point); its
    /// exit status, or `None` while it still runs.
    pub fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "shop did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETs `path` (with optional extra headers) and parses the JSON body.
    pub fn get_json(&self, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let mut request = client().get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let text = response.text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// CPU time the host process has used so far (user + system), from `/proc` (Linux).
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        process_cpu::own(self.child.id())
    }

    pub fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memory figure of process `pid` from /proc/PID/status, in KiB (`VmRSS` now,
/// `VmHWM` the peak); 0 when unreadable.
pub fn process_memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// Sum of a Prometheus counter's samples whose label set contains every `labels` pair.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Runs `shop <args>` to completion, returning (status, stdout, stderr).
pub fn run_shop(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(shop_bin()).args(args).output().expect("run shop");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A blocking HTTP client for tests (no proxy from the environment).
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The local PostgreSQL server the integration tests use (trust auth).
pub const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `sql` with psql against database `database`; its unaligned output.
pub fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            &format!("{POSTGRES_SERVER}/{database}"),
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .output()
        .unwrap_or_else(|e| panic!("psql must be installed for this test: {e}"));
    assert!(
        out.status.success(),
        "PostgreSQL must run on 127.0.0.1:5432 for this test; `{sql}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An empty database `name` (dropped first if a previous run left it); its URL.
pub fn fresh_postgres_database(name: &str) -> String {
    psql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    psql("postgres", &format!("CREATE DATABASE {name}"));
    format!("{POSTGRES_SERVER}/{name}")
}

/// A stand-in for an outside HTTP API (a mail or SMS service): answers every request
/// `204` and keeps the bodies it received. Returns its base URL and the bodies.
pub fn recording_api() -> (String, Arc<Mutex<Vec<String>>>) {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut chunked) = (0, false);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if name.eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked") {
                        chunked = true;
                    }
                }
                line.clear();
            }
            let mut body = Vec::new();
            if chunked {
                // Chunks: a hex size line, the bytes, CRLF; a zero size ends the body.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                    let mut chunk = vec![0; size + 2];
                    if size == 0 || reader.read_exact(&mut chunk).is_err() {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else {
                body.resize(length, 0);
                let _ = reader.read_exact(&mut body);
            }
            sink.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (url, received)
}

/// The login code in the last mail a [`recording_api`] received (its `text`, as the
/// notifications service sends it), and to whom it went.
pub fn last_login_code(mails: &Mutex<Vec<String>>) -> (String, String) {
    let last = mails.lock().unwrap().last().cloned().expect("a mail with a login code");
    let mail: serde_json::Value = serde_json::from_str(&last).unwrap();
    let code = mail["text"]
        .as_str()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .find(|word| word.len() == 6)
        .unwrap_or_else(|| panic!("no 6-digit code in {last}"))
        .to_string();
    (code, mail["to"].as_str().unwrap_or_default().to_string())
}
