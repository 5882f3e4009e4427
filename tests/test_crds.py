"""meshfleet's own CRDs accept every example and refuse obvious mistakes, as an API server would.

Three parts: the CRD documents themselves (structural schemas and the conventions every meshfleet
kind follows, asserted over the YAML), every example under examples/ accepted unchanged, and a
table of obvious mistakes per kind refused with the message a user would see from kubectl.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES

CRDS = Path(__file__).resolve().parents[1] / "crds"
GROUP = "meshfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kind: (scope, shortNames). Every kind is in category meshfleet (`kubectl get meshfleet`).
KINDS: dict[str, tuple[str, list[str]]] = {
    "MeshCluster": ("Cluster", ["mc"]),
    "MulticlusterService": ("Namespaced", ["mfsvc"]),
    "TrafficPolicy": ("Namespaced", ["tp", "mftp"]),
    "FailoverPolicy": ("Namespaced", ["fp"]),
    "AccessPolicy": ("Namespaced", ["ap"]),
    "TrustPolicy": ("Cluster", ["trust"]),
}


@cache
def crd_documents() -> tuple[dict[str, Any], ...]:
    return tuple(d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))


@cache
def schemas() -> CRDSchemas:
    return CRDSchemas.from_documents(crd_documents())


def crd(kind: str) -> dict[str, Any]:
    return next(d for d in crd_documents() if d["spec"]["names"]["kind"] == kind)


def served(kind: str) -> dict[str, Any]:
    version: dict[str, Any] = crd(kind)["spec"]["versions"][0]
    return version


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = served(kind)["schema"]["openAPIV3Schema"]
    return schema


def accepted_by(schema: Mapping[str, Any], value: Any) -> list[str]:
    """Errors of `value` against one schema node (a throwaway CRD whose only field is that node)."""
    probe = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "spec": {"group": "probe.test", "scope": "Cluster", "names": {"kind": "Probe"},
                      "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                          "type": "object", "properties": {"value": schema}}}}]}}
    checker = CRDSchemas.from_documents([probe])
    errors = [str(e) for e in checker.validate({"apiVersion": "probe.test/v1", "kind": "Probe",
                                                "metadata": {"name": "probe"}, "value": value})]
    assert not checker.skipped_rules
    return errors


# --------------------------------------------------------------------------- the CRD documents

CRD_PARAMS = [pytest.param(kind, id=kind) for kind in KINDS]


def test_one_crd_file_per_kind() -> None:
    files = {p.name: [d["spec"]["names"]["kind"] for d in yaml.safe_load_all(p.read_text())]
             for p in sorted(CRDS.glob("*.yaml"))}
    assert files == {f"{crd(kind)['spec']['names']['plural']}.{GROUP}.yaml": [kind] for kind in KINDS}


@pytest.mark.parametrize("kind", CRD_PARAMS)
def test_names_scope_and_version(kind: str) -> None:
    doc = crd(kind)
    names = doc["spec"]["names"]
    scope, short_names = KINDS[kind]
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"{names['plural']}.{GROUP}"
    assert doc["spec"]["group"] == GROUP
    assert doc["spec"]["scope"] == scope
    assert names["singular"] == kind.lower()
    assert names["plural"] == re.sub("y$", "ie", kind.lower()) + "s"
    assert names["listKind"] == f"{kind}List"
    assert names["shortNames"] == short_names
    assert names["categories"] == ["meshfleet"]
    assert [(v["name"], v["served"], v["storage"]) for v in doc["spec"]["versions"]] == [(VERSION, True, True)]
    assert served(kind)["subresources"] == {"status": {}}


def test_short_names_are_unique() -> None:
    every = [n for _, names in KINDS.values() for n in names]
    assert len(every) == len(set(every))


def _field(schema: Mapping[str, Any], json_path: str) -> Mapping[str, Any] | None:
    """The schema node a printer column's JSONPath (`.a.b[?(...)].c`) selects, None if undeclared."""
    node: Mapping[str, Any] | None = schema
    for step in re.findall(r"\.([A-Za-z0-9_]+)|(\[[^\]]*\])", json_path):
        if node is None:
            return None
        name, index = step
        node = node.get("items") if index else (node.get("properties") or {}).get(name)
    return node


_COLUMN_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


