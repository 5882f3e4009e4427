"""The intent contract: what the hub tells one cluster, and how it is versioned.

The hub produces a `ClusterIntent` per cluster; the agent decides how to express it
in Istio. On the wire the intent is canonical JSON and its version is the SHA-256
of those bytes, so both sides agree on "changed" without any other bookkeeping and
the agent can detect a corrupted push.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPE = "application/vnd.meshfleet.intent.v1+json"
SCHEMA = "meshfleet.io/intent/v1"
PROTOCOL_VERSION = "1.0"
EAST_WEST_PORT = 15443
# Istio protocol names a service port may carry (in discovery reports and intents)
PROTOCOLS = ("HTTP", "HTTP2", "HTTPS", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL", "UDP")
# those Istio routes with `http` rules (matches, retries, timeouts, faults, mirroring)
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})


def global_host(namespace: str, name: str) -> str:
    """The default mesh-wide host of a service: `<name>.<namespace>.global`."""
    return f"{name}.{namespace}.global"


class IntentError(ValueError):
    """An intent that cannot be decoded: corrupt, wrong media type or malformed."""


@dataclass(frozen=True)
class ClusterRef:
    name: str
    region: str
    zone: str
    network: str

    @property
    def locality(self) -> str:
        """Istio locality string `region/zone` (zone omitted when unknown)."""
        return f"{self.region}/{self.zone}" if self.zone else self.region


@dataclass(frozen=True)
class Port:
    name: str
    number: int
    protocol: str


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """One cluster that runs the service, reached through its east-west gateway `address:port`.

    The receiving cluster recognises its own copy by name and reaches it directly,
    so the same backend list serves every client and is encoded once.
    """

    cluster: ClusterRef
    address: str = ""
    port: int = 0
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking of a destination's endpoints (Envoy ejects the failing ones)."""

    consecutive_5xx_errors: int = 5
    interval: str = "10s"
    base_ejection_time: str = "30s"
    max_ejection_percent: int = 100


@dataclass(frozen=True)
class ServiceIntent:
    """A service the receiving cluster may call or serves, with every cluster backing it.

    `name` names the objects (`<name>-global`), `host` is the mesh-wide host name and
    `service` the Kubernetes Service that backs it in each backing cluster.
    """

    namespace: str
    name: str
    ports: tuple[Port, ...]
    backends: tuple[Backend, ...]
    host: str = ""  # "" means <name>.<namespace>.global
    service: str = ""  # "" means name
    outlier: OutlierDetection | None = None
    # the failover order: () follows the receiving cluster's topology (ClusterIntent.regions);
    # otherwise the clusters in priority order, the same for every client (FailoverPolicy mode Explicit)
    priority: tuple[str, ...] = ()
    origin: str = ""  # key (Kind/namespace/name) of the resource the service comes from, "" if unknown

    def __post_init__(self) -> None:
        if not self.host:
            object.__setattr__(self, "host", global_host(self.namespace, self.name))
        if not self.service:
            object.__setattr__(self, "service", self.name)


@dataclass(frozen=True)
class WeightedTarget:
    """A share of traffic for one cluster's copy, or one subset (version) of it."""

    cluster: str
    weight: int
    subset: str = ""


@dataclass(frozen=True)
class StringMatch:
    kind: str  # exact | prefix | regex
    value: str


@dataclass(frozen=True)
class RequestMatch:
    """All of these must hold (the fields of one Istio HTTPMatchRequest)."""

    headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    uri: StringMatch | None = None


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout: str = ""
    retry_on: str = ""


@dataclass(frozen=True)
class Fault:
    """Injected faults: a delay, an abort (HTTP status), or both; percentages are of requests."""

    delay: str = ""
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0


@dataclass(frozen=True)
class Mirror:
    cluster: str
    subset: str = ""
    percent: float = 100.0


