"""What a workload of a rendered k8s/ overlay would get on a cluster, written to a
directory so that a test can run it: for a Deployment's container, its image, args,
environment (values and ConfigMap/Secret references resolved) and the files of its
ConfigMap/Secret volumes at their mount paths; for a SpinApp, its image, the Spin
runtime config from its Secret and its variables resolved.

    pod.py deployment NAME CONTAINER OUT < rendered.yaml
    pod.py spinapp NAME OUT < rendered.yaml

OUT/pod.json holds {"image", "args", "env"} (env: name -> value) or, for a SpinApp,
{"image", "variables"}; files go under OUT/files/<mount path>/ and a SpinApp's runtime
config to OUT/runtime-config.toml. A reference to something not rendered is an error.
"""

import base64
import json
import pathlib
import sys

import yaml


def data_of(doc):
    """A ConfigMap's or Secret's keys and their text."""
    out = dict(doc.get("data", {}) or {})
    if doc["kind"] == "Secret":
        out = {k: base64.b64decode(v).decode() for k, v in out.items()}
        out.update(doc.get("stringData", {}) or {})
    return out


def lookup(by_kind, kind, name, key):
    doc = by_kind.get(kind, {}).get(name)
    if doc is None:
        sys.exit(f"{kind} {name} is not rendered")
    data = data_of(doc)
    if key not in data:
        sys.exit(f"{kind} {name} has no key {key}")
    return data[key]


def value_of(by_kind, entry):
    if "value" in entry:
        return entry["value"]
    source = entry.get("valueFrom", {})
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        return lookup(by_kind, "ConfigMap", ref["name"], ref["key"])
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return lookup(by_kind, "Secret", ref["name"], ref["key"])
    sys.exit(f"cannot resolve {entry}")


def deployment(by_kind, name, container_name, out):
    doc = by_kind.get("Deployment", {}).get(name) or sys.exit(f"Deployment {name} is not rendered")
    pod = doc["spec"]["template"]["spec"]
    container = next((c for c in pod["containers"] if c["name"] == container_name), None)
    if container is None:
        sys.exit(f"Deployment {name} has no container {container_name}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            kind, source = "ConfigMap", volume["configMap"]["name"]
        elif "secret" in volume:
            kind, source = "Secret", volume["secret"]["secretName"]
        else:
            continue  # emptyDir and the like: the test gives its own directory
        target = out / "files" / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        doc_data = data_of(by_kind.get(kind, {}).get(source) or sys.exit(f"{kind} {source} is not rendered"))
        for key, text in doc_data.items():
            (target / key).write_text(text)
    env = {e["name"]: value_of(by_kind, e) for e in container.get("env", [])}
    return {"image": container["image"], "args": container.get("args", []), "env": env}


def spinapp(by_kind, name, out):
    app = by_kind.get("SpinApp", {}).get(name) or sys.exit(f"SpinApp {name} is not rendered")
    spec = app["spec"]
    secret = spec.get("runtimeConfig", {}).get("loadFromSecret")
    if secret:
        out.mkdir(parents=True, exist_ok=True)
        (out / "runtime-config.toml").write_text(lookup(by_kind, "Secret", secret, "runtime-config.toml"))
    variables = {v["name"]: value_of(by_kind, v) for v in spec.get("variables", [])}
    return {"image": spec["image"], "variables": variables}


def main():
    mode, name = sys.argv[1], sys.argv[2]
    by_kind = {}
    for doc in yaml.safe_load_all(sys.stdin):
        if doc:
            by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    if mode == "deployment":
        out = pathlib.Path(sys.argv[4])
        pod = deployment(by_kind, name, sys.argv[3], out)
    elif mode == "spinapp":
        out = pathlib.Path(sys.argv[3])
        pod = spinapp(by_kind, name, out)
    else:
        sys.exit(f"unknown mode {mode}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pod.json").write_text(json.dumps(pod, indent=1))


if __name__ == "__main__":
    main()
