//! Idle cost: the whole shop from the repository's `spin.toml` on embedded defaults,
//! no traffic. Prints the host's CPU use (user + system, as a share of one core) over
//! the measured window, next to the same reading for an idle `sleep` process (the
//! baseline: what the measurement itself shows for a process that does nothing),
//! and the host's resident memory.
//!
//! Usage: `cargo run --release -p shop-tests --bin bench-idle [-- SECONDS]` (default 60;
//! build the components first, as `scripts/test` does).

use std::process::Command;
use std::time::{Duration, Instant};

use shop_tests::full_shop::{Backend, FullShop};

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name may hold spaces; fields are counted after its closing paren.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    shop_tests::process_memory_kib(pid, "VmRSS")
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// Share of one core `pid` used over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (start_ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - start_ticks) as f64 / ticks_per_second();
    used / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let window = Duration::from_secs(seconds);
    let shop = FullShop::start(Backend::Embedded, "bench-idle", 0, &[]);
    // Let start-up work (compilation, consumer groups forming) settle first.
    std::thread::sleep(Duration::from_secs(5));
    let pid = shop.shop().pid();
    let mut idle_process = Command::new("sleep").arg((seconds + 5).to_string()).spawn().unwrap();
    let baseline = cpu_share(idle_process.id(), Duration::from_secs(1));
    let share = cpu_share(pid, window);
    let _ = idle_process.kill();
    let _ = idle_process.wait();
    let rss = rss_kib(pid) as f64 / 1024.0;
    println!(
        "idle over {seconds} s: shop {:.2} % of one core (baseline `sleep`: {:.2} %), RSS {rss:.1} MiB",
        share * 100.0,
        baseline * 100.0
    );
    println!(
        "RESULT idle_cpu_percent={:.2} rss_mib={rss:.1} seconds={seconds}",
        share * 100.0
    );
}
