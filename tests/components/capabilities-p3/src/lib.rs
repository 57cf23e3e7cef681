//! Test component (WASI P3, spin-sdk 7): calls the Spin 3.0 APIs and answers each
//! result as JSON, so tests can assert exactly what a spin-sdk 7 guest observes.
//!
//! - `GET /vars?name=<name>`: `variables::get(name)`.
//! - `GET /kv?store=<label>`: the key-value script (the same steps as capabilities-p2's).

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

#[http_service]
async fn handle(req: Request) -> Result<Response<String>> {
    let body = if req.uri().path().ends_with("/kv") {
        key_value_script(&query_param(&req, "store")).await
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
