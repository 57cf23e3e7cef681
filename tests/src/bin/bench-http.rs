//! HTTP benchmark: `wrk` against the P2 hello component on `shop`, side by side with
//! baselines on the same machine in the same run: a native hyper server answering the
//! same body, and `wasmtime serve` on the same component when it is on PATH.
//!
//! Usage: `cargo run --release -p shop-tests --bin bench-http [-- SECONDS]`
//! (needs `wrk`; build the test components first, as `scripts/test` does).

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

use shop_tests::*;

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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
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

    let wasmtime_rps = Command::new("wasmtime")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| {
            let port = free_port();
            let mut child = Command::new("wasmtime")
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
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
        });

    println!("HTTP hello, wrk -t2 -c32 -d{seconds}s, loopback, same machine, same run");
    println!("{:<28} {:>12} {:>10}", "server", "req/s", "vs shop");
    println!("{:<28} {:>12.0} {:>10.2}", "shop (P2 hello component)", shop_rps, 1.0);
    if let Some(rps) = wasmtime_rps {
        println!(
            "{:<28} {:>12.0} {:>10.2}",
            "wasmtime serve (same .wasm)",
            rps,
            rps / shop_rps
        );
    } else {
        println!("{:<28} {:>12} {:>10}", "wasmtime serve", "not on PATH", "-");
    }
    println!(
        "{:<28} {:>12.0} {:>10.2}",
        "native hyper (same body)",
        native_rps,
        native_rps / shop_rps
    );
    if inst_count > 0.0 {
        println!(
            "shop instantiation: {:.1} µs mean over {inst_count} requests",
            inst_sum / inst_count * 1e6
        );
    }
    println!("shop peak RSS: {:.1} MiB", shop_rss as f64 / 1024.0);
}
