//! `shop package`: the build contexts of the two images a Kubernetes deployment runs,
//! from one spin.toml.
//!
//! - `app/`: what containerd-shim-spin runs. Its spin.toml keeps only the
//!   `[[trigger.http]]` entries and their components (Spin refuses trigger types it
//!   has no plugin for), each `source` a file beside it; a Containerfile makes it a
//!   `wasi/wasm` image of those files (the shim's image format for apps that are not
//!   Spin OCI artifacts). We chose that format because any OCI builder and registry
//!   handles it; a Spin OCI artifact needs Spin's own tooling to push.
//! - `host/`: what the `shop` host runs, with a Containerfile: `app/` holds the whole
//!   manifest (it serves the Kafka and cron triggers, and the HTTP components for its
//!   own service chaining) and the `.wasm` files; `rootfs/` this `shop` binary, to
//!   which scripts/images adds the shared libraries it links (`FROM scratch`).
//!
//! `scripts/images` turns both into images with buildah.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::ManifestArgs;
use crate::manifest::Manifest;

/// The host image. `rootfs/` must also hold the libraries the binary links (scripts/images
/// copies what `ldd` lists): there is no base image.
const HOST_CONTAINERFILE: &str = "\
# The shop host: the binary and the libraries it links, the manifest and every component.
FROM scratch
COPY rootfs/ /
COPY app/ /app/
WORKDIR /app
ENV SHOP_LISTEN=0.0.0.0:3000 SHOP_ADMIN_LISTEN=0.0.0.0:9090 SHOP_DATA_DIR=/data SHOP_LOG_FORMAT=json
EXPOSE 9090
ENTRYPOINT [\"/usr/local/bin/shop\"]
CMD [\"up\", \"--no-build\", \"--file=/app/spin.toml\"]
";

/// What a component image needs no file beside the manifest for.
const BUILD_ONLY_KEYS: &[&str] = &["build"];

pub fn run(manifest_args: &ManifestArgs, out: &Path) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&manifest_args.file)?;
    let text = std::fs::read_to_string(&manifest_args.file)?;
    let table: toml::Table = toml::from_str(&text)?;
    let app = http_half(&table);
    write_context(&manifest, &app, &out.join("app"))?;
    std::fs::write(
        out.join("app/Containerfile"),
        "# containerd-shim-spin's wasi/wasm image: spin.toml and its components at /.\n\
         FROM scratch\nCOPY . /\n",
    )?;
    write_context(&manifest, &table, &out.join("host/app"))?;
    // What Spin (or shop) would refuse when it loads an image's app is refused now,
    // not at a pod's start.
    check_packaged(&out.join("app"))?;
    check_packaged(&out.join("host/app"))?;
    let shop = std::env::current_exe().context("where is this shop binary")?;
    let bin = out.join("host/rootfs/usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(&shop, bin.join("shop")).with_context(|| format!("copying {}", shop.display()))?;
    std::fs::write(out.join("host/Containerfile"), HOST_CONTAINERFILE)?;
    println!("Packaged {} into {}", manifest_args.file.display(), out.display());
    println!("  app:  {} HTTP components (spin.toml + .wasm)", component_count(&app));
    println!("  host: {} components and the shop binary", component_count(&table));
    Ok(ExitCode::SUCCESS)
}

/// The manifest checks of `shop check` on the packaged app in `dir` (its runtime
/// config is the deployment's, so only the manifest is judged here).
fn check_packaged(dir: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::load(&dir.join("spin.toml"))?;
    let errors: Vec<_> = crate::manifest::validate(&manifest)
        .into_iter()
        .filter(|p| p.severity == crate::manifest::Severity::Error)
        .collect();
    for error in &errors {
        eprintln!("{error}");
    }
    if !errors.is_empty() {
        bail!(
            "{}: {} error(s); fix the manifest before packaging it",
            dir.join("spin.toml").display(),
            errors.len()
        );
    }
    Ok(())
}

fn component_count(table: &toml::Table) -> usize {
    table.get("component").and_then(|c| c.as_table()).map_or(0, |c| c.len())
}

/// The manifest with only its HTTP triggers and the components they route to.
pub fn http_half(table: &toml::Table) -> toml::Table {
    let mut half = table.clone();
    let http = table
        .get("trigger")
        .and_then(|t| t.get("http"))
        .cloned()
        .unwrap_or(toml::Value::Array(vec![]));
    let routed: BTreeSet<String> = http
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("component").and_then(|c| c.as_str()).map(str::to_string))
        .collect();
    half.insert(
        "trigger".into(),
        toml::Value::Table([("http".to_string(), http)].into_iter().collect()),
    );
    if let Some(components) = half.get_mut("component").and_then(|c| c.as_table_mut()) {
        components.retain(|id, _| routed.contains(id));
    }
    // Settings of the other trigger types (`[application.trigger.kafka]`).
    if let Some(application) = half.get_mut("application").and_then(|a| a.as_table_mut()) {
        application.remove("trigger");
    }
    half
}

