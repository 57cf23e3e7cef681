//! `shop check` on broken manifests, and the compilation cache across restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use shop_tests::*;

fn check(manifest: &Path) -> (bool, String) {
    let (status, stdout, stderr) = run_shop(&["check", "--file", manifest.to_str().unwrap()]);
    (status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn check_accepts_a_valid_manifest() {
    let dir = TempDir::new("check-ok");
    let manifest = dir.manifest(&format!(
        "{}{}",
        http_trigger("/...", "c"),
        component("c", "p2-hello", "")
    ));
    let (ok, out) = check(&manifest);
    assert!(ok, "{out}");
}

#[test]
fn check_names_each_problem_with_file_and_key() {
    let dir = TempDir::new("check-bad");
    let path = dir.path().join("spin.toml");
    let file = path.display().to_string();

    std::fs::write(&path, "spin_manifest_version = 2\n[application\nname = \"x\"\n").unwrap();
    let (ok, out) = check(&path);
    assert!(!ok);
    assert!(out.contains(&file) && out.contains("line 2"), "bad TOML: {out}");

    let cases = [
        (
            "unknown component",
            format!("{}{}", http_trigger("/...", "ghost"), component("c", "p2-hello", "")),
            "trigger.http[0].component: unknown component `ghost`",
        ),
        (
            "missing source without build",
            format!(
                "{}[component.c]\nsource = \"nowhere.wasm\"\n",
                http_trigger("/...", "c")
            ),
            "component.c.source",
        ),
        (
            "route conflict",
            format!(
                "{}{}{}{}",
                http_trigger("/api/...", "a"),
                http_trigger("/api/.../", "b"),
                component("a", "p2-hello", ""),
                component("b", "p2-hello", "")
            ),
            "trigger.http[1].route: route `/api/.../` conflicts with trigger.http[0] (component `a`)",
        ),
        (
            "unknown trigger type",
            format!(
                "{}[[trigger.mqtt]]\ncomponent = \"c\"\n",
                component("c", "p2-hello", "")
            ),
            "trigger.mqtt: unknown trigger type `mqtt`",
        ),
    ];
    for (what, body, expected) in cases {
        let manifest = dir.manifest(&body);
        let (ok, out) = check(&manifest);
        assert!(!ok, "{what}: check should fail:\n{out}");
        assert!(
            out.contains(&format!("{file}: error: {expected}")),
            "{what}: expected `{expected}` in:\n{out}"
        );
    }

    // Several problems at once are all reported.
    let manifest = dir.manifest(&format!(
        "{}{}[component.c]\nsource = \"nowhere.wasm\"\n",
        http_trigger("/...", "ghost"),
        http_trigger("/...", "c")
    ));
    let (_, out) = check(&manifest);
    assert!(
        out.contains("unknown component `ghost`") && out.contains("component.c.source") && out.contains("conflicts"),
        "{out}"
    );
}

fn cache_entries(dir: &Path) -> BTreeMap<String, SystemTime> {
    std::fs::read_dir(dir.join("cache/compiled"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().modified().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn second_start_loads_components_from_the_compilation_cache() {
    let dir = TempDir::new("cache");
    let data = dir.path().join("data");
    let manifest = dir.manifest(&format!(
        "{}{}{}{}",
        http_trigger("/a", "a"),
        http_trigger("/b", "b"),
        component("a", "p2-hello", ""),
        component("b", "p3-echo", "")
    ));

    let shop = Shop::start(&manifest, &data);
    let metrics = shop.metrics();
    assert_eq!(
        metric_value(&metrics, "shop_component_loads_total", &[("cache", "miss")]),
        2.0,
        "{metrics}"
    );
    assert!(shop.terminate().success());
    let first = cache_entries(&data);
    assert_eq!(
        first.len(),
        2,
        "one compiled artifact per distinct component: {first:?}"
    );

    let shop = Shop::start(&manifest, &data);
    let metrics = shop.metrics();
    assert_eq!(
        metric_value(&metrics, "shop_component_loads_total", &[("cache", "hit")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "shop_component_loads_total", &[("cache", "miss")]),
        0.0,
        "{metrics}"
    );
    assert!(
        shop.stderr.text().contains("\"compilation_cache\":\"hit\""),
        "{}",
        shop.stderr.text()
    );
    let r = client().get(format!("{}/a", shop.base)).send().unwrap();
    assert_eq!(r.status(), 200);
    drop(shop);
    assert_eq!(
        cache_entries(&data),
        first,
        "cache entries were neither added nor rewritten"
    );
}

#[test]
fn up_refuses_a_required_variable_without_value() {
    let dir = TempDir::new("vars");
    let manifest = dir.manifest(&format!(
        "[variables]\napi_token = {{ required = true, secret = true }}\n{}{}",
        http_trigger("/...", "c"),
        component("c", "p2-hello", "")
    ));
    let (status, _, stderr) = run_shop(&[
        "up",
        "--file",
        manifest.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("`api_token`") && stderr.contains("SPIN_VARIABLE_API_TOKEN"),
        "{stderr}"
    );
}

/// Two components sharing one `.wasm`, only the first with a build command (as the
/// shop's relays do): `check` and `up` both accept the missing source, and `up` builds
/// it before loading either.
#[test]
fn a_missing_source_that_another_component_builds_is_fine_for_check_and_up() {
    let dir = TempDir::new("shared-source");
    let built = wasm("p2-hello");
    let manifest = dir.manifest(&format!(
        "{}{}[component.a]\nsource = \"out.wasm\"\n[component.a.build]\ncommand = \"cp {} out.wasm\"\n[component.b]\nsource = \"out.wasm\"\n",
        http_trigger("/a", "a"),
        http_trigger("/b", "b"),
        built.display()
    ));
    assert!(!dir.path().join("out.wasm").exists());
    let (ok, out) = check(&manifest);
    assert!(ok, "check: {out}");

    let shop = Shop::start(&manifest, &dir.path().join("data"));
    assert!(dir.path().join("out.wasm").exists(), "up ran a's build");
    for path in ["/a", "/b"] {
        let r = client().get(format!("{}{path}", shop.base)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}
