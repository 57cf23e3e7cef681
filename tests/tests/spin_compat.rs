//! Spin-compatible means loadable by Spin: every component behind `[[trigger.http]]`
//! in the repo's spin.toml imports only interfaces Spin 3.x (and containerd-shim-spin)
//! provide, and exports the HTTP handler Spin calls. Kafka handlers, relays and crons
//! live in components only the `shop` host runs; this test keeps them out of the HTTP
//! half.

use std::path::{Path, PathBuf};

use wasmparser::{Parser, Payload};

/// Interfaces Spin provides to HTTP components, as `namespace:package/` prefixes with
/// the versions Spin serves.
fn spin_provides(import: &str) -> bool {
    let Some((interface, version)) = import.split_once('@') else {
        return false;
    };
    let Some((package, _)) = interface.split_once('/') else {
        return false;
    };
    match package {
        "wasi:http" | "wasi:cli" | "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:filesystem" | "wasi:sockets" => {
            version.starts_with("0.2.")
        }
        "fermyon:spin" => version == "2.0.0",
        "spin:postgres" => ["3.", "4."].iter().any(|v| version.starts_with(v)),
        "spin:sqlite" | "spin:key-value" | "spin:variables" | "spin:redis" | "spin:mqtt" | "spin:mysql" => {
            version.starts_with("3.")
        }
        "wasi:keyvalue" => version == "0.2.0-draft2",
        "wasi:config" => version == "0.2.0-draft",
        _ => false,
    }
}

/// The top-level imports and exports of the component at `path`.
fn interfaces_of(path: &Path) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/test builds the components before this test)",
            path.display()
        )
    });
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    // Nested modules and components carry their own sections; only depth 1 is what
    // the runtime has to provide or can call.
    let mut depth = 0;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    imports.push(import.expect("import").name.name.to_string());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    exports.push(export.expect("export").name.name.to_string());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// (component id, its .wasm) for every `[[trigger.http]]` in spin.toml.
fn http_components() -> Vec<(String, PathBuf)> {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("spin.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let triggers = manifest["trigger"]["http"].as_array().expect("[[trigger.http]]");
    triggers
        .iter()
        .map(|trigger| {
            let id = trigger["component"].as_str().expect("component id").to_string();
            let source = manifest["component"][&id]["source"].as_str().expect("a local source");
            (id, repo().join(source))
        })
        .collect()
}

#[test]
fn http_components_import_only_what_spin_provides() {
    let components = http_components();
    assert!(
        components.len() >= 8,
        "spin.toml routes {} HTTP components",
        components.len()
    );
    let mut refused = Vec::new();
    for (id, wasm) in &components {
        let (imports, exports) = interfaces_of(wasm);
        assert!(!imports.is_empty(), "{id}: no imports read from {}", wasm.display());
        // The summary the deployment notes quote (`--nocapture` shows it).
        eprintln!("{id}: {}", imports.join(" "));
        for import in imports.iter().filter(|i| !spin_provides(i)) {
            refused.push(format!("{id} imports {import}"));
        }
        if !exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")) {
            refused.push(format!(
                "{id} does not export wasi:http/incoming-handler (it exports {exports:?})"
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "Spin would refuse to load these HTTP components:\n  {}",
        refused.join("\n  ")
    );
}

#[test]
fn the_allow_list_refuses_what_only_this_host_provides() {
    for host_only in [
        "wasi:messaging/producer@0.2.0-draft",
        "wasi:messaging/types@0.2.0-draft",
        "fermyon:spin-cron/cron-types@2.0.0",
        "wasi:http/types@0.3.0-rc-2025-09-16",
        "fermyon:spin/sqlite@3.0.0",
        "wasi:keyvalue/store@0.2.0-draft",
        "wasi:random",
    ] {
        assert!(!spin_provides(host_only), "{host_only}");
    }
    for provided in [
        "wasi:http/outgoing-handler@0.2.0",
        "wasi:io/streams@0.2.6",
        "fermyon:spin/variables@2.0.0",
        "spin:postgres/postgres@4.2.0",
        "spin:sqlite/sqlite@3.1.0",
        "wasi:keyvalue/store@0.2.0-draft2",
    ] {
        assert!(spin_provides(provided), "{provided}");
    }
}

#[test]
fn the_event_half_is_what_spin_would_refuse() {
    // The check has teeth: the components only this host runs do import messaging.
    let (imports, _) = interfaces_of(&repo().join("target/wasm32-wasip2/release/orders_events.wasm"));
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:messaging/")),
        "orders-events imports {imports:?}"
    );
}
