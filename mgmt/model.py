"""The frozen input of one translation: clusters, what their agents discovered, policies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshfleet.intents import (
    PROTOCOLS,
    AccessOperation,
    ClusterRef,
    Fault,
    Mirror,
    OutlierDetection,
    Port,
    RequestMatch,
    Retries,
    Subset,
)
from meshfleet.names import address_error, dns1123_label_error, labels_error


@dataclass(frozen=True)
class DiscoveredService:
    namespace: str
    name: str
    ports: tuple[Port, ...]
    subsets: tuple[Subset, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()  # the Service's pod selector (what AccessPolicy targets)


@dataclass(frozen=True)
class Discovery:
    """One agent's latest report: its east-west gateway and its services."""

    gateway_address: str
    gateway_port: int
    services: Mapping[tuple[str, str], DiscoveredService] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Resources (the custom resources of crds/, or the same documents in policy files)


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry of a label selector."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class ClusterSelector:
    """Clusters by name (`clusters`), or by MeshCluster labels (Kubernetes label-selector semantics)."""

    clusters: tuple[str, ...] | None = None
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def selects(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.clusters is not None:
            return name in self.clusters
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.holds(labels) for r in self.match_expressions))

    def describe(self) -> str:
        if self.clusters is not None:
            return f"clusters [{', '.join(self.clusters)}]"
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [f"{r.key} {r.operator} ({', '.join(r.values)})" if r.values else f"{r.key} {r.operator}"
                  for r in self.match_expressions]
        return f"clusterSelector {{{', '.join(parts)}}}" if parts else "clusterSelector {} (every cluster)"


@dataclass(frozen=True)
class Meta:
    """What every resource carries: identity, where it came from, and its age (older wins a conflict)."""

    kind: str
    namespace: str
    name: str
    source: str = ""  # "file:line" or "Kind ns/name", for messages
    created: str = ""  # RFC 3339 creationTimestamp of a CR ("" for a file: files are older than any CR)
    generation: int = 0  # metadata.generation of a CR (0 for a file)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def ref(self) -> str:
        return cr_ref(self.kind, self.namespace, self.name)


def cr_ref(kind: object, namespace: object, name: object) -> str:
    """How messages name a resource: "Kind namespace/name", or "Kind name" when cluster-scoped (as kubectl does)."""
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def ref_key(ref: str) -> str | None:
    """The key ("Kind/namespace/name") of a resource named by cr_ref; None for anything else (a file name)."""
    kind, _, rest = ref.partition(" ")
    if not kind or not kind[0].isupper() or not rest or " " in rest:
        return None
    namespace, _, name = rest.rpartition("/")
    return f"{kind}/{namespace}/{name}"


@dataclass(frozen=True)
class Destination:
    """What a policy is about: a Service of the policy's namespace, a MulticlusterService, or every workload."""

    service: str = ""
    multicluster_service: str = ""
    all: bool = False

    def describe(self) -> str:
        if self.all:
            return "every workload of the namespace"
        return f"MulticlusterService {self.multicluster_service}" if self.multicluster_service \
            else f"service {self.service}"


@dataclass(frozen=True)
class MulticlusterService:
    meta: Meta
    service: str  # the Kubernetes Service backing it in each backing cluster
    host: str  # "" means <name>.<namespace>.global
    backends: ClusterSelector
    export_to: ClusterSelector | None = None  # None: every cluster
    ports: tuple[Port, ...] = ()  # () means the ports the backing clusters report


@dataclass(frozen=True)
class RouteTarget:
    cluster: str
    weight: int
    subset: str = ""


@dataclass(frozen=True)
class HttpRule:
    name: str
    route: tuple[RouteTarget, ...]
    matches: tuple[RequestMatch, ...] = ()
    timeout: str = ""
    retries: Retries | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    """Weighted routing for a destination; `spec.route` is one rule named `default` without a match."""

    meta: Meta
    destination: Destination
    http: tuple[HttpRule, ...]
    clients: tuple[str, ...] | None = None  # None: every cluster the destination is exported to
    simple: bool = True  # written as spec.route (also valid for TCP services)

    @property
    def key(self) -> str:
        return self.meta.key


@dataclass(frozen=True)
class FailoverPolicy:
    meta: Meta
    destination: Destination
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    priority_mode: str = "Topology"  # Topology | Explicit
    priority: tuple[str, ...] = ()  # cluster names, Explicit mode
    evict_lost_clusters: bool = True
    hold_down: str = "1m"
    # evict only when the clusters probing the lost cluster's gateway cannot reach it either
    peer_confirmation: bool = True

    @property
    def key(self) -> str:
        return self.meta.key


@dataclass(frozen=True)
class AccessFrom:
    clusters: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessPolicy:
    meta: Meta
    destination: Destination
    action: str = "ALLOW"
    sources: tuple[AccessFrom, ...] = ()  # empty: any caller
    operations: tuple[AccessOperation, ...] = ()  # empty: any request
    mtls: str = "STRICT"

    @property
    def key(self) -> str:
        return self.meta.key


DAY = 24 * 3600.0


