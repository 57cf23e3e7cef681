//! The cron trigger end to end: a component exporting Spin's cron world fires on a
//! 6-field schedule, and a failing run does not stop the schedule.

use std::time::{Duration, Instant};

use shop_tests::*;

fn ticks(data: &std::path::Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(data.join("sqlite_db.db")) else {
        return 0;
    };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM ticks", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn a_cron_component_fires_at_its_cadence_even_when_runs_fail() {
    let dir = TempDir::new("cron");
    let data = dir.path().join("data");
    let manifest = dir.manifest(&format!(
        "[[trigger.cron]]\ncomponent = \"counter\"\ncron_expression = \"*/1 * * * * *\"\n\
         [[trigger.cron]]\ncomponent = \"failing\"\ncron_expression = \"*/2 * * * * *\"\n{}{}",
        component("counter", "cron-counter", "sqlite_databases = [\"default\"]"),
        component(
            "failing",
            "cron-counter",
            "sqlite_databases = [\"default\"]\n[component.failing.variables]\nfail = \"true\""
        ),
    ));
    let shop = Shop::start(&manifest, &data);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let elapsed = started.elapsed().as_secs_f64();
    let total = ticks(&data);
    let metrics = shop.metrics();
    let ok = metric_value(
        &metrics,
        "shop_cron_runs_total",
        &[("component", "counter"), ("outcome", "ok")],
    );
    let failed = metric_value(
        &metrics,
        "shop_cron_runs_total",
        &[("component", "failing"), ("outcome", "error")],
    );
    // Every second for ~6 s, every 2 s for ~6 s: generous bounds for a busy machine.
    assert!(
        (3.0..=8.0).contains(&ok),
        "counter ran {ok} times in {elapsed:.1}s\n{metrics}"
    );
    assert!(
        (1.0..=4.0).contains(&failed),
        "failing ran {failed} times in {elapsed:.1}s\n{metrics}"
    );
    assert_eq!(total as f64, ok + failed, "every run recorded its tick");
}

#[test]
fn check_rejects_bad_cron_expressions_and_missing_components() {
    let dir = TempDir::new("cron-check");
    let manifest = dir.manifest(&format!(
        "[[trigger.cron]]\ncomponent = \"counter\"\ncron_expression = \"* * * * *\"\n\
         [[trigger.cron]]\ncomponent = \"ghost\"\ncron_expression = \"0 * * * * *\"\n{}",
        component("counter", "cron-counter", ""),
    ));
    let (status, _, stderr) = run_shop(&["check", "--file", manifest.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("trigger.cron[0]") && stderr.contains("has 5 fields"),
        "{stderr}"
    );
    assert!(
        stderr.contains("trigger.cron[1].component") && stderr.contains("unknown component `ghost`"),
        "{stderr}"
    );
}
