//! CPU time of processes, from `/proc` (Linux): the host's, and that of the services
//! beside it (the Kafka broker, PostgreSQL), so a benchmark can say what one order
//! costs each of them.

use std::time::Duration;

/// `/proc/<pid>/stat` times are in clock ticks: 100 a second on Linux.
const TICK: Duration = Duration::from_millis(10);

/// The fields of `/proc/<pid>/stat` after the parenthesised command name.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state (a letter) comes first; the rest are numbers.
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// User + system time of process `pid` itself.
pub fn own(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // utime and stime are the 14th and 15th fields of the whole line.
    Some(TICK * (fields.get(10)? + fields.get(11)?) as u32)
}

/// User + system time of process `pid` and of its children: those still running and
/// those it has reaped (PostgreSQL's backends, one per connection, come and go).
pub fn with_children(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // utime, stime, cutime (reaped children), cstime.
    let mut ticks: u64 = fields.get(10..14)?.iter().sum();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // The parent pid is the 4th field of the whole line.
        if let Some(child_fields) = stat_fields(child)
            && child_fields.first() == Some(&u64::from(pid))
        {
            ticks += child_fields.get(10..12).map_or(0, |t| t.iter().sum());
        }
    }
    Some(TICK * ticks as u32)
}

/// The process listening on TCP `port` (any local address), found through the
/// socket's inode; `None` when nothing listens there or its file descriptors are not
/// readable by this user.
pub fn listening_on(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            // State 0A is LISTEN.
            (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|inode| inode.to_string()))
                .flatten()
        })
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()));
        holds.then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listener_and_counts_its_cpu() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_on(port), Some(std::process::id()));
        let before = own(std::process::id()).unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = own(std::process::id()).unwrap();
        assert!(after > before, "300 ms of spinning shows");
        // Read later, and children's time on top.
        assert!(with_children(std::process::id()).unwrap() >= after);
        drop(listener);
        assert_eq!(listening_on(port), None);
    }
}