/// Writes `table` as `dir/spin.toml` with every component's `.wasm` copied beside it
/// (its `source` becoming the file name) and no build sections.
fn write_context(manifest: &Manifest, table: &toml::Table, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut table = table.clone();
    let components = table.get_mut("component").and_then(|c| c.as_table_mut());
    for (id, component) in components.into_iter().flatten() {
        let Some(component) = component.as_table_mut() else {
            bail!("component.{id} is not a table");
        };
        let source: PathBuf = match component.get("source").and_then(|s| s.as_str()) {
            Some(source) => manifest.dir().join(source),
            None => bail!("component.{id}: packaging needs a local `source` file"),
        };
        let name = source
            .file_name()
            .with_context(|| format!("component.{id}: source {} names no file", source.display()))?
            .to_string_lossy()
            .into_owned();
        std::fs::copy(&source, dir.join(&name)).with_context(|| {
            format!(
                "component.{id}: {} is missing (run `shop build` or scripts/test first)",
                source.display()
            )
        })?;
        component.insert("source".into(), toml::Value::String(name));
        for key in BUILD_ONLY_KEYS {
            component.remove(*key);
        }
    }
    let text = toml::to_string(&table)?;
    std::fs::write(dir.join("spin.toml"), text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_half_keeps_http_triggers_and_their_components_only() {
        let table: toml::Table = toml::from_str(
            r#"
spin_manifest_version = 2
[application]
name = "shop"
[application.trigger.kafka]
brokers = "x"
[[trigger.http]]
route = "/..."
component = "web"
[[trigger.kafka]]
component = "saga"
topics = ["t"]
[[trigger.cron]]
component = "relay"
cron_expression = "* * * * * *"
[component.web]
source = "web.wasm"
[component.saga]
source = "saga.wasm"
[component.relay]
source = "relay.wasm"
"#,
        )
        .unwrap();
        let half = http_half(&table);
        let triggers: Vec<&String> = half["trigger"].as_table().unwrap().keys().collect();
        assert_eq!(triggers, ["http"]);
        let components: Vec<&String> = half["component"].as_table().unwrap().keys().collect();
        assert_eq!(components, ["web"]);
        assert!(half["application"].get("trigger").is_none());
        assert_eq!(half["application"]["name"].as_str(), Some("shop"));
    }

    #[test]
    fn a_packaged_app_spin_would_refuse_is_an_error() {
        let dir = std::env::temp_dir().join(format!("shop-package-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("web.wasm"), b"").unwrap();
        let app = |hosts: &str| {
            format!(
                "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\nmail = {{ default = \"\" }}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n[component.web]\nsource = \"web.wasm\"\nallowed_outbound_hosts = {hosts}\n"
            )
        };
        std::fs::write(dir.join("spin.toml"), app("[\"https://mail.example.com\"]")).unwrap();
        check_packaged(&dir).unwrap();
        std::fs::write(dir.join("spin.toml"), app("[\"{{ mail }}\"]")).unwrap();
        let error = check_packaged(&dir).unwrap_err().to_string();
        assert!(error.contains("1 error(s)"), "{error}");
    }
}
