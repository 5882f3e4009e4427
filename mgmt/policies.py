"""Parse multicluster resources (policy files or custom resources) into model objects, with precise errors.

Pure: text or objects in, resources or errors out. Files and custom resources go
through one parser, so the same document means the same thing from either source:
unknown fields are errors (the API server would prune them), the CRDs' defaults are
applied (the API server would), and the CRDs' rules (CEL ones included) are checked
again, so a file is held to what a CR is and a CR the API server took can still be
refused for what only the hub knows how to check. Every message names the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import yaml

from meshfleet.intents import AccessOperation, Fault, Mirror, OutlierDetection, Port, RequestMatch, Retries, StringMatch
from meshfleet.names import (
    dns1123_label_error,
    dns1123_subdomain_error,
    label_value_errors,
    labels_error,
    qualified_name_errors,
)
from mgmt.model import (
    AccessFrom,
    AccessPolicy,
    AnyResource,
    ClusterSelector,
    Destination,
    FailoverPolicy,
    HttpRule,
    Meta,
    MulticlusterService,
    Requirement,
    RouteTarget,
    TrafficPolicy,
    TrustPolicy,
    cr_ref,
)

API_VERSION = "meshfleet.io/v1alpha1"
KINDS = ("MulticlusterService", "TrafficPolicy", "FailoverPolicy", "AccessPolicy", "TrustPolicy")
CLUSTER_SCOPED = frozenset({"TrustPolicy"})  # kinds whose resources have no namespace (the CRDs' scope: Cluster)
# meshfleet kinds that are not policies: named, so a policy file holding one gets a useful answer
NOT_POLICIES = {
    "MeshCluster": "MeshCluster is not a policy: clusters are added with `meshfleet cluster add`"
                   " or watched as MeshCluster resources, not read from policy files",
}
# protocols a MulticlusterService port may declare (the CRD's enum, a subset of meshfleet.intents.PROTOCOLS)
PORT_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS")
# key algorithms of a TrustPolicy (the CRD's enum); meshfleet.pki.ALGORITHMS, which this pure core may not
# import (it pulls in cryptography), names the same (tests/test_policies.py keeps them equal)
KEY_ALGORITHMS = ("EC-P256", "EC-P384", "RSA-4096")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

_Path = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyError:
    file: str  # a file name, or "Kind namespace/name" for a custom resource
    line: int  # 0 when there is no line (custom resources, a missing directory)
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class _Invalid(Exception):
    def __init__(self, path: _Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------------------------
# YAML positions


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


# ---------------------------------------------------------------------------------------------
# Typed field access: each helper checks one value at `path` and raises _Invalid naming it


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _invalid(path: _Path, what: str) -> _Invalid:
    return _Invalid(path, f"{_dotted(path)}: {what}")


def _fields(obj: Any, path: _Path, required: Sequence[str], optional: Sequence[str]) -> Mapping[str, Any]:
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


def _one_of(obj: Mapping[str, Any], path: _Path, keys: Sequence[str]) -> str:
    """The one key of `keys` that `obj` has (the CRDs' "exactly one of" rules)."""
    given = [k for k in obj if k in keys]  # in the document's order: the second one given is the extra one
    if len(given) != 1:
        names = ", ".join(keys[:-1]) + f" and {keys[-1]}"
        detail = f" ({' and '.join(given)} are)" if given else ""
        raise _Invalid((*path, given[1]) if given else path, f"{_dotted(path)}: exactly one of {names} must be set"
                       f"{detail}")
    return str(given[0])


def _name(value: Any, path: _Path, check: Callable[[object], str | None]) -> str:
    if err := check(value):
        raise _invalid(path, err)
    return str(value)


def _string(value: Any, path: _Path, max_length: int, pattern: re.Pattern[str] | None = None,
            example: str = "") -> str:
    if not isinstance(value, str):
        raise _invalid(path, f"must be a string, got {type(value).__name__}")
    if len(value) > max_length:
        raise _invalid(path, f"must be at most {max_length} characters, got {len(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _invalid(path, f"{value!r} is not valid" + (f" (e.g. {example})" if example else ""))
    return value


def _integer(value: Any, path: _Path, low: int, high: int) -> int:
    # bool is an int subclass, and 20.0 is not an integer however the API server would store it
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(path, f"must be an integer {low}-{high}, got {value!r}")
    return value


def _percent(value: Any, path: _Path) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 100:
        raise _invalid(path, f"must be a number 0-100 (percent), got {value!r}")
    return float(value)


def _boolean(value: Any, path: _Path) -> bool:
    if not isinstance(value, bool):
        raise _invalid(path, f"must be true or false, got {value!r}")
    return value


def _enum(value: Any, path: _Path, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _invalid(path, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _list(value: Any, path: _Path, max_items: int) -> list[Any]:
    """A list of 1 to `max_items` items (every list of the CRDs has minItems 1)."""
    if not isinstance(value, list):
        raise _Invalid(path, f"{_dotted(path)} must be a non-empty list, got {type(value).__name__}")
    if not value:
        raise _Invalid(path, f"{_dotted(path)} must be a non-empty list")
    if len(value) > max_items:
        raise _Invalid(path, f"{_dotted(path)} has {len(value)} items, at most {max_items} are allowed")
    return value


def _unique(items: Sequence[Any], path: _Path, what: str) -> None:
    """Refuse a repeated item: `x-kubernetes-list-type: set` lists and other lists the CRDs keep duplicate-free."""
    seen: set[Any] = set()
    for i, item in enumerate(items):
        if item in seen:
            raise _invalid((*path, i), f"{what} {item!r} listed twice")
        seen.add(item)


def _names(value: Any, path: _Path, max_items: int, check: Callable[[object], str | None], what: str
           ) -> tuple[str, ...]:
    """A set of names (order carries no meaning): sorted."""
    names = [_name(v, (*path, i), check) for i, v in enumerate(_list(value, path, max_items))]
    _unique(names, path, what)
    return tuple(sorted(names))


def _label_map(value: Any, path: _Path, max_items: int | None = None) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _invalid(path, f"must be a mapping, got {type(value).__name__}")
    if max_items is not None and len(value) > max_items:
        raise _invalid(path, f"has {len(value)} entries, at most {max_items} are allowed")
    for key, v in value.items():
        if err := labels_error({key: v}):
            raise _Invalid((*path, str(key)), f"{_dotted(path)}: {err}")  # at the entry, named by the map
    return tuple(sorted(value.items()))


# Go durations as the CRDs' pattern allows them (no sign, no µs/ns): 500ms, 2s, 1m30s, 1.5h
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}
_MS = Fraction(1, 1000)


def duration_seconds(text: str) -> Fraction:
    """Exact seconds of a Go duration in the CRDs' form (`500ms`, `1m30s`); raises ValueError.

    Not meshfleet.names.parse_duration: that one reads CLI durations (`90`, `2d`) and no `ms` or `1m30s`.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration (e.g. 500ms, 2s, 1m30s, 1h)")
    return sum((Fraction(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)), Fraction(0))


def _duration(value: Any, path: _Path, at_least: Fraction | None = _MS, at_most: Fraction | None = None
              ) -> tuple[str, Fraction]:
    """(text as written, exact seconds) of a duration field within the CRD's bounds."""
    text = _string(value, path, 32)
    try:
        seconds = duration_seconds(text)
    except ValueError as exc:
        raise _invalid(path, str(exc)) from None
    if at_least is not None and seconds < at_least:
        raise _invalid(path, f"must be at least {_show(at_least)}, got {text}")
    if at_most is not None and seconds > at_most:
        raise _invalid(path, f"must be at most {_show(at_most)}, got {text}")
    return text, seconds


def _show(seconds: Fraction) -> str:
    for unit in ("h", "m", "s", "ms"):
        if (n := seconds / _UNIT_SECONDS[unit]) >= 1 and n.denominator == 1:
            return f"{n}{unit}"
    return f"{float(seconds)}s"


# ---------------------------------------------------------------------------------------------
# Pieces shared by several kinds


def _metadata(value: Any, kind: str, source: str, created: str, generation: int) -> Meta:
    scoped = kind not in CLUSTER_SCOPED
    meta = _fields(value, ("metadata",), ("name", "namespace") if scoped else ("name",),
                   ("labels", "annotations") if scoped else ("namespace", "labels", "annotations"))
    # a MulticlusterService name is the first label of its default host; the CRD says so too
    check = dns1123_label_error if kind == "MulticlusterService" else dns1123_subdomain_error
    name = _name(meta["name"], ("metadata", "name"), check)
    if scoped:
        namespace = _name(meta["namespace"], ("metadata", "namespace"), dns1123_label_error)
    elif meta.get("namespace", ""):  # "" is how some clients spell "no namespace"; the API server takes it
        raise _invalid(("metadata", "namespace"), f"a {kind} is cluster-scoped: remove the namespace"
                       f" ({meta['namespace']!r})")
    else:
        namespace = ""
    if "labels" in meta:
        _label_map(meta["labels"], ("metadata", "labels"))
    annotations = meta.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in annotations.items()):
        raise _invalid(("metadata", "annotations"), "must map strings to strings")
    return Meta(kind, namespace, name, source, created, generation)


def _destination(value: Any, path: _Path, allow_all: bool = False) -> Destination:
    keys = ("service", "multiclusterService", "all") if allow_all else ("service", "multiclusterService")
    dest = _fields(value, path, (), keys)
    which = _one_of(dest, path, keys)
    if which == "all":
        if dest["all"] is not True:
            raise _invalid((*path, "all"), f"must be true (omit it to name a service), got {dest['all']!r}")
        return Destination(all=True)
    name = _name(dest[which], (*path, which), dns1123_label_error)
    return Destination(service=name) if which == "service" else Destination(multicluster_service=name)


_LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _requirement(value: Any, path: _Path) -> Requirement:
    item = _fields(value, path, ("key", "operator"), ("values",))
    key = _string(item["key"], (*path, "key"), 317)
    if errs := qualified_name_errors(key):
        raise _invalid((*path, "key"), f"{key!r}: {errs[0]}")
    operator = _enum(item["operator"], (*path, "operator"), _LABEL_OPERATORS)
    raw = item.get("values", [])
    if not isinstance(raw, list):
        raise _invalid((*path, "values"), f"must be a list, got {type(raw).__name__}")
    if len(raw) > 64:
        raise _invalid((*path, "values"), f"has {len(raw)} items, at most 64 are allowed")
    values = tuple(_string(v, (*path, "values", i), 63) for i, v in enumerate(raw))
    for i, v in enumerate(values):
        if errs := label_value_errors(v):
            raise _invalid((*path, "values", i), f"{v!r}: {errs[0]}")
    if operator in ("In", "NotIn") and not values:
        raise _invalid((*path, "values"), f"must be non-empty for {operator}")
    if operator not in ("In", "NotIn") and values:
        raise _invalid((*path, "values"), f"must be empty for {operator}")
    return Requirement(key, operator, values)


def _cluster_selector(value: Any, path: _Path) -> ClusterSelector:
    sel = _fields(value, path, (), ("clusters", "clusterSelector"))
    if _one_of(sel, path, ("clusters", "clusterSelector")) == "clusters":
        return ClusterSelector(clusters=_names(sel["clusters"], (*path, "clusters"), 256, dns1123_label_error,
                                               "cluster"))
    spath = (*path, "clusterSelector")
    selector = _fields(sel["clusterSelector"], spath, (), ("matchLabels", "matchExpressions"))
    labels = _label_map(selector.get("matchLabels", {}), (*spath, "matchLabels"), 32)
    expressions: tuple[Requirement, ...] = ()
    if "matchExpressions" in selector:
        epath = (*spath, "matchExpressions")
        raw = selector["matchExpressions"]
        if not isinstance(raw, list):
            raise _invalid(epath, f"must be a list, got {type(raw).__name__}")
        if len(raw) > 16:
            raise _invalid(epath, f"has {len(raw)} items, at most 16 are allowed")
        expressions = tuple(_requirement(r, (*epath, i)) for i, r in enumerate(raw))
    return ClusterSelector(match_labels=labels, match_expressions=expressions)


def _route(value: Any, path: _Path) -> tuple[RouteTarget, ...]:
    route: list[RouteTarget] = []
    for i, entry in enumerate(_list(value, path, 64)):
        item = _fields(entry, (*path, i), ("cluster", "weight"), ("subset",))
        cluster = _name(item["cluster"], (*path, i, "cluster"), dns1123_label_error)
        subset = _name(item["subset"], (*path, i, "subset"), dns1123_label_error) if "subset" in item else ""
        weight = _integer(item["weight"], (*path, i, "weight"), 0, 100)
        if any((r.cluster, r.subset) == (cluster, subset) for r in route):
            what = f"cluster {cluster!r}" + (f" with subset {subset!r}" if subset else "")
            raise _invalid((*path, i, "cluster"), f"{what} listed twice")
        route.append(RouteTarget(cluster, weight, subset))
    total = sum(r.weight for r in route)
    if total != 100:
        raise _invalid(path, f"weights add up to {total}, not 100")
    return tuple(route)


# ---------------------------------------------------------------------------------------------
# The kinds


def _multicluster_service(spec: Any, meta: Meta) -> MulticlusterService:
    spec = _fields(spec, ("spec",), ("backends",), ("service", "host", "exportTo", "ports"))
    service = _name(spec.get("service", meta.name), ("spec", "service"), dns1123_label_error)
    host = ""
    if "host" in spec:
        host = _name(spec["host"], ("spec", "host"), dns1123_subdomain_error)
        if host.endswith(".svc.cluster.local"):
            raise _invalid(("spec", "host"), f"{host!r} is a cluster-local name (*.svc.cluster.local); a global"
                           " host must be a name of its own")
    backends = _cluster_selector(spec["backends"], ("spec", "backends"))
    export_to = _cluster_selector(spec["exportTo"], ("spec", "exportTo")) if "exportTo" in spec else None
    ports: list[Port] = []
    if "ports" in spec:
        for i, entry in enumerate(_list(spec["ports"], ("spec", "ports"), 32)):
            path: _Path = ("spec", "ports", i)
            item = _fields(entry, path, ("name", "number", "protocol"), ())
            port = Port(_name(item["name"], (*path, "name"), dns1123_label_error),
                        _integer(item["number"], (*path, "number"), 1, 65535),
                        _enum(item["protocol"], (*path, "protocol"), PORT_PROTOCOLS))
            if any(p.name == port.name for p in ports):
                raise _invalid((*path, "name"), f"port name {port.name!r} listed twice")
            if any(p.number == port.number for p in ports):
                raise _invalid((*path, "number"), f"port {port.number} listed twice")
            ports.append(port)
    # ports are keyed by number (a list-map); order carries no meaning, so it does not make two services differ
    return MulticlusterService(meta, service, host, backends, export_to,
                               tuple(sorted(ports, key=lambda p: p.number)))


def _string_match(value: Any, path: _Path) -> StringMatch:
    match = _fields(value, path, (), ("exact", "prefix", "regex"))
    kind = _one_of(match, path, ("exact", "prefix", "regex"))
    return StringMatch(kind, _string(match[kind], (*path, kind), 1024))


# an HTTP header name is an RFC 9110 token; a query parameter name anything a query can carry unescaped
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUERY_NAME = re.compile(r"[^\s&=#?]+")


def _named_matches(value: Any, path: _Path, what: str, valid: re.Pattern[str]) -> tuple[tuple[str, StringMatch], ...]:
    if not isinstance(value, dict):
        raise _invalid(path, f"must be a mapping of {what} name to match, got {type(value).__name__}")
    if len(value) > 16:
        raise _invalid(path, f"has {len(value)} entries, at most 16 are allowed")
    for name in value:
        if not isinstance(name, str) or not valid.fullmatch(name):
            raise _invalid((*path, str(name)), f"{name!r} is not a valid {what} name")
    return tuple(sorted((name, _string_match(m, (*path, name))) for name, m in value.items()))


def _request_match(value: Any, path: _Path) -> RequestMatch:
    match = _fields(value, path, (), ("uri", "headers", "queryParams"))
    if not match:
        raise _invalid(path, "an empty match matches every request; give uri, headers or queryParams, or omit match")
    params = (_named_matches(match["queryParams"], (*path, "queryParams"), "query parameter", _QUERY_NAME)
              if "queryParams" in match else ())
    for name, m in params:
        if m.kind == "prefix":
            raise _invalid((*path, "queryParams", name), "Istio matches query parameters by exact or regex only")
    return RequestMatch(
        headers=(_named_matches(match["headers"], (*path, "headers"), "header", _HEADER_NAME)
                 if "headers" in match else ()),
        query_params=params,
        uri=_string_match(match["uri"], (*path, "uri")) if "uri" in match else None,
    )


_RETRY_ON = re.compile(r"[a-z0-9-]+(,[a-z0-9-]+)*")


def _http_rule(value: Any, path: _Path) -> HttpRule:
    rule = _fields(value, path, ("name", "route"), ("match", "timeout", "retries", "fault", "mirror"))
    name = _name(rule["name"], (*path, "name"), dns1123_label_error)
    matches = tuple(_request_match(m, (*path, "match", i))
                    for i, m in enumerate(_list(rule["match"], (*path, "match"), 16))) if "match" in rule else ()
    route = _route(rule["route"], (*path, "route"))
    timeout, timeout_s = _duration(rule["timeout"], (*path, "timeout")) if "timeout" in rule else ("", None)
    retries = None
    if "retries" in rule:
        rpath = (*path, "retries")
        r = _fields(rule["retries"], rpath, ("attempts",), ("perTryTimeout", "retryOn"))
        per_try = ""
        if "perTryTimeout" in r:
            per_try, per_try_s = _duration(r["perTryTimeout"], (*rpath, "perTryTimeout"))
            if timeout_s is not None and per_try_s > timeout_s:
                raise _invalid((*rpath, "perTryTimeout"), f"{per_try} exceeds the rule's timeout {timeout}")
        retry_on = _string(r["retryOn"], (*rpath, "retryOn"), 256, _RETRY_ON, "5xx,reset,connect-failure") \
            if "retryOn" in r else ""
        retries = Retries(_integer(r["attempts"], (*rpath, "attempts"), 0, 10), per_try, retry_on)
    fault = None
    if "fault" in rule:
        fpath = (*path, "fault")
        f = _fields(rule["fault"], fpath, (), ("delay", "abort"))
        if not f:
            raise _invalid(fpath, "needs a delay, an abort or both")
        delay, delay_percent, abort_status, abort_percent = "", 0.0, 0, 0.0
        if "delay" in f:
            d = _fields(f["delay"], (*fpath, "delay"), ("fixedDelay",), ("percentage",))
            delay = _duration(d["fixedDelay"], (*fpath, "delay", "fixedDelay"))[0]
            delay_percent = _percent(d.get("percentage", 100), (*fpath, "delay", "percentage"))
        if "abort" in f:
            a = _fields(f["abort"], (*fpath, "abort"), ("httpStatus",), ("percentage",))
            abort_status = _integer(a["httpStatus"], (*fpath, "abort", "httpStatus"), 200, 599)
            abort_percent = _percent(a.get("percentage", 100), (*fpath, "abort", "percentage"))
        fault = Fault(delay, delay_percent, abort_status, abort_percent)
    mirror = None
    if "mirror" in rule:
        mpath = (*path, "mirror")
        m = _fields(rule["mirror"], mpath, ("cluster",), ("subset", "percentage"))
        mirror = Mirror(_name(m["cluster"], (*mpath, "cluster"), dns1123_label_error),
                        _name(m["subset"], (*mpath, "subset"), dns1123_label_error) if "subset" in m else "",
                        _percent(m.get("percentage", 100), (*mpath, "percentage")))
    return HttpRule(name, route, matches, timeout, retries, fault, mirror)


def _traffic_policy(spec: Any, meta: Meta) -> TrafficPolicy:
    spec = _fields(spec, ("spec",), ("destination",), ("clients", "route", "http"))
    destination = _destination(spec["destination"], ("spec", "destination"))
    clients: tuple[str, ...] | None = None
    if "clients" in spec:
        sel = _fields(spec["clients"], ("spec", "clients"), ("clusters",), ())
        clients = _names(sel["clusters"], ("spec", "clients", "clusters"), 256, dns1123_label_error, "cluster")
    if _one_of(spec, ("spec",), ("route", "http")) == "route":
        rules: tuple[HttpRule, ...] = (HttpRule("default", _route(spec["route"], ("spec", "route"))),)
        return TrafficPolicy(meta, destination, rules, clients, simple=True)
    rules = tuple(_http_rule(r, ("spec", "http", i)) for i, r in enumerate(_list(spec["http"], ("spec", "http"), 32)))
    for i, rule in enumerate(rules):
        if (first := next(j for j, r in enumerate(rules) if r.name == rule.name)) != i:
            raise _invalid(("spec", "http", i, "name"),
                           f"rule name {rule.name!r} is already used by spec.http[{first}]")
    return TrafficPolicy(meta, destination, rules, clients, simple=False)


def _failover_policy(spec: Any, meta: Meta) -> FailoverPolicy:
    spec = _fields(spec, ("spec",), ("destination",),
                   ("priority", "outlierDetection", "evictLostClusters", "holdDown", "peerConfirmation", "probe"))
    # spec.probe (an earlier version's per-policy probe settings) is accepted and ignored: the agents probe
    # (meshfleet agent --probe-*), and a file written for that version must not be refused as a whole
    destination = _destination(spec["destination"], ("spec", "destination"))
    opath: _Path = ("spec", "outlierDetection")
    o = _fields(spec.get("outlierDetection", {}), opath, (),
                ("consecutive5xxErrors", "interval", "baseEjectionTime", "maxEjectionPercent"))
    defaults = OutlierDetection()
    outlier = OutlierDetection(
        _integer(o.get("consecutive5xxErrors", defaults.consecutive_5xx_errors), (*opath, "consecutive5xxErrors"),
                 1, 1000),
        _duration(o.get("interval", defaults.interval), (*opath, "interval"))[0],
        _duration(o.get("baseEjectionTime", defaults.base_ejection_time), (*opath, "baseEjectionTime"))[0],
        _integer(o.get("maxEjectionPercent", defaults.max_ejection_percent), (*opath, "maxEjectionPercent"), 0, 100),
    )
    ppath: _Path = ("spec", "priority")
    p = _fields(spec.get("priority", {}), ppath, (), ("mode", "clusters"))
    mode = _enum(p.get("mode", "Topology"), (*ppath, "mode"), ("Topology", "Explicit"))
    priority: tuple[str, ...] = ()
    if mode == "Explicit":
        if "clusters" not in p:
            raise _invalid((*ppath, "clusters"), "required when mode is Explicit")
        # the failover order: kept as written, unlike the sets of names elsewhere
        priority = tuple(_name(c, (*ppath, "clusters", i), dns1123_label_error)
                         for i, c in enumerate(_list(p["clusters"], (*ppath, "clusters"), 64)))
        _unique(priority, (*ppath, "clusters"), "cluster")
    elif "clusters" in p:
        raise _invalid((*ppath, "clusters"), "only allowed when mode is Explicit (the Topology mode orders"
                       " clusters by locality)")
    evict = _boolean(spec.get("evictLostClusters", True), ("spec", "evictLostClusters"))
    hold_down = _duration(spec.get("holdDown", "1m"), ("spec", "holdDown"), at_least=None,
                          at_most=Fraction(24 * 3600))[0]
    confirm = _boolean(spec.get("peerConfirmation", True), ("spec", "peerConfirmation"))
    return FailoverPolicy(meta, destination, outlier, mode, priority, evict, hold_down, confirm)


# an AccessPolicy path: exact, prefix (/api/*), suffix (*.png) or * (Istio's forms)
_ACCESS_PATH = re.compile(r"/[^*?#]*\*?|\*[^*?#]*")


def _access_policy(spec: Any, meta: Meta) -> AccessPolicy:
    spec = _fields(spec, ("spec",), ("destination",), ("action", "from", "to", "mtls"))
    destination = _destination(spec["destination"], ("spec", "destination"), allow_all=True)
    action = _enum(spec.get("action", "ALLOW"), ("spec", "action"), ("ALLOW", "DENY"))
    sources: list[AccessFrom] = []
    for i, entry in enumerate(_list(spec["from"], ("spec", "from"), 16) if "from" in spec else []):
        path: _Path = ("spec", "from", i)
        f = _fields(entry, path, (), ("clusters", "namespaces", "serviceAccounts"))
        if not f:
            raise _invalid(path, "needs clusters, namespaces or serviceAccounts (omit `from` to mean any caller)")
        sources.append(AccessFrom(
            _names(f["clusters"], (*path, "clusters"), 64, dns1123_label_error, "cluster")
            if "clusters" in f else (),
            _names(f["namespaces"], (*path, "namespaces"), 64, dns1123_label_error, "namespace")
            if "namespaces" in f else (),
            _names(f["serviceAccounts"], (*path, "serviceAccounts"), 64, dns1123_subdomain_error, "service account")
            if "serviceAccounts" in f else (),
        ))
    operations: list[AccessOperation] = []
    for i, entry in enumerate(_list(spec["to"], ("spec", "to"), 16) if "to" in spec else []):
        path = ("spec", "to", i)
        t = _fields(entry, path, (), ("ports", "methods", "paths"))
        if not t:
            raise _invalid(path, "needs ports, methods or paths (omit `to` to mean any request)")
        ports: list[int] = []
        if "ports" in t:
            ports = [_integer(p, (*path, "ports", j), 1, 65535)
                     for j, p in enumerate(_list(t["ports"], (*path, "ports"), 32))]
            _unique(ports, (*path, "ports"), "port")
        methods: list[str] = []
        if "methods" in t:
            methods = [_enum(m, (*path, "methods", j), HTTP_METHODS)
                       for j, m in enumerate(_list(t["methods"], (*path, "methods"), 9))]
            _unique(methods, (*path, "methods"), "method")
        paths: list[str] = []
        if "paths" in t:
            paths = [_string(p, (*path, "paths", j), 1024, _ACCESS_PATH, "/api, /api/*, *.png or *")
                     for j, p in enumerate(_list(t["paths"], (*path, "paths"), 32))]
            _unique(paths, (*path, "paths"), "path")
        operations.append(AccessOperation(tuple(sorted(ports)), tuple(sorted(methods)), tuple(sorted(paths))))
    mtls = _enum(spec.get("mtls", "STRICT"), ("spec", "mtls"), ("STRICT", "PERMISSIVE"))
    return AccessPolicy(meta, destination, action, tuple(sources), tuple(operations), mtls)


_HOUR = Fraction(3600)


def _absolute_path(value: Any, path: _Path) -> str:
    text = _string(value, path, 4096)
    # relative to what? the hub's working directory is an accident of how it was started
    if not text.startswith("/"):
        raise _invalid(path, f"must be an absolute path, got {text!r}")
    return text


def _trust_policy(spec: Any, meta: Meta) -> TrustPolicy:
    spec = _fields(spec, ("spec",), ("root",), ("trustDomain", "intermediate", "rotation"))
    trust_domain = _name(spec.get("trustDomain", "cluster.local"), ("spec", "trustDomain"), dns1123_subdomain_error)
    rpath: _Path = ("spec", "root")
    root = _fields(spec["root"], rpath, (), ("generate", "secretRef", "files"))
    which = _one_of(root, rpath, ("generate", "secretRef", "files"))
    algorithm, validity = "EC-P256", ("87600h", 87600 * _HOUR)
    secret_ref: tuple[str, str] | None = None
    files: tuple[str, str] | None = None
    if which == "generate":
        gpath = (*rpath, "generate")
        g = _fields(root["generate"], gpath, (), ("algorithm", "validity"))
        algorithm = _enum(g.get("algorithm", "EC-P256"), (*gpath, "algorithm"), KEY_ALGORITHMS)
        validity = _duration(g.get("validity", "87600h"), (*gpath, "validity"), at_least=24 * _HOUR)
    elif which == "secretRef":
        spath = (*rpath, "secretRef")
        s = _fields(root["secretRef"], spath, ("name", "namespace"), ())
        secret_ref = (_name(s["namespace"], (*spath, "namespace"), dns1123_label_error),
                      _name(s["name"], (*spath, "name"), dns1123_subdomain_error))
    else:
        fpath = (*rpath, "files")
        f = _fields(root["files"], fpath, ("certificate", "key"), ())
        files = (_absolute_path(f["certificate"], (*fpath, "certificate")), _absolute_path(f["key"], (*fpath, "key")))
    ipath: _Path = ("spec", "intermediate")
    i = _fields(spec.get("intermediate", {}), ipath, (), ("ttl", "renewBefore", "pathLength"))
    ttl = _duration(i.get("ttl", "2160h"), (*ipath, "ttl"), at_least=_HOUR)
    if which == "generate" and ttl[1] >= validity[1]:
        # the CRD's rule: the hub clips an intermediate to its root's expiry, so a longer TTL would never be granted
        raise _invalid((*ipath, "ttl"), f"intermediate.ttl must be shorter than root.generate.validity"
                       f" ({ttl[0]} is not shorter than {validity[0]})")
    opath: _Path = ("spec", "rotation")
    o = _fields(spec.get("rotation", {}), opath, (), ("gracePeriod", "restartIstiod"))
    return TrustPolicy(
        meta, trust_domain, algorithm, float(validity[1]), secret_ref, files, generate=which == "generate",
        intermediate_ttl=float(ttl[1]),
        renew_before_percent=_integer(i.get("renewBefore", 20), (*ipath, "renewBefore"), 1, 90),
        path_length=_integer(i.get("pathLength", 0), (*ipath, "pathLength"), 0, 3),
        # the CRD sets no lower bound: 0s advances as soon as every cluster ACKed
        grace_period=float(_duration(o.get("gracePeriod", "24h"), (*opath, "gracePeriod"), at_least=None)[1]),
        restart_istiod=_boolean(o.get("restartIstiod", False), (*opath, "restartIstiod")),
    )


_PARSERS: dict[str, Callable[[Any, Meta], AnyResource]] = {
    "MulticlusterService": _multicluster_service,
    "TrafficPolicy": _traffic_policy,
    "FailoverPolicy": _failover_policy,
    "AccessPolicy": _access_policy,
    "TrustPolicy": _trust_policy,
}


def _resource(doc: Any, source: str, created: str = "", generation: int = 0) -> AnyResource:
    if not isinstance(doc, dict):
        raise _Invalid((), f"document must be a mapping, got {type(doc).__name__}")
    if doc.get("apiVersion") != API_VERSION:
        raise _Invalid(("apiVersion",), f"apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind in NOT_POLICIES:
        raise _Invalid(("kind",), NOT_POLICIES[kind])
    if kind not in _PARSERS:
        raise _Invalid(("kind",), f"unsupported kind {kind!r} (supported: {', '.join(KINDS)})")
    _fields(doc, (), ("apiVersion", "kind", "metadata", "spec"), ())
    return _PARSERS[kind](doc["spec"], _metadata(doc["metadata"], kind, source, created, generation))


# ---------------------------------------------------------------------------------------------
# Entry points


def parse_file(text: str, filename: str) -> tuple[list[AnyResource], list[PolicyError]]:
    """Every resource in a multi-document YAML file, and the errors (file:line) of the documents refused."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [PolicyError(filename, line, f"YAML syntax error: {problem}")]
    resources: list[AnyResource] = []
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
            resources.append(_resource(doc, f"{filename}:{line}"))
        except _Invalid as exc:
            errors.append(PolicyError(filename, _line_of(node, exc.path), exc.message))
    return resources, errors


# ObjectMeta the API server fills in; a CR carries them, a policy file does not
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "finalizers",
                    "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName", "selfLink")


def parse_resource(obj: Mapping[str, Any]) -> AnyResource:
    """A custom resource as read from the API server; raises ValueError whose message names the field."""
    raw = obj.get("metadata")
    raw = raw if isinstance(raw, dict) else {}
    meta = {k: v for k, v in raw.items() if k not in _SERVER_METADATA}
    doc = {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}
    generation = raw.get("generation")
    try:
        return _resource(doc, cr_ref(obj.get("kind"), raw.get("namespace"), raw.get("name")),
                         str(raw.get("creationTimestamp") or ""),
                         generation if isinstance(generation, int) and not isinstance(generation, bool) else 0)
    except _Invalid as exc:
        raise ValueError(exc.message) from exc
