//! Test component (WASI P2, spin-sdk 5): a Spin cron handler that records every tick in
//! the SQLite `default` database (`ticks`), so tests can count and time the ticks.
//! When the variable `fail` is "true" it still records the tick, then returns an error.
#![cfg(target_arch = "wasm32")]

use spin_sdk::sqlite::{Connection, Value};
use std::time::{SystemTime, UNIX_EPOCH};

spin_sdk::wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../../wit/spin-cron",
    runtime_path: "spin_sdk::wit_bindgen::rt",
    generate_all,
});

// The world `use`s `metadata` and `error`, so the bindings define `Metadata` and `Error` here.

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn record_tick(scheduled: u64) -> Result<(), spin_sdk::sqlite::Error> {
    let instance = spin_sdk::variables::get("instance").unwrap_or_else(|_| "unknown".to_string());
    let db = Connection::open_default()?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS ticks (at_ms INTEGER, scheduled INTEGER, instance TEXT)",
        &[],
    )?;
    db.execute(
        "INSERT INTO ticks (at_ms, scheduled, instance) VALUES (?, ?, ?)",
        &[
            Value::Integer(now_ms()),
            Value::Integer(i64::try_from(scheduled).unwrap_or(i64::MAX)),
            Value::Text(instance),
        ],
    )?;
    Ok(())
}

struct CronCounter;

impl Guest for CronCounter {
    fn handle_cron_event(metadata: Metadata) -> Result<(), Error> {
        record_tick(metadata.timestamp).map_err(|e| Error::Other(format!("recording the tick: {e:?}")))?;
        if spin_sdk::variables::get("fail").is_ok_and(|v| v == "true") {
            return Err(Error::Other("failing on purpose".to_string()));
        }
        Ok(())
    }
}

export!(CronCounter);
