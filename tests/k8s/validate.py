#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (YAML on stdin) with no cluster.

- Custom resources: strictly against the CRD schemas in --crds (every object schema
  with properties gets additionalProperties: false, so a misspelt field fails).
- Core kinds: strictly against the Kubernetes API models of the `kubernetes` package
  (unknown fields and wrong types fail; the models then check required fields).
- Cross-references: every Secret, ConfigMap, Service, workload, Kafka cluster and
  topic referenced exists; every topic spin.toml uses has a KafkaTopic; the SpinApp
  runs exactly spin.toml's HTTP components; the host's Kafka groups are what KEDA
  watches.

Prints one line per problem and exits 1 if there is any.
"""

import argparse
import copy
import pathlib
import sys
import tomllib

import jsonschema
import kubernetes.client
import kubernetes.client.models as models
import yaml

problems = []


def problem(doc, message):
    problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {message}")


# --- custom resources -------------------------------------------------------------


def strict(schema):
    """The CRD schema with unknown fields refused and Kubernetes extensions mapped."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "properties" and not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        # Property names are names, not schema keywords.
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.setdefault("additionalProperties", False)
    return out


def load_crds(directory):
    schemas = {}
    for path in sorted(pathlib.Path(directory).rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # metadata is checked as a core ObjectMeta below.
                    schema.get("properties", {}).pop("metadata", None)
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate_custom(doc, schema):
    body = {k: v for k, v in doc.items() if k != "metadata"}
    validator = jsonschema.Draft4Validator(schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "(top)"
        problem(doc, f"{where}: {error.message}")
    check_model(doc, doc.get("metadata", {}), "V1ObjectMeta", "metadata")


# --- core kinds -------------------------------------------------------------------

# Secret data is base64 text in a manifest (`bytes` once decoded).
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str, "bytes": str}


def check_model(doc, value, type_name, where):
    """Strict walk of `value` as the model `type_name`: unknown fields, wrong types."""
    if type_name == "object":
        return
    if type_name in SCALARS:
        expected = SCALARS[type_name]
        if not isinstance(value, expected) or (type_name == "int" and isinstance(value, bool)):
            problem(doc, f"{where}: expected {type_name}, found {type(value).__name__} {value!r}")
        return
    # The models spell containers `List[T]` and `Dict[str, T]` (older releases:
    # `list[T]`, `dict(str, T)`).
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            problem(doc, f"{where}: expected a list")
            return
        for i, item in enumerate(value):
            check_model(doc, item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            problem(doc, f"{where}: expected a map")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_model(doc, item, inner, f"{where}.{key}")
        return
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        problem(doc, f"{where}: expected an object ({type_name})")
        return
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            problem(doc, f"{where}.{key}: unknown field (not in {type_name})")
            continue
        check_model(doc, item, model.openapi_types[by_json[key]], f"{where}.{key}")


def core_model(doc):
    group_version = doc.get("apiVersion", "")
    version = group_version.split("/")[-1]
    name = version[0].upper() + version[1:] + doc.get("kind", "")
    return name if hasattr(models, name) else None


def validate_core(doc, model_name):
    before = len(problems)
    check_model(doc, doc, model_name, doc["kind"])
    if len(problems) == before:
        try:
            kubernetes.client.ApiClient()._ApiClient__deserialize(copy.deepcopy(doc), model_name)
        except (ValueError, TypeError) as e:
            problem(doc, f"{e}")


# --- cross-references -------------------------------------------------------------


def walk(value, visit):
    visit(value)
    if isinstance(value, dict):
        for item in value.values():
            walk(item, visit)
    elif isinstance(value, list):
        for item in value:
            walk(item, visit)


def cross_check(docs, spin):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

    def has(kind, name):
        return name in by_kind.get(kind, {})

    def data_keys(doc):
        return set(doc.get("data", {}) or {}) | set(doc.get("stringData", {}) or {})

    for doc in docs:
        def visit(node):
            if not isinstance(node, dict):
                return
            for ref_key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                ref = node.get(ref_key)
                if isinstance(ref, dict):
                    if not has(kind, ref["name"]):
                        problem(doc, f"{ref_key} names {kind} {ref['name']}, which is not defined")
                    elif ref["key"] not in data_keys(by_kind[kind][ref["name"]]):
                        problem(doc, f"{ref_key} {ref['name']} has no key {ref['key']}")
            if isinstance(node.get("configMap"), dict) and "name" in node["configMap"]:
                if not has("ConfigMap", node["configMap"]["name"]):
                    problem(doc, f"volume names ConfigMap {node['configMap']['name']}, which is not defined")
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                if not has("Secret", node["secret"]["secretName"]):
                    problem(doc, f"volume names Secret {node['secret']['secretName']}, which is not defined")

        walk(doc, visit)

    # Workloads and the pods' labels, SpinApps included (their operator makes a
    # Deployment and a Service of the same name; pods carry spec.podLabels).
    deployments = set(by_kind.get("Deployment", {})) | set(by_kind.get("SpinApp", {}))
    services = set(by_kind.get("Service", {})) | set(by_kind.get("SpinApp", {}))
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for k in ("Deployment", "StatefulSet") for d in by_kind.get(k, {}).values()]
    pod_labels += [a["spec"].get("podLabels", {}) for a in by_kind.get("SpinApp", {}).values()]

    for app in by_kind.get("SpinApp", {}).values():
        spec = app["spec"]
        if not has("SpinAppExecutor", spec["executor"]):
            problem(app, f"executor {spec['executor']} is not defined")
        secret = spec.get("runtimeConfig", {}).get("loadFromSecret")
        if secret and not (has("Secret", secret) and "runtime-config.toml" in data_keys(by_kind["Secret"][secret])):
            problem(app, f"runtimeConfig.loadFromSecret {secret} is not a Secret with runtime-config.toml")
        http = sorted(t["component"] for t in spin["trigger"].get("http", []))
        if sorted(spec.get("components", [])) != http:
            problem(app, f"components {sorted(spec.get('components', []))} are not spin.toml's HTTP components {http}")
        if spec.get("enableAutoscaling") and "replicas" in spec:
            problem(app, "replicas is set although an autoscaler controls them")
    for ingress in by_kind.get("Ingress", {}).values():
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                name = path["backend"]["service"]["name"]
                if name not in services:
                    problem(ingress, f"backend Service {name} is not defined")
    # Outside a laptop cluster (any host not under localtest.me) the Ingress serves
    # every host over TLS.
    for ingress in by_kind.get("Ingress", {}).values():
        secured = {h for t in ingress["spec"].get("tls", []) for h in t.get("hosts", [])}
        for rule in ingress["spec"].get("rules", []):
            host = rule.get("host", "")
            if not host.endswith(".localtest.me") and host not in secured:
                problem(ingress, f"host {host} is served without TLS")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for scaler in by_kind.get(kind, {}).values():
            target = scaler["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problem(scaler, f"scale target {target} is not defined")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in by_kind.get(kind, {}).values():
            selectors = [doc["spec"].get("selector") or doc["spec"].get("podSelector") or {}]
            for rule in doc["spec"].get("ingress", []):
                selectors += [peer["podSelector"] for peer in rule.get("from", []) if "podSelector" in peer]
            for selector in selectors:
                wanted = selector.get("matchLabels", {})
                if wanted and not any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pod_labels):
                    problem(doc, f"selector {wanted} matches no pod")
    for service in by_kind.get("Service", {}).values():
        wanted = service["spec"].get("selector", {})
        if wanted and not any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pod_labels):
            problem(service, f"selector {wanted} matches no pod")

    # Kafka: node pools and topics name an existing cluster; every topic spin.toml
    # uses (published or consumed, and each consumed topic's dead letters) exists.
    for kind in ("KafkaNodePool", "KafkaTopic"):
        for doc in by_kind.get(kind, {}).values():
            cluster = doc["metadata"].get("labels", {}).get("strimzi.io/cluster")
            if not has("Kafka", cluster or ""):
                problem(doc, f"strimzi.io/cluster {cluster} is not a Kafka")
    topics = {t["spec"].get("topicName", t["metadata"]["name"]) for t in by_kind.get("KafkaTopic", {}).values()}
    needed = set()
    for component in spin.get("component", {}).values():
        needed |= set(component.get("allowed_topics", []))
    groups = {}
    for trigger in spin["trigger"].get("kafka", []):
        for topic in trigger["topics"]:
            needed |= {topic, trigger.get("dead_letter_topic", f"{topic}.dlq")}
            groups.setdefault(trigger["group"], set()).add(topic)
    for topic in sorted(needed - topics):
        problems.append(f"spin.toml uses topic {topic}, which has no KafkaTopic")
    watched = {}
    for scaled in by_kind.get("ScaledObject", {}).values():
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "kafka":
                meta = trigger["metadata"]
                watched.setdefault(meta["consumerGroup"], set()).add(meta["topic"])
                if meta["topic"] not in topics:
                    problem(scaled, f"trigger {trigger.get('name')} watches topic {meta['topic']}, which has no KafkaTopic")
    if watched != groups:
        problems.append(f"KEDA watches {watched}, but the host's Kafka triggers consume {groups}")

    # KEDA's scaler runs in KEDA's namespace: a bare Service name does not resolve there.
    # A group with no committed offset counts a whole topic as lag under `earliest`, so
    # the first deploy would jump to the most replicas.
    bootstraps = {f"{cluster}-kafka-bootstrap" for cluster in by_kind.get("Kafka", {})}
    for scaled in by_kind.get("ScaledObject", {}).values():
        namespace = scaled["metadata"].get("namespace")
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] != "kafka":
                continue
            meta = trigger["metadata"]
            for address in meta["bootstrapServers"].split(","):
                labels = address.rsplit(":", 1)[0].split(".")
                if len(labels) < 3 or labels[0] not in bootstraps or labels[1] != namespace or labels[2] != "svc":
                    problem(scaled, f"trigger {trigger.get('name')}: bootstrapServers {address} does not resolve from KEDA's namespace (write <cluster>-kafka-bootstrap.{namespace}.svc:<port>)")
            if meta.get("offsetResetPolicy") == "earliest":
                problem(scaled, f"trigger {trigger.get('name')}: offsetResetPolicy earliest counts a whole topic as lag until the group commits (the first deploy scales to the maximum)")

    # Apply order: spin-operator's webhook refuses a SpinApp whose executor does not
    # exist yet, so the executor must come first in what `kubectl apply` reads.
    position = {(doc["kind"], doc["metadata"]["name"]): i for i, doc in enumerate(docs)}
    for app in by_kind.get("SpinApp", {}).values():
        executor = ("SpinAppExecutor", app["spec"]["executor"])
        if executor in position and position[executor] > position[("SpinApp", app["metadata"]["name"])]:
            problem(app, f"comes before its executor {executor[1]}: the first apply fails (spin-operator's webhook refuses it)")

    # Strimzi: annotations it no longer reads, node sizing, and the node layout Kafka
    # advises once there is more than one node.
    pools = list(by_kind.get("KafkaNodePool", {}).values())
    for cluster in by_kind.get("Kafka", {}).values():
        for annotation in ("strimzi.io/kraft", "strimzi.io/node-pools"):
            if annotation in cluster["metadata"].get("annotations", {}):
                problem(cluster, f"annotation {annotation} is ignored by Strimzi since 0.48 (KRaft and node pools are all it knows)")
        mine = [p for p in pools if p["metadata"].get("labels", {}).get("strimzi.io/cluster") == cluster["metadata"]["name"]]
        nodes = sum(p["spec"].get("replicas", 0) for p in mine)
        brokers = sum(p["spec"].get("replicas", 0) for p in mine if "broker" in p["spec"].get("roles", []))
        for pool in mine:
            if nodes > 1 and {"controller", "broker"} <= set(pool["spec"].get("roles", [])):
                problem(pool, f"combines controller and broker roles in a {nodes}-node cluster (Kafka advises dedicated controllers)")
        if brokers >= 3 and "rack" not in cluster["spec"]["kafka"]:
            problem(cluster, f"{brokers} brokers without rack awareness: replicas may share a zone")
    for pool in pools:
        if "memory" not in pool["spec"].get("resources", {}).get("limits", {}):
            problem(pool, "no memory limit")
        if "-Xmx" not in pool["spec"].get("jvmOptions", {}):
            problem(pool, "no JVM heap size (-Xmx): the JVM sizes it from the node, not the container")

    # Security: the shop's own pods meet Pod Security `restricted` (and keep their root
    # filesystem read-only); namespaces say which level is enforced.
    for kind in ("Deployment", "StatefulSet"):
        for workload in by_kind.get(kind, {}).values():
            pod = workload["spec"]["template"]["spec"]
            pod_context = pod.get("securityContext", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                context = container.get("securityContext", {})
                merged = {**pod_context, **context}
                where = f"container {container['name']}"
                if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
                    problem(workload, f"{where} may run as root (set runAsNonRoot and a non-zero runAsUser)")
                if context.get("allowPrivilegeEscalation") is not False:
                    problem(workload, f"{where} allows privilege escalation")
                if "ALL" not in context.get("capabilities", {}).get("drop", []):
                    problem(workload, f"{where} keeps Linux capabilities (drop ALL)")
                if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
                    problem(workload, f"{where} has no seccomp profile")
                if context.get("readOnlyRootFilesystem") is not True:
                    problem(workload, f"{where} can write its root filesystem")
                if "livenessProbe" in container and "startupProbe" not in container:
                    problem(workload, f"{where} has a liveness probe but no startup probe: a slow start gets it killed")
    for namespace in by_kind.get("Namespace", {}).values():
        if "pod-security.kubernetes.io/enforce" not in namespace["metadata"].get("labels", {}):
            problem(namespace, "no Pod Security Admission level is enforced (pod-security.kubernetes.io/enforce)")

    # Egress: every pod of the shop's own is under a policy that limits where it connects.
    def selects(selector, labels):
        if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            value, values = labels.get(expression["key"]), expression.get("values", [])
            operator = expression["operator"]
            if (operator == "In" and value not in values) or (operator == "NotIn" and value in values) \
                    or (operator == "Exists" and value is None) or (operator == "DoesNotExist" and value is not None):
                return False
        return True
    egress = [p["spec"]["podSelector"] for p in by_kind.get("NetworkPolicy", {}).values() if "Egress" in p["spec"].get("policyTypes", [])]
    for labels in pod_labels:
        if not any(selects(selector, labels) for selector in egress):
            problems.append(f"pods {labels} have no egress NetworkPolicy: they may connect anywhere")

    # SpinApp probes: Spin's own health path, not a route that runs components.
    for app in by_kind.get("SpinApp", {}).values():
        for check in ("liveness", "readiness"):
            path = app["spec"].get("checks", {}).get(check, {}).get("httpGet", {}).get("path")
            if path != "/.well-known/spin/health":
                problem(app, f"the {check} check probes {path}, not Spin's /.well-known/spin/health")

    # A PodDisruptionBudget whose minAvailable reaches the fewest replicas its pods can
    # have blocks every node drain.
    fewest = {}
    for name, deployment in by_kind.get("Deployment", {}).items():
        fewest[name] = deployment["spec"].get("replicas", 1)
    for kind, field in (("HorizontalPodAutoscaler", "minReplicas"), ("ScaledObject", "minReplicaCount")):
        for scaler in by_kind.get(kind, {}).values():
            target = scaler["spec"]["scaleTargetRef"]["name"]
            if target in fewest:
                fewest[target] = min(fewest[target], scaler["spec"].get(field, 1))
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        minimum = pdb["spec"].get("minAvailable")
        wanted = pdb["spec"].get("selector", {}).get("matchLabels", {})
        for name, deployment in by_kind.get("Deployment", {}).items():
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            if isinstance(minimum, int) and wanted and all(labels.get(k) == v for k, v in wanted.items()) and minimum >= fewest[name]:
                problem(pdb, f"minAvailable {minimum} with as few as {fewest[name]} replicas of {name} blocks every node drain (use maxUnavailable)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crds", required=True)
    parser.add_argument("--spin-toml", required=True)
    args = parser.parse_args()
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    if not docs:
        print("no documents on stdin")
        return 1
    schemas = load_crds(args.crds)
    if not schemas:
        print(f"no CRD schemas under {args.crds}")
        return 1
    spin = tomllib.loads(pathlib.Path(args.spin_toml).read_text())
    kinds = {}
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        kinds[key[1]] = kinds.get(key[1], 0) + 1
        if key in schemas:
            validate_custom(doc, schemas[key])
        elif (model := core_model(doc)) is not None:
            validate_core(doc, model)
        else:
            problem(doc, f"no schema for {key[0]} {key[1]} (custom resources: {sorted(set(k for _, k in schemas))})")
    cross_check(docs, spin)
    for line in problems:
        print(line)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{len(docs)} objects ({summary}): {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
