//! `k8s/` with no cluster: every overlay renders with `kubectl kustomize`, and what it
//! renders validates strictly (custom resources against the operators' CRD schemas kept
//! in `tests/k8s/crds`, core kinds against the Kubernetes API models) and its
//! references resolve (tests/k8s/validate.py). The tools come from PyPI, pinned, via
//! scripts/k8s-tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
/// committed example and its signing key a new one (an operator writes both).
fn render(tools: &Path, overlay: &str) -> String {
    let dir = TempDir::new(&format!("k8s-{overlay}"));
    copy_dir(&repo().join("k8s"), &dir.path().join("k8s"));
    let prod = dir.path().join("k8s/overlays/prod");
    std::fs::copy(prod.join("secrets.env.example"), prod.join("secrets.env")).unwrap();
    let key = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(prod.join("jwt-signing-key.pem"))
        .output()
        .expect("openssl must be installed for this test");
    assert!(
        key.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&key.stderr)
    );
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

/// Runs one of tests/k8s/'s scripts with the tools' Python, `stdin` on its input:
/// (succeeded, stdout and stderr).
fn python_script(tools: &Path, script: &str, args: &[&std::ffi::OsStr], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(tools.join("python"))
        .arg(repo().join("tests/k8s").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

/// (passed, report) of the validator on `manifests`.
fn validate(tools: &Path, manifests: &str) -> (bool, String) {
    let (crds, spin_toml) = (crds(), repo().join("spin.toml"));
    let args = [
        "--crds".as_ref(),
        crds.as_os_str(),
        "--spin-toml".as_ref(),
        spin_toml.as_os_str(),
    ];
    python_script(tools, "validate.py", &args, manifests)
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
        (
            "a Kafka address KEDA's namespace cannot resolve",
            "bootstrapServers: shop-kafka-bootstrap.shop-dev.svc:9092",
            "bootstrapServers: shop-kafka-bootstrap:9092",
            "does not resolve from KEDA's namespace",
        ),
        (
            "lag counted from the start of a topic",
            "offsetResetPolicy: latest",
            "offsetResetPolicy: earliest",
            "offsetResetPolicy earliest",
        ),
        (
            "a disruption budget that blocks drains",
            "maxUnavailable: 1",
            "minAvailable: 1",
            "blocks every node drain",
        ),
        (
            "a writable root filesystem",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "can write its root filesystem",
        ),
        (
            "a container that may run as root",
            "runAsNonRoot: true",
            "runAsNonRoot: false",
            "may run as root",
        ),
        (
            "a SpinApp probed through its components",
            "path: /.well-known/spin/health",
            "path: /",
            "not Spin's /.well-known/spin/health",
        ),
        (
            "a namespace without Pod Security Admission",
            "pod-security.kubernetes.io/enforce:",
            "pod-security.kubernetes.io/enforce-version:",
            "no Pod Security Admission level is enforced",
        ),
        (
            "pods whose connections nothing limits",
            "  policyTypes:\n  - Egress",
            "  policyTypes:\n  - Ingress",
            "have no egress NetworkPolicy",
        ),
        (
            "annotations Strimzi no longer reads",
            "kind: Kafka\nmetadata:\n  labels:",
            "kind: Kafka\nmetadata:\n  annotations:\n    strimzi.io/kraft: enabled\n  labels:",
            "is ignored by Strimzi since 0.48",
        ),
        (
            "a Kafka node whose heap the JVM guesses",
            "    -Xms: 512m\n    -Xmx: 512m\n",
            "    -Xms: 512m\n",
            "no JVM heap size",
        ),
        (
            "combined controllers and brokers on three nodes",
            "    -Xmx: 512m\n  replicas: 1\n",
            "    -Xmx: 512m\n  replicas: 3\n",
            "combines controller and broker roles in a 3-node cluster",
        ),
        (
            "a public host over plain HTTP",
            "host: shop.localtest.me",
            "host: shop.example.org",
            "host shop.example.org is served without TLS",
        ),
        (
            "a liveness probe without a startup probe",
            "startupProbe:",
            "startupProbx:",
            "no startup probe",
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

/// `kubectl apply` creates objects in the order it reads them: a SpinApp before its
/// executor is refused by spin-operator's webhook on the first apply.
#[test]
fn the_executor_is_applied_before_the_spin_app() {
    let tools = tools();
    let rendered = render(&tools, "dev");
    let (passed, report) = validate(&tools, &rendered);
    assert!(passed, "{report}");
    let documents: Vec<&str> = rendered.split("\n---\n").collect();
    let executor = documents
        .iter()
        .position(|d| d.contains("kind: SpinAppExecutor\n"))
        .expect("an executor");
    let mut reordered: Vec<&str> = documents.clone();
    let moved = reordered.remove(executor);
    reordered.push(moved);
    let (passed, report) = validate(&tools, &reordered.join("\n---\n"));
    assert!(!passed && report.contains("comes before its executor"), "{report}");
}

/// What tests/k8s/pod.py derives from `rendered` for one workload (`args`), in `out`.
fn pod(tools: &Path, rendered: &str, args: &[&str], out: &Path) -> serde_json::Value {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.push(out.as_os_str());
    let (passed, report) = python_script(tools, "pod.py", &all, rendered);
    assert!(passed, "pod.py {args:?}: {report}");
    serde_json::from_str(&std::fs::read_to_string(out.join("pod.json")).unwrap()).unwrap()
}

/// The strings of a JSON array (a container's args).
fn strings(array: &serde_json::Value) -> Vec<&str> {
    array.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect()
}

/// `shop package` of the repository's app (its components from the test build) into
/// `out`: `out/app` is the HTTP half's image, `out/host/app` the host image's app.
fn package(out: &Path) {
    let wasm_dir = shop_tests::wasm("gateway").parent().unwrap().to_path_buf();
    let manifest = std::fs::read_to_string(repo().join("spin.toml")).unwrap().replace(
        "source = \"target/wasm32-wasip2/release/",
        &format!("source = \"{}/", wasm_dir.display()),
    );
    let source = out.join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("spin.toml"), manifest).unwrap();
    let (status, stdout, stderr) = shop_tests::run_shop(&[
        "package",
        "--file",
        source.join("spin.toml").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(status.success(), "shop package: {stdout}{stderr}");
}

/// `shop check` of `manifest` with `runtime_config`: (passed, what it printed).
fn check(manifest: &Path, runtime_config: &Path) -> (bool, String) {
    let (status, stdout, stderr) = shop_tests::run_shop(&[
        "check",
        "--file",
        manifest.to_str().unwrap(),
        "--runtime-config-file",
        runtime_config.to_str().unwrap(),
    ]);
    (status.success(), format!("{stdout}{stderr}"))
}

/// Each half's app with exactly the runtime config its workload gets from the rendered
/// overlay passes `shop check`, which refuses what Spin refuses when it loads an app
/// (undefined SQLite databases and key-value stores, allowed hosts that are no hosts
/// with the variables' defaults).
#[test]
fn each_half_loads_with_the_runtime_config_the_overlay_gives_it() {
    let tools = tools();
    let dir = TempDir::new("k8s-check");
    let images = dir.path().join("images");
    package(&images);
    for overlay in ["dev", "prod"] {
        let rendered = render(&tools, overlay);
        let host_dir = dir.path().join(overlay).join("host");
        let host = pod(&tools, &rendered, &["deployment", "shop-host", "shop"], &host_dir);
        let args = strings(&host["args"]);
        let config = args
            .iter()
            .find_map(|a| a.strip_prefix("--runtime-config-file="))
            .expect("the host is given a runtime config");
        // The signing key reaches the host as a PEM with its line breaks.
        let key = host["env"]["SPIN_VARIABLE_JWT_SIGNING_KEY"].as_str().unwrap();
        if overlay == "prod" {
            assert!(
                key.starts_with("-----BEGIN PRIVATE KEY-----\n") && !key.contains("\\n"),
                "prod's signing key as the host gets it: {key:?}"
            );
        }
        let (passed, report) = check(
            &images.join("host/app/spin.toml"),
            &host_dir.join("files").join(config.trim_start_matches('/')),
        );
        assert!(passed, "{overlay}: the host half with its runtime config:\n{report}");

        let app_dir = dir.path().join(overlay).join("app");
        pod(&tools, &rendered, &["spinapp", "shop"], &app_dir);
        let (passed, report) = check(&images.join("app/spin.toml"), &app_dir.join("runtime-config.toml"));
        assert!(passed, "{overlay}: the HTTP half with its runtime config:\n{report}");
    }
    // What the overlays had before: no SQLite database defined for the services.
    let bare = dir.path().join("bare-runtime-config.toml");
    std::fs::write(
        &bare,
        "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://shop-redis:6379\"\n",
    )
    .unwrap();
    let (passed, report) = check(&images.join("app/spin.toml"), &bare);
    assert!(!passed && report.contains("products"), "{report}");
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

/// Loopback stand-ins for the Services the dev overlay names, as one rewrite applied to
/// every value a workload gets (environment, variables, runtime config): PostgreSQL,
/// Redis (a database of its own) and Kafka (Tansu). Database names and Kafka topics get
/// a prefix of this run's, so nothing is shared with another test.
struct StandIns {
    run: String,
    redis_db: u8,
}

impl StandIns {
    fn rewrite(&self, text: &str) -> String {
        text.replace("@shop-postgres:5432/shop_", &format!("@127.0.0.1:5432/{}_", self.run))
            .replace("shop-postgres:5432", "127.0.0.1:5432")
            .replace(
                "redis://shop-redis:6379",
                &format!("redis://127.0.0.1:6379/{}", self.redis_db),
            )
            .replace("shop-kafka-bootstrap:9092", &shop_tests::full_shop::kafka_brokers())
    }
}

/// The arguments of a rendered container for `shop up` here: its paths mapped into
/// `paths` (`/config` → …), and without the listen addresses and data directory,
/// which the harness gives (loopback ports and a directory of the test's).
fn mapped_args(args: &[&str], paths: &[(&str, &Path)]) -> Vec<String> {
    args.iter()
        .filter(|a| {
            **a != "up"
                && !["--file=", "--listen=", "--admin-listen=", "--data-dir="]
                    .iter()
                    .any(|f| a.starts_with(f))
        })
        .map(|arg| {
            let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
            match paths.iter().find(|(from, _)| value.starts_with(from)) {
                Some((from, to)) => format!("{flag}={}{}", to.display(), &value[from.len()..]),
                None => arg.to_string(),
            }
        })
        .collect()
}

/// The dev overlay as a cluster would run it, on this machine: the host half is `shop`
/// with the Deployment's args, environment and mounted runtime config, on the host
/// image's app; the HTTP half is the SpinApp's app under `shop up` with the SpinApp's
/// runtime config and variables. Only Service names are rewritten to loopback
/// stand-ins. An order placed through the HTTP half's gateway is confirmed by the
/// saga the host half runs.
#[test]
fn the_dev_overlay_takes_an_order_with_both_halves_as_rendered() {
    use shop_tests::full_shop::Api;
    let tools = tools();
    let rendered = render(&tools, "dev");
    let dir = TempDir::new("k8s-box");
    let images = dir.path().join("images");
    package(&images);
    let stand_ins = StandIns {
        run: format!("box{}", std::process::id()),
        redis_db: 15,
    };
    shop_tests::full_shop::flush_redis(stand_ins.redis_db);
    shop_tests::psql(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'shop') THEN CREATE ROLE shop LOGIN; END IF; END $$",
    );
    let init = std::fs::read_to_string(repo().join("k8s/base/create-databases.sql")).unwrap();
    for line in init.lines().filter(|l| l.trim_start().starts_with("CREATE DATABASE")) {
        let name = line.split_whitespace().nth(2).unwrap().trim_end_matches(';');
        let ours = name.replacen("shop_", &format!("{}_", stand_ins.run), 1);
        shop_tests::fresh_postgres_database(&ours);
        shop_tests::psql("postgres", &format!("ALTER DATABASE {ours} OWNER TO shop"));
    }

    // The host half, as the Deployment runs it.
    let host_dir = dir.path().join("host");
    let host = pod(&tools, &rendered, &["deployment", "shop-host", "shop"], &host_dir);
    let config = host_dir.join("files/config/runtime-config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        stand_ins.rewrite(&text).replace(
            "[kafka]\n",
            &format!("[kafka]\ntopic_prefix = \"{}.\"\n", stand_ins.run),
        ),
    )
    .unwrap();
    let args = strings(&host["args"]);
    let data = dir.path().join("host-data");
    let env: Vec<(String, String)> = host["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), stand_ins.rewrite(v.as_str().unwrap())))
        .collect();
    let host_half = shop_tests::Shop::start_with(
        &images.join("host/app/spin.toml"),
        shop_tests::ShopOptions {
            data_dir: &data,
            args: mapped_args(
                &args,
                &[
                    ("/config", &host_dir.join("files/config")),
                    ("/data", &data),
                    ("/app", &images.join("host/app")),
                ],
            ),
            env,
        },
    );

    // The HTTP half, as the SpinApp runs it.
    let app_dir = dir.path().join("app");
    let app = pod(&tools, &rendered, &["spinapp", "shop"], &app_dir);
    let spin_config = app_dir.join("runtime-config.toml");
    let text = std::fs::read_to_string(&spin_config).unwrap();
    std::fs::write(&spin_config, stand_ins.rewrite(&text)).unwrap();
    let variables: Vec<(String, String)> = app["variables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                format!("SPIN_VARIABLE_{}", k.to_uppercase()),
                stand_ins.rewrite(v.as_str().unwrap()),
            )
        })
        .collect();
    let http_half = shop_tests::Shop::start_with(
        &images.join("app/spin.toml"),
        shop_tests::ShopOptions {
            data_dir: &dir.path().join("app-data"),
            args: vec![
                "--no-build".into(),
                "--runtime-config-file".into(),
                spin_config.display().to_string(),
            ],
            env: variables.clone(),
        },
    );

    let api = Api {
        base: http_half.base.clone(),
    };
    let setting = |name: &str| {
        variables
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let admin = api.login(
        &setting("SPIN_VARIABLE_ADMIN_EMAIL"),
        &setting("SPIN_VARIABLE_ADMIN_PASSWORD"),
    );
    let mug = api.product(&admin, "MUG-K8S", 1250, 5);
    let ada = api.customer("ada@example.com");
    let id = api.place(&ada, &mug, 2, "tok_ok");
    let order = api.concluded(&ada, &id, Duration::from_secs(60));
    assert_eq!(
        order["status"],
        "CONFIRMED",
        "{order}\nhost half:\n{}\nHTTP half:\n{}",
        host_half.stderr.text(),
        http_half.stderr.text()
    );
    assert_eq!(api.stock(&admin, "MUG-K8S"), (3, 0));
    // The saga ran in the host half: it handled the records, the HTTP half has no
    // Kafka trigger at all.
    let handled = |shop: &shop_tests::Shop| {
        shop.metrics()
            .lines()
            .filter(|l| l.starts_with("shop_kafka_messages_handled_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(handled(&host_half) >= 4.0, "{}", host_half.metrics());
    assert_eq!(handled(&http_half), 0.0);
}