@dataclass(frozen=True)
class RouteRule:
    """One HTTP rule: requests matching any of `matches` (all requests if none) go to `targets`."""

    name: str
    targets: tuple[WeightedTarget, ...]
    matches: tuple[RequestMatch, ...] = ()
    timeout: str = ""
    retries: Retries | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True)
class TrafficRoute:
    """How one service's traffic is routed across the clusters (and versions) backing it; rules in order."""

    policy: str  # "<namespace>/<name>" of the TrafficPolicy it comes from
    namespace: str
    service: str  # ServiceIntent.name
    rules: tuple[RouteRule, ...]


@dataclass(frozen=True)
class AccessSource:
    """Callers a rule names; every field given must match (empty: any)."""

    namespaces: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()  # SPIFFE identities without the scheme, e.g. */ns/bookinfo/sa/productpage


@dataclass(frozen=True)
class AccessOperation:
    ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessRule:
    """Who may (ALLOW) or may not (DENY) call the workloads `selector` picks (all of the namespace if empty)."""

    policy: str
    namespace: str
    action: str  # ALLOW | DENY
    selector: tuple[tuple[str, str], ...] = ()
    sources: tuple[AccessSource, ...] = ()  # empty: any caller
    operations: tuple[AccessOperation, ...] = ()  # empty: any request


@dataclass(frozen=True)
class MtlsRule:
    """Peer authentication mode for the workloads `selector` picks (all of the namespace if empty)."""

    policy: str
    namespace: str
    mode: str  # STRICT | PERMISSIVE
    selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrustIntent:
    """The mesh's root of trust as a cluster must hold it in Istio's plug-in CA (`cacerts`)."""

    trust_domain: str
    roots: tuple[str, ...]
    """PEM certificates of every root to trust (root-cert.pem), the signing root first."""
    signer: str
    """SHA-256 fingerprint of the root the cluster's intermediate must be issued by."""
    key_algorithm: str = "EC-P256"
    """Algorithm of the intermediate key the agent generates (meshfleet.pki.ALGORITHMS)."""
    ttl_seconds: int = 90 * 86400
    """Lifetime the agent asks for its intermediate (the hub caps it)."""
    renew_before_percent: int = 20
    """Renew once this share of the intermediate's life remains (jittered)."""
    path_length: int = 0
    """Path length constraint of the intermediate."""
    restart_istiod: bool = False
    """Restart istiod after cacerts changed (for Istio versions that do not reload it)."""


@dataclass(frozen=True, order=True)
class Gateway:
    """A cluster's east-west gateway, as its peers reach it."""

    cluster: str
    address: str
    port: int


@dataclass(frozen=True)
class ClusterIntent:
    cluster: ClusterRef
    services: tuple[ServiceIntent, ...] = ()
    traffic: tuple[TrafficRoute, ...] = ()
    access: tuple[AccessRule, ...] = ()
    mtls: tuple[MtlsRule, ...] = ()
    trust: TrustIntent | None = None
    """None: meshfleet manages no CA in this cluster (no TrustPolicy on the hub)."""
    regions: tuple[tuple[str, ...], ...] = ()
    """The other regions, nearest first, in tiers of equally near ones (the topology failover order)."""
    deleted: tuple[str, ...] = ()
    """Keys of resources the user deleted whose objects this cluster held: removed at once, not after a grace."""
    watch: tuple[Gateway, ...] = ()
    """Gateways of clusters the hub evicted from what this cluster calls: its agent keeps probing them, so the
    hub knows whether peers reach a returning cluster (no traffic goes there)."""


def gateways(intent: ClusterIntent) -> dict[str, set[Gateway]]:
    """The east-west gateways of the other clusters an intent names, by cluster: those of its remote backends
    (with an address and port) and those of the evicted clusters it watches. The agent probes them; the hub
    counts probe results only for them."""
    found: dict[str, set[Gateway]] = {}
    me = intent.cluster.name
    named = (Gateway(b.cluster.name, b.address, b.port) for s in intent.services for b in s.backends)
    for g in (*named, *intent.watch):
        if g.cluster != me and g.address and g.port:
            found.setdefault(g.cluster, set()).add(g)
    return found


