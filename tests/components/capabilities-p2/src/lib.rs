//! Test component (WASI P2, spin-sdk 5): runs fixed scripts against Spin's key-value,
//! SQLite and variables APIs and answers the result of every step as JSON, so tests
//! can assert exactly what a guest observes.
//!
//! - `GET /kv?store=<label>`: the key-value script on that store.
//! - `GET /sqlite?db=<label>`: the SQLite script on that database.
//! - `GET /pg` with header `x-pg-address`: the Postgres script against that server.
//! - `GET /redis` with header `x-redis-address`: the outbound Redis script.
//! - `GET /pg-open` with header `x-pg-address`: opens a connection, runs `SELECT 1` and
//!   asks the server its own address on that connection (`socket` over a socket).
//! - `GET /pg-types` with header `x-pg-address`: date/time, uuid, jsonb, numeric,
//!   range and interval values through Postgres.
//! - `GET /pg-hold?ms=<n>&tx_ms=<t>` with header `x-pg-address`: keeps one connection
//!   open for n ms between two statements, then for t ms inside a transaction (which
//!   `NOTIFY`s, as an outbox does), n ms after its commit and t ms after a `SET`, and
//!   answers which server backend ran each statement.
//! - `GET /sqlite3?db=<label>`: the `spin:sqlite@3.0.0` script (rowid and changes).
//! - `GET /wasi-kv?store=<label>`: the `wasi:keyvalue` store/atomics/batch script.
//! - `GET /vars?name=<name>`: `variables::get(name)`.
//! - `GET /tcp?addr=<ip:port>`: `std::net::TcpStream::connect` (wasi:sockets), sends
//!   `ping\n` and returns the first line the peer answers, or the error's kind.
//! - `GET /udp?addr=<ip:port>`: sends `ping` in a datagram from an unbound socket and
//!   returns the datagram that comes back, or the error's kind.
//! - `GET /mqtt?topic=<t>` with headers `x-mqtt-address`, `x-mqtt-username`,
//!   `x-mqtt-password`: opens `fermyon:spin/mqtt` and publishes `hello from wasm` to
//!   the topic at least once, or returns the error.
#![cfg(target_arch = "wasm32")]

use serde_json::{Value, json};
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value as SqlValue};
use spin_sdk::variables;

fn query_param(req: &Request, name: &str) -> String {
    req.query()
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_default()
        .to_string()
}

fn header(req: &Request, name: &str) -> String {
    req.header(name)
        .and_then(|h| h.as_str())
        .unwrap_or_default()
        .to_string()
}

fn show<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<T, E>) -> Value {
    match r {
        Ok(v) => json!({ "ok": format!("{v:?}") }),
        Err(e) => json!({ "err": format!("{e:?}") }),
    }
}