@pytest.mark.parametrize("kind", CRD_PARAMS)
def test_printer_columns_show_declared_fields(kind: str) -> None:
    columns = served(kind)["additionalPrinterColumns"]
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert len({c["name"] for c in columns}) == len(columns)
    for column in columns[:-1]:
        node = _field(root_schema(kind), column["jsonPath"])
        assert node is not None, column
        expected = "date" if node.get("format") == "date-time" else _COLUMN_TYPES[node["type"]]
        assert column["type"] == expected, column


def test_mesh_cluster_columns() -> None:
    shown = [c["name"] for c in served("MeshCluster")["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Region", "Zone", "Network", "Connection", "Acked", "Age"]


def schema_nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node with its path (`.a.b`, `[]` for items, `{}` for map values)."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), Mapping):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


_SCALARS = {"string", "integer", "number", "boolean"}
_ENVELOPE = {".apiVersion", ".kind"}  # set by clients and checked by the API server itself
_JUNCTORS = {"allOf", "anyOf", "oneOf", "not"}


def structural_problems(root: Mapping[str, Any]) -> list[str]:
    """What kube-apiserver would refuse in a v1 CRD schema, plus meshfleet's bounds for CEL cost.

    Covers the structural rules for the constructs these CRDs use (no junctors, no
    preserve-unknown-fields, no int-or-string): a type everywhere, properties xor
    additionalProperties, metadata restricted to name/generateName, list-map keys that are required
    scalars, set items that are scalars. And meshfleet's own: one-line descriptions everywhere,
    every array, string and map bounded (the API server estimates CEL cost from those bounds),
    every CEL rule with a message and no transition rules.
    """
    problems: list[str] = []
    for path, node in schema_nodes(root):
        where = path or "<root>"
        problems += [f"{where}: {k} not used in meshfleet CRDs" for k in sorted(_JUNCTORS & set(node))]
        if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
            problems.append(f"{where}: unknown fields or int-or-string would escape validation")
        typ = node.get("type")
        if typ not in _SCALARS | {"object", "array"}:
            problems.append(f"{where}: type is {typ!r}")
        description = node.get("description")
        if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
            problems.append(f"{where}: needs a one-line description")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties are exclusive")
        if typ == "object" and isinstance(node.get("additionalProperties"), Mapping) and "maxProperties" not in node:
            problems.append(f"{where}: a map needs maxProperties")
        bounded = {"maxLength", "enum"} & set(node) or node.get("format") == "date-time"
        if typ == "string" and not bounded and path not in _ENVELOPE:
            problems.append(f"{where}: a string needs maxLength (or enum)")
        if "enum" in node and not all(accepted_by({"type": typ}, v) == [] for v in node["enum"]):
            problems.append(f"{where}: enum values must have type {typ}")
        for missing in set(node.get("required") or ()) - set(node.get("properties") or {}):
            problems.append(f"{where}: required field {missing!r} is not declared")
        if typ == "array":
            problems += _array_problems(where, node)
        for rule in node.get("x-kubernetes-validations") or ():
            if not rule.get("message") or "\n" in rule["message"] or "oldSelf" in rule["rule"]:
                problems.append(f"{where}: rule {rule['rule']!r} needs a one-line message (and no oldSelf)")
        if path.startswith(".metadata") and "default" in node:
            problems.append(f"{where}: no defaults in metadata")
    meta = (root.get("properties") or {}).get("metadata") or {}
    problems += [f".metadata.{name}: not restrictable" for name in set(meta.get("properties") or {}) -
                 {"name", "generateName"}]
    return problems


def _array_problems(where: str, node: Mapping[str, Any]) -> list[str]:
    problems = []
    items = node.get("items")
    if not isinstance(items, Mapping):
        return [f"{where}: an array needs an items schema"]
    if "maxItems" not in node:
        problems.append(f"{where}: an array needs maxItems")
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        if items.get("type") not in _SCALARS:
            problems.append(f"{where}: set items must be scalars")
    elif list_type == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []
        props = items.get("properties") or {}
        if not keys or any((props.get(k) or {}).get("type") not in _SCALARS for k in keys):
            problems.append(f"{where}: map keys must be scalar fields of the items")
        if not set(keys) <= set(items.get("required") or ()):
            problems.append(f"{where}: map keys must be required")
    elif list_type != "atomic":
        problems.append(f"{where}: say x-kubernetes-list-type (atomic, set or map)")
    return problems


@pytest.mark.parametrize("kind", CRD_PARAMS)
def test_schema_is_structural_and_bounded(kind: str) -> None:
    root = root_schema(kind)
    assert root["type"] == "object"
    assert {"apiVersion", "kind", "metadata", "spec", "status"} <= set(root["properties"])
    assert "spec" in root["required"]
    assert structural_problems(root) == []


@pytest.mark.parametrize("kind", CRD_PARAMS)
def test_defaults_are_valid_values(kind: str) -> None:
    """The API server refuses a CRD whose default does not validate against its own schema."""
    defaults = [(path, node) for path, node in schema_nodes(root_schema(kind)) if "default" in node]
    assert all(accepted_by(node, node["default"]) == [] for _, node in defaults), defaults


@pytest.mark.parametrize("kind", CRD_PARAMS)
def test_status_follows_the_conventions(kind: str) -> None:
    status = root_schema(kind)["properties"]["status"]
    props = status["properties"]
    assert props["observedGeneration"]["type"] == "integer"

    conditions = props["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    condition = conditions["items"]
    assert set(condition["properties"]) == {"type", "status", "reason", "message", "observedGeneration",
                                            "lastTransitionTime"}
    assert set(condition["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"

    clusters = props["clusters"]
    assert (clusters["x-kubernetes-list-type"], clusters["x-kubernetes-list-map-keys"]) == ("map", ["cluster"])
    per_cluster = clusters["items"]
    assert {"cluster", "state", "message", "observedVersion"} <= set(per_cluster["properties"])
    assert per_cluster["required"] == ["cluster", "state"]
    assert per_cluster["properties"]["state"]["enum"] == ["Accepted", "Applied", "Rejected"]


@pytest.mark.parametrize(("kind", "name", "errors"), [
    pytest.param("MeshCluster", "us-east-1", [], id="cluster-name"),
    pytest.param("MeshCluster", "us.east.1", ["should match"], id="cluster-name-with-dots"),
    pytest.param("MeshCluster", "c" * 64, ["Too long"], id="cluster-name-too-long"),
    pytest.param("MulticlusterService", "reviews", [], id="mcs-name"),
    pytest.param("MulticlusterService", "reviews.v2", ["should match"], id="mcs-name-with-dots"),
])
def test_names_used_as_dns_labels_are_restricted(kind: str, name: str, errors: list[str]) -> None:
    # CRDSchemas applies the API server's ObjectMeta rules only (a DNS subdomain); the CRD's own
    # restriction of metadata.name is checked here against the declared schema node.
    found = accepted_by(root_schema(kind)["properties"]["metadata"]["properties"]["name"], name)
    assert len(found) == len(errors) and all(e in f for e, f in zip(errors, found, strict=True)), found


# --------------------------------------------------------------------------- examples


def example_files() -> list[Path]:
    return sorted((EXAMPLES / "policies").glob("*.yaml")) + sorted((EXAMPLES / "crs").glob("*.yaml"))


def examples() -> list[Any]:
    return [pytest.param(doc, id=f"{p.parent.name}/{p.name}:{doc['metadata']['name']}")
            for p in example_files() for doc in yaml.safe_load_all(p.read_text())]


def test_no_rule_is_skipped() -> None:
    assert not schemas().skipped_rules


@pytest.mark.parametrize("doc", examples())
def test_every_example_policy_is_accepted(doc: dict[str, Any]) -> None:
    assert [str(e) for e in schemas().validate(doc)] == []
    assert not schemas().skipped_rules


CRS: dict[tuple[str, str], dict[str, Any]] = {
    (doc["kind"], doc["metadata"]["name"]): doc
    for p in sorted((EXAMPLES / "crs").glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())
}


def test_examples_cover_every_kind() -> None:
    assert {kind for kind, _ in CRS} == set(KINDS)
DELETE = object()


def edited(kind: str, name: str, *changes: tuple[str, Any]) -> dict[str, Any]:
    """A copy of example (kind, name) with each (path, value) set, or removed for DELETE.

    Paths are dotted with list indexes, e.g. "spec.http[3].route[0].weight".
    """
    doc = copy.deepcopy(CRS[(kind, name)])
    for path, value in changes:
        *parents, last = [int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", path)]
        node: Any = doc
        for step in parents:
            node = node.setdefault(step, {}) if isinstance(node, dict) else node[step]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return doc


NOW = "2026-11-21T10:00:00Z"
VERSION_HASH = "3f2a9c" + "0" * 58
CONDITIONS = [{"type": "Accepted", "status": "True", "reason": "Valid", "message": "", "observedGeneration": 2,
               "lastTransitionTime": NOW},
              {"type": "Ready", "status": "False", "reason": "Rejected", "message": "ap-south-1: refused",
               "observedGeneration": 2, "lastTransitionTime": NOW}]
CLUSTERS = [{"cluster": "us-east-1", "state": "Applied", "observedVersion": VERSION_HASH},
            {"cluster": "ap-south-1", "state": "Rejected", "message": "admission webhook denied the request",
             "observedVersion": VERSION_HASH}]
STATUS = {"observedGeneration": 2, "conditions": CONDITIONS, "clusters": CLUSTERS}
STATUS_BY_KIND: dict[tuple[str, str], dict[str, Any]] = {
    ("MeshCluster", "us-east-1"): {**STATUS, "connection": "Connected", "agentVersion": "0.3.0",
                                   "lastHeartbeat": NOW, "desiredVersion": VERSION_HASH,
                                   "ackedVersion": VERSION_HASH, "ackedVersionShort": VERSION_HASH[:12],
                                   "lastNack": {"version": VERSION_HASH, "message": "disk full", "time": NOW},
                                   "gatewayAddress": "eastwest.us-east-1.meshfleet.example:15443",
                                   "intermediateCertificateExpiry": NOW},
    ("MulticlusterService", "reviews"): {**STATUS, "host": "reviews.bookinfo.global"},
    ("TrafficPolicy", "reviews-canary"): STATUS,
    ("FailoverPolicy", "reviews-topology"): {**STATUS, "evictedClusters": ["ap-south-1"]},
    ("AccessPolicy", "deny-sandbox"): STATUS,
    ("TrustPolicy", "mesh"): {**STATUS, "phase": "AddingRoot",
                              "roots": [{"fingerprint": "a" * 64, "notAfter": NOW, "state": "Active"},
                                        {"fingerprint": "b" * 64, "notAfter": NOW, "state": "Incoming"}],
                              "clusters": [{**c, "intermediateExpiry": NOW} for c in CLUSTERS]},
}


@pytest.mark.parametrize("key", [pytest.param(k, id=k[0]) for k in STATUS_BY_KIND])
def test_status_as_the_hub_writes_it_is_accepted(key: tuple[str, str]) -> None:
    doc = edited(*key, ("status", STATUS_BY_KIND[key]))
    assert [str(e) for e in schemas().validate(doc)] == []


# --------------------------------------------------------------------------- obvious mistakes

REVIEWS: dict[str, Any] = yaml.safe_load((EXAMPLES / "policies" / "reviews-split.yaml").read_text())


def mutated(change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(REVIEWS)
    change(doc)
    return doc


def with_status(kind: str, name: str, *changes: tuple[str, Any]) -> dict[str, Any]:
    return edited(kind, name, ("status", copy.deepcopy(STATUS_BY_KIND[(kind, name)])), *changes)


MC, MCS, TP, FP, AP, TRUST = "MeshCluster", "MulticlusterService", "TrafficPolicy", "FailoverPolicy", \
    "AccessPolicy", "TrustPolicy"
ROOT_FILES = {"certificate": "/etc/meshfleet/root/ca.crt", "key": "/etc/meshfleet/root/ca.key"}


@pytest.mark.parametrize("root", [
    pytest.param({"generate": {}}, id="generate-with-defaults"),
    pytest.param({"secretRef": {"name": "mesh-root-ca", "namespace": "meshfleet-system"}}, id="secret-ref"),
    pytest.param({"files": ROOT_FILES}, id="files"),
])
def test_each_root_alternative_is_accepted(root: dict[str, Any]) -> None:
    # a supplied root has no generate.validity: an intermediate ttl beyond the default validity is no mistake then
    ttl = "2160h" if "generate" in root else "100000h"
    doc = edited(TRUST, "mesh", ("spec.root", root), ("spec.intermediate.ttl", ttl))
    assert [str(e) for e in schemas().validate(doc)] == []
CANARY = (TP, "reviews-canary")
DEFAULT_RULE = "spec.http[3]"  # reviews-canary's last rule: weighted route, timeout, retries, mirror

MISTAKES = [
    # the directory-source TrafficPolicy (examples/policies)
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("weigth", 20)), "weigth", id="typo-field"),
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("weight", 10)),
                 "route weights must add up to 100", id="weights-sum-90"),
    pytest.param(mutated(lambda d: d["spec"]["route"][0].__setitem__("weight", 101)), "100", id="weight-over-100"),
    pytest.param(mutated(lambda d: d["spec"]["route"][0].__setitem__("weight", "80")), "integer", id="weight-string"),
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("cluster", "us-east-1")),
                 "spec.route: Invalid value: \"array\": a cluster and subset may appear only once in a route",
                 id="cluster-twice"),
    pytest.param(mutated(lambda d: d["spec"].pop("destination")), "Required value", id="no-destination"),
    pytest.param(mutated(lambda d: d["spec"]["destination"].__setitem__("service", "Reviews")), "spec.destination",
                 id="bad-service-name"),

    # MeshCluster
    pytest.param(edited(MC, "us-east-1", ("spec.regoin", "us-east")), "spec.regoin: field not declared in schema",
                 id="mc-typo-field"),
    pytest.param(edited(MC, "us-east-1", ("spec.region", "us/east")),
                 "spec.region: Invalid value: \"us/east\": spec.region in body should match",
                 id="mc-region-with-slash"),
    pytest.param(edited(MC, "us-east-1", ("metadata.namespace", "bookinfo")),
                 "metadata.namespace: Forbidden: not allowed on this type", id="mc-namespaced"),
    pytest.param(edited(MC, "us-east-1", ("spec.network", DELETE)), "spec.network: Required value",
                 id="mc-no-network"),
    pytest.param(edited(MC, "ap-south-1", ("spec.gateway.port", 0)),
                 "spec.gateway.port in body should be greater than or equal to 1", id="mc-gateway-port-0"),
    pytest.param(edited(MC, "ap-south-1", ("spec.gateway.address", "gw.ap-south-1.example:443")),
                 "spec.gateway.address in body should match", id="mc-gateway-address-with-port"),
    pytest.param(with_status(MC, "us-east-1", ("status.connection", "Up")),
                 "status.connection: Unsupported value: \"Up\"", id="mc-bad-connection"),
    pytest.param(with_status(MC, "us-east-1", ("status.lastHeartbeat", "yesterday")),
                 "status.lastHeartbeat in body must be of type date-time", id="mc-bad-heartbeat"),

    # MulticlusterService
    pytest.param(edited(MCS, "reviews", ("spec.backends.clusters", ["us-east-1"])),
                 "spec.backends: Invalid value: \"object\": exactly one of backends.clusters and "
                 "backends.clusterSelector must be set", id="mcs-both-backends"),
    pytest.param(edited(MCS, "reviews", ("spec.backends", {})),
                 "exactly one of backends.clusters and backends.clusterSelector must be set", id="mcs-no-backend"),
    pytest.param(edited(MCS, "reviews", ("spec.backends", DELETE)), "spec.backends: Required value",
                 id="mcs-backends-missing"),
    pytest.param(edited(MCS, "productpage", ("spec.ports[0].protocol", "MONGO")),
                 "spec.ports[0].protocol: Unsupported value: \"MONGO\"", id="mcs-bad-protocol"),
    pytest.param(edited(MCS, "productpage", ("spec.ports[0].number", 70000)),
                 "should be less than or equal to 65535", id="mcs-port-70000"),
    pytest.param(edited(MCS, "productpage", ("spec.ports", [{"name": "http", "number": 9080, "protocol": "HTTP"},
                                                            {"name": "http", "number": 9443, "protocol": "HTTPS"}])),
                 "spec.ports: Invalid value: \"array\": port names must be unique", id="mcs-port-name-twice"),
    pytest.param(edited(MCS, "ratings", ("spec.backends.clusterSelector.matchExpressions[0].operator", "in")),
                 "Unsupported value: \"in\"", id="mcs-selector-operator"),
    pytest.param(edited(MCS, "ratings", ("spec.backends.clusterSelector.matchExpressions[0].values", DELETE)),
                 "values must be non-empty for In and NotIn", id="mcs-in-without-values"),
    pytest.param(edited(MCS, "details", ("spec.host", "Details.Bookinfo")), "spec.host in body should match",
                 id="mcs-host-uppercase"),
    pytest.param(edited(MCS, "details", ("spec.host", "details.bookinfo.svc.cluster.local")),
                 "host must not be a cluster-local name", id="mcs-host-cluster-local"),
    pytest.param(edited(MCS, "reviews", ("spec.exportTo", {"clusters": ["eu-west-1", "eu-west-1"]})),
                 "spec.exportTo.clusters[1]: Duplicate value: \"eu-west-1\"", id="mcs-export-twice"),

    # TrafficPolicy with http rules
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.retry", {"attempts": 3})),
                 f"{DEFAULT_RULE}.retry: field not declared in schema", id="tp-typo-field"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.route[0].weight", 101)),
                 f"{DEFAULT_RULE}.route[0].weight in body should be less than or equal to 100", id="tp-weight-101"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.route[0].weight", 50)),
                 f"{DEFAULT_RULE}.route: Invalid value: \"array\": route weights must add up to 100",
                 id="tp-weights-sum-90"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.route[2].subset", "v1")),
                 "a cluster and subset may appear only once in a route", id="tp-target-twice"),
    pytest.param(edited(*CANARY, ("spec.route", [{"cluster": "us-east-1", "weight": 100}])),
                 "spec: Invalid value: \"object\": exactly one of route and http must be set", id="tp-route-and-http"),
    pytest.param(edited(*CANARY, ("spec.http", DELETE)), "exactly one of route and http must be set",
                 id="tp-neither-route-nor-http"),
    pytest.param(edited(*CANARY, ("spec.destination.service", "reviews")),
                 "exactly one of destination.service and destination.multiclusterService must be set",
                 id="tp-service-and-mcs"),
    pytest.param(edited(*CANARY, ("spec.http[2].name", "default")), "http rule names must be unique",
                 id="tp-rule-name-twice"),
    pytest.param(edited(*CANARY, ("spec.http[2].match[1].uri", {"prefix": "/reviews/", "exact": "/reviews/1"})),
                 "spec.http[2].match[1].uri: Invalid value: \"object\": exactly one of exact, prefix and regex",
                 id="tp-uri-exact-and-prefix"),
    pytest.param(edited(*CANARY, ("spec.http[0].match[0].headers.x-fault-drill", {})),
                 "exactly one of exact, prefix and regex", id="tp-empty-header-match"),
    pytest.param(edited(*CANARY, ("spec.http[2].match[0]", {})), "should have at least 1 properties",
                 id="tp-empty-match"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.timeout", "2 seconds")),
                 f"{DEFAULT_RULE}.timeout in body should match", id="tp-bad-duration"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.timeout", "1d")),
                 f"{DEFAULT_RULE}.timeout in body should match", id="tp-duration-in-days"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.timeout", "0s")), "timeout must be at least 1ms",
                 id="tp-zero-timeout"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.retries.perTryTimeout", "5s")),
                 "retries.perTryTimeout must not exceed timeout", id="tp-try-longer-than-timeout"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.retries.attempts", 11)),
                 "retries.attempts in body should be less than or equal to 10", id="tp-11-retries"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.retries.retryOn", "5xx, reset")),
                 "retries.retryOn in body should match", id="tp-retry-on-with-space"),
    pytest.param(edited(*CANARY, ("spec.http[1].fault.abort.httpStatus", 600)),
                 "spec.http[1].fault.abort.httpStatus in body should be less than or equal to 599",
                 id="tp-abort-600"),
    pytest.param(edited(*CANARY, ("spec.http[0].fault.delay.percentage", 120)),
                 "spec.http[0].fault.delay.percentage in body should be less than or equal to 100",
                 id="tp-delay-120-percent"),
    pytest.param(edited(*CANARY, ("spec.http[0].fault", {})), "fault needs a delay, an abort or both",
                 id="tp-empty-fault"),
    pytest.param(edited(*CANARY, (f"{DEFAULT_RULE}.mirror.cluster", DELETE)),
                 f"{DEFAULT_RULE}.mirror.cluster: Required value", id="tp-mirror-without-cluster"),
    pytest.param(edited(TP, "productpage-split", ("spec.route[1].subset", "V1")), "spec.route[1].subset in body",
                 id="tp-subset-uppercase"),

    # FailoverPolicy
    pytest.param(edited(FP, "ratings-explicit", ("spec.priority.clusters", DELETE)),
                 "spec.priority: Invalid value: \"object\": priority.clusters is required when mode is Explicit",
                 id="fp-explicit-without-clusters"),
    pytest.param(edited(FP, "reviews-topology", ("spec.priority.clusters", ["us-east-1"])),
                 "priority.clusters is only allowed when mode is Explicit", id="fp-topology-with-clusters"),
    pytest.param(edited(FP, "ratings-explicit", ("spec.priority.clusters", ["us-east-1", "us-east-1"])),
                 "priority.clusters must not name a cluster twice", id="fp-priority-cluster-twice"),
    pytest.param(edited(FP, "reviews-topology", ("spec.priority.mode", "Nearest")),
                 "spec.priority.mode: Unsupported value: \"Nearest\": supported values: \"Topology\", \"Explicit\"",
                 id="fp-bad-mode"),
    pytest.param(edited(FP, "reviews-topology", ("spec.outlierDetection.consecutive5xxErrors", 0)),
                 "should be greater than or equal to 1", id="fp-zero-errors"),
    pytest.param(edited(FP, "reviews-topology", ("spec.outlierDetection.maxEjectionPercent", 150)),
                 "should be less than or equal to 100", id="fp-eject-150-percent"),
    pytest.param(edited(FP, "reviews-topology", ("spec.holdDown", "5 min")), "spec.holdDown in body should match",
                 id="fp-bad-duration"),
    pytest.param(edited(FP, "reviews-topology", ("spec.holdDown", "48h")), "holdDown must be at most 24h",
                 id="fp-hold-down-48h"),
    pytest.param(edited(FP, "reviews-topology", ("spec.evictLostClusters", "yes")),
                 "spec.evictLostClusters in body must be of type boolean", id="fp-evict-string"),

    # AccessPolicy
    pytest.param(edited(AP, "deny-sandbox", ("spec.action", "deny")),
                 "spec.action: Unsupported value: \"deny\": supported values: \"ALLOW\", \"DENY\"", id="ap-bad-action"),
    pytest.param(edited(AP, "deny-ratings-writes", ("spec.to[0].methods", ["POST", "FETCH"])),
                 "spec.to[0].methods[1]: Unsupported value: \"FETCH\"", id="ap-bad-method"),
    pytest.param(edited(AP, "deny-sandbox", ("spec.destination.all", False)),
                 "spec.destination.all: Unsupported value: false", id="ap-all-false"),
    pytest.param(edited(AP, "deny-sandbox", ("spec.destination.service", "ratings")),
                 "exactly one of destination.service, destination.multiclusterService and destination.all",
                 id="ap-all-and-service"),
    pytest.param(edited(AP, "ratings-from-reviews", ("spec.from", [{}])), "a from entry needs clusters",
                 id="ap-empty-source"),
    pytest.param(edited(AP, "ratings-from-reviews", ("spec.to[0].ports", [0])),
                 "spec.to[0].ports[0] in body should be greater than or equal to 1", id="ap-port-0"),
    pytest.param(edited(AP, "ratings-from-reviews", ("spec.to[0].paths", ["ratings/*"])),
                 "spec.to[0].paths[0] in body should match", id="ap-path-without-slash"),
    pytest.param(edited(AP, "ratings-from-reviews", ("spec.from[0].namespaces", ["Bookinfo"])),
                 "spec.from[0].namespaces[0] in body should match", id="ap-bad-namespace"),
    pytest.param(edited(AP, "reviews-from-productpage", ("spec.mtls", "DISABLE")),
                 "spec.mtls: Unsupported value: \"DISABLE\"", id="ap-mtls-disable"),

    # TrustPolicy
    pytest.param(edited(TRUST, "mesh", ("metadata.namespace", "istio-system")),
                 "metadata.namespace: Forbidden: not allowed on this type", id="trust-namespaced"),
    pytest.param(edited(TRUST, "mesh", ("spec.root.secretRef", {"name": "root-ca", "namespace": "meshfleet"})),
                 "exactly one of root.generate, root.secretRef and root.files must be set",
                 id="trust-generate-and-secret"),
    pytest.param(edited(TRUST, "mesh", ("spec.root.files", ROOT_FILES)),
                 "spec.root: Invalid value: \"object\": exactly one of root.generate, root.secretRef and root.files "
                 "must be set", id="trust-generate-and-files"),
    pytest.param(edited(TRUST, "mesh", ("spec.root.files", ROOT_FILES), ("spec.root.generate", DELETE),
                        ("spec.root.secretRef", {"name": "root-ca", "namespace": "meshfleet"})),
                 "exactly one of root.generate, root.secretRef and root.files must be set",
                 id="trust-secret-and-files"),
    pytest.param(edited(TRUST, "mesh", ("spec.root", {})),
                 "exactly one of root.generate, root.secretRef and root.files must be set", id="trust-no-root"),
    pytest.param(edited(TRUST, "mesh", ("spec.root", {"files": {**ROOT_FILES, "key": "root/ca.key"}})),
                 "spec.root.files.key: Invalid value: \"root/ca.key\": spec.root.files.key in body should match '^/'",
                 id="trust-files-relative-path"),
    pytest.param(edited(TRUST, "mesh", ("spec.root", {"files": {"certificate": ROOT_FILES["certificate"]}})),
                 "spec.root.files.key: Required value", id="trust-files-without-key"),
    pytest.param(edited(TRUST, "mesh", ("spec.root", {"files": {**ROOT_FILES, "certificate": "/" + "c" * 4096}})),
                 "spec.root.files.certificate: Too long: may not be more than 4096", id="trust-files-path-too-long"),
    pytest.param(edited(TRUST, "mesh", ("spec.root.secretRef", {"name": "root-ca"}), ("spec.root.generate", DELETE)),
                 "spec.root.secretRef.namespace: Required value", id="trust-secret-without-namespace"),
    pytest.param(edited(TRUST, "mesh", ("spec.root.generate.algorithm", "RSA-2048")),
                 "Unsupported value: \"RSA-2048\": supported values: \"EC-P256\", \"EC-P384\", \"RSA-4096\"",
                 id="trust-bad-algorithm"),
    pytest.param(edited(TRUST, "mesh", ("spec.intermediate.ttl", "90d")), "spec.intermediate.ttl in body should match",
                 id="trust-ttl-in-days"),
    pytest.param(edited(TRUST, "mesh", ("spec.intermediate.ttl", "100000h")),
                 "intermediate.ttl must be shorter than root.generate.validity", id="trust-ttl-beyond-root"),
    pytest.param(edited(TRUST, "mesh", ("spec.intermediate.renewBefore", 95)),
                 "spec.intermediate.renewBefore in body should be less than or equal to 90", id="trust-renew-95"),
    pytest.param(edited(TRUST, "mesh", ("spec.trustDomain", "Cluster.Local")), "spec.trustDomain in body should match",
                 id="trust-bad-domain"),
    pytest.param(with_status(TRUST, "mesh", ("status.phase", "Rotating")), "status.phase: Unsupported value",
                 id="trust-bad-phase"),

    # status, as the hub must write it (same shape for every kind)
    pytest.param(with_status(TP, "reviews-canary", ("status.conditions[0].lastTransitionTime", DELETE)),
                 "status.conditions[0].lastTransitionTime: Required value", id="status-condition-without-time"),
    pytest.param(with_status(TP, "reviews-canary", ("status.conditions[1].type", "Accepted")),
                 "status.conditions[1]: Duplicate value", id="status-condition-twice"),
    pytest.param(with_status(AP, "deny-sandbox", ("status.clusters[1].state", "Synced")),
                 "status.clusters[1].state: Unsupported value: \"Synced\"", id="status-bad-cluster-state"),
    pytest.param(with_status(FP, "reviews-topology", ("status.clusters[1].cluster", "us-east-1")),
                 "status.clusters[1]: Duplicate value", id="status-cluster-twice"),
]


@pytest.mark.parametrize(("doc", "message"), MISTAKES)
def test_obvious_mistakes_are_refused(doc: dict[str, Any], message: str) -> None:
    errors = [str(e) for e in schemas().validate(doc)]
    assert any(message in e for e in errors), errors
    # A mistake is reported by the check written for it, never by a rule failing to evaluate on it.
    assert not [e for e in errors if "evaluating rule" in e]
    assert not schemas().skipped_rules
