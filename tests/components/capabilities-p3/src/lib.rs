//! Test component (WASI P3, spin-sdk 7): calls the Spin 3.0 APIs and answers each
//! result as JSON, so tests can assert exactly what a spin-sdk 7 guest observes.
//!
//! - `GET /vars?name=<name>`: `variables::get(name)`.
//! - `GET /kv?store=<label>`: the key-value script (the same steps as capabilities-p2's).
//! - `GET /sqlite?db=<label>`: the SQLite script (`spin:sqlite@3.1.0`, async).
//! - `GET /pg` with header `x-pg-address`: the Postgres script (`spin:postgres@4.2.0`).
//! - `GET /redis` with header `x-redis-address`: the Redis script (`spin:redis@3.0.0`).
//! - `GET /mqtt?topic=<t>` with headers `x-mqtt-address`, `x-mqtt-username`,
//!   `x-mqtt-password`: publishes `hello from wasm 3` at least once (`spin:mqtt@3.0.0`).
#![cfg(target_arch = "wasm32")]

use serde_json::{Value, json};
use spin_sdk::http::{Request, Response, Result};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;

fn query_param(req: &Request, name: &str) -> String {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_default()
        .to_string()
}

fn show<T: std::fmt::Debug, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Value {
    match r {
        Ok(v) => json!({ "ok": format!("{v:?}") }),
        Err(e) => json!({ "err": format!("{e:?}") }),
    }
}

async fn all_keys(store: &Store) -> Vec<String> {
    let mut keys = store.get_keys().await;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        out.push(key);
    }
    out.sort();
    out
}

