//! Host capabilities as spin-sdk 5 and spin-sdk 7 guests see them: key-value and
//! wasi:keyvalue (embedded SQLite and Redis, same script, same results), SQLite,
//! Postgres, outbound Redis and variables, with per-component access rules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shop_tests::*;

const REDIS: &str = "127.0.0.1:6379";
/// A Redis database of its own, so `get-keys` sees only this test's keys.
const REDIS_DB: u32 = 7;

/// Sends one command in RESP and returns the raw reply. Panics if Redis is not
/// reachable: these tests never skip (CI starts Redis before running them).
fn redis(args: &[&str]) -> String {
    let mut stream =
        TcpStream::connect(REDIS).unwrap_or_else(|e| panic!("Redis must run on {REDIS} for this test: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

/// An app with the same test component twice: `granted` (with `granted` config
/// lines) and `ungranted` (with `ungranted` lines), each under its own route prefix.
fn granted_app(dir: &TempDir, granted: &str, ungranted: &str) -> std::path::PathBuf {
    dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/granted/...", "granted"),
        http_trigger("/ungranted/...", "ungranted"),
        component("granted", "capabilities-p2", granted),
        component("ungranted", "capabilities-p2", ungranted),
    ))
}

fn kv_app(dir: &TempDir) -> std::path::PathBuf {
    granted_app(
        dir,
        "key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]",
        "",
    )
}

/// Starts the key-value app with its `default` store mapped to Redis at `url`.
fn start_on_redis(dir: &TempDir, url: &str) -> Shop {
    start_on_redis_with(dir, url, vec![])
}

fn start_on_redis_with(dir: &TempDir, url: &str, env: Vec<(String, String)>) -> Shop {
    let runtime_config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &runtime_config,
        format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    Shop::start_with(
        &kv_app(dir),
        ShopOptions {
            data_dir: &dir.path().join("data"),
            args: vec!["--runtime-config-file".into(), runtime_config.display().to_string()],
            env,
        },
    )
}

fn run_script(shop: &Shop, component: &str, store: &str) -> Value {
    let r = client()
        .get(format!("{}/{component}/kv?store={store}", shop.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// What every backend must produce for the guest's script, step by step.
fn assert_key_value_semantics(shop: &Shop) {
    let result = run_script(shop, "granted", "default");
    assert_eq!(result, expected_key_value_script());

    // A label the component did not declare, and a component that declared none.
    assert_eq!(
        run_script(shop, "granted", "other")["open"],
        json!({ "err": "Error::AccessDenied" })
    );
    assert_eq!(
        run_script(shop, "ungranted", "default")["open"],
        json!({ "err": "Error::AccessDenied" })
    );
}

/// Each step of the key-value script and what the guest must observe.
fn expected_key_value_script() -> Value {
    json!({
        "open": { "ok": "opened" },
        "get_missing": { "ok": "None" },
        "set": { "ok": "()" },
        "get": { "ok": "Some(\"one\")" },
        "overwrite": { "ok": "()" },
        "get_after_overwrite": { "ok": "Some(\"two\")" },
        "set_binary": { "ok": "()" },
        "get_binary": { "ok": "Some([0, 159, 146, 150])" },
        "exists": { "ok": "true" },
        "exists_missing": { "ok": "false" },
        "get_keys": { "ok": "[\"bin\", \"k\"]" },
        "delete_missing": { "ok": "()" },
        "delete": { "ok": "()" },
        "exists_after_delete": { "ok": "false" },
    })
}

#[test]
fn key_value_on_the_embedded_store() {
    let dir = TempDir::new("kv-embedded");
    let data = dir.path().join("data");
    let shop = Shop::start(&kv_app(&dir), &data);
    assert_key_value_semantics(&shop);
    assert!(
        data.join("key_value.db").exists(),
        "the default store lives under the data dir"
    );
}

#[test]
fn key_value_on_redis() {
    let dir = TempDir::new("kv-redis");
    assert!(redis(&["SELECT", &REDIS_DB.to_string()]).starts_with("+OK"));
    let shop = start_on_redis(&dir, &format!("redis://{REDIS}/{REDIS_DB}"));
    assert_key_value_semantics(&shop);
    // The script left `bin` behind in Redis itself, not in an embedded file.
    let reply = redis(&[
        "EVAL",
        &format!("redis.call('SELECT', {REDIS_DB}); return redis.call('EXISTS', 'bin')"),
        "0",
    ]);
    assert_eq!(reply.trim(), ":1", "value must be stored in Redis db {REDIS_DB}");
    assert!(!dir.path().join("data/key_value.db").exists());
}

#[test]
fn key_value_from_a_spin_sdk_7_component() {
    let dir = TempDir::new("kv-p3");
    let manifest = dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/granted/...", "granted"),
        http_trigger("/ungranted/...", "ungranted"),
        component("granted", "capabilities-p3", "key_value_stores = [\"default\"]"),
        component("ungranted", "capabilities-p3", ""),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let result = shop.get_json("/granted/kv?store=default", &[]);
    assert_eq!(
        result,
        expected_key_value_script(),
        "spin-sdk 7 sees what spin-sdk 5 sees"
    );
    let denied = shop.get_json("/ungranted/kv?store=default", &[]);
    assert!(
        denied["open"]["err"]
            .as_str()
            .unwrap_or_default()
            .contains("AccessDenied"),
        "{denied}"
    );
}

/// What the `wasi:keyvalue` script must observe on every backend.
fn expected_wasi_key_value_script() -> Value {
    json!({
        "open": { "ok": "opened" },
        "get_missing": { "ok": "None" },
        "set": { "ok": "()" },
        "get": { "ok": "Some(\"v\")" },
        "exists": { "ok": "true" },
        "increment_new": { "ok": "5" },
        "increment": { "ok": "3" },
        "counter_text": { "ok": "Some(\"3\")" },
        "increment_text": { "err": "true" },
        "cas_current": { "ok": "None" },
        "swap": { "ok": "()" },
        "swap_stale": { "err": "CasFailed(current = Ok(Some(\"first\")))" },
        "set_many": { "ok": "()" },
        "get_many": { "ok": "[(\"b1\", Some([49])), (\"missing\", None), (\"b2\", Some([50]))]" },
        "delete_many": { "ok": "()" },
        "list_keys": { "ok": "([\"c\", \"k\", \"n\"], None)" },
        "delete": { "ok": "()" },
        "exists_after_delete": { "ok": "false" },
    })
}

fn assert_wasi_key_value_semantics(shop: &Shop) {
    assert_eq!(
        shop.get_json("/granted/wasi-kv?store=default", &[]),
        expected_wasi_key_value_script()
    );
    for denied in ["/granted/wasi-kv?store=other", "/ungranted/wasi-kv?store=default"] {
        assert_eq!(
            shop.get_json(denied, &[])["open"],
            json!({ "err": "Error::AccessDenied" }),
            "{denied}"
        );
    }
}

#[test]
fn wasi_keyvalue_store_atomics_and_batch_on_the_embedded_store_and_redis() {
    let dir = TempDir::new("wasi-kv");
    let shop = Shop::start(&kv_app(&dir), &dir.path().join("data"));
    assert_wasi_key_value_semantics(&shop);
    drop(shop);

    let dir = TempDir::new("wasi-kv-redis");
    assert!(redis(&["PING"]).starts_with("+PONG"));
    let shop = start_on_redis(&dir, &format!("redis://{REDIS}/{REDIS_DB}"));
    assert_wasi_key_value_semantics(&shop);
}

/// Spin 3.6's Redis store reports a swap that wrote as `CasFailed` (its `UNWATCH <key>`
/// is refused by Redis); the host reproduces that on request so that components can be
/// tested against the Spin SpinKube ships.
#[test]
fn redis_swaps_can_be_reported_lost_after_writing_as_spin_3_6_does() {
    let dir = TempDir::new("wasi-kv-redis-spin-cas");
    let shop = start_on_redis_with(
        &dir,
        &format!("redis://{REDIS}/{REDIS_DB}"),
        vec![("SHOP_EMULATE_SPIN_REDIS_CAS".into(), "1".into())],
    );
    let mut expected = expected_wasi_key_value_script();
    // The swap wrote `first` (the stale swap after it sees it) yet reported failure.
    expected["swap"] = json!({ "err": "\"failed\"" });
    assert_eq!(shop.get_json("/granted/wasi-kv?store=default", &[]), expected);
}

#[test]
fn an_unreachable_redis_fails_the_call_fast_with_the_interface_error() {
    let dir = TempDir::new("kv-redis-down");
    let closed_port = free_port();
    let shop = start_on_redis(&dir, &format!("redis://127.0.0.1:{closed_port}"));
    let started = Instant::now();
    let result = run_script(&shop, "granted", "default");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let err = result["get_missing"]["err"].as_str().unwrap_or_default();
    assert!(
        err.starts_with("Error::Other(") && err.contains("redis unavailable"),
        "{result}"
    );

    // When Redis comes up on that address, the next request succeeds without a restart.
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &closed_port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", closed_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = run_script(&shop, "granted", "default");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(result["get_missing"], json!({ "ok": "None" }), "{result}");
    assert_eq!(
        result["get_after_overwrite"],
        json!({ "ok": "Some(\"two\")" }),
        "{result}"
    );
}

#[test]
fn sqlite_values_round_trip_and_access_is_per_component() {
    let dir = TempDir::new("sqlite");
    let data = dir.path().join("data");
    let shop = Shop::start(&kv_app(&dir), &data);
    let get = |path: &str| shop.get_json(path, &[]);
    let result = get("/granted/sqlite?db=default");
    assert_eq!(result["open"], json!({ "ok": "opened" }), "{result}");
    assert_eq!(result["create"], json!({ "ok": "0" }), "{result}");
    assert_eq!(result["insert"], json!({ "ok": "0" }), "{result}");
    assert_eq!(
        result["select"],
        json!({ "ok": "([\"i\", \"r\", \"t\", \"b\", \"n\"], [[Value::Integer(-42), Value::Real(1.5), Value::Text(\"héllo\"), Value::Blob([0, 1, 255]), Value::Null]])" }),
        "{result}"
    );
    let bad = result["bad_sql"]["err"].as_str().unwrap_or_default();
    assert!(
        bad.starts_with("Error::Io(") && bad.contains("syntax error"),
        "{result}"
    );
    assert!(data.join("sqlite_db.db").exists());

    assert_eq!(
        get("/granted/sqlite?db=other")["open"],
        json!({ "err": "Error::AccessDenied" })
    );
    assert_eq!(
        get("/ungranted/sqlite?db=default")["open"],
        json!({ "err": "Error::AccessDenied" })
    );
}

/// The machine's PostgreSQL (trust auth on loopback; CI starts it when missing).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

#[test]
fn postgres_values_round_trip_and_addresses_are_checked() {
    let dir = TempDir::new("pg");
    assert!(
        TcpStream::connect("127.0.0.1:5432").is_ok(),
        "PostgreSQL must run on 127.0.0.1:5432 for this test"
    );
    let manifest = granted_app(
        &dir,
        "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]",
        "allowed_outbound_hosts = [\"postgres://db.example:5432\"]",
    );
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let script = |component: &str| shop.get_json(&format!("/{component}/pg"), &[("x-pg-address", POSTGRES)]);
    let result = script("granted");
    assert_eq!(result["open"], json!({ "ok": "opened" }), "{result}");
    assert_eq!(result["insert"], json!({ "ok": "1" }), "{result}");
    assert_eq!(
        result["select"],
        json!({ "ok": "([\"b:DbDataType::Boolean\", \"i2:DbDataType::Int16\", \"i4:DbDataType::Int32\", \"i8:DbDataType::Int64\", \"f4:DbDataType::Floating32\", \"f8:DbDataType::Floating64\", \"t:DbDataType::Str\", \"bin:DbDataType::Binary\", \"n:DbDataType::Str\"], [[DbValue::Boolean(true), DbValue::Int16(-2), DbValue::Int32(70000), DbValue::Int64(-9000000000), DbValue::Floating32(1.5), DbValue::Floating64(-2.25), DbValue::Str(\"héllo\"), DbValue::Binary([0, 1, 255]), DbValue::DbNull]])" }),
        "{result}"
    );
    let bad = result["bad_sql"]["err"].as_str().unwrap_or_default();
    assert!(
        bad.contains("QueryFailed") && bad.contains("42601"),
        "syntax errors carry the SQLSTATE: {result}"
    );
    let bad_decimal = result["bad_decimal"]["err"].as_str().unwrap_or_default();
    assert!(bad_decimal.contains("BadParameter"), "{result}");
    assert_eq!(
        result["null_into_typed"],
        json!({ "ok": "1" }),
        "NULL binds to any column type: {result}"
    );
    // The host holds a BEGIN back until the transaction's first statement: that
    // statement still runs inside the transaction.
    assert_eq!(
        result["transactions"],
        json!({
            "begin": true, "insert": true, "rollback": true,
            "begin_again": true, "insert_again": true, "commit": true,
            "begin_empty": true, "commit_empty": true,
            "begin_failing": true, "failing": false, "rollback_failing": true,
            "rolled_back_rows": { "ok": "[[DbValue::Int64(0)]]" },
            "committed_rows": { "ok": "[[DbValue::Int64(1)]]" },
        }),
        "{result}"
    );
    // The script ends with an open transaction holding an uncommitted row; the next
    // guest on that pooled connection must not be inside it.
    let again = script("granted");
    assert_eq!(again["leftover"], json!({ "ok": "[[DbValue::Int64(0)]]" }), "{again}");

    let denied = script("ungranted");
    let err = denied["open"]["err"].as_str().unwrap_or_default();
    assert!(
        err.contains("ConnectionFailed") && err.contains("not permitted"),
        "{denied}"
    );
}

/// With `[postgres] local_socket_dir` a guest's loopback address is served through
/// the server's socket; the allow list still judges the address the guest named.
#[test]
fn a_loopback_server_is_reached_through_its_socket_when_configured() {
    let socket_dir = "/var/run/postgresql";
    assert!(
        Path::new(socket_dir).join(".s.PGSQL.5432").exists(),
        "PostgreSQL must keep its socket in {socket_dir} for this test"
    );
    let dir = TempDir::new("pg-socket");
    let manifest = granted_app(
        &dir,
        "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]",
        "allowed_outbound_hosts = [\"postgres://db.example:5432\"]",
    );
    // Not `runtime-config.toml`, which a shop beside it would read unasked.
    let runtime_config = dir.path().join("socket.toml");
    std::fs::write(
        &runtime_config,
        format!("[postgres]\nlocal_socket_dir = {socket_dir:?}\n"),
    )
    .unwrap();
    let open = |args: Vec<String>, data: &str| {
        let shop = Shop::start_with(
            &manifest,
            ShopOptions {
                data_dir: &dir.path().join(data),
                args,
                env: vec![],
            },
        );
        let granted = shop.get_json("/granted/pg-open", &[("x-pg-address", POSTGRES)]);
        let ungranted = shop.get_json("/ungranted/pg-open", &[("x-pg-address", POSTGRES)]);
        (granted, ungranted)
    };
    let (over_tcp, _) = open(vec![], "tcp");
    assert_eq!(over_tcp["server"], json!("127.0.0.1"), "{over_tcp}");
    let args = vec!["--runtime-config-file".into(), runtime_config.display().to_string()];
    let (local, ungranted) = open(args, "socket");
    assert_eq!(local["select"], json!({ "ok": "1" }), "{local}");
    assert_eq!(local["server"], json!("socket"), "{local}");
    let err = ungranted["open"]["err"].as_str().unwrap_or_default();
    assert!(err.contains("not permitted"), "{ungranted}");
}

/// Guests that keep a connection open while they wait (the orders long poll, a
/// placement waiting for its saga after its outbox commit `NOTIFY`d the relay) must
/// not hold the pool's server connections: more of them than the pool has slots,
/// each pausing longer than a checkout may wait, all get their statements through. A
/// transaction, and a session `SET`, keep their server connection across a pause.
#[test]
fn idle_guest_connections_do_not_hold_pooled_server_connections() {
    let dir = TempDir::new("pg-hold");
    let address = fresh_postgres_database("shop_test_pool_hold");
    let manifest = granted_app(&dir, "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]", "");
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    // 40 guests against a pool of 16, each pausing 3 s between two statements and 3 s
    // after a commit: holding the server connection from open (or from the
    // transaction's NOTIFY on) would leave most of them waiting past the 5 s checkout
    // limit. (Inside their transactions they hold one, briefly.)
    let results: Vec<Value> = std::thread::scope(|scope| {
        let holders: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| shop.get_json("/granted/pg-hold?ms=3000&tx_ms=50", &[("x-pg-address", &address)])))
            .collect();
        holders.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in &results {
        let steps = [
            "first",
            "second",
            "begin",
            "in_transaction",
            "notify",
            "still_in_transaction",
            "commit",
            "after_commit",
            "set",
            "after_set",
        ];
        for step in steps {
            assert!(result[step].get("ok").is_some(), "{step} failed: {result}");
        }
        assert_eq!(
            result["in_transaction"], result["still_in_transaction"],
            "a transaction moved to another server connection: {result}"
        );
        assert_eq!(
            result["after_set"],
            json!({ "ok": "[[DbValue::Str(\"shop_pg_hold\")]]" }),
            "a session SET was lost: {result}"
        );
    }
    // A connection a guest `SET` something on is closed when the guest ends, not
    // handed to the next guest.
    let kept = || {
        psql(
            "shop_test_pool_hold",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shop_pg_hold'",
        )
        .parse::<usize>()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while kept() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kept(), 0, "connections carrying a guest's SET went back to the pool");
}

/// Each distinct address a guest opens (here: the same server with another
/// `application_name`) would otherwise be a pool of its own, kept for ever.
#[test]
fn a_component_keeps_a_bounded_number_of_postgres_pools() {
    let dir = TempDir::new("pg-bound");
    let database = "shop_test_pool_bound";
    let address = fresh_postgres_database(database);
    let manifest = granted_app(&dir, "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]", "");
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let addresses = 30;
    for n in 0..addresses {
        let result = shop.get_json(
            "/granted/pg-open",
            &[("x-pg-address", &format!("{address}?application_name=shop_bound_{n}"))],
        );
        assert_eq!(result["open"], json!({ "ok": "opened" }), "{result}");
        assert_eq!(result["select"], json!({ "ok": "1" }), "{result}");
    }
    let held = || {
        psql(
            database,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'shop_bound_%'",
        )
        .parse::<usize>()
        .unwrap()
    };
    // Dropped pools close their connections as their last users return them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held() > 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let connections = held();
    assert!(
        (1..=8).contains(&connections),
        "{connections} connections held for {addresses} addresses"
    );
}

#[test]
fn postgres_date_time_numeric_range_and_interval_values_round_trip() {
    let dir = TempDir::new("pg-types");
    let manifest = granted_app(&dir, "allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]", "");
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let result = shop.get_json("/granted/pg-types", &[("x-pg-address", POSTGRES)]);
    assert_eq!(result["insert"], json!({ "ok": "1" }), "{result}");
    let expected_columns = [
        "Date",
        "Time",
        "Datetime",
        "Datetime",
        "Uuid",
        "Jsonb",
        "Decimal",
        "RangeInt32",
        "RangeInt64",
        "RangeDecimal",
        "ArrayDecimal",
        "Interval",
    ]
    .map(|c| format!("DbDataType::{c}"));
    let expected_row = [
        "DbValue::Date((2024, 2, 29))",
        "DbValue::Time((13, 45, 30, 250000000))",
        "DbValue::Datetime((2026, 11, 22, 3, 18, 37, 123456000))",
        // Unix 1_700_000_000 is 2023-11-14 22:13:20 UTC.
        "DbValue::Datetime((2023, 11, 14, 22, 13, 20, 0))",
        "DbValue::Uuid(\"123e4567-e89b-12d3-a456-426614174000\")",
        "Jsonb({\"a\": [1, 2]})",
        "DbValue::Decimal(\"-12345.6789\")",
        "DbValue::RangeInt32((Some((1, RangeBoundKind::Inclusive)), Some((10, RangeBoundKind::Exclusive))))",
        "DbValue::RangeInt64((Some((5, RangeBoundKind::Inclusive)), None))",
        "DbValue::RangeDecimal((Some((\"1.5\", RangeBoundKind::Inclusive)), Some((\"2.5\", RangeBoundKind::Inclusive))))",
        "DbValue::ArrayDecimal([Some(\"1.10\"), None])",
        "DbValue::Interval(Interval { micros: 3600000000, days: 2, months: 1 })",
    ];
    assert_eq!(
        result["select"]["ok"].as_str().unwrap_or_default(),
        format!("({expected_columns:?}, [{expected_row:?}])"),
        "{result}"
    );
    // The server's own rendering of what the host encoded.
    let as_text = result["as_text"]["ok"].as_str().unwrap_or_default();
    for expected in [
        "2024-02-29",
        "13:45:30.25",
        "2026-11-22 03:18:37.123456",
        "2023-11-14 22:13:20",
        "-12345.6789",
        "1 mon 2 days 01:00:00",
    ] {
        assert!(
            as_text.contains(&format!("Str(\"{expected}\")")),
            "{expected} in {as_text}"
        );
    }
    let wrong = result["wrong_column_type"]["err"].as_str().unwrap_or_default();
    assert!(
        wrong.contains("QueryFailed") || wrong.contains("BadParameter"),
        "{result}"
    );
}

#[test]
fn an_unreachable_postgres_fails_open_fast() {
    let dir = TempDir::new("pg-down");
    let manifest = granted_app(&dir, "allowed_outbound_hosts = [\"postgres://127.0.0.1:*\"]", "");
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let address = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let started = Instant::now();
    let result = shop.get_json("/granted/pg", &[("x-pg-address", &address)]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let err = result["open"]["err"].as_str().unwrap_or_default();
    assert!(err.contains("ConnectionFailed"), "{result}");
}

#[test]
fn sqlite_3_tracks_rowid_and_changes_per_connection() {
    let dir = TempDir::new("sqlite3");
    let shop = Shop::start(&kv_app(&dir), &dir.path().join("data"));
    let result = shop.get_json("/granted/sqlite3?db=default", &[]);
    assert_eq!(
        result,
        json!({
            "open": { "ok": "opened" },
            "rowid_before": 0,
            "drop": { "ok": "0" },
            "create": { "ok": "0" },
            "insert": { "ok": "0" },
            "rowid": 2,
            "changes": 2,
            "update": { "ok": "0" },
            "changes_after_update": 2,
            "select": { "ok": "[[Value::Integer(1), Value::Text(\"z\")], [Value::Integer(2), Value::Text(\"z\")]]" },
            "changes_after_select": 2,
        })
    );
    assert_eq!(
        shop.get_json("/ungranted/sqlite3?db=default", &[])["open"],
        json!({ "err": "Error::AccessDenied" })
    );
}

/// An app with capabilities-p3 granted (with `granted` lines) and ungranted.
fn p3_app(dir: &TempDir, granted: &str) -> std::path::PathBuf {
    dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/granted/...", "granted"),
        http_trigger("/ungranted/...", "ungranted"),
        component("granted", "capabilities-p3", granted),
        component("ungranted", "capabilities-p3", ""),
    ))
}

#[test]
fn sqlite_postgres_and_redis_from_a_spin_sdk_7_component() {
    let dir = TempDir::new("p3-data");
    let manifest = p3_app(
        &dir,
        &format!(
            "sqlite_databases = [\"default\"]\nallowed_outbound_hosts = [\"postgres://127.0.0.1:5432\", \"redis://{REDIS}\"]"
        ),
    );
    let shop = Shop::start(&manifest, &dir.path().join("data"));

    let sqlite = shop.get_json("/granted/sqlite?db=default", &[]);
    assert_eq!(sqlite["insert"], json!({ "ok": "0" }), "{sqlite}");
    assert_eq!(
        (sqlite["rowid"].clone(), sqlite["changes"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        sqlite["select"],
        json!({ "ok": "([\"i\", \"r\", \"t\", \"b\", \"n\"], [[Value::Integer(-42), Value::Real(1.5), Value::Text(\"héllo\"), Value::Blob([0, 1, 255]), Value::Null]])" }),
        "spin-sdk 7 sees what spin-sdk 5 sees"
    );
    let bad = sqlite["bad_sql"]["err"].as_str().unwrap_or_default();
    assert!(bad.contains("Io(") && bad.contains("syntax error"), "{sqlite}");
    assert!(
        shop.get_json("/ungranted/sqlite?db=default", &[])["open"]["err"]
            .as_str()
            .unwrap_or_default()
            .contains("AccessDenied")
    );

    let pg = shop.get_json("/granted/pg", &[("x-pg-address", POSTGRES)]);
    assert_eq!(pg["insert"], json!({ "ok": "1" }), "{pg}");
    let select = pg["select"]["ok"].as_str().unwrap_or_default();
    for expected in [
        "b:DbDataType::Boolean",
        "num:DbDataType::Decimal",
        "[DbValue::Boolean(true), DbValue::Int16(-2), DbValue::Int32(70000), DbValue::Int64(-9000000000), DbValue::Floating32(1.5), DbValue::Floating64(-2.25), DbValue::Str(\"héllo\"), DbValue::Binary([0, 1, 255]), DbValue::DbNull, DbValue::Date((2024, 2, 29)), DbValue::Decimal(\"-12345.6789\")]",
    ] {
        assert!(select.contains(expected), "{expected} in {pg}");
    }
    let bad = pg["bad_sql"]["err"].as_str().unwrap_or_default();
    assert!(bad.contains("QueryFailed") && bad.contains("42601"), "{pg}");
    let denied = shop.get_json("/ungranted/pg", &[("x-pg-address", POSTGRES)]);
    assert!(
        denied["open"]["err"]
            .as_str()
            .unwrap_or_default()
            .contains("ConnectionFailed"),
        "{denied}"
    );

    let address = format!("redis://{REDIS}/8");
    let redis_result = shop.get_json("/granted/redis", &[("x-redis-address", &address)]);
    for (step, expected) in [
        ("get_missing", json!({ "ok": "None" })),
        ("get", json!({ "ok": "Some(\"value\")" })),
        ("incr_again", json!({ "ok": "2" })),
        ("get_wrong_type", json!({ "err": "Error::TypeError" })),
        ("smembers", json!({ "ok": "[\"a\", \"c\"]" })),
        ("execute_incrby", json!({ "ok": "[RedisResult::Int64(42)]" })),
        ("del", json!({ "ok": "2" })),
    ] {
        assert_eq!(redis_result[step], expected, "{step}: {redis_result}");
    }
    let denied = shop.get_json("/ungranted/redis", &[("x-redis-address", &address)]);
    assert_eq!(denied["open"], json!({ "err": "Error::InvalidAddress" }), "{denied}");
}

#[test]
fn outbound_redis_commands_and_address_checks() {
    let dir = TempDir::new("redis-out");
    assert!(redis(&["PING"]).starts_with("+PONG"));
    let manifest = granted_app(
        &dir,
        &format!("allowed_outbound_hosts = [\"redis://{REDIS}\"]"),
        "allowed_outbound_hosts = [\"redis://cache.example\"]",
    );
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    // Database 8: apart from the key-value test's database.
    let address = format!("redis://{REDIS}/8");
    let result = shop.get_json("/granted/redis", &[("x-redis-address", &address)]);
    let expected = json!({
        "open": { "ok": "opened" },
        "del_setup": result["del_setup"].clone(),
        "get_missing": { "ok": "None" },
        "set": { "ok": "()" },
        "get": { "ok": "Some(\"value\")" },
        "incr": { "ok": "1" },
        "incr_again": { "ok": "2" },
        "incr_wrong_type": result["incr_wrong_type"].clone(),
        "sadd": { "ok": "3" },
        "get_wrong_type": { "err": "Error::TypeError" },
        "srem": { "ok": "1" },
        "smembers": { "ok": "[\"a\", \"c\"]" },
        "execute_append": { "ok": "[RedisResult::Int64(6)]" },
        "execute_get": { "ok": "[RedisResult::Binary([118, 97, 108, 117, 101, 33])]" },
        "execute_incrby": { "ok": "[RedisResult::Int64(42)]" },
        "publish": { "ok": "()" },
        "del": { "ok": "2" },
    });
    assert_eq!(result, expected);
    // The server refuses INCR on text; the guest gets the server's message.
    let refused = result["incr_wrong_type"]["err"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("Error::Other(") && refused.contains("not an integer"),
        "{result}"
    );

    let denied = shop.get_json("/ungranted/redis", &[("x-redis-address", &address)]);
    assert_eq!(denied["open"], json!({ "err": "Error::InvalidAddress" }), "{denied}");
}

#[test]
fn variables_resolve_from_templates_defaults_and_environment() {
    let dir = TempDir::new("vars");
    let manifest = dir.manifest(&format!(
        "[variables]\nwho = {{ default = \"world\" }}\ntoken = {{ required = true, secret = true }}\n{}{}{}{}",
        http_trigger("/...", "c"),
        http_trigger("/p3/...", "c3"),
        component(
            "c",
            "capabilities-p2",
            "variables = { greeting = \"hello {{ who }}\", api_token = \"{{ token }}\", fixed = \"plain\" }"
        ),
        component(
            "c3",
            "capabilities-p3",
            "variables = { greeting = \"hello {{ who }}\" }"
        ),
    ));
    let start = |env: Vec<(String, String)>| {
        Shop::start_with(
            &manifest,
            ShopOptions {
                data_dir: &dir.path().join("data"),
                args: vec![],
                env,
            },
        )
    };
    let get = |shop: &Shop, name: &str| -> Value {
        client()
            .get(format!("{}/vars?name={name}", shop.base))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };

    let shop = start(vec![("SPIN_VARIABLE_TOKEN".into(), "s3cret-value".into())]);
    assert_eq!(get(&shop, "greeting"), json!({ "ok": "\"hello world\"" }));
    assert_eq!(get(&shop, "api_token"), json!({ "ok": "\"s3cret-value\"" }));
    assert_eq!(get(&shop, "fixed"), json!({ "ok": "\"plain\"" }));
    let undefined = get(&shop, "nope")["err"].as_str().unwrap().to_string();
    assert!(undefined.starts_with("Error::Undefined("), "{undefined}");
    let invalid = get(&shop, "Not-Valid")["err"].as_str().unwrap().to_string();
    assert!(invalid.starts_with("Error::InvalidName("), "{invalid}");
    // A spin-sdk 7 component reads the same variables through spin:variables@3.0.0.
    let p3 = |name: &str| shop.get_json(&format!("/p3/vars?name={name}"), &[]);
    assert_eq!(p3("greeting"), json!({ "ok": "hello world" }));
    assert!(
        p3("nope")["err"].as_str().unwrap().starts_with("Error::Undefined("),
        "{}",
        p3("nope")
    );
    assert!(
        p3("Not-Valid")["err"]
            .as_str()
            .unwrap()
            .starts_with("Error::InvalidName("),
        "{}",
        p3("Not-Valid")
    );

    let logs = format!("{}{}", shop.stdout.text(), shop.stderr.text());
    drop(shop);
    assert!(!logs.contains("s3cret-value"), "secret leaked into logs:\n{logs}");

    // The environment overrides a default.
    let shop = start(vec![
        ("SPIN_VARIABLE_TOKEN".into(), "t".into()),
        ("SPIN_VARIABLE_WHO".into(), "there".into()),
    ]);
    assert_eq!(get(&shop, "greeting"), json!({ "ok": "\"hello there\"" }));
}

#[test]
fn check_reports_undefined_key_value_labels() {
    let dir = TempDir::new("kv-check");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/...", "c"),
        component("c", "capabilities-p2", "key_value_stores = [\"default\", \"sessions\"]")
    ));
    let (status, _, stderr) = run_shop(&["check", "--file", manifest.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("component.c.key_value_stores: no key-value store labelled `sessions`"),
        "{stderr}"
    );
}

/// A TCP server answering each connection's first line with `pong`, and a UDP socket
/// answering each datagram with `pong`; their ports.
fn echo_servers() -> (u16, u16) {
    use std::io::{BufRead, BufReader, Write};
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = (&stream).write_all(b"pong\n");
        }
    });
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(b"pong", from);
        }
    });
    (tcp_port, udp_port)
}