def failover_rank(intent: ClusterIntent, service: ServiceIntent, backend: ClusterRef) -> int:
    """How far down the failover order a backend is for the receiving cluster (0 first; ties share a rank).

    Topology order: the receiving cluster itself and its zone 0, its region 1, then each tier of
    `intent.regions` in turn, regions it does not list last. Explicit order: the position in
    `service.priority`, clusters it does not list last.
    """
    if service.priority:
        return service.priority.index(backend.name) if backend.name in service.priority else len(service.priority)
    me = intent.cluster
    if backend.name == me.name or (backend.region == me.region and backend.zone and backend.zone == me.zone):
        return 0
    if backend.region == me.region:
        return 1
    for i, tier in enumerate(intent.regions):
        if backend.region in tier:
            return 2 + i
    return 2 + len(intent.regions)


def canonical_json(obj: Any) -> bytes:
    """The one serialization every version is computed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def version_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Encoder:
    """Encodes many intents, serializing each shared service or split object only once.

    translate() hands every client of a service the same ServiceIntent object, so
    encoding a fleet costs one serialization per service, not one per cluster.
    The output is byte-identical to canonical_json(to_json(intent)).
    """

    def __init__(self) -> None:
        self._fragments: dict[int, tuple[object, bytes]] = {}

    def _fragment(self, obj: Any, to_obj: Any) -> bytes:
        hit = self._fragments.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        data = canonical_json(to_obj(obj))
        self._fragments[id(obj)] = (obj, data)  # holding obj keeps its id from being reused
        return data

    def size(self) -> int:
        """How many objects' bytes are cached."""
        return len(self._fragments)

    def retain(self, roots: Iterable[object]) -> None:
        """Forget the cached bytes of every object not among `roots` (looked for through tuples and lists)."""
        keep: set[int] = set()
        stack = list(roots)
        while stack:
            x = stack.pop()
            if isinstance(x, (tuple, list)):
                stack.extend(x)
            else:
                keep.add(id(x))
        self._fragments = {k: v for k, v in self._fragments.items() if k in keep}

    def encode(self, intent: ClusterIntent) -> tuple[str, bytes]:
        """Return (version, canonical bytes) of an intent."""
        def listed(key: bytes, items: Sequence[Any], to_obj: Any) -> list[bytes]:
            return [b',"' + key + b'":[', b",".join(self._fragment(x, to_obj) for x in items), b"]"]

        content = b"".join([
            b'{"access":[', b",".join(self._fragment(a, _access_json) for a in intent.access), b"]",
            b',"cluster":', canonical_json(_cluster_json(intent.cluster)),
            b',"deleted":', canonical_json(list(intent.deleted)),
            *listed(b"mtls", intent.mtls, _mtls_json),
            b',"regions":', canonical_json([list(t) for t in intent.regions]),
            b',"schema":', canonical_json(SCHEMA),
            *listed(b"services", intent.services, _service_json),
            *listed(b"traffic", intent.traffic, _traffic_json),
            b',"trust":', b"null" if intent.trust is None else self._fragment(intent.trust, _trust_json),
            b',"watch":', canonical_json([_gateway_json(g) for g in intent.watch]),
            b"}",
        ])
        return version_of(content), content


def encode(intent: ClusterIntent) -> tuple[str, bytes]:
    """Return (version, canonical bytes) of an intent."""
    return Encoder().encode(intent)


def decode(version: str, content: bytes, media_type: str = MEDIA_TYPE) -> ClusterIntent:
    """Check and parse a pushed intent; raises IntentError with a precise reason."""
    if media_type != MEDIA_TYPE:
        raise IntentError(f"unsupported intent media type {media_type!r} (expected {MEDIA_TYPE})")
    actual = version_of(content)
    if actual != version:
        raise IntentError(f"corrupt intent: content hashes to {actual[:12]}, push says {version[:12]}")
    try:
        doc = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntentError(f"corrupt intent: not JSON ({exc})") from exc
    return from_json(doc)