async fn key_value_script(label: &str) -> Value {
    let store = match Store::open(label).await {
        Ok(store) => store,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    for key in all_keys(&store).await {
        let _ = store.delete(&key).await;
    }
    let text =
        |r: std::result::Result<Option<Vec<u8>>, _>| r.map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    json!({
        "open": { "ok": "opened" },
        "get_missing": show(text(store.get("missing").await)),
        "set": show(store.set("k", b"one").await),
        "get": show(text(store.get("k").await)),
        "overwrite": show(store.set("k", b"two").await),
        "get_after_overwrite": show(text(store.get("k").await)),
        "set_binary": show(store.set("bin", [0u8, 159, 146, 150]).await),
        "get_binary": show(store.get("bin").await),
        "exists": show(store.exists("k").await),
        "exists_missing": show(store.exists("missing").await),
        "get_keys": { "ok": format!("{:?}", all_keys(&store).await) },
        "delete_missing": show(store.delete("missing").await),
        "delete": show(store.delete("k").await),
        "exists_after_delete": show(store.exists("k").await),
    })
}

async fn sqlite_script(label: &str) -> Value {
    use spin_sdk::sqlite::{Connection, Value as V};
    let db = match Connection::open(label).await {
        Ok(db) => db,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let count = |r: std::result::Result<spin_sdk::sqlite::QueryResult, _>| async move {
        match r {
            Ok(q) => q.collect().await.map(|rows| rows.len()),
            Err(e) => Err(e),
        }
    };
    let row = [
        V::Integer(-42),
        V::Real(1.5),
        V::Text("héllo".into()),
        V::Blob(vec![0, 1, 255]),
        V::Null,
    ];
    // Steps run in order; json! below only assembles their results.
    let drop = show(count(db.execute("DROP TABLE IF EXISTS script", []).await).await);
    let create = show(
        count(
            db.execute("CREATE TABLE script (i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)", [])
                .await,
        )
        .await,
    );
    let insert = show(count(db.execute("INSERT INTO script VALUES (?, ?, ?, ?, ?)", row).await).await);
    let rowid = db.last_insert_rowid().await;
    let changes = db.changes().await;
    let select = match db.execute("SELECT i, r, t, b, n FROM script", []).await {
        Ok(q) => {
            let columns = q.columns().to_vec();
            show(
                q.collect()
                    .await
                    .map(|rows| (columns, rows.into_iter().map(|r| r.values).collect::<Vec<_>>())),
            )
        }
        Err(e) => json!({ "err": format!("{e:?}") }),
    };
    let bad_sql = show(count(db.execute("SELEKT 1", []).await).await);
    json!({
        "open": { "ok": "opened" },
        "drop": drop,
        "create": create,
        "insert": insert,
        "rowid": rowid,
        "changes": changes,
        "select": select,
        "bad_sql": bad_sql,
    })
}

async fn postgres_script(address: &str) -> Value {
    use spin_sdk::pg::{Connection, ParameterValue as P};
    let conn = match Connection::open(address).await {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let row = vec![
        P::Boolean(true),
        P::Int16(-2),
        P::Int32(70_000),
        P::Int64(-9_000_000_000),
        P::Floating32(1.5),
        P::Floating64(-2.25),
        P::Str("héllo".into()),
        P::Binary(vec![0, 1, 255]),
        P::DbNull,
        P::Date((2024, 2, 29)),
        P::Decimal("-12345.6789".into()),
    ];
    let drop = show(conn.execute("DROP TABLE IF EXISTS shop_pg_script3", vec![]).await);
    let create = show(
        conn.execute(
            "CREATE TABLE shop_pg_script3 (b BOOLEAN, i2 SMALLINT, i4 INTEGER, i8 BIGINT, \
             f4 REAL, f8 DOUBLE PRECISION, t TEXT, bin BYTEA, n TEXT, d DATE, num NUMERIC(10, 4))",
            vec![],
        )
        .await,
    );
    let insert = show(
        conn.execute(
            "INSERT INTO shop_pg_script3 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            row,
        )
        .await,
    );
    let select = match conn.query("SELECT * FROM shop_pg_script3", vec![]).await {
        Ok(mut q) => {
            let columns: Vec<String> = q
                .columns()
                .iter()
                .map(|c| format!("{}:{:?}", c.name, c.data_type))
                .collect();
            let mut rows = Vec::new();
            while let Some(row) = q.rows().next().await {
                rows.push(row);
            }
            show(q.result().await.map(|()| (columns, rows)))
        }
        Err(e) => json!({ "err": format!("{e:?}") }),
    };
    let bad_sql = show(conn.query("SELEKT 1", vec![]).await.map(|_| ()));
    json!({
        "open": { "ok": "opened" },
        "drop": drop,
        "create": create,
        "insert": insert,
        "select": select,
        "bad_sql": bad_sql,
    })
}

async fn redis_script(address: &str) -> Value {
    use spin_sdk::redis::{Connection, RedisParameter as P};
    let conn = match Connection::open(address).await {
        Ok(conn) => conn,
        Err(e) => return json!({ "open": { "err": format!("{e:?}") } }),
    };
    let text =
        |r: std::result::Result<Option<Vec<u8>>, _>| r.map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    json!({
        "open": { "ok": "opened" },
        "del_setup": show(conn.del(["script:s", "script:n", "script:set"]).await),
        "get_missing": show(text(conn.get("script:s").await)),
        "set": show(conn.set("script:s", b"value").await),
        "get": show(text(conn.get("script:s").await)),
        "incr": show(conn.incr("script:n").await),
        "incr_again": show(conn.incr("script:n").await),
        "incr_wrong_type": show(conn.incr("script:s").await),
        "sadd": show(conn.sadd("script:set", ["a", "b", "c"]).await),
        "get_wrong_type": show(text(conn.get("script:set").await)),
        "srem": show(conn.srem("script:set", ["b", "zz"]).await),
        "smembers": show(conn.smembers("script:set").await.map(|mut m| { m.sort(); m })),
        "execute_append": show(conn.execute("APPEND", [P::Binary(b"script:s".to_vec()), P::Binary(b"!".to_vec())]).await),
        "execute_get": show(conn.execute("GET", [P::Binary(b"script:s".to_vec())]).await),
        "execute_incrby": show(conn.execute("INCRBY", [P::Binary(b"script:n".to_vec()), P::Int64(40)]).await),
        "publish": show(conn.publish("script:channel", b"hi").await),
        "del": show(conn.del(["script:s", "script:n", "script:missing"]).await),
    })
}

async fn mqtt_publish(req: &Request) -> Value {
    use spin_sdk::mqtt::{Connection, Qos};
    let opened = Connection::open(
        header(req, "x-mqtt-address"),
        header(req, "x-mqtt-username"),
        header(req, "x-mqtt-password"),
        30,
    )
    .await;
    let published = match opened {
        Ok(connection) => {
            connection
                .publish(
                    query_param(req, "topic"),
                    b"hello from wasm 3".to_vec(),
                    Qos::AtLeastOnce,
                )
                .await
        }
        Err(e) => Err(e),
    };
    show(published)
}

fn header(req: &Request, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[http_service]
async fn handle(req: Request) -> Result<Response<String>> {
    let path = req.uri().path().to_string();
    let body = if path.ends_with("/kv") {
        key_value_script(&query_param(&req, "store")).await
    } else if path.ends_with("/sqlite") {
        sqlite_script(&query_param(&req, "db")).await
    } else if path.ends_with("/pg") {
        postgres_script(&header(&req, "x-pg-address")).await
    } else if path.ends_with("/redis") {
        redis_script(&header(&req, "x-redis-address")).await
    } else if path.ends_with("/mqtt") {
        mqtt_publish(&req).await
    } else {
        match spin_sdk::variables::get(query_param(&req, "name")).await {
            Ok(value) => json!({ "ok": value }),
            Err(e) => json!({ "err": format!("{e:?}") }),
        }
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.to_string())?)
}
