//! HTTP benchmark: `wrk` against the P2 hello component on `shop`, side by side with
//! baselines on the same machine in the same run: a native hyper server answering the
//! same body, and `wasmtime serve` 48 on the same component. `wasmtime` comes from
//! `SHOP_WASMTIME` or the cache `~/.cache/shop/tools/wasmtime-48.0.8/bin/wasmtime`,
//! which is filled with `cargo install --locked wasmtime-cli@48.0.8` when empty (12–30
//! minutes on 2 cores, once).
//!
//! Usage: `cargo run --release -p shop-tests --bin bench-http [-- SECONDS]`
//! (build the test components first, as `scripts/test` does). The load comes from
//! `wrk`, installed from Debian's packages when it is not on the PATH.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use shop_tests::*;

/// Installs Debian's `wrk` when it is not on the PATH (as root, or through sudo).
fn ensure_wrk() {
    let found = Command::new("wrk").arg("--version").output().is_ok();
    if found {
        return;
    }
    eprintln!("installing wrk (apt-get)");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        let status = command.args(args).status().expect("run apt-get");
        assert!(status.success(), "apt-get {args:?} failed: install wrk by hand");
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", "wrk"]);
}

fn wrk(url: &str, seconds: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), url])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let non_2xx = text.lines().find(|l| l.contains("Non-2xx"));
    assert!(non_2xx.is_none(), "errors under load against {url}:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

fn rss_kib(pid: u32) -> u64 {
    shop_tests::process_memory_kib(pid, "VmHWM")
}

const WASMTIME_VERSION: &str = "48.0.8";

/// The `wasmtime` CLI the comparison runs, installed into the cache when missing.
fn wasmtime_cli() -> PathBuf {
    if let Ok(path) = std::env::var("SHOP_WASMTIME") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let root = PathBuf::from(home).join(format!(".cache/shop/tools/wasmtime-{WASMTIME_VERSION}"));
    let bin = root.join("bin/wasmtime");
    if !bin.exists() {
        eprintln!(
            "installing wasmtime-cli {WASMTIME_VERSION} into {} (once; 12-30 minutes on 2 cores)",
            root.display()
        );
        let status = Command::new("cargo")
            .args(["install", "--locked", "--root"])
            .arg(&root)
            .arg(format!("wasmtime-cli@{WASMTIME_VERSION}"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run cargo install");
        assert!(status.success(), "cargo install wasmtime-cli@{WASMTIME_VERSION} failed");
    }
    bin
}

fn native_hello() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/plain")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello from p2")))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    format!("http://{addr}/hello")
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    ensure_wrk();
    let dir = TempDir::new("bench");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/hello", "hello"),
        component("hello", "p2-hello", "")
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let shop_url = format!("{}/hello", shop.base);
    // Warm up both servers before measuring.
    wrk(&shop_url, 1);
    let native_url = native_hello();
    wrk(&native_url, 1);

    let shop_rps = wrk(&shop_url, seconds);
    let shop_rss = rss_kib(shop.pid());
    let metrics = shop.metrics();
    let inst_sum = metric_value(
        &metrics,
        "shop_component_instantiation_duration_seconds_sum",
        &[("component", "hello")],
    );
    let inst_count = metric_value(
        &metrics,
        "shop_component_instantiation_duration_seconds_count",
        &[("component", "hello")],
    );
    let native_rps = wrk(&native_url, seconds);

    let wasmtime_rps = {
        let port = free_port();
        // `-Scli`: the component imports wasi:cli (std's stdout and environment).
        let mut child = Command::new(wasmtime_cli())
            .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
            .arg(wasm("p2-hello"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wasmtime serve");
        std::thread::sleep(Duration::from_secs(3));
        let url = format!("http://127.0.0.1:{port}/hello");
        wrk(&url, 1);
        let rps = wrk(&url, seconds);
        let _ = child.kill();
        let _ = child.wait();
        rps
    };

    println!("HTTP hello, wrk -t2 -c32 -d{seconds}s, loopback, same machine, same run");
    println!("{:<28} {:>12} {:>10}", "server", "req/s", "vs shop");
    println!("{:<28} {:>12.0} {:>10.2}", "shop (P2 hello component)", shop_rps, 1.0);
    println!(
        "{:<28} {:>12.0} {:>10.2}",
        format!("wasmtime serve {WASMTIME_VERSION}"),
        wasmtime_rps,
        wasmtime_rps / shop_rps
    );
    println!(
        "{:<28} {:>12.0} {:>10.2}",
        "native hyper (same body)",
        native_rps,
        native_rps / shop_rps
    );
    let instantiation_us = if inst_count > 0.0 {
        inst_sum / inst_count * 1e6
    } else {
        0.0
    };
    println!("shop instantiation: {instantiation_us:.1} µs mean over {inst_count} requests");
    println!("shop peak RSS: {:.1} MiB", shop_rss as f64 / 1024.0);
    println!(
        "RESULT shop_rps={shop_rps:.0} wasmtime_rps={wasmtime_rps:.0} native_rps={native_rps:.0} instantiation_us={instantiation_us:.1}"
    );
}