def to_json(intent: ClusterIntent) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "cluster": _cluster_json(intent.cluster),
        "services": [_service_json(s) for s in intent.services],
        "traffic": [_traffic_json(t) for t in intent.traffic],
        "access": [_access_json(a) for a in intent.access],
        "mtls": [_mtls_json(m) for m in intent.mtls],
        "trust": None if intent.trust is None else _trust_json(intent.trust),
        "regions": [list(t) for t in intent.regions],
        "deleted": list(intent.deleted),
        "watch": [_gateway_json(g) for g in intent.watch],
    }


def _gateway_json(g: Gateway) -> dict[str, Any]:
    return {"cluster": g.cluster, "address": g.address, "port": g.port}


def _trust_json(t: TrustIntent) -> dict[str, Any]:
    return {"trustDomain": t.trust_domain, "roots": list(t.roots), "signer": t.signer,
            "keyAlgorithm": t.key_algorithm, "ttlSeconds": t.ttl_seconds,
            "renewBeforePercent": t.renew_before_percent, "pathLength": t.path_length,
            "restartIstiod": t.restart_istiod}


def _trust(r: _Reader) -> TrustIntent:
    restart = r.get("restartIstiod", bool)
    return TrustIntent(r.text("trustDomain"), r.texts("roots"), r.text("signer"), r.text("keyAlgorithm"),
                       r.integer("ttlSeconds"), r.integer("renewBeforePercent"), r.integer("pathLength"),
                       bool(restart))


def _service_json(s: ServiceIntent) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "namespace": s.namespace,
        "name": s.name,
        "host": s.host,
        "service": s.service,
        "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol} for p in s.ports],
        "backends": [
            {
                "cluster": _cluster_json(b.cluster),
                "address": b.address,
                "port": b.port,
                "subsets": [{"name": x.name, "labels": dict(x.labels)} for x in b.subsets],
            }
            for b in s.backends
        ],
        "outlier": None,
        "priority": list(s.priority),
        "origin": s.origin,
    }
    if (o := s.outlier) is not None:
        doc["outlier"] = {"consecutive5xxErrors": o.consecutive_5xx_errors, "interval": o.interval,
                          "baseEjectionTime": o.base_ejection_time, "maxEjectionPercent": o.max_ejection_percent}
    return doc


def _match_json(m: StringMatch) -> dict[str, str]:
    return {"kind": m.kind, "value": m.value}


def _rule_json(r: RouteRule) -> dict[str, Any]:
    return {
        "name": r.name,
        "targets": [{"cluster": t.cluster, "subset": t.subset, "weight": t.weight} for t in r.targets],
        "matches": [{"headers": [{"name": n, "match": _match_json(m)} for n, m in x.headers],
                     "queryParams": [{"name": n, "match": _match_json(m)} for n, m in x.query_params],
                     "uri": _match_json(x.uri) if x.uri else None} for x in r.matches],
        "timeout": r.timeout,
        "retries": None if r.retries is None else {
            "attempts": r.retries.attempts, "perTryTimeout": r.retries.per_try_timeout,
            "retryOn": r.retries.retry_on},
        "fault": None if r.fault is None else {
            "delay": r.fault.delay, "delayPercent": float(r.fault.delay_percent),
            "abortStatus": r.fault.abort_status, "abortPercent": float(r.fault.abort_percent)},
        "mirror": None if r.mirror is None else {
            "cluster": r.mirror.cluster, "subset": r.mirror.subset, "percent": float(r.mirror.percent)},
    }


def _traffic_json(t: TrafficRoute) -> dict[str, Any]:
    return {
        "policy": t.policy,
        "namespace": t.namespace,
        "service": t.service,
        "rules": [_rule_json(r) for r in t.rules],
    }