/// `std::net` in a guest (wasi:sockets) reaches exactly the `tcp://` and `udp://`
/// addresses of its `allowed_outbound_hosts` (IPs, CIDR ranges, templates); the rest,
/// an `http://` rule for the same port included, is `access-denied`.
#[test]
fn sockets_follow_allowed_outbound_hosts() {
    let (tcp, udp) = echo_servers();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new("sockets");
    let manifest = dir.manifest(&format!(
        "[variables]\nnet = {{ default = \"127.0.0.0/24\" }}\n{}{}{}{}{}{}",
        http_trigger("/granted/...", "granted"),
        http_trigger("/range/...", "range"),
        http_trigger("/http-only/...", "http-only"),
        component(
            "granted",
            "capabilities-p2",
            &format!("allowed_outbound_hosts = [\"tcp://127.0.0.1:{tcp}\", \"udp://127.0.0.1:{udp}\"]")
        ),
        component(
            "range",
            "capabilities-p2",
            "allowed_outbound_hosts = [\"tcp://{{ net }}:*\"]"
        ),
        component(
            "http-only",
            "capabilities-p2",
            &format!("allowed_outbound_hosts = [\"http://127.0.0.1:{tcp}\"]")
        ),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    let ping = |component: &str, protocol: &str, port: u16| -> Value {
        let url = format!("{}/{component}/{protocol}?addr=127.0.0.1:{port}", shop.base);
        let r = client().get(url).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    let denied = |answer: Value| {
        assert_eq!(answer["err"], "PermissionDenied", "{answer}");
    };
    assert_eq!(ping("granted", "tcp", tcp), json!({ "ok": "pong" }));
    assert_eq!(ping("granted", "udp", udp), json!({ "ok": "pong" }));
    denied(ping("granted", "tcp", closed));
    denied(ping("granted", "tcp", udp));
    denied(ping("granted", "udp", tcp));
    assert_eq!(ping("range", "tcp", tcp), json!({ "ok": "pong" }));
    // Allowed, but nobody listens: the connection is refused, not denied.
    assert_eq!(ping("range", "tcp", closed)["err"], "ConnectionRefused");
    denied(ping("range", "udp", udp));
    denied(ping("http-only", "tcp", tcp));
}

/// A private Mosquitto on a free port that wants `user`/`secret`; stopped on drop.
struct PasswordBroker {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl PasswordBroker {
    fn start() -> Self {
        let dir = TempDir::new("mosquitto");
        let port = free_port();
        let passwords = dir.path().join("passwords");
        let made = std::process::Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args(["user", "secret"])
            .status()
            .expect("mosquitto_passwd runs (Debian: apt-get install mosquitto)");
        assert!(made.success());
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n",
                passwords.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto starts (Debian: apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, _dir: dir }
    }
}

impl Drop for PasswordBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes to `topic` on `port` (with `login`) and returns what the first message
/// said, once `publish` has run; `mosquitto_sub` is the real subscriber.
fn received_while(port: u16, login: Option<(&str, &str)>, topic: &str, publish: impl Fn()) -> String {
    let mut command = std::process::Command::new("mosquitto_sub");
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "15",
        "-q",
        "1",
    ]);
    if let Some((user, password)) = login {
        command.args(["-u", user, "-P", password]);
    }
    let mut subscriber = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (Debian: apt-get install mosquitto-clients)");
    // A publish before the subscription reaches the broker is lost, and under load no
    // fixed pause is enough: the guest publishes again until the subscriber has one
    // message (`-C 1`) or gives up (`-W`).
    let deadline = Instant::now() + Duration::from_secs(16);
    std::thread::sleep(Duration::from_millis(200));
    while subscriber.try_wait().unwrap().is_none() && Instant::now() < deadline {
        publish();
        let waited = Instant::now() + Duration::from_millis(500);
        while subscriber.try_wait().unwrap().is_none() && Instant::now() < waited {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let output = subscriber.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `fermyon:spin/mqtt@2.0.0` against real Mosquitto brokers: an anonymous one (the
/// machine's, 127.0.0.1:1883) and a private one with a password file. A subscriber
/// receives what the guest published; a wrong password and an unreachable broker are
/// `connection-failed`, an address outside `allowed_outbound_hosts` `invalid-address`.
#[test]
fn mqtt_publishes_reach_a_subscriber_on_allowed_brokers_only() {
    let broker = PasswordBroker::start();
    let closed = free_port();
    let dir = TempDir::new("mqtt");
    let allowed = format!(
        "allowed_outbound_hosts = [\"mqtt://127.0.0.1:1883\", \"mqtt://127.0.0.1:{}\", \"mqtt://127.0.0.1:{closed}\"]",
        broker.port
    );
    let manifest = dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/c/...", "c"),
        http_trigger("/p3/...", "p3"),
        component("c", "capabilities-p2", &allowed),
        component("p3", "capabilities-p3", &allowed),
    ));
    let shop = Shop::start(&manifest, &dir.path().join("data"));
    // Through the spin-sdk 5 component (`/c`) or the spin-sdk 7 one (`/p3`).
    let publish_through = |prefix: &str, address: &str, login: (&str, &str), topic: &str| -> Value {
        let r = client()
            .get(format!("{}/{prefix}/mqtt?topic={topic}", shop.base))
            .header("x-mqtt-address", address)
            .header("x-mqtt-username", login.0)
            .header("x-mqtt-password", login.1)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    let publish = |address: &str, login: (&str, &str), topic: &str| publish_through("c", address, login, topic);
    let topic = format!("shop/test/{}", free_port());

    let anonymous = received_while(1883, None, &topic, || {
        assert_eq!(
            publish("mqtt://127.0.0.1:1883", ("", ""), &topic),
            json!({ "ok": "()" })
        );
    });
    assert_eq!(anonymous, "hello from wasm");

    let with_password = format!("mqtt://127.0.0.1:{}?client_id=shop-test", broker.port);
    let private = received_while(broker.port, Some(("user", "secret")), &topic, || {
        assert_eq!(
            publish(&with_password, ("user", "secret"), &topic),
            json!({ "ok": "()" })
        );
    });
    assert_eq!(private, "hello from wasm");

    let error = |answer: Value| answer["err"].as_str().unwrap_or_default().to_string();
    let refused = error(publish(&with_password, ("user", "wrong"), &topic));
    assert!(
        refused.starts_with("Error::ConnectionFailed") && refused.contains("NotAuthorized"),
        "{refused}"
    );
    let anonymous = error(publish(&with_password, ("", ""), &topic));
    assert!(anonymous.starts_with("Error::ConnectionFailed"), "{anonymous}");
    let unreachable = error(publish(&format!("mqtt://127.0.0.1:{closed}"), ("", ""), &topic));
    assert!(unreachable.starts_with("Error::ConnectionFailed"), "{unreachable}");
    for denied in [
        "mqtt://127.0.0.1:1884",
        "mqtt://localhost:1883",
        "redis://127.0.0.1:1883",
    ] {
        assert_eq!(
            error(publish(denied, ("", ""), &topic)),
            "Error::InvalidAddress",
            "{denied}"
        );
    }

    // spin-sdk 7's `spin:mqtt@3.0.0`: the same sessions behind async calls.
    let publish_p3 = |address: &str, login: (&str, &str)| publish_through("p3", address, login, &topic);
    let from_p3 = received_while(broker.port, Some(("user", "secret")), &topic, || {
        assert_eq!(publish_p3(&with_password, ("user", "secret")), json!({ "ok": "()" }));
    });
    assert_eq!(from_p3, "hello from wasm 3");
    let refused = error(publish_p3(&with_password, ("user", "wrong")));
    assert!(refused.starts_with("Error::ConnectionFailed"), "{refused}");
    assert_eq!(
        error(publish_p3("mqtt://127.0.0.1:1884", ("", ""))),
        "Error::InvalidAddress"
    );
}
