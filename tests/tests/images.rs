//! The two images k8s/ names, built the way a user builds them (scripts/images:
//! buildah, no daemon), pushed to a real registry on loopback (Debian's
//! docker-registry), pulled back into empty storage and looked into: the app image is
//! a wasi/wasm image holding an HTTP-only spin.toml and exactly its components; the
//! host image runs `shop --version` and holds the whole manifest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shop_tests::{TempDir, free_port, target_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's docker-registry on a free loopback port, storing under `dir`.
fn registry(dir: &Path) -> (Registry, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.join("blobs").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry must be installed (scripts/test installs it)");
    let registry = Registry(child);
    let url = format!("http://{address}/v2/");
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success())
    });
    assert!(up, "the registry did not answer at {url}");
    (registry, address)
}

fn buildah(root: &Path) -> Command {
    let mut command = Command::new("buildah");
    command
        .arg("--storage-driver")
        .arg("vfs")
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"));
    command
}

/// Pulls `image` from the registry into the empty storage `root` and mounts a
/// container of it; its root directory.
fn pulled(root: &Path, reference: &str) -> PathBuf {
    run(buildah(root).args([
        "pull",
        "--quiet",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let container = run(buildah(root).args(["from", "--quiet", "--pull=never", reference]))
        .trim()
        .to_string();
    PathBuf::from(run(buildah(root).args(["mount", &container])).trim())
}

#[test]
fn the_app_and_host_images_build_push_and_pull_back() {
    let dir = TempDir::new("images");
    let (_registry, address) = registry(dir.path());
    let version = env!("CARGO_PKG_VERSION");
    run(Command::new(repo().join("scripts/images"))
        .args(["--push", &address])
        .env("CARGO_TARGET_DIR", target_dir())
        .env("BUILDAH_ROOT", dir.path().join("build")));

    // What the registry holds, by its own API.
    for image in ["shop-app", "shop-host"] {
        let manifest: serde_json::Value = reqwest::blocking::Client::new()
            .get(format!("http://{address}/v2/{image}/manifests/{version}"))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert!(
            manifest["layers"].as_array().is_some_and(|l| !l.is_empty()),
            "{image}: {manifest}"
        );
    }

    let pulled_root = dir.path().join("pulled");
    let app_ref = format!("{address}/shop-app:{version}");
    let app = pulled(&pulled_root, &app_ref);
    let config: serde_json::Value = serde_json::from_str(&run(
        buildah(&pulled_root).args(["inspect", "--type", "image", &app_ref])
    ))
    .unwrap();
    assert_eq!(
        (config["OCIv1"]["os"].as_str(), config["OCIv1"]["architecture"].as_str()),
        (Some("wasi"), Some("wasm")),
        "the app image's platform"
    );
    let manifest: toml::Table = std::fs::read_to_string(app.join("spin.toml")).unwrap().parse().unwrap();
    let triggers: Vec<&String> = manifest["trigger"].as_table().unwrap().keys().collect();
    assert_eq!(triggers, ["http"], "the app's spin.toml holds only HTTP triggers");
    let mut files: Vec<String> = std::fs::read_dir(&app)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wasm"))
        .collect();
    files.sort();
    let mut sources: Vec<String> = manifest["component"]
        .as_table()
        .unwrap()
        .values()
        .map(|c| c["source"].as_str().unwrap().to_string())
        .collect();
    sources.sort();
    sources.dedup();
    assert_eq!(files, sources, "the app image holds exactly its components");
    assert!(
        !files.iter().any(|f| f.contains("events") || f.contains("relay")),
        "{files:?}"
    );

    let host_ref = format!("{address}/shop-host:{version}");
    let host = pulled(&pulled_root, &host_ref);
    let output = run(Command::new("chroot")
        .arg(&host)
        .args(["/usr/local/bin/shop", "--version"]));
    assert_eq!(output.trim(), format!("shop {version}"));
    let manifest = std::fs::read_to_string(host.join("app/spin.toml")).unwrap();
    assert!(manifest.contains("[[trigger.kafka]]") && manifest.contains("orders_events.wasm"));
    assert!(host.join("app/orders_events.wasm").is_file());
    let _ = Command::new("buildah")
        .args(["--storage-driver", "vfs", "--root"])
        .arg(pulled_root.join("root"))
        .arg("--runroot")
        .arg(pulled_root.join("run"))
        .args(["rm", "--all"])
        .output();
}
