"""Parse policy documents (YAML) into model objects, with file:line in every error.

Pure: text in, policies or errors out. Unknown fields are errors, as they would
be for a CRD with a structural schema (where the API server would drop them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from meshfleet.names import dns1123_label_error, dns1123_subdomain_error
from mgmt.model import RouteTarget, TrafficPolicy

API_VERSION = "meshfleet.io/v1alpha1"
KINDS = ("TrafficPolicy",)


@dataclass(frozen=True)
class PolicyError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class _Invalid(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _line_of(node: yaml.Node, path: Sequence[str | int]) -> int:
    """1-based line of what `path` names: the key line for a mapping field, else the node's first line."""
    line = node.start_mark.line
    for step in path:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == step), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _duplicate_keys(node: yaml.Node) -> tuple[int, str] | None:
    """(line, key) of the first mapping key given twice (the API server refuses those; PyYAML keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    return k.start_mark.line + 1, k.value
                seen.add(k.value)
            if found := _duplicate_keys(v):
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if found := _duplicate_keys(item):
                return found
    return None


def _fields(obj: Any, path: tuple[str | int, ...], required: Sequence[str], optional: Sequence[str]
            ) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise _Invalid(path, f"{_dotted(path) or 'document'} must be a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(required) - set(optional), key=str)
    if unknown:
        raise _Invalid((*path, unknown[0]), f"unknown field {_dotted((*path, unknown[0]))!r}"
                       f" (allowed: {', '.join(sorted([*required, *optional]))})")
    for key in required:
        if key not in obj:
            raise _Invalid(path, f"{_dotted((*path, key))}: required field missing")
    return obj


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _name(value: Any, path: tuple[str | int, ...], check: Callable[[object], str | None]) -> str:
    if err := check(value):
        raise _Invalid(path, f"{_dotted(path)}: {err}")
    return str(value)


def _traffic_policy(doc: Mapping[str, Any], source: str) -> TrafficPolicy:
    _fields(doc, (), ("apiVersion", "kind", "metadata", "spec"), ())
    meta = _fields(doc["metadata"], ("metadata",), ("name", "namespace"), ("labels", "annotations"))
    name = _name(meta["name"], ("metadata", "name"), dns1123_subdomain_error)
    namespace = _name(meta["namespace"], ("metadata", "namespace"), dns1123_label_error)
    spec = _fields(doc["spec"], ("spec",), ("destination", "route"), ("clients",))
    dest = _fields(spec["destination"], ("spec", "destination"), ("service",), ())
    service = _name(dest["service"], ("spec", "destination", "service"), dns1123_label_error)
    clients: tuple[str, ...] | None = None
    if "clients" in spec:
        sel = _fields(spec["clients"], ("spec", "clients"), ("clusters",), ())
        if not isinstance(sel["clusters"], list) or not sel["clusters"]:
            raise _Invalid(("spec", "clients", "clusters"), "spec.clients.clusters must be a non-empty list")
        clients = tuple(sorted({_name(c, ("spec", "clients", "clusters", i), dns1123_label_error)
                                for i, c in enumerate(sel["clusters"])}))
    if not isinstance(spec["route"], list) or not spec["route"]:
        raise _Invalid(("spec", "route"), "spec.route must be a non-empty list of {cluster, weight}")
    route: list[RouteTarget] = []
    for i, entry in enumerate(spec["route"]):
        path: tuple[str | int, ...] = ("spec", "route", i)
        item = _fields(entry, path, ("cluster", "weight"), ())
        cluster = _name(item["cluster"], (*path, "cluster"), dns1123_label_error)
        weight = item["weight"]
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
            raise _Invalid((*path, "weight"), f"{_dotted((*path, 'weight'))}: must be an integer 0-100,"
                           f" got {weight!r}")
        if any(r.cluster == cluster for r in route):
            raise _Invalid((*path, "cluster"), f"{_dotted((*path, 'cluster'))}: cluster {cluster!r} listed twice")
        route.append(RouteTarget(cluster, weight))
    total = sum(r.weight for r in route)
    if total != 100:
        raise _Invalid(("spec", "route"), f"spec.route weights add up to {total}, not 100")
    return TrafficPolicy(namespace, name, service, tuple(route), clients, source)


def parse_file(text: str, filename: str) -> tuple[list[TrafficPolicy], list[PolicyError]]:
    """Every policy in a multi-document YAML file, or the errors that make it unusable."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [PolicyError(filename, line, f"YAML syntax error: {problem}")]
    policies: list[TrafficPolicy] = []
    errors: list[PolicyError] = []
    for node in nodes:
        if node is None:
            continue
        line = node.start_mark.line + 1
        if dup := _duplicate_keys(node):
            errors.append(PolicyError(filename, dup[0], f"key {dup[1]!r} given twice in one mapping"))
            continue
        try:
            doc = yaml.SafeLoader(text).construct_document(node)
        except yaml.YAMLError as exc:
            errors.append(PolicyError(filename, line, f"YAML error: {exc}"))
            continue
        if doc is None:
            continue
        try:
            if not isinstance(doc, dict):
                raise _Invalid((), f"document must be a mapping, got {type(doc).__name__}")
            if doc.get("apiVersion") != API_VERSION:
                raise _Invalid(("apiVersion",), f"apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}")
            if doc.get("kind") not in KINDS:
                raise _Invalid(("kind",), f"unsupported kind {doc.get('kind')!r} (supported: {', '.join(KINDS)})")
            policies.append(_traffic_policy(doc, f"{filename}:{line}"))
        except _Invalid as exc:
            errors.append(PolicyError(filename, _line_of(node, exc.path), exc.message))
    return policies, errors


# ObjectMeta the API server fills in; a CR carries them, a policy file does not
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "finalizers",
                    "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName", "selfLink")
# in the CRD already, not translated yet: refused by name rather than mistaken for typos
_NOT_YET = (("spec", "http"), ("spec", "destination", "multiclusterService"))


def parse_resource(obj: Mapping[str, Any]) -> TrafficPolicy:
    """A TrafficPolicy custom resource as read from the API server; raises ValueError naming the field."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_METADATA}
    doc = {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}
    for path in _NOT_YET:
        node: Any = doc
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        if node is not None:
            raise ValueError(f"{'.'.join(path)} is not supported by this hub version yet")
    if any(isinstance(r, dict) and "subset" in r for r in (doc.get("spec") or {}).get("route") or []):
        raise ValueError("spec.route[].subset is not supported by this hub version yet")
    where = f"TrafficPolicy {meta.get('namespace')}/{meta.get('name')}"
    try:
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") not in KINDS:
            raise _Invalid((), f"expected {API_VERSION} TrafficPolicy, got {doc.get('apiVersion')} {doc.get('kind')}")
        return _traffic_policy(doc, where)
    except _Invalid as exc:
        raise ValueError(exc.message) from exc
