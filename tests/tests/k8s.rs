//! `k8s/` with no cluster: every overlay renders with `kubectl kustomize`, and what it
//! renders validates strictly (custom resources against the operators' CRD schemas kept
//! in `tests/k8s/crds`, core kinds against the Kubernetes API models) and its
//! references resolve (tests/k8s/validate.py). The tools come from PyPI, pinned, via
//! scripts/k8s-tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use shop_tests::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The venv's bin directory with kubectl and the validator's Python.
fn tools() -> PathBuf {
    PathBuf::from(shop_tests::tool_script("k8s-tools").concat())
}

/// The pinned CRD schemas (tests/k8s/crds/README.md names their sources), or another
/// set named by `SHOP_K8S_CRDS` to validate against newer operator releases.
fn crds() -> PathBuf {
    let dir = std::env::var_os("SHOP_K8S_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/k8s/crds"));
    assert!(
        dir.join("spin-operator").is_dir(),
        "the CRD schemas are not at {}",
        dir.display()
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `kubectl kustomize` of `overlay`, on a copy of k8s/ where prod's secrets.env is its
/// committed example (an operator writes the real one).
fn render(tools: &Path, overlay: &str) -> String {
    let dir = TempDir::new(&format!("k8s-{overlay}"));
    copy_dir(&repo().join("k8s"), &dir.path().join("k8s"));
    let prod = dir.path().join("k8s/overlays/prod");
    std::fs::copy(prod.join("secrets.env.example"), prod.join("secrets.env")).unwrap();
    let output = Command::new(tools.join("kubectl"))
        .arg("kustomize")
        .arg(dir.path().join("k8s/overlays").join(overlay))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// (passed, report) of the validator on `manifests`.
fn validate(tools: &Path, manifests: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(tools.join("python"))
        .arg(repo().join("tests/k8s/validate.py"))
        .arg("--crds")
        .arg(crds())
        .arg("--spin-toml")
        .arg(repo().join("spin.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(manifests.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

#[test]
fn every_overlay_renders_and_validates() {
    let tools = tools();
    for overlay in ["dev", "prod"] {
        let rendered = render(&tools, overlay);
        let (passed, report) = validate(&tools, &rendered);
        eprintln!("{overlay}: {}", report.trim());
        assert!(passed, "k8s/overlays/{overlay}:\n{report}");
        let namespace = if overlay == "dev" { "shop-dev" } else { "shop" };
        assert!(
            rendered.contains(&format!("namespace: {namespace}\n")),
            "{overlay} sets its namespace"
        );
    }
}

#[test]
fn the_validator_refuses_what_a_cluster_or_the_shop_would() {
    let tools = tools();
    let rendered = render(&tools, "dev");
    for (change, from, to, expected) in [
        (
            "a misspelt SpinApp field",
            "  enableAutoscaling: true",
            "  enableAutoscale: true",
            "enableAutoscale",
        ),
        (
            "an unknown container field",
            "        name: shop\n",
            "        name: shop\n        imagePullPolicyy: Always\n",
            "imagePullPolicyy: unknown field",
        ),
        (
            "a wrong type in a KafkaTopic",
            "partitions: 6",
            "partitions: six",
            "partitions",
        ),
        (
            "a missing topic",
            "topicName: shop.payments.dlq",
            "topicName: shop.payments-dead",
            "shop.payments.dlq, which has no KafkaTopic",
        ),
        (
            "a ConfigMap nobody defines",
            "              name: shop-settings-",
            "              name: shop-setting-",
            "which is not defined",
        ),
        (
            "a component the manifest does not route",
            "  - cart\n",
            "  - carts\n",
            "HTTP components",
        ),
        (
            "an Ingress to no Service",
            "name: shop\n            port:",
            "name: shop-web\n            port:",
            "backend Service shop-web",
        ),
    ] {
        assert!(rendered.contains(from), "{change}: the rendering has no `{from}`");
        let (passed, report) = validate(&tools, &rendered.replacen(from, to, 1));
        assert!(!passed, "{change} passed:\n{report}");
        assert!(
            report.contains(expected),
            "{change}: expected `{expected}` in\n{report}"
        );
    }
}

/// The images the manifests run are the ones scripts/images builds: `shop-app` and
/// `shop-host` at the crate version in the base; overlays only move them to a
/// registry.
#[test]
fn the_manifests_name_the_images_scripts_images_builds() {
    let tools = tools();
    let version = env!("CARGO_PKG_VERSION");
    let script = std::fs::read_to_string(repo().join("scripts/images")).unwrap();
    for image in ["shop-app", "shop-host"] {
        assert!(
            script.contains(&format!("\"{image}:$version\"")),
            "scripts/images tags {image}:<version>"
        );
    }
    let base = std::fs::read_to_string(repo().join("k8s/base/spinapp.yaml")).unwrap()
        + &std::fs::read_to_string(repo().join("k8s/base/host.yaml")).unwrap();
    for image in ["shop-app", "shop-host"] {
        assert!(
            base.contains(&format!("image: {image}:{version}")),
            "k8s/base runs {image}:{version}"
        );
    }
    for overlay in ["dev", "prod"] {
        let rendered = render(&tools, overlay);
        let images: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .filter(|i| i.contains("shop-"))
            .collect();
        assert_eq!(images.len(), 2, "{overlay}: {images:?}");
        assert!(
            images.iter().any(|i| i.contains("/shop-app:")) && images.iter().any(|i| i.contains("/shop-host:")),
            "{overlay} moves both images to its registry: {images:?}"
        );
    }
}