fn key_value_script(label: &str) -> Value {
    let store = match Store::open(label) {
        Ok(store) => store,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    // Start clean so the script is repeatable against a persistent backend.
    for key in store.get_keys().unwrap_or_default() {
        let _ = store.delete(&key);
    }
    json!({
        "open": { "ok": "opened" },
        "get_missing": show(store.get("missing")),
        "set": show(store.set("k", b"one")),
        "get": show(store.get("k").map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
        "overwrite": show(store.set("k", b"two")),
        "get_after_overwrite": show(store.get("k").map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
        "set_binary": show(store.set("bin", &[0, 159, 146, 150])),
        "get_binary": show(store.get("bin")),
        "exists": show(store.exists("k")),
        "exists_missing": show(store.exists("missing")),
        "get_keys": show(store.get_keys().map(|mut k| { k.sort(); k })),
        "delete_missing": show(store.delete("missing")),
        "delete": show(store.delete("k")),
        "exists_after_delete": show(store.exists("k")),
    })
}

fn sqlite_script(label: &str) -> Value {
    let db = match Connection::open(label) {
        Ok(db) => db,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let row = [
        SqlValue::Integer(-42),
        SqlValue::Real(1.5),
        SqlValue::Text("héllo".into()),
        SqlValue::Blob(vec![0, 1, 255]),
        SqlValue::Null,
    ];
    json!({
        "open": { "ok": "opened" },
        "drop": show(db.execute("DROP TABLE IF EXISTS script", &[]).map(|r| r.rows.len())),
        "create": show(db.execute("CREATE TABLE script (i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)", &[]).map(|r| r.rows.len())),
        "insert": show(db.execute("INSERT INTO script VALUES (?, ?, ?, ?, ?)", &row).map(|r| r.rows.len())),
        "select": show(db.execute("SELECT i, r, t, b, n FROM script", &[]).map(|r| (r.columns, r.rows.into_iter().map(|row| row.values).collect::<Vec<_>>()))),
        "bad_sql": show(db.execute("SELEKT 1", &[])),
    })
}

fn postgres_open(address: &str) -> Value {
    match spin_sdk::pg4::Connection::open(address) {
        Ok(conn) => {
            // The server's address as it sees this connection: none over a socket.
            let server = conn.query("SELECT COALESCE(host(inet_server_addr()), 'socket')", &[]);
            json!({
                "open": { "ok": "opened" },
                "select": show(conn.query("SELECT 1", &[]).map(|r| r.rows.len())),
                "server": match server.as_ref().map(|r| r.rows.first().and_then(|row| row.first())) {
                    Ok(Some(spin_sdk::pg4::DbValue::Str(address))) => json!(address),
                    other => json!(format!("{other:?}")),
                },
            })
        }
        Err(e) => json!({ "open": { "err": format!("{e:?}") } }),
    }
}

fn postgres_script(address: &str) -> Value {
    use spin_sdk::pg4::{Connection, ParameterValue as P};
    let conn = match Connection::open(address) {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let row = [
        P::Boolean(true),
        P::Int16(-2),
        P::Int32(70_000),
        P::Int64(-9_000_000_000),
        P::Floating32(1.5),
        P::Floating64(-2.25),
        P::Str("héllo".into()),
        P::Binary(vec![0, 1, 255]),
        P::DbNull,
    ];
    // A previous run left a transaction open on purpose (below): the host must not
    // hand it to this run, so its row is invisible here.
    let leftover = show(
        conn.query("SELECT count(*) FROM shop_pg_script WHERE t = 'uncommitted'", &[])
            .map(|rs| rs.rows),
    );
    let result = json!({
        "open": { "ok": "opened" },
        "leftover": leftover,
        "drop": show(conn.execute("DROP TABLE IF EXISTS shop_pg_script", &[])),
        "create": show(conn.execute(
            "CREATE TABLE shop_pg_script (b BOOLEAN, i2 SMALLINT, i4 INTEGER, i8 BIGINT, \
             f4 REAL, f8 DOUBLE PRECISION, t TEXT, bin BYTEA, n TEXT)",
            &[],
        )),
        "insert": show(conn.execute("INSERT INTO shop_pg_script VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", &row)),
        "select": show(conn.query("SELECT * FROM shop_pg_script", &[]).map(|rs| {
            let columns: Vec<String> = rs.columns.iter().map(|c| format!("{}:{:?}", c.name, c.data_type)).collect();
            (columns, rs.rows)
        })),
        "bad_sql": show(conn.query("SELEKT 1", &[])),
        "bad_decimal": show(conn.query("SELECT $1::numeric", &[P::Decimal("12a".into())])),
        "null_into_typed": show(conn.execute(
            "INSERT INTO shop_pg_script (i8, bin, f8) VALUES ($1, $2, $3)",
            &[P::DbNull, P::DbNull, P::DbNull],
        )),
    });
    let mut result = result;
    result["transactions"] = postgres_transactions(&conn);
    let _ = conn.execute("BEGIN", &[]);
    let _ = conn.execute("INSERT INTO shop_pg_script (t) VALUES ('uncommitted')", &[]);
    result
}

/// Transactions as a guest sees them: a rolled-back write is gone, a committed one
/// stays, an empty one and one whose first statement failed end cleanly.
fn postgres_transactions(conn: &spin_sdk::pg4::Connection) -> Value {
    let count = |t: &str| {
        show(
            conn.query(
                "SELECT count(*) FROM shop_pg_script WHERE t = $1",
                &[spin_sdk::pg4::ParameterValue::Str(t.into())],
            )
            .map(|rs| rs.rows),
        )
    };
    let steps = [
        ("begin", "BEGIN"),
        ("insert", "INSERT INTO shop_pg_script (t) VALUES ('rolled back')"),
        ("rollback", "ROLLBACK"),
        ("begin_again", "BEGIN"),
        ("insert_again", "INSERT INTO shop_pg_script (t) VALUES ('committed')"),
        ("commit", "COMMIT"),
        ("begin_empty", "BEGIN"),
        ("commit_empty", "COMMIT"),
        ("begin_failing", "BEGIN"),
        ("failing", "SELEKT 1"),
        ("rollback_failing", "ROLLBACK"),
    ];
    let mut outcome = serde_json::Map::new();
    for (step, statement) in steps {
        let ok = conn.execute(statement, &[]).is_ok();
        outcome.insert(step.into(), json!(ok));
    }
    outcome.insert("rolled_back_rows".into(), count("rolled back"));
    outcome.insert("committed_rows".into(), count("committed"));
    Value::Object(outcome)
}

/// One guest connection kept open across pauses: once between plain statements, once
/// inside a transaction, once after a session `SET`.
fn postgres_hold(address: &str, ms: u64, tx_ms: u64) -> Value {
    use spin_sdk::pg4::Connection;
    let conn = match Connection::open(address) {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let pause = |ms: u64| std::thread::sleep(std::time::Duration::from_millis(ms));
    let backend = || show(conn.query("SELECT pg_backend_pid()", &[]).map(|rs| rs.rows));
    let first = backend();
    pause(ms);
    let second = backend();
    let begin = show(conn.execute("BEGIN", &[]));
    let in_transaction = backend();
    let notify = show(conn.execute("NOTIFY shop_pg_hold", &[]));
    pause(tx_ms);
    let still_in_transaction = backend();
    let commit = show(conn.execute("COMMIT", &[]));
    pause(ms);
    let after_commit = backend();
    let set = show(conn.execute("SET application_name = 'shop_pg_hold'", &[]));
    pause(tx_ms);
    let after_set = show(conn.query("SHOW application_name", &[]).map(|rs| rs.rows));
    json!({
        "first": first,
        "second": second,
        "begin": begin,
        "in_transaction": in_transaction,
        "notify": notify,
        "still_in_transaction": still_in_transaction,
        "commit": commit,
        "after_commit": after_commit,
        "set": set,
        "after_set": after_set,
    })
}

/// Postgres values with their own encodings, written then read back. jsonb is shown as
/// text (the server normalises its spacing).
fn postgres_types_script(address: &str) -> Value {
    use spin_sdk::pg4::{Connection, DbValue, Interval, ParameterValue as P, RangeBoundKind as K};
    let conn = match Connection::open(address) {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let row = [
        P::Date((2024, 2, 29)),
        P::Time((13, 45, 30, 250_000_000)),
        P::Datetime((2026, 11, 22, 3, 18, 37, 123_456_000)),
        P::Timestamp(1_700_000_000),
        P::Uuid("123e4567-e89b-12d3-a456-426614174000".into()),
        P::Jsonb(br#"{"a":[1,2]}"#.to_vec()),
        P::Decimal("-12345.6789".into()),
        P::RangeInt32((Some((1, K::Inclusive)), Some((10, K::Exclusive)))),
        P::RangeInt64((Some((5, K::Inclusive)), None)),
        P::RangeDecimal((Some(("1.5".into(), K::Inclusive)), Some(("2.5".into(), K::Inclusive)))),
        P::ArrayDecimal(vec![Some("1.10".into()), None]),
        P::Interval(Interval {
            micros: 3_600_000_000,
            days: 2,
            months: 1,
        }),
    ];
    let shown = |v: &DbValue| match v {
        DbValue::Jsonb(bytes) => format!("Jsonb({})", String::from_utf8_lossy(bytes)),
        other => format!("{other:?}"),
    };
    json!({
        "open": { "ok": "opened" },
        "drop": show(conn.execute("DROP TABLE IF EXISTS shop_pg_types", &[])),
        "create": show(conn.execute(
            "CREATE TABLE shop_pg_types (d DATE, t TIME, dt TIMESTAMP, ts TIMESTAMPTZ, u UUID, j JSONB, \
             n NUMERIC(20, 4), r4 INT4RANGE, r8 INT8RANGE, rn NUMRANGE, an NUMERIC[], iv INTERVAL)",
            &[],
        )),
        "insert": show(conn.execute(
            "INSERT INTO shop_pg_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &row,
        )),
        "select": show(conn.query("SELECT * FROM shop_pg_types", &[]).map(|rs| {
            let columns: Vec<String> = rs.columns.iter().map(|c| format!("{:?}", c.data_type)).collect();
            let rows: Vec<Vec<String>> = rs.rows.iter().map(|r| r.iter().map(shown).collect()).collect();
            (columns, rows)
        })),
        "as_text": show(conn.query(
            "SELECT d::text, t::text, dt::text, (ts AT TIME ZONE 'UTC')::text, n::text, iv::text FROM shop_pg_types",
            &[],
        ).map(|rs| rs.rows)),
        "wrong_column_type": show(conn.query("SELECT $1::int", &[P::Date((2024, 1, 2))])),
    })
}

/// spin-sdk 5's `sqlite3` module (`spin:sqlite@3.0.0`): rowid and change counts.
fn sqlite3_script(label: &str) -> Value {
    use spin_sdk::sqlite3::{Connection, Value as V};
    let db = match Connection::open(label) {
        Ok(db) => db,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    json!({
        "open": { "ok": "opened" },
        "rowid_before": db.last_insert_rowid(),
        "drop": show(db.execute("DROP TABLE IF EXISTS script3", &[]).map(|r| r.rows.len())),
        "create": show(db.execute("CREATE TABLE script3 (id INTEGER PRIMARY KEY, t TEXT)", &[]).map(|r| r.rows.len())),
        "insert": show(db.execute("INSERT INTO script3 (t) VALUES (?), (?)", &[V::Text("a".into()), V::Text("b".into())]).map(|r| r.rows.len())),
        "rowid": db.last_insert_rowid(),
        "changes": db.changes(),
        "update": show(db.execute("UPDATE script3 SET t = 'z'", &[]).map(|r| r.rows.len())),
        "changes_after_update": db.changes(),
        "select": show(db.execute("SELECT id, t FROM script3 ORDER BY id", &[]).map(|r| r.rows.into_iter().map(|row| row.values).collect::<Vec<_>>())),
        "changes_after_select": db.changes(),
    })
}

/// `wasi:keyvalue` store, atomics and batch on a Spin key-value store.
fn wasi_key_value_script(label: &str) -> Value {
    use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store};
    let bucket = match store::open(label) {
        Ok(bucket) => bucket,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    if let Ok(listed) = bucket.list_keys(None) {
        let _ = batch::delete_many(&bucket, &listed.keys);
    }
    let text =
        |r: Result<Option<Vec<u8>>, store::Error>| r.map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    let cas = atomics::Cas::new(&bucket, "c").unwrap();
    let stale = atomics::Cas::new(&bucket, "c").unwrap();
    json!({
        "open": { "ok": "opened" },
        "get_missing": show(text(bucket.get("k"))),
        "set": show(bucket.set("k", b"v")),
        "get": show(text(bucket.get("k"))),
        "exists": show(bucket.exists("k")),
        "increment_new": show(atomics::increment(&bucket, "n", 5)),
        "increment": show(atomics::increment(&bucket, "n", -2)),
        "counter_text": show(text(bucket.get("n"))),
        "increment_text": show(atomics::increment(&bucket, "k", 1).map_err(|e| matches!(e, store::Error::Other(_)))),
        "cas_current": show(text(cas.current())),
        "swap": show(atomics::swap(cas, b"first").map_err(|_| "failed")),
        "swap_stale": match atomics::swap(stale, b"second") {
            Ok(()) => json!({ "ok": "swapped" }),
            Err(atomics::CasError::CasFailed(fresh)) => json!({ "err": format!("CasFailed(current = {:?})", text(fresh.current())) }),
            Err(atomics::CasError::StoreError(e)) => json!({ "err": format!("{e:?}") }),
        },
        "set_many": show(batch::set_many(&bucket, &[("b1".into(), b"1".to_vec()), ("b2".into(), b"2".to_vec())])),
        "get_many": show(batch::get_many(&bucket, &["b1".into(), "missing".into(), "b2".into()])),
        "delete_many": show(batch::delete_many(&bucket, &["b1".into(), "b2".into()])),
        "list_keys": show(bucket.list_keys(None).map(|r| { let mut k = r.keys; k.sort(); (k, r.cursor) })),
        "delete": show(bucket.delete("k")),
        "exists_after_delete": show(bucket.exists("k")),
    })
}

fn redis_script(address: &str) -> Value {
    use spin_sdk::redis::{Connection, RedisParameter as P};
    let conn = match Connection::open(address) {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let text = |r: Result<Option<Vec<u8>>, _>| r.map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    json!({
        "open": { "ok": "opened" },
        "del_setup": show(conn.del(&["script:s".into(), "script:n".into(), "script:set".into()])),
        "get_missing": show(text(conn.get("script:s"))),
        "set": show(conn.set("script:s", b"value".as_ref())),
        "get": show(text(conn.get("script:s"))),
        "incr": show(conn.incr("script:n")),
        "incr_again": show(conn.incr("script:n")),
        "incr_wrong_type": show(conn.incr("script:s")),
        "sadd": show(conn.sadd("script:set", &["a".into(), "b".into(), "c".into()])),
        "get_wrong_type": show(text(conn.get("script:set"))),
        "srem": show(conn.srem("script:set", &["b".into(), "zz".into()])),
        "smembers": show(conn.smembers("script:set").map(|mut m| { m.sort(); m })),
        "execute_append": show(conn.execute("APPEND", &[P::Binary(b"script:s".to_vec()), P::Binary(b"!".to_vec())])),
        "execute_get": show(conn.execute("GET", &[P::Binary(b"script:s".to_vec())])),
        "execute_incrby": show(conn.execute("INCRBY", &[P::Binary(b"script:n".to_vec()), P::Int64(40)])),
        "publish": show(conn.publish("script:channel", b"hi".as_ref())),
        "del": show(conn.del(&["script:s".into(), "script:n".into(), "script:missing".into()])),
    })
}

/// Through the standard library, as a guest would: its TCP and UDP are wasi:sockets.
fn tcp_ping(address: &str) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let step = |name: &'static str| move |e: std::io::Error| (name, e);
    let run = || -> Result<String, (&'static str, std::io::Error)> {
        let mut stream = std::net::TcpStream::connect(address).map_err(step("connect"))?;
        stream.write_all(b"ping\n").map_err(step("write"))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).map_err(step("read"))?;
        Ok(line.trim().to_string())
    };
    match run() {
        Ok(line) => json!({ "ok": line }),
        Err((step, e)) => json!({ "err": format!("{:?}", e.kind()), "step": step, "message": e.to_string() }),
    }
}

fn udp_ping(address: &str) -> Value {
    let step = |name: &'static str| move |e: std::io::Error| (name, e);
    let run = || -> Result<String, (&'static str, std::io::Error)> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(step("bind"))?;
        socket.send_to(b"ping", address).map_err(step("send"))?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).map_err(step("receive"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match run() {
        Ok(reply) => json!({ "ok": reply }),
        Err((step, e)) => json!({ "err": format!("{:?}", e.kind()), "step": step, "message": e.to_string() }),
    }
}

fn mqtt_publish(req: &Request) -> Value {
    use spin_sdk::mqtt::{Connection, Qos};
    let run = || {
        let connection = Connection::open(
            &header(req, "x-mqtt-address"),
            &header(req, "x-mqtt-username"),
            &header(req, "x-mqtt-password"),
            30,
        )?;
        connection.publish(
            &query_param(req, "topic"),
            b"hello from wasm".as_ref(),
            Qos::AtLeastOnce,
        )
    };
    show(run())
}

#[http_component]
fn handle(req: Request) -> Response {
    let body = if req.path().ends_with("/kv") {
        key_value_script(&query_param(&req, "store"))
    } else if req.path().ends_with("/sqlite") {
        sqlite_script(&query_param(&req, "db"))
    } else if req.path().ends_with("/pg") {
        postgres_script(&header(&req, "x-pg-address"))
    } else if req.path().ends_with("/pg-open") {
        postgres_open(&header(&req, "x-pg-address"))
    } else if req.path().ends_with("/pg-hold") {
        let ms = |name: &str| query_param(&req, name).parse().unwrap_or(0);
        postgres_hold(&header(&req, "x-pg-address"), ms("ms"), ms("tx_ms"))
    } else if req.path().ends_with("/pg-types") {
        postgres_types_script(&header(&req, "x-pg-address"))
    } else if req.path().ends_with("/sqlite3") {
        sqlite3_script(&query_param(&req, "db"))
    } else if req.path().ends_with("/wasi-kv") {
        wasi_key_value_script(&query_param(&req, "store"))
    } else if req.path().ends_with("/redis") {
        redis_script(&header(&req, "x-redis-address"))
    } else if req.path().ends_with("/tcp") {
        tcp_ping(&query_param(&req, "addr"))
    } else if req.path().ends_with("/udp") {
        udp_ping(&query_param(&req, "addr"))
    } else if req.path().ends_with("/mqtt") {
        mqtt_publish(&req)
    } else if req.path().ends_with("/vars") {
        show(variables::get(&query_param(&req, "name")))
    } else {
        json!({ "error": "unknown path" })
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}
