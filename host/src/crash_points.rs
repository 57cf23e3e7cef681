//! Crash points for fault tests: with `SHOP_CRASH_AT=<point>` the host aborts (no
//! cleanup, no commit, as under SIGKILL) the first time it reaches that point, so a
//! test can kill it exactly at a step boundary instead of at a random moment.
//! Unset, a crash point costs one load of a cached value.

use std::sync::OnceLock;

/// The relay took rows and has published none of them yet.
pub const OUTBOX_TAKEN: &str = "outbox-taken";
/// The relay published a pass's rows and has not deleted (or passed) them yet.
pub const OUTBOX_PUBLISHED: &str = "outbox-published";

/// Aborts the process when `SHOP_CRASH_AT` names `point`.
pub fn reached(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("SHOP_CRASH_AT").ok().filter(|p| !p.is_empty()));
    if at.as_deref() == Some(point) {
        eprintln!("SHOP_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}
