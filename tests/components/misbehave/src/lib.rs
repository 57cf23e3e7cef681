//! Test component (WASI P2, spin-sdk 5): traps, spins forever, exhausts memory or sleeps
//! on request, to test the host's limits and graceful shutdown.
#![cfg(target_arch = "wasm32")]

use std::hint::black_box;

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

const MIB: usize = 1024 * 1024;

#[http_component]
fn handle(req: Request) -> Response {
    let path = req.path();
    if path.ends_with("/trap") {
        panic!("deliberate trap");
    } else if path.ends_with("/loop") {
        spin_forever()
    } else if path.ends_with("/hog") {
        hog_memory()
    } else if path.ends_with("/sleep") {
        // `?ms=N`: a slow but well-behaved request (waits on the host's clock).
        let ms = req
            .query()
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(format!("slept {ms} ms"))
            .build()
    } else {
        Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body("ok")
            .build()
    }
}

/// Burns CPU until the host interrupts it (epoch deadline or fuel).
fn spin_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grows linear memory 1 MiB at a time, writing every chunk so its pages are touched,
/// until the host's memory limit makes allocation fail (which aborts, i.e. traps).
fn hog_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = vec![0xA5u8; MIB];
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}