def _selector_json(selector: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(selector)


def _access_json(a: AccessRule) -> dict[str, Any]:
    return {
        "policy": a.policy,
        "namespace": a.namespace,
        "action": a.action,
        "selector": _selector_json(a.selector),
        "sources": [{"namespaces": list(x.namespaces), "principals": list(x.principals)} for x in a.sources],
        "operations": [{"ports": list(o.ports), "methods": list(o.methods), "paths": list(o.paths)}
                       for o in a.operations],
    }


def _mtls_json(m: MtlsRule) -> dict[str, Any]:
    return {"policy": m.policy, "namespace": m.namespace, "mode": m.mode, "selector": _selector_json(m.selector)}


def _cluster_json(c: ClusterRef) -> dict[str, str]:
    return {"name": c.name, "region": c.region, "zone": c.zone, "network": c.network}


class _Reader:
    """Typed access to a JSON document that reports the path of what is wrong."""

    def __init__(self, doc: Any, path: str = "") -> None:
        self.doc = doc
        self.path = path

    def _fail(self, key: str, what: str) -> IntentError:
        return IntentError(f"malformed intent: {self.path}{key}: {what}")

    def get(self, key: str, kind: type) -> Any:
        if not isinstance(self.doc, dict) or key not in self.doc:
            raise self._fail(key, "missing")
        value = self.doc[key]
        # bool is an int subclass; an intent never uses one where the other is expected
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def text(self, key: str) -> str:
        return str(self.get(key, str))

    def integer(self, key: str) -> int:
        return int(self.get(key, int))

    def number(self, key: str) -> float:
        value = self.get(key, object)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, f"expected number, got {type(value).__name__}")
        return float(value)

    def obj(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.path}{key}.")

    def optional(self, key: str) -> _Reader | None:
        """The object at `key`, or None where the document has null."""
        if isinstance(self.doc, dict) and self.doc.get(key, 0) is None:
            return None
        return self.obj(key)

    def integer_list(self, key: str) -> list[int]:
        values: Sequence[Any] = self.get(key, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise self._fail(key, "expected a list of integers")
        return list(values)

    def texts(self, key: str) -> tuple[str, ...]:
        values: Sequence[Any] = self.get(key, list)
        if not all(isinstance(v, str) for v in values):
            raise self._fail(key, "expected a list of strings")
        return tuple(values)

    def items(self, key: str) -> list[_Reader]:
        values: Sequence[Any] = self.get(key, list)
        return [_Reader(v, f"{self.path}{key}[{i}].") for i, v in enumerate(values)]

    def labels(self, key: str) -> dict[str, str]:
        value: dict[str, Any] = self.get(key, dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self._fail(key, "labels must map strings to strings")
        return dict(value)


def _cluster(r: _Reader) -> ClusterRef:
    return ClusterRef(r.text("name"), r.text("region"), r.text("zone"), r.text("network"))


def _string_match(r: _Reader) -> StringMatch:
    kind = r.text("kind")
    if kind not in ("exact", "prefix", "regex"):
        raise r._fail("kind", f"unknown match kind {kind!r}")
    return StringMatch(kind, r.text("value"))


def _named_matches(r: _Reader, key: str) -> tuple[tuple[str, StringMatch], ...]:
    return tuple((x.text("name"), _string_match(x.obj("match"))) for x in r.items(key))


def _rule(r: _Reader) -> RouteRule:
    retries, fault, mirror = r.optional("retries"), r.optional("fault"), r.optional("mirror")
    return RouteRule(
        name=r.text("name"),
        targets=tuple(WeightedTarget(t.text("cluster"), t.integer("weight"), t.text("subset"))
                      for t in r.items("targets")),
        matches=tuple(RequestMatch(_named_matches(m, "headers"), _named_matches(m, "queryParams"),
                                   None if (u := m.optional("uri")) is None else _string_match(u))
                      for m in r.items("matches")),
        timeout=r.text("timeout"),
        retries=None if retries is None else Retries(retries.integer("attempts"), retries.text("perTryTimeout"),
                                                     retries.text("retryOn")),
        fault=None if fault is None else Fault(fault.text("delay"), fault.number("delayPercent"),
                                               fault.integer("abortStatus"), fault.number("abortPercent")),
        mirror=None if mirror is None else Mirror(mirror.text("cluster"), mirror.text("subset"),
                                                  mirror.number("percent")),
    )


def _selector(r: _Reader) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(r.labels("selector").items()))


def _service(s: _Reader) -> ServiceIntent:
    outlier = s.optional("outlier")
    return ServiceIntent(
        namespace=s.text("namespace"),
        name=s.text("name"),
        host=s.text("host"),
        service=s.text("service"),
        ports=tuple(Port(p.text("name"), p.integer("number"), p.text("protocol")) for p in s.items("ports")),
        backends=tuple(
            Backend(
                cluster=_cluster(b.obj("cluster")),
                address=b.text("address"),
                port=b.integer("port"),
                subsets=tuple(Subset(x.text("name"), x.labels("labels")) for x in b.items("subsets")),
            )
            for b in s.items("backends")
        ),
        outlier=None if outlier is None else OutlierDetection(
            outlier.integer("consecutive5xxErrors"), outlier.text("interval"), outlier.text("baseEjectionTime"),
            outlier.integer("maxEjectionPercent")),
        # absent from a hub older than failover ordering: topology order, origin unknown
        priority=s.texts("priority") if _has(s, "priority") else (),
        origin=s.text("origin") if _has(s, "origin") else "",
    )


def _has(r: _Reader, key: str) -> bool:
    return isinstance(r.doc, dict) and key in r.doc


def from_json(doc: Any) -> ClusterIntent:
    r = _Reader(doc)
    if r.text("schema") != SCHEMA:
        raise IntentError(f"unsupported intent schema {doc['schema']!r} (expected {SCHEMA})")
    traffic = tuple(
        TrafficRoute(t.text("policy"), t.text("namespace"), t.text("service"),
                     tuple(_rule(x) for x in t.items("rules")))
        for t in r.items("traffic")
    )
    access = tuple(
        AccessRule(
            policy=a.text("policy"), namespace=a.text("namespace"), action=a.text("action"), selector=_selector(a),
            sources=tuple(AccessSource(x.texts("namespaces"), x.texts("principals")) for x in a.items("sources")),
            operations=tuple(AccessOperation(tuple(o.integer_list("ports")), o.texts("methods"), o.texts("paths"))
                             for o in a.items("operations")),
        )
        for a in r.items("access")
    )
    mtls = tuple(MtlsRule(m.text("policy"), m.text("namespace"), m.text("mode"), _selector(m)) for m in r.items("mtls"))
    # an intent from a hub older than the trust section has none: meshfleet manages no CA there
    trust = r.optional("trust") if isinstance(doc, dict) and "trust" in doc else None
    tiers: Sequence[Any] = r.get("regions", list) if _has(r, "regions") else []
    if not all(isinstance(t, list) and all(isinstance(n, str) for n in t) for t in tiers):
        raise IntentError("malformed intent: regions: expected lists of region names")
    regions = tuple(tuple(t) for t in tiers)
    return ClusterIntent(cluster=_cluster(r.obj("cluster")), services=tuple(_service(s) for s in r.items("services")),
                         traffic=traffic, access=access, mtls=mtls, trust=None if trust is None else _trust(trust),
                         regions=regions, deleted=r.texts("deleted") if _has(r, "deleted") else (),
                         watch=tuple(Gateway(g.text("cluster"), g.text("address"), g.integer("port"))
                                     for g in r.items("watch")) if _has(r, "watch") else ())