@dataclass(frozen=True)
class TrustPolicy:
    """The mesh's shared root of trust (cluster-scoped: meta.namespace is ""); durations in seconds.

    Exactly one of `generate`, `secret_ref` and `files` says where the root comes from. More than one
    TrustPolicy is not refused here: the hub's trust manager reports it.
    """

    meta: Meta
    trust_domain: str = "cluster.local"
    algorithm: str = "EC-P256"  # of a generated root and of the intermediates agents generate (EC-P256 if supplied)
    root_validity: float = 3650 * DAY  # generate.validity; unused for a supplied root
    secret_ref: tuple[str, str] | None = None  # (namespace, name) of a Secret on the hub cluster
    files: tuple[str, str] | None = None  # (certificate path, key path), absolute, on the hub's disk
    generate: bool = True  # the hub generates the root and keeps its key
    intermediate_ttl: float = 90 * DAY
    renew_before_percent: int = 20
    path_length: int = 0
    grace_period: float = DAY
    restart_istiod: bool = False

    def __post_init__(self) -> None:
        given = [self.generate, self.secret_ref is not None, self.files is not None]
        if given.count(True) != 1:
            raise ValueError(f"{self.meta.ref}: exactly one of generate, secret_ref and files must be set")

    @property
    def key(self) -> str:
        return self.meta.key


Resource = MulticlusterService | TrafficPolicy | FailoverPolicy | AccessPolicy
AnyResource = Resource | TrustPolicy
"""What a policy file or custom resource parses to; `Resource` is the part translation reads."""


@dataclass(frozen=True)
class Resources:
    """Every multicluster resource the hub holds, by kind."""

    services: tuple[MulticlusterService, ...] = ()
    traffic: tuple[TrafficPolicy, ...] = ()
    failover: tuple[FailoverPolicy, ...] = ()
    access: tuple[AccessPolicy, ...] = ()
    trust: tuple[TrustPolicy, ...] = ()  # not in all(): the trust manager reads it, translation does not

    def all(self) -> tuple[Resource, ...]:
        """The resources translation renders and the policy status writer reports on (trust excluded)."""
        return (*self.services, *self.traffic, *self.failover, *self.access)

    @staticmethod
    def of(items: Iterable[AnyResource]) -> Resources:
        """Group resources by kind, each kind sorted by key."""
        items = sorted(items, key=lambda r: r.meta.key)
        return Resources(
            services=tuple(r for r in items if isinstance(r, MulticlusterService)),
            traffic=tuple(r for r in items if isinstance(r, TrafficPolicy)),
            failover=tuple(r for r in items if isinstance(r, FailoverPolicy)),
            access=tuple(r for r in items if isinstance(r, AccessPolicy)),
            trust=tuple(r for r in items if isinstance(r, TrustPolicy)),
        )


def age(resource: AnyResource) -> tuple[str, str]:
    """Sort key for conflicts: the older resource wins (files before CRs, then by creation, then by key)."""
    return resource.meta.created, resource.meta.key


@dataclass(frozen=True)
class Snapshot:
    """Immutable input of a translation; `memo` holds what translate derives from it once for all clusters."""

    clusters: Mapping[str, ClusterRef]
    discovery: Mapping[str, Discovery]
    resources: Resources = Resources()
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # cluster -> MeshCluster labels
    # the links between regions the hub's operator declared (mgmt.regions), for the topology failover order
    region_costs: tuple[tuple[str, str, float], ...] = ()
    # FailoverPolicy key -> the clusters the hub evicted from its destination (mgmt.failover decides)
    evicted: Mapping[str, frozenset[str]] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def cluster_labels(self, name: str) -> Mapping[str, str]:
        return self.labels.get(name, {})


class DiscoveryError(ValueError):
    """A discovery report the hub refuses (the previous one is kept)."""


def discovery_from_json(doc: Mapping[str, Any]) -> Discovery:
    """Validate a report (as stored, or converted from the wire) into a Discovery."""
    try:
        gateway = doc.get("gateway") or {}
        address, port = str(gateway.get("address", "")), int(gateway.get("port", 0))
        if address and not 0 < port < 65536:
            raise DiscoveryError(f"gateway port {port} out of range 1-65535")
        if address and (err := address_error(address)):
            raise DiscoveryError(f"gateway address {err}")
        services: dict[tuple[str, str], DiscoveredService] = {}
        for s in doc.get("services", []):
            ns, name = s["namespace"], s["name"]
            for what, value in (("namespace", ns), ("name", name)):
                if err := dns1123_label_error(value):
                    raise DiscoveryError(f"service {what} {err}")
            if (ns, name) in services:
                raise DiscoveryError(f"service {ns}/{name} reported twice")
            ports = []
            for p in s.get("ports", []):
                number, protocol = int(p["number"]), str(p.get("protocol") or "TCP").upper()
                if not 0 < number < 65536:
                    raise DiscoveryError(f"service {ns}/{name}: port {number} out of range 1-65535")
                if protocol not in PROTOCOLS:
                    raise DiscoveryError(f"service {ns}/{name}: unknown protocol {protocol!r}")
                if err := dns1123_label_error(p["name"]):
                    raise DiscoveryError(f"service {ns}/{name}: port name {err}")
                ports.append(Port(p["name"], number, protocol))
            if not ports:
                raise DiscoveryError(f"service {ns}/{name} has no ports")
            subsets = tuple(Subset(x["name"], dict(x.get("labels", {}))) for x in s.get("subsets", []))
            for x in subsets:
                if err := dns1123_label_error(x.name) or labels_error(dict(x.labels)):
                    raise DiscoveryError(f"service {ns}/{name}: subset {x.name!r}: {err}")
            if len({x.name for x in subsets}) != len(subsets):
                raise DiscoveryError(f"service {ns}/{name}: subset names repeat")
            selector = s.get("selector") or {}
            if err := labels_error(selector):
                raise DiscoveryError(f"service {ns}/{name}: selector: {err}")
            services[(ns, name)] = DiscoveredService(ns, name, tuple(sorted(ports, key=lambda p: p.number)),
                                                     tuple(sorted(subsets, key=lambda x: x.name)),
                                                     tuple(sorted(selector.items())))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DiscoveryError):
            raise
        raise DiscoveryError(f"malformed discovery report: {exc!r}") from exc
    return Discovery(address, port, services)
